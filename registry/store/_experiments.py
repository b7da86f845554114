"""Experiments and their sticky assignments.

An assignment is inserted only if absent, and the recorded arm is what every later request
sees (intent-to-treat). Every change to an experiment is audited in its transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from registry.delivery.bucketing import arm_ranges
from registry.errors import ExperimentConflictError, ExperimentNotFoundError, UnknownArmError
from registry.schemas import ArmOut, ExperimentOut, ReleaseOut
from registry.store._auth import _audit
from registry.store._base import StoreBase
from registry.store._delivery_types import (
    ACTIVE_EXPERIMENT,
    _invalidates_cache,
    _percent,
    _release_out,
    insert_release,
)
from registry.tables import AssignmentRow, ExperimentRow, ModelRow, ReleaseRow, utcnow

__all__ = ["ExperimentStore"]


class ExperimentStore(StoreBase):
    """Experiments and their arms; the release an experiment's stop writes goes through
    ``insert_release`` like any other."""

    @_invalidates_cache
    def create_experiment(self, name: str, *, model: str, channel: str, seed: str,
                          coverage_bp: int, arms: list[dict[str, Any]],
                          targeting: dict[str, Any], guardrails: list[Any],
                          actor: str) -> ExperimentOut:
        """Create a running experiment; at most one is active per (model, channel).

        Raises:
            ExperimentConflictError: the name is taken or (model, channel) has an active one.
            VersionNotFoundError: an arm names a version that does not exist.
        """
        try:
            with self.session() as s:
                model_row = self._model(s, model)
                self._check_experiment_free(s, name, model_row, channel)
                for arm in arms:
                    self._version(s, model, int(arm["version"]))
                counter = s.exec(select(func.max(ReleaseRow.counter)).where(
                    ReleaseRow.model_id == model_row.id, ReleaseRow.channel == channel)).one()
                row = ExperimentRow(name=name, model_id=model_row.id, channel=channel, seed=seed,
                                    coverage_bp=coverage_bp, arms=arms, targeting=targeting,
                                    guardrails=guardrails, counter_at_start=counter or 0,
                                    created_by=actor)
                s.add(row)
                s.flush()
                _audit(s, actor, "experiment.create", f"experiment:{name}",
                       {"model": model, "channel": channel, "seed": seed,
                        "coverage_bp": coverage_bp, "arms": arms, "targeting": targeting,
                        "guardrails": guardrails})
                return self._experiment_out(s, row, model)
        except IntegrityError as e:  # a concurrent create took the name
            raise ExperimentConflictError(f"an experiment named {name!r} already exists",
                                          experiment=name) from e

    def check_experiment_free(self, name: str, model: str, channel: str) -> None:
        """Raise what ``create_experiment`` would for a taken name or an active experiment.

        Lets the service refuse before it publishes the arms' variants; the transaction in
        ``create_experiment`` checks again (a concurrent create is still refused there).
        """
        with self.session() as s:
            self._check_experiment_free(s, name, self._model(s, model), channel)

    def _check_experiment_free(self, s: Session, name: str, model_row: ModelRow,
                               channel: str) -> None:
        if s.exec(select(ExperimentRow.id).where(ExperimentRow.name == name)).first():
            raise ExperimentConflictError(f"an experiment named {name!r} already exists",
                                          experiment=name)
        active = s.exec(select(ExperimentRow.name).where(
            ExperimentRow.model_id == model_row.id, ExperimentRow.channel == channel,
            ExperimentRow.status.in_(ACTIVE_EXPERIMENT))).first()
        if active is not None:
            raise ExperimentConflictError(
                f"experiment {active!r} is already active on {model_row.name}/{channel}; "
                "stop it first", experiment=active)

    def _delivery_experiment(self, s: Session, name: str) -> ExperimentRow:
        row = s.exec(select(ExperimentRow).where(ExperimentRow.name == name)).first()
        if row is None:
            raise ExperimentNotFoundError(f"experiment {name!r} does not exist", experiment=name)
        return row

    def _experiment_out(self, s: Session, row: ExperimentRow, model: str | None = None,
                        counts: bool = True) -> ExperimentOut:
        if model is None:
            model = s.get(ModelRow, row.model_id).name
        assigned: dict[str, int] = {}
        if counts:
            assigned = dict(s.exec(select(AssignmentRow.arm, func.count(AssignmentRow.id))
                                   .where(AssignmentRow.experiment_id == row.id)
                                   .group_by(AssignmentRow.arm)).all())
        ranges = arm_ranges([int(a["weight"]) for a in row.arms], row.coverage_bp)
        arms = [ArmOut(name=a["name"], version=int(a["version"]), variant=a.get("variant"),
                       weight=int(a["weight"]), range=[start, end],
                       assigned=assigned.get(a["name"], 0))
                for a, (start, end) in zip(row.arms, ranges)]
        return ExperimentOut(id=row.id, name=row.name, model=model, channel=row.channel,
                             seed=row.seed,
                             coverage_bp=row.coverage_bp,
                             coverage_percent=_percent(row.coverage_bp), arms=arms,
                             targeting=row.targeting or {}, guardrails=row.guardrails or [],
                             status=row.status, halted_reason=row.halted_reason,
                             paused_reason=row.paused_reason, paused_by=row.paused_by,
                             paused_at=row.paused_at, winner=row.winner, counter_at_start=row.counter_at_start,
                             created_at=row.created_at, created_by=row.created_by,
                             stopped_at=row.stopped_at)

    def get_experiment(self, name: str) -> ExperimentOut:
        with self.session() as s:
            return self._experiment_out(s, self._delivery_experiment(s, name))

    def list_experiments(self, model: str | None = None,
                         status: str | None = None) -> list[ExperimentOut]:
        """Newest first."""
        with self.session() as s:
            q = select(ExperimentRow)
            if model is not None:
                q = q.where(ExperimentRow.model_id == self._model(s, model).id)
            if status is not None:
                q = q.where(ExperimentRow.status == status)
            return [self._experiment_out(s, row)
                    for row in s.exec(q.order_by(ExperimentRow.id.desc())).all()]

    @_invalidates_cache
    def update_experiment(self, name: str, *, actor: str, coverage_bp: int | None = None,
                          paused: bool | None = None, reason: str = "") -> ExperimentOut:
        """Change coverage or pause/resume an active experiment, audited.

        Raises:
            ExperimentConflictError: the experiment is stopped.
        """
        with self.session() as s:
            row = self._delivery_experiment(s, name)
            if row.status == "stopped":
                raise ExperimentConflictError(f"experiment {name!r} is stopped", experiment=name)
            before = {"coverage_bp": row.coverage_bp, "status": row.status,
                      "halted_reason": row.halted_reason}
            if coverage_bp is not None:
                row.coverage_bp = coverage_bp
            if paused is not None:
                row.status = "paused" if paused else "running"
                if not paused:
                    row.halted_reason = None
            after = {"coverage_bp": row.coverage_bp, "status": row.status,
                     "halted_reason": row.halted_reason}
            if after != before and paused is not None:
                if paused:
                    row.paused_reason, row.paused_by, row.paused_at = reason, actor, utcnow()
                else:
                    row.paused_reason = row.paused_by = row.paused_at = None
            if after != before:
                s.add(row)
                action = "experiment.update" if paused is None else \
                    ("experiment.pause" if paused else "experiment.resume")
                _audit(s, actor, action, f"experiment:{name}",
                       {"from": before, "to": after, "reason": reason})
            return self._experiment_out(s, row)

    @_invalidates_cache
    def halt_experiment(self, name: str, reason: str, actor: str, details: dict[str, Any]) -> bool:
        """Pause a running experiment because a guardrail broke; False if not running."""
        with self.session() as s:
            row = self._delivery_experiment(s, name)
            if row.status != "running":
                return False
            row.status, row.halted_reason = "paused", reason
            row.paused_reason, row.paused_by, row.paused_at = None, actor, utcnow()
            s.add(row)
            _audit(s, actor, "experiment.halt", f"experiment:{name}", {"reason": reason, **details})
            return True

    def guarded_experiments(self) -> list[ExperimentOut]:
        with self.session() as s:
            rows = s.exec(select(ExperimentRow).where(ExperimentRow.status == "running")
                          .order_by(ExperimentRow.id)).all()
            return [self._experiment_out(s, r, counts=False) for r in rows if r.guardrails]

    @_invalidates_cache
    def stop_experiment(self, name: str, *, actor: str, winner: str | None = None,
                        winner_release: dict[str, Any] | None = None,
                        reason: str = "") -> tuple[ExperimentOut, ReleaseOut | None]:
        """Stop an experiment; with ``winner_release`` also publish the winner's release in
        the same transaction (so a stop never leaves the channel without its winner).

        ``winner_release`` holds ``create_release``'s keyword arguments except model,
        channel, version, variant, kind and actor, which come from the experiment and arm.

        Raises:
            ExperimentConflictError: already stopped.
            UnknownArmError: ``winner`` is not an arm.
        """
        for attempt in range(5):
            try:
                return self._stop_experiment_once(name, actor, winner, winner_release, reason)
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _stop_experiment_once(self, name, actor, winner, winner_release, reason):
        with self.session() as s:
            row = self._delivery_experiment(s, name)
            if row.status == "stopped":
                raise ExperimentConflictError(f"experiment {name!r} is already stopped",
                                              experiment=name)
            arm = None
            if winner is not None:
                arm = next((a for a in row.arms if a["name"] == winner), None)
                if arm is None:
                    raise UnknownArmError(
                        f"experiment {name!r} has no arm {winner!r}; arms: "
                        + ", ".join(a["name"] for a in row.arms), field="winner")
            model_row = s.get(ModelRow, row.model_id)
            row.status, row.winner, row.stopped_at = "stopped", winner, utcnow()
            s.add(row)
            _audit(s, actor, "experiment.stop", f"experiment:{name}",
                   {"winner": winner, "reason": reason})
            release = None
            if arm is not None and winner_release is not None:
                _, version_row = self._version(s, model_row.name, int(arm["version"]))
                rel = insert_release(
                    s, model_row, row.channel, version_row, variant=arm.get("variant"),
                    kind="winner", actor=actor,
                    details={"experiment": name, "arm": winner}, **winner_release)
                release = _release_out(rel, model_row.name, version_row.number, current=True)
            return self._experiment_out(s, row, model_row.name), release

    # -- assignments ------------------------------------------------------------------------
    def assignment(self, experiment_id: int, install_id: str) -> str | None:
        with self.session() as s:
            return s.exec(select(AssignmentRow.arm).where(
                AssignmentRow.experiment_id == experiment_id,
                AssignmentRow.install_id == install_id)).first()

    def record_assignment(self, experiment_id: int, install_id: str, arm: str) -> str:
        """Insert the assignment unless one exists; return the arm that is recorded.

        Assignments are sticky and not audited one by one: the table itself is the
        append-only record the experiment report analyses (intent-to-treat).
        """
        try:
            with self.session() as s:
                existing = s.exec(select(AssignmentRow.arm).where(
                    AssignmentRow.experiment_id == experiment_id,
                    AssignmentRow.install_id == install_id)).first()
                if existing is not None:
                    return existing
                s.add(AssignmentRow(experiment_id=experiment_id, install_id=install_id, arm=arm))
                return arm
        except IntegrityError:  # a concurrent request recorded it first: theirs stands
            recorded = self.assignment(experiment_id, install_id)
            if recorded is None:
                raise
            return recorded

    def experiment_assignments(self, name: str) -> dict[str, str]:
        """install id -> arm, for reports and tests."""
        with self.session() as s:
            row = self._delivery_experiment(s, name)
            return dict(s.exec(select(AssignmentRow.install_id, AssignmentRow.arm)
                               .where(AssignmentRow.experiment_id == row.id)).all())
