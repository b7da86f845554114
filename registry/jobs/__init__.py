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

    def workers(self) -> dict | None:
        """Worker liveness for ``/healthz``: ``{"alive": n, ...}``, or None when this process
        cannot know (workers it did not start and cannot ask)."""
        return None

    def needs_workers(self) -> bool:
        """Whether ``/healthz`` answers 503 when no worker is alive (``workers()`` says
        ``alive: 0``): where this process owns its workers (``modeldrop serve``) or can ask
        them (Celery), unless ``MODELDROP_HEALTHZ_REQUIRES_WORKERS=false``."""
        return False


class InProcessQueue(JobQueue):
    """Worker processes (spawned, never forked: TensorFlow does not survive fork) that poll
    the database, supervised by ``registry.jobs.supervisor``. Enqueueing is just the committed
    ``queued`` row, so it needs no broker."""

    def __init__(self, settings: Settings, processes: int = 1) -> None:
        self.settings = settings
        self.processes = processes
        self._supervisor = None

    def enqueue(self, job_id: str) -> None:
        return None  # the queued row is the message

    def start(self) -> None:
        import atexit

        from registry.jobs.supervisor import WorkerSupervisor

        if self._supervisor is not None or self.processes < 1:
            return
        # Not daemonic: a worker starts the sandboxed converter, and daemonic processes may not
        # have children. ``stop`` (also at exit) ends them and their process groups.
        self._supervisor = WorkerSupervisor(self.settings, self.processes)
        self._supervisor.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.stop()
            self._supervisor = None

    def workers(self) -> dict | None:
        if self._supervisor is None:
            return None
        status = self._supervisor.status()
        return {"alive": status.alive, "expected": status.expected, "restarts": status.restarts,
                "pids": self._supervisor.pids()}

    def needs_workers(self) -> bool:
        return self._supervisor is not None and self.settings.healthz_requires_workers


class CeleryQueue(JobQueue):
    PING_TIMEOUT = 0.5  # seconds a broadcast ping waits for replies
    PING_CACHE = 10.0  # seconds an answer is reused (``/healthz`` may be polled often)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pinged: tuple[float, dict] | None = None

    def enqueue(self, job_id: str) -> None:
        from registry.jobs.celery_app import make_celery

        make_celery(self.settings).send_task("modeldrop.convert", args=[job_id])

    def workers(self) -> dict | None:
        """Workers that answer a broadcast ping on the broker (cached for ``PING_CACHE``)."""
        import time

        from registry.jobs.celery_app import make_celery

        now = time.monotonic()
        if self._pinged is not None and now - self._pinged[0] < self.PING_CACHE:
            return self._pinged[1]
        try:
            replies = make_celery(self.settings).control.ping(timeout=self.PING_TIMEOUT) or []
            answer = {"alive": len(replies), "names": sorted(n for r in replies for n in r)}
        except Exception as e:  # noqa: BLE001 - a broker that does not answer is reported, not raised
            answer = {"alive": None, "error": type(e).__name__}
        self._pinged = (now, answer)
        return answer

    def needs_workers(self) -> bool:
        return self.settings.healthz_requires_workers


def job_queue_from_settings(settings: Settings) -> JobQueue:
    if settings.job_backend == "celery":
        if not settings.broker_url:
            raise ValueError("MODELDROP_JOB_BACKEND=celery needs MODELDROP_BROKER_URL")
        return CeleryQueue(settings)
    if settings.job_backend == "inprocess":
        return InProcessQueue(settings, settings.worker_processes)
    raise ValueError(f"unknown job backend {settings.job_backend!r} (inprocess | celery)")
