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

    def fail_unserved(self, store) -> list[str]:
        """Fail queued jobs that no worker can ever take (their toolchain's queue has no
        consumer); returns their ids. Only a broker backend can tell: an in-process worker
        runs every job and fails one whose toolchain is not installed itself."""
        return []

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

    INSPECT_TIMEOUT = 2.0  # seconds ``fail_unserved`` waits for workers to list their queues

    def __init__(self, settings: Settings, route=None) -> None:
        self.settings = settings
        self._pinged: tuple[float, dict] | None = None
        self._route = route  # job id -> (kind, source format); the store's job_route
        self.local_queues: set[str] = set()  # queues of the worker this process is, if it is one

    def queue_for(self, job_id: str) -> str:
        from registry.convert.catalog import GENERAL_QUEUE, toolchain_queue

        if self._route is None:
            return GENERAL_QUEUE
        return toolchain_queue(*self._route(job_id))

    def enqueue(self, job_id: str) -> None:
        from registry.jobs.celery_app import make_celery

        # Routed per toolchain (convert-tf, convert-torch): a worker image without PyTorch
        # consumes only convert-tf and is never handed a job it cannot run.
        make_celery(self.settings).send_task("modeldrop.convert", args=[job_id], queue=self.queue_for(job_id))

    def consumed_queues(self) -> set[str] | None:
        """Queue names that live workers consume (``celery inspect active_queues``); None
        when the broker cannot be asked. No worker answering is the empty set."""
        from registry.jobs.celery_app import make_celery

        try:
            replies = make_celery(self.settings).control.inspect(timeout=self.INSPECT_TIMEOUT).active_queues()
        except Exception:  # noqa: BLE001 - a broker that does not answer decides nothing
            return None
        return {q.get("name") for queues in (replies or {}).values() for q in queues or []}

    def fail_unserved(self, store) -> list[str]:
        """Conversion jobs queued longer than MODELDROP_TOOLCHAIN_GRACE whose queue no live
        worker consumes fail as ``toolchain_missing`` instead of waiting forever."""
        from datetime import timedelta

        from registry.convert.catalog import TOOLCHAIN_NAMES, toolchain_queue

        waiting = [(job_id, toolchain_queue(kind, fmt), fmt)
                   for job_id, kind, fmt in store.queued_jobs(timedelta(seconds=self.settings.toolchain_grace))
                   if kind == "convert"]
        if not waiting:
            return []
        served = self.consumed_queues()
        if served is None:
            return []
        served |= self.local_queues
        failed = []
        for job_id, queue, fmt in waiting:
            if queue in served:
                continue
            error = (f"toolchain_missing: no live worker consumes the Celery queue {queue!r}, which runs "
                     f"{fmt} uploads ({TOOLCHAIN_NAMES.get(queue, queue)}), for "
                     f"{self.settings.toolchain_grace} s (MODELDROP_TOOLCHAIN_GRACE); start a worker with "
                     f"-Q {queue} (docs/deployment.md) and retry the version")
            if store.fail_queued_job(job_id, error):
                failed.append(job_id)
        return failed

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


def job_queue_from_settings(settings: Settings, route=None) -> JobQueue:
    """``route`` (job id -> (kind, source format)) lets the Celery backend pick a job's queue."""
    if settings.job_backend == "celery":
        if not settings.broker_url:
            raise ValueError("MODELDROP_JOB_BACKEND=celery needs MODELDROP_BROKER_URL")
        return CeleryQueue(settings, route)
    if settings.job_backend == "inprocess":
        return InProcessQueue(settings, settings.worker_processes)
    raise ValueError(f"unknown job backend {settings.job_backend!r} (inprocess | celery)")
