"""Job queue seam: the database holds job state; a backend only decides who runs a job.

- ``InProcessQueue`` (embedded default, single machine): worker processes started by
  ``modeldrop serve`` poll the jobs table.
- ``CeleryQueue`` (scale): ``enqueue`` sends the job id to a Celery broker (Redis or RabbitMQ);
  ``celery -A registry.jobs.celery_app worker`` runs it with the same ``run_job``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from registry.config import Settings

__all__ = ["JobQueue", "InProcessQueue", "CeleryQueue", "job_queue_from_settings"]


class JobQueue(ABC):
    """Public behaviour: ``enqueue``; backends may also start/stop their workers."""

    @abstractmethod
    def enqueue(self, job_id: str) -> None: ...

    def start(self) -> None:  # noqa: B027 - optional hook: a backend without workers keeps the no-op
        """Start workers owned by this process (no-op for external workers)."""

    def stop(self) -> None:  # noqa: B027 - optional hook, like start
        """Stop workers owned by this process."""


class InProcessQueue(JobQueue):
    """Worker processes (spawned, never forked: TensorFlow does not survive fork) that poll
    the database. Enqueueing is just the committed ``queued`` row, so it needs no broker."""

    def __init__(self, settings: Settings, processes: int = 1) -> None:
        self.settings = settings
        self.processes = processes
        self._workers: list = []

    def enqueue(self, job_id: str) -> None:
        return None  # the queued row is the message

    def start(self) -> None:
        import atexit
        import multiprocessing
        import os

        from registry.jobs.worker import worker_main

        ctx = multiprocessing.get_context("spawn")
        for i in range(self.processes):
            # Not daemonic: a worker starts its own pool to convert variants in parallel, and
            # daemonic processes may not have children. ``stop`` (also at exit) ends them.
            p = ctx.Process(target=worker_main, args=(self.settings,),
                            kwargs={"owner_pid": os.getpid()}, name=f"modeldrop-worker-{i}")
            p.start()
            self._workers.append(p)
        atexit.register(self.stop)

    def stop(self) -> None:
        for p in self._workers:
            p.terminate()
        for p in self._workers:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        self._workers.clear()


class CeleryQueue(JobQueue):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def enqueue(self, job_id: str) -> None:
        from registry.jobs.celery_app import make_celery

        make_celery(self.settings).send_task("modeldrop.convert", args=[job_id])


def job_queue_from_settings(settings: Settings) -> JobQueue:
    if settings.job_backend == "celery":
        if not settings.broker_url:
            raise ValueError("MODELDROP_JOB_BACKEND=celery needs MODELDROP_BROKER_URL")
        return CeleryQueue(settings)
    if settings.job_backend == "inprocess":
        return InProcessQueue(settings, settings.worker_processes)
    raise ValueError(f"unknown job backend {settings.job_backend!r} (inprocess | celery)")
