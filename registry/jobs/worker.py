"""The in-process worker loop: claim queued jobs, run them, keep the repository fresh."""

from __future__ import annotations

import logging
import os
import signal
import time
from datetime import timedelta

from registry.config import Settings

log = logging.getLogger("modeldrop.worker")

POLL_SECONDS = 0.5
STALE_AFTER = timedelta(seconds=120)  # the default of MODELDROP_JOB_STALE_AFTER


def stale_after(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.job_stale_after)


def worker_main(settings: Settings, *, once: bool = False, owner_pid: int | None = None,
                current_job=None) -> None:
    """Entry point of a worker process (also ``modeldrop worker``).

    A worker started by ``modeldrop serve`` gets the server's pid as ``owner_pid`` and stops
    when that process is gone (even if it died before this worker finished starting), so a
    killed server never leaves orphans polling the database. Its supervisor
    (``registry.jobs.supervisor``) also passes ``current_job``, a shared slot where the worker
    writes the id of the job it runs, and the worker leads a process group of its own, so the
    supervisor can requeue the job and kill everything the worker started if it dies.
    """
    if current_job is not None:
        os.setsid()
    from registry.jobs.runner import run_job
    from registry.services import build_services

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    services = build_services(settings, start_workers=False)
    from registry.jobs.sandbox import Sandbox

    Sandbox(settings).announce()
    if owner_pid is None:  # `modeldrop worker`: `modeldrop serve` sweeps before its workers start
        from registry.jobs.runner import sweep_abandoned_work

        for folder in sweep_abandoned_work(services):
            log.warning("removed the abandoned conversion folder %s", folder.name)
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    last_maintenance = 0.0
    while not stopping:
        if owner_pid is not None and os.getppid() != owner_pid:
            log.warning("the process that started this worker is gone; stopping")
            return
        if time.monotonic() - last_maintenance > min(settings.refresh_interval, 60):
            maintenance(services)
            last_maintenance = time.monotonic()
        job = services.store.claim_job()
        if job is None:
            if once:
                return
            time.sleep(POLL_SECONDS)
            continue
        if current_job is not None:
            with current_job.get_lock():
                current_job.value = job.id.encode("ascii")
        run_job(services, job.id)
        if current_job is not None:
            with current_job.get_lock():
                current_job.value = b""
        if once:
            return


def maintenance(services) -> None:
    """Requeue jobs of crashed workers, re-sign expiring TUF metadata, sweep abandoned
    uploads from the staging directory, check guardrails."""
    try:
        for job_id in services.store.requeue_stale_jobs(stale_after(services.settings)):
            log.warning("job %s requeued: its worker stopped heart-beating", job_id)
            services.jobs.enqueue(job_id)
        for job_id in services.jobs.fail_unserved(services.store):
            log.warning("job %s failed: no worker consumes its toolchain's queue", job_id)
        services.signing.refresh()
        from registry.delivery.rulesets import refresh_rulesets  # stale or expiring rulesets

        refresh_rulesets(services)
        for path in services.blobs.sweep_staging(services.settings.staging_max_age):
            log.warning("removed abandoned upload %s", path.name)
    except Exception:
        log.exception("maintenance failed")
    try:
        from registry.delivery.guardrail_check import check_guardrails

        check_guardrails(services)
    except Exception:
        log.exception("guardrail check failed")
