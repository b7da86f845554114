"""Which devices the server served: the evidence behind guardrails and reports.

Telemetry is public and its install ids are whatever a client writes, so a count of
``crash`` events proves nothing by itself. A manifest the server answered for an install id
(``served_installs``) or an experiment arm it assigned (``assignments``) does: guardrails
and reports count only those devices, and ingestion flags events from any other install id
(``telemetry_events.unserved``).

Recording is on the manifest path, so it costs a digest, a memo lookup and, for a device
not seen before, an entry in a per-process buffer: a bounded memo (LRU) of what was already
recorded means a device polling every few minutes costs one row, once. A background thread
writes the buffer every ``_FLUSH_INTERVAL`` (0.1 s), or as soon as it holds
``_FLUSH_ROWS``, in one transaction (a multi-row ``INSERT ... ON CONFLICT DO NOTHING``);
a commit per new device, under SQLite's single write lock shared by every gunicorn worker,
was most of a manifest request under load (docs/benchmarks.md). The thread exits when the
buffer has stayed empty for ``_IDLE_ROUNDS`` intervals and starts again with the next row.

A device whose telemetry arrives before its served row is written still counts: after the
rows are committed, the flush clears ``unserved`` on the events of the same (model, install
id), and ingestion, after committing events it flagged, looks the pairs up again and clears
the flag of those that are served by then (``TelemetryStore.recount_served``). Each side
acts after its own commit and reads after it, so whichever commits second sees the
other's rows (PostgreSQL's read committed included). This is no weaker than committing the
row before answering: manifests are public, so anyone can have any install id served by
asking for its manifest first; what the evidence proves is unchanged — the server did
hand that install id that artifact — only the order of the two requests stops mattering.
Events received before the release's creation never count anyway (``release_units``).

What is not durable: rows still in a buffer when a web process dies without a clean exit
(SIGKILL, OOM kill, power loss) — at most one flush interval of new devices, ~0.1 s. A clean
exit flushes (``atexit``, and gunicorn's ``worker_exit`` hook in deploy/gunicorn.conf.py).
A lost row costs only that device's telemetry counting as unserved until its next manifest
poll in a new process records it again (docs/reliability.md). Reads of served rows in the
same process (``served_pairs``, ``release_units``) flush this process's buffer first, so a
single process never sees its own rows late. The commit itself does not wait for the disk:
on SQLite it runs on its own connection with ``PRAGMA synchronous=NORMAL`` (WAL: durable
across a crash of any process, not across a power loss), on PostgreSQL with ``SET LOCAL
synchronous_commit = off``; every other write keeps the full durability. When the database
is unreachable the rows stay buffered (at most ``_PENDING_LIMIT``; beyond that they are
dropped and forgotten by the memo, so the next poll records them) and are retried.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, event, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from registry.store._base import StoreBase
from registry.tables import AssignmentRow, ExperimentRow, ModelRow, ServedRow, utcnow

__all__ = ["ServedStore"]

log = logging.getLogger(__name__)

_MEMO_LIMIT = 100_000  # recorded keys remembered per process (least recently used dropped), ~15 MB
_FLUSH_INTERVAL = 0.1  # seconds a new served row may wait in the buffer
_FLUSH_ROWS = 500  # a buffer this full is written at once
_IDLE_ROUNDS = 20  # empty flush intervals before the thread exits (not one per burst)
_PENDING_LIMIT = 50_000  # rows kept for a retry while the database is unreachable
_KEY = ["model", "channel", "version", "variant", "install_id"]
# the events a flush makes count; the partial index ix_telemetry_unserved keeps it cheap
_CLEAR_UNSERVED = ("UPDATE telemetry_events SET unserved = false "
                   "WHERE unserved AND install_id = :install_id AND model = :model")


class ServedStore(StoreBase):
    def record_served(self, model: str, channel: str, version: int, variant: str,
                      install_id: str, counter: int) -> None:
        """Remember that this install id was served this artifact (idempotent); written
        within ``_FLUSH_INTERVAL`` (module docstring: what a crash can lose)."""
        # 16 bytes of blake2b, not the tuple of strings: ~150 B a memo entry instead of ~450
        key = hashlib.blake2b(f"{model}\0{channel}\0{version}\0{variant}\0{install_id}".encode(),
                              digest_size=16).digest()
        self._served_buffer().add(key, {
            "model": model, "channel": channel, "version": version, "variant": variant,
            "install_id": install_id, "counter": counter, "first_served_at": utcnow()})

    def flush_served(self) -> int:
        """Write this process's buffered served rows now; returns how many were written."""
        found = self.__dict__.get("_served_buffer_cache")
        return found.flush() if found is not None else 0

    def _served_memo(self) -> tuple[OrderedDict, threading.Lock]:
        buffer = self._served_buffer()
        return buffer.memo, buffer.lock

    def _served_buffer(self) -> _ServedBuffer:
        found = self.__dict__.get("_served_buffer_cache")
        if found is None or found.pid != os.getpid():  # a fork starts with an empty buffer
            found = self.__dict__["_served_buffer_cache"] = _ServedBuffer(self._served_writer)
        return found

    def _served_writer(self) -> _ServedWriter:
        found = self.__dict__.get("_served_writer_cache")
        if found is None:
            found = self.__dict__.setdefault("_served_writer_cache", _ServedWriter(self.engine))
        return found

    def served_pairs(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The (model, install id) pairs the server ever served a manifest or arm of."""
        wanted = set(pairs)
        if not wanted:
            return set()
        self.flush_served()  # this process's own recent rows
        install_ids = sorted({i for _, i in wanted})
        found: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(install_ids), 500):
                chunk = install_ids[start:start + 500]
                found.update(conn.execute(
                    sa_select(ServedRow.model, ServedRow.install_id).distinct()
                    .where(ServedRow.install_id.in_(chunk))).all())
                found.update(conn.execute(
                    sa_select(ModelRow.name, AssignmentRow.install_id).distinct()
                    .join(ExperimentRow, ExperimentRow.id == AssignmentRow.experiment_id)
                    .join(ModelRow, ModelRow.id == ExperimentRow.model_id)
                    .where(AssignmentRow.install_id.in_(chunk))).all())
        return {(m, i) for m, i in found} & wanted


class _ServedBuffer:
    """This process's served rows not yet written, the memo of those already recorded, and
    the thread that writes them (module docstring)."""

    def __init__(self, writer: Any) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()  # memo, pending, thread
        self.flush_lock = threading.Lock()  # one flush at a time
        self.memo: OrderedDict[bytes, None] = OrderedDict()
        self.pending: dict[bytes, dict[str, Any]] = {}
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self._writer = writer  # a callable: the store's _ServedWriter, built on first use
        ref = weakref.ref(self)
        atexit.register(_flush_at_exit, ref)

    def add(self, key: bytes, values: dict[str, Any]) -> None:
        with self.lock:
            if key in self.memo:
                self.memo.move_to_end(key)
                return
            self.memo[key] = None
            while len(self.memo) > _MEMO_LIMIT:
                self.memo.popitem(last=False)
            self.pending[key] = values
            full = len(self.pending) >= _FLUSH_ROWS
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="served-rows", daemon=True)
                self.thread.start()
        if full:
            self.wake.set()

    def _run(self) -> None:
        idle = 0
        while True:
            self.wake.wait(_FLUSH_INTERVAL)
            self.wake.clear()
            written = self._flush()
            with self.lock:
                idle = idle + 1 if not written and not self.pending else 0
                if written is None or idle >= _IDLE_ROUNDS:
                    # idle for a while, or the database is unreachable: the next new row
                    # starts another thread, which retries what is still pending
                    self.thread = None
                    return

    def flush(self) -> int:
        return self._flush() or 0

    def _flush(self) -> int | None:
        """Write what is pending; the number of rows, or None when the write failed."""
        with self.flush_lock:
            with self.lock:
                rows, self.pending = self.pending, {}
            if not rows:
                return 0
            try:
                self._writer().write(list(rows.values()))
            except Exception as e:  # noqa: BLE001 - the database is down: keep them for a retry
                log.warning("could not write %d served-install rows (kept for a retry): %s",
                            len(rows), e)
                with self.lock:
                    for key, values in rows.items():
                        if len(self.pending) < _PENDING_LIMIT:
                            self.pending.setdefault(key, values)
                        else:  # dropped: forget it, so the device's next poll records it
                            self.memo.pop(key, None)
                return None
            return len(rows)


def _flush_at_exit(ref: weakref.ref) -> None:
    buffer = ref()
    if buffer is not None and buffer.pid == os.getpid():
        try:
            buffer.flush()
        except Exception:  # exiting: say so, do not mask the exit
            log.exception("could not write the served-install rows at exit")


class _ServedWriter:
    """The prepared upsert of served rows and the update that makes their events count. On
    SQLite it is compiled once and run on the driver's own cursor (SQLAlchemy's per-statement
    machinery was half the cost of the write), with the columns' own bind processors so the
    stored values are the ones the ORM writes; on PostgreSQL it goes through SQLAlchemy."""

    def __init__(self, engine: Engine) -> None:
        self.sql: str | None = None
        if engine.dialect.name == "postgresql":
            self.engine = engine
            self.statement = postgresql.insert(ServedRow).on_conflict_do_nothing(
                index_elements=_KEY)
            return
        if engine.url.database not in (None, "", ":memory:"):
            engine = _relaxed_sqlite_engine(engine)
        self.engine = engine
        columns = ServedRow.__table__.c
        self.statement = sqlite.insert(ServedRow).values(
            {name: bindparam(name) for name in (*_KEY, "counter", "first_served_at")}
        ).on_conflict_do_nothing(index_elements=_KEY)
        compiled = self.statement.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self._order = list(compiled.positiontup or ())
        self._processors = {name: columns[name].type.dialect_impl(engine.dialect).bind_processor(
                                  engine.dialect)
                            for name in self._order}
        self._clear_sql = _CLEAR_UNSERVED.replace(":install_id", "?").replace(":model", "?")

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (one transaction), then clear ``unserved`` on their events (a
        second one, after the first is committed: module docstring)."""
        pairs = sorted({(r["install_id"], r["model"]) for r in rows})
        if self.sql is None:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                conn.execute(self.statement, rows)
            with self.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                conn.execute(text(_CLEAR_UNSERVED),
                             [{"install_id": i, "model": m} for i, m in pairs])
            return
        params = []
        for values in rows:
            row = []
            for name in self._order:
                process = self._processors[name]
                row.append(process(values[name]) if process else values[name])
            params.append(row)
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.executemany(self.sql, params)
                raw.commit()
                cursor.executemany(self._clear_sql, pairs)
                raw.commit()
            finally:
                cursor.close()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()  # back to the pool


def _relaxed_sqlite_engine(engine: Engine) -> Engine:
    """A second engine on the same SQLite file whose connections commit without waiting for
    the disk (``synchronous=NORMAL``, a per-connection setting): only served rows use it."""
    from registry.db import make_engine

    relaxed = make_engine(engine.url.render_as_string(hide_password=False))

    @event.listens_for(relaxed, "connect")
    def _normal_sync(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return relaxed
