"""Which devices the server served: the evidence behind guardrails and reports.

Telemetry is public and its install ids are whatever a client writes, so a count of
``crash`` events proves nothing by itself. A manifest the server answered for an install id
(``served_installs``) or an experiment arm it assigned (``assignments``) does: guardrails
and reports count only those devices, and ingestion flags events from any other install id
(``telemetry_events.unserved``).

Recording is on the manifest path, so it is one ``INSERT ... ON CONFLICT DO NOTHING`` (a
statement built once per process) and a bounded per-process memo (LRU) of what was already
recorded: a device polling every few minutes costs one row, once.

The row is committed before the manifest is answered, so a device is counted as served
before any telemetry it sends can count; nothing is buffered, and a clean shutdown loses
nothing. What the commit does not wait for is the disk: on SQLite it runs on its own
connection with ``PRAGMA synchronous=NORMAL`` (WAL: durable across a crash of any process,
not across a power loss or kernel crash), on PostgreSQL with ``SET LOCAL
synchronous_commit = off`` (durable across a crash of any process, the database's
included; a crash of the database machine can lose the last fraction of a second). A lost
row costs only that: the device's telemetry counts as unserved until its next manifest
records it again. Profiled (docs/benchmarks.md), the fsync of this commit was most of a
manifest request under concurrent workers; every other write keeps the full durability.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, event
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from registry.store._base import StoreBase
from registry.tables import AssignmentRow, ExperimentRow, ModelRow, ServedRow, utcnow

__all__ = ["ServedStore"]

_MEMO_LIMIT = 100_000  # recorded keys remembered per process (least recently used dropped), ~15 MB
_KEY = ["model", "channel", "version", "variant", "install_id"]


class ServedStore(StoreBase):
    def record_served(self, model: str, channel: str, version: int, variant: str,
                      install_id: str, counter: int) -> None:
        """Remember that this install id was served this artifact (idempotent); committed
        when this returns (module docstring: what the commit does not wait for)."""
        # 16 bytes of blake2b, not the tuple of strings: ~150 B a memo entry instead of ~450
        key = hashlib.blake2b(f"{model}\0{channel}\0{version}\0{variant}\0{install_id}".encode(),
                              digest_size=16).digest()
        memo, lock = self._served_memo()
        with lock:
            if key in memo:
                memo.move_to_end(key)
                return
        values = {"model": model, "channel": channel, "version": version, "variant": variant,
                  "install_id": install_id, "counter": counter, "first_served_at": utcnow()}
        writer = self._served_writer()
        if writer.sql is None:
            with writer.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                conn.execute(writer.statement, values)
        else:
            writer.execute_raw(values)
        with lock:
            memo[key] = None
            while len(memo) > _MEMO_LIMIT:
                memo.popitem(last=False)

    def _served_memo(self) -> tuple[OrderedDict, threading.Lock]:
        found = self.__dict__.get("_served_memo_and_lock")
        if found is None:
            found = self.__dict__.setdefault("_served_memo_and_lock",
                                             (OrderedDict(), threading.Lock()))
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




class _ServedWriter:
    """The prepared upsert of served rows. On SQLite it is compiled once and run on the
    driver's own cursor (SQLAlchemy's per-statement machinery was half the cost of the
    write), with the columns' own bind processors so the stored values are the ones the
    ORM writes; on PostgreSQL it goes through SQLAlchemy."""

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

    def execute_raw(self, values: dict[str, Any]) -> None:
        params = []
        for name in self._order:
            process = self._processors[name]
            params.append(process(values[name]) if process else values[name])
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(self.sql, params)
            finally:
                cursor.close()
            raw.commit()
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
