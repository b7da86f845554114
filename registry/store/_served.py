"""Which devices the server served: the evidence behind guardrails and reports.

Telemetry is public and its install ids are whatever a client writes, so a count of
``crash`` events proves nothing by itself. A manifest the server answered for an install id
(``served_installs``) or an experiment arm it assigned (``assignments``) does: guardrails
and reports count only those devices, and ingestion flags events from any other install id
(``telemetry_events.unserved``).

Recording is on the manifest path, so it is one ``INSERT ... ON CONFLICT DO NOTHING`` and a
per-process memo of what was already recorded: a device polling every few minutes costs
one row, once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite

from registry.store._base import StoreBase
from registry.tables import AssignmentRow, ExperimentRow, ModelRow, ServedRow

__all__ = ["ServedStore"]

_MEMO_LIMIT = 100_000  # recorded keys remembered per process; a full memo is cleared


class ServedStore(StoreBase):
    def record_served(self, model: str, channel: str, version: int, variant: str,
                      install_id: str, counter: int) -> None:
        """Remember that this install id was served this artifact (idempotent)."""
        key = (model, channel, version, variant, install_id)
        memo = self.__dict__.setdefault("_served_memo", set())
        if key in memo:
            return
        values = {"model": model, "channel": channel, "version": version, "variant": variant,
                  "install_id": install_id, "counter": counter}
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        stmt = dialect.insert(ServedRow).values(**values).on_conflict_do_nothing(
            index_elements=["model", "channel", "version", "variant", "install_id"])
        with self.engine.begin() as conn:
            conn.execute(stmt)
        lock = self.__dict__.setdefault("_served_lock", threading.Lock())
        with lock:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            memo.add(key)

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


