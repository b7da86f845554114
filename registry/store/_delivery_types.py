"""Shapes, errors and small helpers shared by the delivery store mixins.

The API serialises these models; table rows never leave the store. The errors carry stable
codes (they are candidates for ``registry/errors.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel

from registry.errors import ConflictError, ValidationError
from registry.models import ReleaseRow

__all__ = [
    "ACTIVE_EXPERIMENT",
    "ArmOut",
    "ChannelState",
    "DeltaOut",
    "ExperimentConflictError",
    "ExperimentOut",
    "InvalidChannelError",
    "InvalidExperimentError",
    "NothingToRollBackError",
    "ReleaseOut",
    "ReleasePausedError",
    "ServingArm",
    "ServingExperiment",
    "ServingRelease",
    "UnknownArmError",
    "VersionNotServableError",
]

ACTIVE_EXPERIMENT = ("running", "paused")


# -- errors ---------------------------------------------------------------------------------

class InvalidChannelError(ValidationError):
    code, title = "invalid_channel", "Invalid channel"


class InvalidExperimentError(ValidationError):
    code, title = "invalid_experiment", "Invalid experiment"


class UnknownArmError(ValidationError):
    code, title = "unknown_arm", "Unknown experiment arm"


class ReleasePausedError(ConflictError):
    code, title = "release_paused", "Release is paused"


class NothingToRollBackError(ConflictError):
    code, title = "nothing_to_roll_back", "Nothing to roll back to"


class VersionNotServableError(ConflictError):
    code, title = "version_not_servable", "Version cannot be served"


class ExperimentConflictError(ConflictError):
    code, title = "experiment_conflict", "Experiment conflict"


# -- API shapes ----------------------------------------------------------------------------

class ReleaseOut(BaseModel):
    id: int
    model: str
    channel: str
    counter: int
    version: int
    variant: Optional[str]
    rollout_bp: int
    rollout_percent: float
    rollout_seed: str
    targeting: dict[str, Any]
    guardrails: list[Any]
    state: str  # active | paused | halted
    paused: bool
    halted_reason: Optional[str]
    kind: str  # promote | rollback | winner
    reason: str
    current: bool = False  # the newest release of its (model, channel)
    created_at: datetime
    created_by: str
    updated_at: datetime


class ArmOut(BaseModel):
    name: str
    version: int
    variant: Optional[str]
    weight: int
    range: list[int]  # [start, end) in basis points
    assigned: int = 0


class ExperimentOut(BaseModel):
    id: int
    name: str
    model: str
    channel: str
    seed: str
    hash_version: int = 2
    coverage_bp: int
    coverage_percent: float
    arms: list[ArmOut]
    targeting: dict[str, Any]
    guardrails: list[Any]
    status: str  # running | paused | stopped
    halted_reason: Optional[str]
    winner: Optional[str]
    counter_at_start: int
    created_at: datetime
    created_by: str
    stopped_at: Optional[datetime]


class DeltaOut(BaseModel):
    base_sha256: str
    target_sha256: str
    sha256: Optional[str]
    size: Optional[int]
    target_path: Optional[str]


# -- what the manifest resolver reads (one query set per request) --------------------------

@dataclass(frozen=True)
class ServingRelease:
    counter: int
    version: int
    version_id: int
    variant: Optional[str]
    rollout_bp: int
    rollout_seed: str
    targeting: dict[str, Any]
    paused: bool
    min_app_version: Optional[str]


@dataclass(frozen=True)
class ServingArm:
    name: str
    version: int
    version_id: int
    variant: Optional[str]
    weight: int
    min_app_version: Optional[str]


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
    experiment: Optional[ServingExperiment] = None


def _invalidates_cache(method):  # noqa: ANN001, ANN202
    """Mark a write: after its transaction ends, cached manifest reads of this process reload."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return method(self, *args, **kwargs)
        finally:
            self._delivery_changed()

    return wrapper


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
                      kind=row.kind, reason=row.reason, current=current,
                      created_at=row.created_at, created_by=row.created_by,
                      updated_at=row.updated_at)


def _min_app_version(metadata: Optional[dict[str, Any]]) -> Optional[str]:
    value = (metadata or {}).get("min_app_version")
    return str(value) if value else None
