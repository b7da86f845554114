"""Supervision of the in-process conversion workers that ``modeldrop serve`` owns.

A worker that dies (``kill -9``, out of memory, a crash in native code) must not leave its job
``running``, its children alive or the queue without a consumer. The supervisor is a thread in
the serving process that checks its workers twice a second; for each one that is gone it

1. kills the worker's process group (each worker makes itself a group leader at start, so
   everything it started that did not leave the group goes with it; the sandboxed converter
   runs in a session of its own and dies with its parent through bubblewrap's
   ``--die-with-parent``),
2. removes that job's conversion folder and puts the job back in the queue (the worker
   writes the id of the job it claimed into a shared slot before it runs it; a job claimed in the instant before
   that write is still requeued by the heartbeat check, ``MODELDROP_JOB_STALE_AFTER``), and
3. starts a new worker in its place, at once the first time and then with a growing delay
   (1, 2, 4 ... 30 s) while it keeps dying within a minute of its start, so a worker that
   cannot start does not spin.

``status()`` is what ``/healthz`` reports: how many workers are alive (an answer of 503 when
none is), how many were expected and how many restarts happened.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.config import Settings

__all__ = ["WorkerSupervisor", "WorkerStatus"]

log = logging.getLogger("modeldrop.supervisor")

CHECK_SECONDS = 0.5
JOB_ID_BYTES = 64  # room for a job id (uuid4: 36 characters)
STABLE_AFTER = 60.0  # seconds; a worker that lived this long resets the restart delay
MAX_DELAY = 30.0  # seconds between restarts of a worker that keeps dying


@dataclass
class WorkerStatus:
    alive: int
    expected: int
    restarts: int


@dataclass
class _Slot:
    index: int
    current_job: Any  # multiprocessing Array('c'): the id of the job the worker runs, or empty
    process: Any = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None  # monotonic time of the next start after a death
    handled: set[int] = field(default_factory=set)


class WorkerSupervisor:
    """Starts ``processes`` workers and keeps that many alive until ``stop``."""

    def __init__(self, settings: Settings, processes: int, requeue: Any = None) -> None:
        """``requeue(job_id)`` puts a dead worker's job back in the queue (the default opens
        the store of ``settings``)."""
        self.settings = settings
        self._ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
        self._slots = [_Slot(i, self._ctx.Array("c", JOB_ID_BYTES, lock=True))
                       for i in range(processes)]
        self._requeue = requeue
        self._restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._watch, name="modeldrop-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, then end every worker and its process group (SIGTERM, then SIGKILL)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * CHECK_SECONDS + 1)
        procs = [s.process for s in self._slots if s.process is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            _kill_group(p.pid)  # whatever the worker left in its group
            if p.is_alive():
                p.kill()
                p.join(timeout=5)

    def status(self) -> WorkerStatus:
        with self._lock:
            alive = sum(1 for s in self._slots if s.process is not None and s.process.is_alive())
            return WorkerStatus(alive=alive, expected=len(self._slots), restarts=self._restarts)

    def pids(self) -> list[int]:
        """Pids of the live workers (tests and ``modeldrop doctor``)."""
        with self._lock:
            return [s.process.pid for s in self._slots if s.process is not None and s.process.is_alive()]

    # -- the watch loop ----------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        from registry.jobs.worker import worker_main

        with slot.current_job.get_lock():
            slot.current_job.value = b""
        p = self._ctx.Process(target=worker_main, args=(self.settings,),
                              kwargs={"owner_pid": os.getpid(), "current_job": slot.current_job},
                              name=f"modeldrop-worker-{slot.index}")
        p.start()
        with self._lock:
            slot.process, slot.started_at, slot.restart_at = p, time.monotonic(), None

    def _watch(self) -> None:
        while not self._stopping.wait(CHECK_SECONDS):
            for slot in self._slots:
                try:
                    self._check(slot)
                except Exception:
                    log.exception("supervising worker %d failed", slot.index)

    def _check(self, slot: _Slot) -> None:
        now = time.monotonic()
        p = slot.process
        if p is not None and not p.is_alive():
            if p.pid not in slot.handled:
                slot.handled.add(p.pid)
                self._bury(slot, p, now)
        if slot.restart_at is not None and now >= slot.restart_at and not self._stopping.is_set():
            self._spawn(slot)
            with self._lock:
                self._restarts += 1
            log.warning("worker %d restarted (pid %d)", slot.index, slot.process.pid)

    def _bury(self, slot: _Slot, p: Any, now: float) -> None:
        p.join(timeout=0)
        _kill_group(p.pid)
        with slot.current_job.get_lock():
            job_id = slot.current_job.value.decode("ascii", "replace")
            slot.current_job.value = b""
        log.warning("worker %d (pid %d) died (exit %s)%s", slot.index, p.pid, p.exitcode,
                    f" while running job {job_id}" if job_id else "")
        if job_id:
            # Its group is dead, so nothing uses the job's folder any more; the next attempt
            # gets a new one (before the requeue: no worker can have claimed it yet).
            for folder in (Path(self.settings.data_dir) / "work").glob(f"job-{job_id[:8]}-*"):
                shutil.rmtree(folder, ignore_errors=True)
                log.warning("removed the dead worker's conversion folder %s", folder.name)
            try:
                self._requeue_job(job_id)
            except Exception:
                log.exception("could not requeue job %s", job_id)
        slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started_at < STABLE_AFTER else 0
        delay = 0.0 if slot.quick_deaths <= 1 else min(MAX_DELAY, 2.0 ** (slot.quick_deaths - 2))
        with self._lock:
            slot.restart_at = now + delay

    def _requeue_job(self, job_id: str) -> None:
        if self._requeue is not None:
            self._requeue(job_id)
            return
        from registry import db
        from registry.store import Store

        engine = db.make_engine(self.settings.sqlalchemy_url)
        try:
            state = Store(engine, lock_dir=self.settings.data_dir).requeue_job(
                job_id, "requeued: its worker died")
        finally:
            engine.dispose()
        log.warning("job %s of the dead worker: %s", job_id, state)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (a worker calls ``setsid`` at start)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
