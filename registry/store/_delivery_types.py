"""Shapes and small helpers shared by the delivery store parts.

The API shapes live in ``registry.schemas`` and the errors in ``registry.errors``. Table rows
never leave the store.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, select

from registry.schemas import ReleaseOut
from registry.store._auth import _audit
from registry.tables import ModelRow, ReleaseRow, VersionRow

__all__ = [
    "ACTIVE_EXPERIMENT",
    "ChannelState",
    "ServingArm",
    "ServingExperiment",
    "ServingRelease",
]

ACTIVE_EXPERIMENT = ("running", "paused")


# -- what the manifest resolver reads (one query set per request) --------------------------

@dataclass(frozen=True)
class ServingRelease:
    counter: int
    version: int
    version_id: int
    variant: str | None
    rollout_bp: int
    rollout_seed: str
    targeting: dict[str, Any]
    paused: bool
    min_app_version: str | None


@dataclass(frozen=True)
class ServingArm:
    name: str
    version: int
    version_id: int
    variant: str | None
    weight: int
    min_app_version: str | None


@dataclass(frozen=True)
class ServingExperiment:
    id: int
    name: str
    seed: str
    coverage_bp: int
    status: str
    targeting: dict[str, Any]
    arms: tuple[ServingArm, ...]


@dataclass(frozen=True)
class ChannelState:
    model: str
    channel: str
    counter: int  # the newest release counter; 0 when the channel has no release
    releases: tuple[ServingRelease, ...] = field(default_factory=tuple)  # newest first
    experiment: ServingExperiment | None = None


def _invalidates_cache(method):
    """Mark a write: after its transaction ends, cached manifest reads of this process reload."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._delivery_changed()

    return wrapper


def insert_release(s: Session, model_row: ModelRow, channel: str,
                   version_row: VersionRow, *, variant: str | None, rollout_bp: int,
                    rollout_seed: str, targeting: dict[str, Any], guardrails: list[Any],
                    kind: str, reason: str, actor: str,
                    details: dict[str, Any] | None) -> ReleaseRow:
    # Serialise release creation per model so that max + 1 does not race: a no-op UPDATE of
    # the model row takes PostgreSQL's row lock and, on SQLite, the database write lock
    # (pysqlite starts the transaction only at the first write, so a SELECT ... FOR UPDATE
    # there locks nothing and two promotes could read the same max). The unique constraint
    # stays the backstop.
    s.exec(update(ModelRow).where(ModelRow.id == model_row.id).values(id=ModelRow.id))
    current = s.exec(select(func.max(ReleaseRow.counter)).where(
        ReleaseRow.model_id == model_row.id, ReleaseRow.channel == channel)).one()
    row = ReleaseRow(model_id=model_row.id, channel=channel, counter=(current or 0) + 1,
                     version_id=version_row.id, variant=variant, rollout_bp=rollout_bp,
                     rollout_seed=rollout_seed, targeting=targeting, guardrails=guardrails,
                     kind=kind, reason=reason, created_by=actor)
    s.add(row)
    s.flush()
    _audit(s, actor, f"release.{kind}", f"model:{model_row.name}/channel:{channel}",
           {"counter": row.counter, "version": version_row.number, "variant": variant,
            "rollout_bp": rollout_bp, "targeting": targeting, "guardrails": guardrails,
            "reason": reason, **(details or {})})
    return row


def _percent(bp: int) -> float:
    return round(bp / 100, 2)


def _release_out(row: ReleaseRow, model: str, version: int, current: bool = False) -> ReleaseOut:
    state = "halted" if row.halted_reason else ("paused" if row.paused else "active")
    return ReleaseOut(id=row.id, model=model, channel=row.channel, counter=row.counter,
                      version=version,
                      variant=row.variant, rollout_bp=row.rollout_bp,
                      rollout_percent=_percent(row.rollout_bp), rollout_seed=row.rollout_seed,
                      targeting=row.targeting or {}, guardrails=row.guardrails or [],
                      state=state, paused=row.paused, halted_reason=row.halted_reason,
                      paused_reason=row.paused_reason, paused_by=row.paused_by,
                      paused_at=row.paused_at,
                      kind=row.kind, reason=row.reason, current=current,
                      created_at=row.created_at, created_by=row.created_by,
                      updated_at=row.updated_at)


def _min_app_version(metadata: dict[str, Any] | None) -> str | None:
    value = (metadata or {}).get("min_app_version")
    return str(value) if value else None
