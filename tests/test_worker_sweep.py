"""`modeldrop worker` and a Celery worker remove, at their start, the conversion folders killed jobs left under
work/, but never the folder of a job a live worker runs (another worker on the same data dir:
its job heart-beats within MODELDROP_JOB_STALE_AFTER). The worker runs as a subprocess; the
Celery one on Redis with a queue of its own, so it never takes another test's jobs."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from registry.tables import JobRow, utcnow
from tests.makers import make_ready_version
from tests.procs import Proc, wait_for


def _folder(work, job_id: str):
    path = work / f"job-{job_id[:8]}-x1y2z3w4"  # as tempfile names them in registry.jobs.runner
    path.mkdir(parents=True)
    (path / "model.tflite").write_bytes(b"half a conversion")
    return path


@pytest.mark.parametrize("kind", ["modeldrop", "celery"])
def test_worker_start_sweeps_only_folders_no_live_worker_owns(services, tmp_path, kind):
    store = services.store
    version = make_ready_version(services, "digits")
    version_id = store.version_id("digits", version.version)
    live_id, dead_id, done_id = (store.create_job(version_id, max_attempts=1) for _ in range(3))
    store.claim_job(live_id)  # running, heart-beating now: another worker owns it
    store.claim_job(dead_id)
    with store.session() as s:  # its worker died long ago (and it has no attempt left)
        s.exec(update(JobRow).where(JobRow.id == dead_id)
               .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    store.claim_job(done_id)
    store.finish_job(done_id, "done", {})
    work = services.work_dir
    live, dead, done = _folder(work, live_id), _folder(work, dead_id), _folder(work, done_id)
    orphan = _folder(work, "0badc0de-0000-4000-8000-000000000000")  # no such job at all

    log = tmp_path / "worker.log"
    if kind == "modeldrop":
        argv = [sys.executable, "-m", "registry.cli", "worker", "--data-dir",
                str(services.settings.data_dir)]
        env = dict(os.environ)

        def swept() -> bool:  # the sweep runs before the first maintenance, which fails the
            return store.get_job(dead_id).state == "failed"  # dead job (no attempt left)
    else:
        argv = [str(Path(sys.executable).parent / "celery"), "-A", "registry.jobs.celery_app",
                "worker", "-Q", f"sweep-test-{os.getpid()}", "--concurrency", "1", "--pool",
                "solo", "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
        env = dict(os.environ, MODELDROP_JOB_BACKEND="celery",
                   MODELDROP_BROKER_URL="redis://127.0.0.1:6379/14",
                   MODELDROP_DATA_DIR=str(services.settings.data_dir))

        def swept() -> bool:  # celery logs "ready." after the worker_ready handlers ran
            return " ready." in log.read_text()
    with Proc(f"{kind} worker", argv, env, log, grace=30) as proc:
        wait_for(swept, 60, "the sweep at the worker's start", proc=proc)
    text = log.read_text()
    assert not dead.exists() and not done.exists() and not orphan.exists(), text
    assert live.exists() and (live / "model.tflite").read_bytes() == b"half a conversion", text
    for gone in (dead, done, orphan):
        assert f"removed the abandoned conversion folder {gone.name}" in text, text
    assert live.name not in text
    assert store.get_job(live_id).state == "running"
    if kind == "celery":  # no beat here, so no maintenance: the dead job stays as it was
        assert store.get_job(dead_id).state == "running"
