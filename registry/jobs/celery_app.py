"""Celery wiring for the scale mode: ``celery -A registry.jobs.celery_app worker -B``.

Settings come from ``MODELDROP_*`` variables, exactly as for the web process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from celery import Celery

from registry.config import Settings

if TYPE_CHECKING:  # registry.services imports this package: a type only, no import cycle
    from registry.services import Services


def make_celery(settings: Settings) -> Celery:
    return _celery_for(settings.broker_url, settings.refresh_interval)


@lru_cache(maxsize=4)
def _celery_for(broker_url: str, refresh_interval: int) -> Celery:
    app = Celery("modeldrop", broker=broker_url)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1, task_default_queue="modeldrop",
                    broker_connection_retry_on_startup=True,
                    beat_schedule={"modeldrop-maintenance": {
                        "task": "modeldrop.maintenance", "schedule": float(refresh_interval)}})

    @app.task(name="modeldrop.convert")
    def convert(job_id: str) -> str:
        services = _services()
        if services.store.claim_job(job_id) is None:
            return "skipped"  # already taken (redelivered message) or finished
        from registry.jobs.runner import run_job

        return run_job(services, job_id)

    @app.task(name="modeldrop.maintenance")
    def maintenance() -> None:
        from registry.jobs.worker import maintenance as run_maintenance

        run_maintenance(_services())

    return app


@lru_cache(maxsize=1)
def _services() -> Services:
    from registry.jobs.sandbox import Sandbox
    from registry.services import build_services

    services = build_services(Settings.load(), start_workers=False)
    Sandbox(services.settings).announce()  # one line: is the converter sandbox full or degraded?
    return services


app = make_celery(Settings.load()) if Settings.load().broker_url else Celery("modeldrop")
