"""The served-install record on the manifest path (registry/store/_served.py), on SQLite and
PostgreSQL: buffered per process and written by a background thread within the flush
interval, so another process (here: another engine, as another gunicorn worker would have)
counts the device a fraction of a second later; telemetry that raced the write still counts;
a clean exit writes the buffer and a SIGKILL loses at most what it held; the batched upsert
stores what the ORM stores; the per-process memo is bounded and forgetting never duplicates.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from registry.config import Settings
from registry.db import make_engine
from registry.services import build_services
from registry.store import _served
from registry.tables import ServedRow


@pytest.fixture
def store(tmp_path, db_url):
    services = build_services(Settings.load({"data_dir": tmp_path / "data", "database_url": db_url}))
    yield services.store
    services.store.flush_served()
    services.store.engine.dispose()


def _rows(engine) -> list[ServedRow]:
    with Session(engine) as s:
        return list(s.exec(select(ServedRow).order_by(ServedRow.id)).all())


def test_a_served_device_is_visible_to_another_process_within_the_flush_interval(store):
    before = datetime.now(UTC).replace(microsecond=0)
    store.record_served("digits", "production", 2, "tflite-fp32", "device-0001-abcd", 7)
    other = make_engine(store.engine.url.render_as_string(hide_password=False))  # another worker
    try:
        thread = store._served_buffer().thread
        thread.join(timeout=30)  # writes within 0.1 s, then exits with nothing left to write
        assert not thread.is_alive() and store._served_buffer().thread is None
        [row] = _rows(other)
        assert (row.model, row.channel, row.version, row.variant, row.install_id, row.counter) == \
            ("digits", "production", 2, "tflite-fp32", "device-0001-abcd", 7)
        # the same timestamp type as the ORM writes: aware, UTC, now
        assert row.first_served_at.tzinfo is not None and row.first_served_at >= before
        from registry.store import Store

        assert Store(other).served_pairs([("digits", "device-0001-abcd"), ("digits", "device-0002-abcd")]) == \
            {("digits", "device-0001-abcd")}
    finally:
        other.dispose()


def test_repeats_are_one_row_and_a_full_memo_forgets_the_oldest_without_duplicating(store, monkeypatch):
    monkeypatch.setattr(_served, "_MEMO_LIMIT", 3)
    for _ in range(2):
        for n in range(5):  # more ids than the memo holds: the oldest are forgotten and written again
            store.record_served("digits", "production", 1, "tflite-fp32", f"device-{n:04d}-abcd", 1)
        store.flush_served()
    memo, _lock = store._served_memo()
    assert len(memo) == 3
    assert sorted(r.install_id for r in _rows(store.engine)) == [f"device-{n:04d}-abcd" for n in range(5)]
    # another artifact of the same device is another row
    store.record_served("digits", "production", 2, "tflite-fp32", "device-0000-abcd", 2)
    store.flush_served()
    assert len(_rows(store.engine)) == 6


def test_only_the_served_rows_skip_waiting_for_the_disk(store):
    writer = store._served_writer()
    if store.dialect == "sqlite":
        # synchronous is per connection: NORMAL on the served rows' own, FULL (2) on every other
        with writer.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2
        assert writer.engine is not store.engine
    else:
        assert writer.engine is store.engine and writer.sql is None  # SET LOCAL, per transaction
        store.record_served("digits", "production", 1, "tflite-fp32", "device-0009-abcd", 1)
        with store.engine.connect() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"


_EXITING = """
import os, runpy, signal, sys, types
from registry.app import create_app
from registry.config import Settings
from registry.store import _served

_served._FLUSH_INTERVAL = 3600  # the thread would write within 0.1 s: only the exit may write here
data_dir, db_url, install_id, how = sys.argv[1:]
app = create_app(Settings.load({"data_dir": data_dir, "database_url": db_url}, environ={}))
app.extensions["modeldrop"].store.record_served("digits", "production", 1, "tflite-fp32", install_id, 1)
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if how == "worker_exit":  # gunicorn's hook, then an exit that runs no atexit handler
    runpy.run_path("deploy/gunicorn.conf.py")["worker_exit"](None, types.SimpleNamespace(wsgi=app))
    os._exit(0)
"""


@pytest.mark.parametrize("how, kept", [("exit", True), ("worker_exit", True), ("kill", False)])
def test_a_clean_exit_writes_the_buffer_and_a_sigkill_loses_what_it_held(store, tmp_path, how, kept):
    import subprocess
    import sys
    from pathlib import Path

    install_id = f"device-{how.replace('_', '-')}-abcd"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _EXITING, str(tmp_path / "data"),
                           store.engine.url.render_as_string(hide_password=False), install_id, how],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == (-9 if how == "kill" else 0), done.stderr
    ids = [r.install_id for r in _rows(store.engine)]
    assert ids == ([install_id] if kept else [])
