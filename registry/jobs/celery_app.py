"""Celery wiring for the scale mode: ``celery -A registry.jobs.celery_app worker -Q
modeldrop,convert-tf,convert-torch`` on worker machines and exactly one ``celery -A
registry.jobs.celery_app beat`` of its own.

Conversion jobs are sent to the queue of their toolchain (``convert-tf`` for Keras,
SavedModel and provided artifacts, ``convert-torch`` for ``.pt2``/``.pt``;
``registry.convert.catalog.toolchain_queue``); delta jobs and the beat's maintenance use
the general queue ``modeldrop``. A worker image without PyTorch runs ``-Q
modeldrop,convert-tf`` and is never handed a PyTorch job; a job whose queue no live worker
consumes fails as ``toolchain_missing`` after ``MODELDROP_TOOLCHAIN_GRACE`` (the
maintenance task asks the workers which queues they consume).

Settings come from ``MODELDROP_*`` variables, exactly as for the web process.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING

from celery import Celery
from celery.signals import worker_ready

from registry.config import Settings

if TYPE_CHECKING:  # registry.services imports this package: a type only, no import cycle
    from registry.services import Services


def make_celery(settings: Settings) -> Celery:
    return _celery_for(settings.broker_url, settings.refresh_interval, settings.job_stale_after,
                       settings.celery_visibility_timeout)


@lru_cache(maxsize=4)
def _celery_for(broker_url: str, refresh_interval: int, stale_after: int,
                visibility_timeout: int) -> Celery:
    """A killed worker's job runs elsewhere: a message is acknowledged only when its job ends
    (``acks_late``), so RabbitMQ hands it to another worker as soon as the dead worker's
    connection drops and Redis after ``visibility_timeout``; a prefork child lost mid-task
    rejects (requeues) its message. The redelivered message finds the job still ``running``
    with the dead worker's heartbeat: it waits (retries) until the heartbeat is older than
    ``MODELDROP_JOB_STALE_AFTER``, then takes the job over. The beat's maintenance requeues
    such jobs too, so a job is never lost with its message either."""
    app = Celery("modeldrop", broker=broker_url)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1, task_default_queue="modeldrop",
                    broker_connection_retry_on_startup=True,
                    broker_transport_options={"visibility_timeout": visibility_timeout},
                    beat_schedule={"modeldrop-maintenance": {
                        "task": "modeldrop.maintenance",
                        "schedule": float(min(refresh_interval, 60, max(1, stale_after // 2)))}})

    @app.task(name="modeldrop.convert", bind=True, max_retries=None)
    def convert(self, job_id: str) -> str:
        from datetime import timedelta

        services = _services()
        takeover = timedelta(seconds=stale_after)
        if services.store.claim_job(job_id, take_over_after=takeover) is None:
            if services.store.get_job(job_id).state == "running":
                # Running elsewhere, or its worker just died: look again once the heartbeat
                # could have gone stale (claim_job is atomic, so only one worker ever runs it).
                raise self.retry(countdown=max(1.0, stale_after / 2))
            return "skipped"  # finished, or requeued and taken by another message
        from registry.jobs.runner import run_job

        return run_job(services, job_id)

    @app.task(name="modeldrop.maintenance", bind=True)
    def maintenance(self) -> None:
        from registry.jobs.worker import maintenance as run_maintenance

        services = _services()
        # This worker is busy running this task, so it may not answer the broadcast asking
        # which queues live workers consume (a solo pool cannot): count its own queues.
        own = getattr(self.app.amqp.queues, "consume_from", None) or {}
        services.jobs.local_queues = set(own)
        run_maintenance(services)

    return app


@worker_ready.connect
def _sweep_at_start(**_) -> None:
    """A Celery worker starting sweeps the conversion folders killed jobs left (those of jobs
    no live worker runs) when it shares a local data dir."""
    from registry.jobs.runner import sweep_abandoned_work

    for folder in sweep_abandoned_work(_services()):
        logging.getLogger("modeldrop.worker").warning(
            "removed the abandoned conversion folder %s", folder.name)


@lru_cache(maxsize=1)
def _services() -> Services:
    from registry.jobs.sandbox import Sandbox
    from registry.services import build_services

    services = build_services(Settings.load(), start_workers=False)
    Sandbox(services.settings).announce()  # one line: is the converter sandbox full or degraded?
    return services


app = make_celery(Settings.load()) if Settings.load().broker_url else Celery("modeldrop")
