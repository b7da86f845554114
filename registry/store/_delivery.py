"""Releases, the manifest's reads, and delta patches; experiments via ``ExperimentStore``.

The store keeps the delivery state and enforces the rules that must hold under
concurrency: a release counter is ``max + 1`` per (model, channel) inside the inserting
transaction, with the model row locked (the unique constraint is the backstop: a race is
a retry, never a duplicate); every change is audited in the same transaction. Decisions
about *who gets what* are not made here: they live in ``registry.delivery``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from registry.errors import NothingToRollBackError, ReleaseNotFoundError, ReleasePausedError
from registry.schemas import DeltaOut, ReleaseOut
from registry.store._auth import _audit
from registry.store._delivery_types import (
    ACTIVE_EXPERIMENT,
    ChannelState,
    ServingArm,
    ServingExperiment,
    ServingRelease,
    _invalidates_cache,
    _min_app_version,
    _release_out,
    insert_release,
)
from registry.store._experiments import ExperimentStore
from registry.tables import (
    DeltaRow,
    ExperimentRow,
    ModelRow,
    ReleaseRow,
    VariantRow,
    VersionRow,
    utcnow,
)

__all__ = ["DeliveryStore"]


class DeliveryStore(ExperimentStore):
    """Releases and the reads of the manifest path.

    The manifest path may read ``channel_state`` and ``servable_variants`` through a short
    per-process cache (``max_age``): every delivery write of this process invalidates it at
    once, writes of other processes are seen within ``max_age``.
    """

    # -- releases ---------------------------------------------------------------------------
    @_invalidates_cache
    def create_release(self, model: str, channel: str, *, version: int, variant: str | None,
                       rollout_bp: int, rollout_seed: str, targeting: dict[str, Any],
                       guardrails: list[Any], kind: str, reason: str, actor: str,
                       details: dict[str, Any] | None = None) -> ReleaseOut:
        """Insert the next release of (model, channel): counter = max + 1, audited."""
        for attempt in range(5):
            try:
                with self.session() as s:
                    model_row, version_row = self._version(s, model, version)
                    row = insert_release(
                        s, model_row, channel, version_row, variant=variant,
                        rollout_bp=rollout_bp, rollout_seed=rollout_seed, targeting=targeting,
                        guardrails=guardrails, kind=kind, reason=reason, actor=actor,
                        details=details)
                    return _release_out(row, model, version, current=True)
            except IntegrityError:
                if attempt == 4:  # a concurrent release took the counter five times running
                    raise
        raise AssertionError("unreachable")

    def list_releases(self, model: str, channel: str | None = None,
                      limit: int = 100) -> list[ReleaseOut]:
        """Newest first (by channel, then counter)."""
        with self.session() as s:
            model_row = self._model(s, model)
            q = (select(ReleaseRow, VersionRow.number)
                 .join(VersionRow, VersionRow.id == ReleaseRow.version_id)
                 .where(ReleaseRow.model_id == model_row.id))
            if channel is not None:
                q = q.where(ReleaseRow.channel == channel)
            rows = s.exec(q.order_by(ReleaseRow.channel, ReleaseRow.counter.desc())
                          .limit(limit)).all()
            newest: dict[str, int] = {}
            for row, _ in rows:
                newest[row.channel] = max(newest.get(row.channel, 0), row.counter)
            return [_release_out(row, model, number, current=newest[row.channel] == row.counter)
                    for row, number in rows]

    def current_release(self, model: str, channel: str) -> ReleaseOut:
        with self.session() as s:
            model_row = self._model(s, model)
            row, number = self._current(s, model_row, channel)
            return _release_out(row, model, number, current=True)

    def _current(self, s: Session, model_row: ModelRow, channel: str) -> tuple[ReleaseRow, int]:
        found = s.exec(select(ReleaseRow, VersionRow.number)
                       .join(VersionRow, VersionRow.id == ReleaseRow.version_id)
                       .where(ReleaseRow.model_id == model_row.id, ReleaseRow.channel == channel)
                       .order_by(ReleaseRow.counter.desc()).limit(1)).first()
        if found is None:
            raise ReleaseNotFoundError(
                f"model {model_row.name!r} has no release on channel {channel!r}",
                model=model_row.name, channel=channel)
        return found[0], found[1]

    @_invalidates_cache
    def update_current_release(self, model: str, channel: str, *, actor: str, reason: str = "",
                               rollout_bp: int | None = None,
                               paused: bool | None = None) -> ReleaseOut:
        """Change the rollout of the newest release of (model, channel), audited.

        Widening a paused release is refused (``release_paused``): a pause means no new
        devices, and resuming is the explicit act that lifts it. Narrowing is allowed while
        paused, as it only removes devices. Resuming clears a guardrail's halt reason.
        """
        with self.session() as s:
            model_row = self._model(s, model)
            row, number = self._current(s, model_row, channel)
            before = {"rollout_bp": row.rollout_bp, "paused": row.paused,
                      "halted_reason": row.halted_reason}
            if paused is not None and paused != row.paused:
                row.paused = paused
                if paused:
                    row.paused_reason, row.paused_by, row.paused_at = reason, actor, utcnow()
                else:
                    row.halted_reason = row.paused_reason = row.paused_by = row.paused_at = None
            if rollout_bp is not None:
                if row.paused and rollout_bp > row.rollout_bp:
                    raise ReleasePausedError(
                        f"release {row.counter} of {model}/{channel} is paused"
                        + (f" ({row.halted_reason})" if row.halted_reason else "")
                        + "; resume it before widening the rollout",
                        model=model, channel=channel, counter=row.counter)
                row.rollout_bp = rollout_bp
            after = {"rollout_bp": row.rollout_bp, "paused": row.paused,
                     "halted_reason": row.halted_reason}
            if after != before:
                row.updated_at = utcnow()
                s.add(row)
                action = ("release.pause" if paused else "release.resume") if paused is not None \
                    else "release.rollout"
                _audit(s, actor, action, f"model:{model}/channel:{channel}",
                       {"counter": row.counter, "from": before, "to": after, "reason": reason})
            return _release_out(row, model, number, current=True)

    def rollback_source(self, model: str, channel: str,
                        to_version: int | None) -> tuple[ReleaseOut, ReleaseOut]:
        """(current release, the earlier release to restore).

        Default target: the latest earlier release whose version differs from the current
        one. With ``to_version``: the latest earlier release of that version.

        Raises:
            ReleaseNotFoundError: the channel has no release.
            NothingToRollBackError: no earlier release qualifies.
        """
        with self.session() as s:
            model_row = self._model(s, model)
            current, current_number = self._current(s, model_row, channel)
            if to_version == current_number:
                raise NothingToRollBackError(
                    f"{model}/{channel} already serves version {to_version}", model=model,
                    channel=channel, version=to_version)
            rows = s.exec(select(ReleaseRow, VersionRow.number)
                          .join(VersionRow, VersionRow.id == ReleaseRow.version_id)
                          .where(ReleaseRow.model_id == model_row.id,
                                 ReleaseRow.channel == channel,
                                 ReleaseRow.counter < current.counter)
                          .order_by(ReleaseRow.counter.desc())).all()
            for row, number in rows:
                if (number == to_version) if to_version is not None else (number != current_number):
                    return (_release_out(current, model, current_number, current=True),
                            _release_out(row, model, number))
            if to_version is not None:
                raise NothingToRollBackError(
                    f"version {to_version} of {model!r} was never released on {channel!r}; "
                    "promote it instead", model=model, channel=channel, version=to_version)
            raise NothingToRollBackError(
                f"no earlier release of {model}/{channel} has a version other than "
                f"{current_number}", model=model, channel=channel)

    @_invalidates_cache
    def halt_release(self, model: str, channel: str, counter: int, reason: str, actor: str,
                     details: dict[str, Any]) -> bool:
        """Pause a release because a guardrail broke; False if it was already paused."""
        with self.session() as s:
            model_row = self._model(s, model)
            row = s.exec(select(ReleaseRow).where(ReleaseRow.model_id == model_row.id,
                                                  ReleaseRow.channel == channel,
                                                  ReleaseRow.counter == counter)).first()
            if row is None or row.paused:
                return False
            row.paused, row.halted_reason, row.updated_at = True, reason, utcnow()
            row.paused_by, row.paused_at = actor, row.updated_at
            s.add(row)
            _audit(s, actor, "release.halt", f"model:{model}/channel:{channel}",
                   {"counter": counter, "reason": reason, **details})
            return True

    def guarded_releases(self) -> list[ReleaseOut]:
        """Releases that are not paused and declare guardrails: what the checker evaluates."""
        with self.session() as s:
            rows = s.exec(select(ReleaseRow, VersionRow.number, ModelRow.name)
                          .join(VersionRow, VersionRow.id == ReleaseRow.version_id)
                          .join(ModelRow, ModelRow.id == ReleaseRow.model_id)
                          .where(ReleaseRow.paused == False)  # noqa: E712 - SQL expression
                          .order_by(ReleaseRow.id)).all()
            return [_release_out(row, name, number) for row, number, name in rows
                    if row.guardrails]

    def release_artifacts(self, model: str, channel: str,
                          before_counter: int) -> list[tuple[int, str, str, int]]:
        """(version, variant name, sha256, size) of the servable variants of the versions
        released on (model, channel) before ``before_counter``: the bases for deltas."""
        with self.session() as s:
            model_row = self._model(s, model)
            version_ids = set(s.exec(select(ReleaseRow.version_id).where(
                ReleaseRow.model_id == model_row.id, ReleaseRow.channel == channel,
                ReleaseRow.counter < before_counter)).all())
            if not version_ids:
                return []
            rows = s.exec(select(VersionRow.number, VariantRow.name, VariantRow.sha256,
                                 VariantRow.size)
                          .join(VersionRow, VersionRow.id == VariantRow.version_id)
                          .where(VariantRow.version_id.in_(version_ids),
                                 VariantRow.servable == True,  # noqa: E712
                                 VariantRow.sha256.is_not(None))).all()
            return [(n, name, sha, size) for n, name, sha, size in rows]

    # -- what a manifest request reads -----------------------------------------------------
    def channel_state(self, model: str, channel: str, max_age: float = 0.0) -> ChannelState:
        """Releases (newest first) and the active experiment of (model, channel).

        Args:
            max_age: Seconds a cached answer may be reused (see the class docstring).

        Raises:
            ModelNotFoundError: the model does not exist.
        """
        return self._cached("_state_cache", (model, channel), max_age,
                            lambda: self._channel_state(model, channel))

    def _channel_state(self, model: str, channel: str) -> ChannelState:
        with self.session() as s:
            model_row = self._model(s, model)
            rows = s.exec(select(ReleaseRow.counter, ReleaseRow.version_id, ReleaseRow.variant,
                                 ReleaseRow.rollout_bp, ReleaseRow.rollout_seed,
                                 ReleaseRow.targeting, ReleaseRow.paused)
                          .where(ReleaseRow.model_id == model_row.id,
                                 ReleaseRow.channel == channel)
                          .order_by(ReleaseRow.counter.desc())).all()
            exp = s.exec(select(ExperimentRow).where(
                ExperimentRow.model_id == model_row.id, ExperimentRow.channel == channel,
                ExperimentRow.status.in_(ACTIVE_EXPERIMENT))).first()
            wanted = {r[1] for r in rows}
            arm_numbers = {int(a["version"]) for a in (exp.arms if exp else [])}
            versions: dict[int, tuple[int, str | None]] = {}  # id -> (number, min app)
            by_number: dict[int, int] = {}
            if wanted or arm_numbers:
                q = select(VersionRow.id, VersionRow.number, VersionRow.metadata_json).where(
                    VersionRow.model_id == model_row.id)
                for vid, number, meta in s.exec(q.where(
                        VersionRow.id.in_(wanted) | VersionRow.number.in_(arm_numbers))).all():
                    versions[vid] = (number, _min_app_version(meta))
                    by_number[number] = vid
            releases = tuple(
                ServingRelease(counter=c, version=versions[vid][0], version_id=vid, variant=var,
                               rollout_bp=bp, rollout_seed=seed, targeting=targeting or {},
                               paused=paused, min_app_version=versions[vid][1])
                for c, vid, var, bp, seed, targeting, paused in rows)
            experiment = None
            if exp is not None:
                arms = tuple(
                    ServingArm(name=a["name"], version=int(a["version"]),
                               version_id=by_number[int(a["version"])], variant=a.get("variant"),
                               weight=int(a["weight"]),
                               min_app_version=versions[by_number[int(a["version"])]][1])
                    for a in exp.arms)
                experiment = ServingExperiment(id=exp.id, name=exp.name, seed=exp.seed,
                                               coverage_bp=exp.coverage_bp, status=exp.status,
                                               targeting=exp.targeting or {}, arms=arms)
            return ChannelState(model=model, channel=channel,
                                counter=releases[0].counter if releases else 0,
                                releases=releases, experiment=experiment)

    def servable_variants(self, version_id: int, max_age: float = 0.0) -> list[dict[str, Any]]:
        """The servable, public variants of a version as ``choose_variant`` takes them.

        Only public variants (listed in TUF targets) are returned, so a manifest can never
        name a target a device cannot verify; releases publish their variants before they
        become visible (``registry.delivery.publication``).

        ``latency_by_device`` is empty here; the manifest service fills it from telemetry
        when that is available (see ``registry.delivery.manifest``). Callers must not
        mutate the returned dicts (they may be cached).
        """
        return self._cached("_variant_cache", version_id, max_age,
                            lambda: self._servable_variants(version_id))

    def _servable_variants(self, version_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.exec(select(VariantRow).where(VariantRow.version_id == version_id,
                                                   VariantRow.servable == True,  # noqa: E712
                                                   VariantRow.public == True,  # noqa: E712
                                                   VariantRow.sha256.is_not(None))
                          .order_by(VariantRow.id)).all()
            return [{"name": r.name, "format": r.format, "size": r.size or 0, "sha256": r.sha256,
                     "target_path": r.target_path, "servable": True,
                     "fidelity": (r.fidelity or {}).get("top1_agreement"),
                     "reference_latency_ms": r.reference_latency_ms, "latency_by_device": {},
                     "signature": r.signature}
                    for r in rows]

    # -- deltas ------------------------------------------------------------------------------
    def find_delta(self, base_sha256: str, target_sha256: str) -> DeltaOut | None:
        with self.session() as s:
            row = s.exec(select(DeltaRow).where(DeltaRow.base_sha256 == base_sha256,
                                                DeltaRow.target_sha256 == target_sha256)).first()
            return None if row is None else DeltaOut(
                base_sha256=row.base_sha256, target_sha256=row.target_sha256, sha256=row.sha256,
                size=row.size, target_path=row.target_path)

    def record_delta(self, base_sha256: str, target_sha256: str, *, sha256: str | None,
                     size: int | None, target_path: str | None,
                     actor: str = "system") -> bool:
        """Record a computed patch (``sha256`` None: not smaller than the artifact).

        Returns False when the pair was already recorded (by a concurrent computation).
        """
        try:
            with self.session() as s:
                if s.exec(select(DeltaRow.id).where(DeltaRow.base_sha256 == base_sha256,
                                                    DeltaRow.target_sha256 == target_sha256)
                          ).first() is not None:
                    return False
                s.add(DeltaRow(base_sha256=base_sha256, target_sha256=target_sha256,
                               sha256=sha256, size=size, target_path=target_path))
                _audit(s, actor, "delta.create", f"delta:{base_sha256[:16]}->{target_sha256[:16]}",
                       {"base_sha256": base_sha256, "target_sha256": target_sha256,
                        "sha256": sha256, "size": size, "target_path": target_path,
                        "kept": sha256 is not None})
                return True
        except IntegrityError:
            return False
