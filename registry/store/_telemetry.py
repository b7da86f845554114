"""Telemetry rows: the batch insert of the ingest path and the aggregate queries behind
per-device latency tables, experiment reports and guardrail metrics.

Scale notes (docs/reports.md, "Telemetry at scale"): the ingest path is one multi-row
``INSERT ... ON CONFLICT (event_id) DO NOTHING`` per batch and nothing else, so it never waits
for a report. Reads go through the two indexes of ``telemetry_events``: ``(experiment,
install_id)`` for experiment reports and ``(model, version, variant, kind)`` for version
latency and releases. On PostgreSQL percentiles are computed by ``percentile_cont`` in the
database; SQLite has no ordered-set aggregates, so the latencies of the one version asked
for are fetched and reduced with numpy (the same linear interpolation). At billions of rows
both become rollups maintained off the request path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Float, TextClause, and_, case, func, literal, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, select

from registry.errors import ExperimentNotFoundError, ReleaseNotFoundError, VersionNotFoundError
from registry.reports import ExperimentDef, UnitSummary
from registry.store._base import StoreBase
from registry.tables import (
    AssignmentRow,
    ExperimentRow,
    ModelRow,
    ReleaseRow,
    ServedRow,
    TelemetryRow,
    VariantRow,
    VersionRow,
)

__all__ = ["LATENCY_QUANTILES", "ReleaseScope", "TelemetryStore"]

T = TelemetryRow
#: Quantiles of the per-device latency table.
LATENCY_QUANTILES = (0.5, 0.9, 0.99)
#: Default cap on inference rows per device fed to a report (see ``experiment_units``).
DEFAULT_LATENCY_CAP = 50
#: Default minimum inference count before a device's p50 is offered for variant choice.
DEFAULT_MIN_DEVICE_SAMPLES = 30


@dataclass(frozen=True)
class ReleaseScope:
    """Which telemetry belongs to a release and to its baseline (the release it replaced)."""

    release_id: int
    model: str
    channel: str
    counter: int
    version: int
    variant: str | None
    since: datetime
    baseline_version: int | None
    baseline_variant: str | None
    baseline_counter: int | None


class TelemetryStore(StoreBase):
    # -- ingest ---------------------------------------------------------------------------
    def insert_telemetry(self, rows: list[dict[str, Any]]) -> int:
        """Insert validated rows in one statement; returns how many were new.

        Re-sent events (same ``event_id``) are skipped by the database itself (``ON CONFLICT
        (event_id) DO NOTHING``), so a batch sent twice, or by two web processes at once,
        never double counts. PostgreSQL gets one ``INSERT ... SELECT FROM unnest(<one array
        per column>)``: 17 parameters whatever the batch size, about 6x faster than a
        17,000-parameter VALUES list. SQLite gets SQLAlchemy's "insertmanyvalues": one
        multi-row VALUES statement per batch, compiled once and cached.
        """
        if not rows:
            return 0
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                params = {c: [r[c] for r in rows] for c in _INSERT_COLUMNS}
                return int(conn.execute(_pg_unnest_insert(), params).scalar_one())
            stmt = sqlite.insert(TelemetryRow).on_conflict_do_nothing(
                index_elements=["event_id"]).returning(TelemetryRow.id)
            return len(conn.execute(stmt, rows).all())

    def recount_served(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Clear ``unserved`` on the events of those (model, install id) pairs that are served
        by now; returns how many pairs were. Ingestion calls it after committing events it
        flagged, so events racing the served row's write still count
        (registry/store/_served.py)."""
        served = self.served_pairs(pairs)
        if not served:
            return 0
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE telemetry_events SET unserved = false "
                              "WHERE unserved AND install_id = :install_id AND model = :model"),
                         [{"install_id": i, "model": m} for m, i in sorted(served)])
        return len(served)

    def count_telemetry(self) -> int:
        with self.session() as s:
            return s.exec(select(func.count()).select_from(TelemetryRow)).one()

    # -- per-device latency ---------------------------------------------------------------
    def _latency_groups(self, s: Session, model: str, number: int,
                        quantiles: tuple[float, ...]) -> list[tuple[str | None, str | None,
                                                                     int, list[float]]]:
        """(variant, device_model, count, [quantile values]) of one version's inferences."""
        where = and_(T.model == model, T.version == number, T.kind == "inference",
                     T.latency_ms.is_not(None))
        if self.dialect == "postgresql":
            q = postgresql.array([literal(x) for x in quantiles])
            pct = func.percentile_cont(q).within_group(T.latency_ms.asc())
            pct = pct.cast(postgresql.ARRAY(Float))  # type the result as float[]
            stmt = (sa_select(T.variant, T.device_model, func.count(), pct).where(where)
                    .group_by(T.variant, T.device_model))
            return [(v, d, int(n), [float(x) for x in p]) for v, d, n, p in s.execute(stmt)]
        stmt = (sa_select(T.variant, T.device_model, T.latency_ms).where(where)
                .order_by(T.variant, T.device_model))
        groups: dict[tuple, list[float]] = defaultdict(list)
        for v, d, ms in s.execute(stmt):
            groups[(v, d)].append(ms)
        if not groups:
            return []
        import numpy as np  # here, not at import: a web process serving manifests only never loads it

        # numpy's default "linear" method is percentile_cont's definition.
        return [(v, d, len(ms), np.quantile(np.asarray(ms), quantiles).tolist())
                for (v, d), ms in groups.items()]

    def version_latency(self, name: str, number: int) -> dict[str, Any]:
        """The per-device latency table of one version (``GET .../latency``).

        One item per (variant, device model) with inference telemetry: count and p50/p90/p99
        (ms), next to the figure the engineer uploaded for that device (metadata
        ``latency_ms``) and the variant's reference latency measured at conversion (p50 on the
        server). Devices with an uploaded figure but no telemetry get an item with
        ``variant: null`` and ``count: 0``, so the engineer's own numbers always show.
        """
        with self.session() as s:
            model, version = self._version(s, name, number)
            variants = s.exec(select(VariantRow).where(VariantRow.version_id == version.id)
                              .order_by(VariantRow.id)).all()
            groups = self._latency_groups(s, name, number, LATENCY_QUANTILES)
        uploaded = _uploaded_latency(version.metadata_json or {})
        reference = {v.name: (v.reference_latency_ms or {}).get("p50") for v in variants}
        variant_order = {v.name: i for i, v in enumerate(variants)}
        items = []
        seen_devices = set()
        for variant, device, count, (p50, p90, p99) in groups:
            seen_devices.add(device)
            items.append({"variant": variant, "device_model": device, "count": count,
                          "p50": p50, "p90": p90, "p99": p99,
                          "uploaded_ms": _lookup_device(uploaded, device),
                          "reference_ms": reference.get(variant)})
        for device, ms in uploaded.items():
            if _lookup_device({d: 1 for d in seen_devices if d}, device) is None:
                items.append({"variant": None, "device_model": device, "count": 0, "p50": None,
                              "p90": None, "p99": None, "uploaded_ms": ms, "reference_ms": None})
        items.sort(key=lambda r: (r["variant"] is None, variant_order.get(r["variant"], 1 << 30),
                                  r["variant"] or "", r["device_model"] is None,
                                  r["device_model"] or ""))
        return {"model": name, "version": number, "quantiles": list(LATENCY_QUANTILES),
                "items": items,
                "reference": {v.name: v.reference_latency_ms for v in variants
                              if v.reference_latency_ms},
                "uploaded_ms": uploaded}

    def latency_by_device(self, version_id: int, *,
                          min_samples: int = DEFAULT_MIN_DEVICE_SAMPLES
                          ) -> dict[str, dict[str, float]]:
        """``{variant: {device_model: p50 ms}}`` from inference telemetry, for variant choice.

        Only (variant, device) pairs with at least ``min_samples`` inferences are included: a
        median from a handful of runs (first launch, thermal state) would steer every device
        of that model to the wrong variant. Rows without a variant or device model are left out.
        """
        with self.session() as s:
            version = s.get(VersionRow, version_id)
            if version is None:
                raise VersionNotFoundError(f"version id {version_id} does not exist")
            model = s.get(ModelRow, version.model_id)
            groups = self._latency_groups(s, model.name, version.number, (0.5,))
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for variant, device, count, (p50,) in groups:
            if variant and device and count >= min_samples:
                out[variant][device] = p50
        return dict(out)

    # -- experiments ----------------------------------------------------------------------
    def _experiment_row(self, s: Session, experiment: Any) -> ExperimentRow:
        if isinstance(experiment, int) and not isinstance(experiment, bool):
            row = s.get(ExperimentRow, experiment)
        else:
            name = experiment if isinstance(experiment, str) else getattr(experiment, "name", None)
            row = s.exec(select(ExperimentRow).where(ExperimentRow.name == name)).first() \
                if isinstance(name, str) else None
        if row is None:
            raise ExperimentNotFoundError(f"experiment {experiment!r} does not exist",
                                          experiment=str(getattr(experiment, "name", experiment)))
        return row

    def experiment_units(self, experiment: Any, *, latency_cap: int = DEFAULT_LATENCY_CAP
                         ) -> tuple[ExperimentDef, list[UnitSummary], dict[str, Any]]:
        """One ``UnitSummary`` per assigned install id (intent-to-treat), with its telemetry.

        Args:
            experiment: Name, id, or an object with ``name``.
            latency_cap: Inference latencies kept per device: a pseudo-random but reproducible
                sample (ordered by the random event UUIDs). The per-device geometric mean
                barely moves beyond a few dozen rows, while report cost grows with rows.

        Returns:
            (definition, units, source): ``source`` says what the units were built from —
            the experiment's model/channel and status (running, paused with the guardrail's
            reason, stopped with its winner), the cap, and how many install ids sent telemetry
            for the experiment without an assignment (those are not units; a large number
            points at a delivery bug).
        """
        self.flush_served()  # this process's served rows not yet written clear flags
        with self.session() as s:
            row = self._experiment_row(s, experiment)
            exp = _experiment_def(row)
            model_name = s.get(ModelRow, row.model_id).name
            assignments = s.execute(
                sa_select(AssignmentRow.install_id, AssignmentRow.arm, AssignmentRow.assigned_at)
                .where(AssignmentRow.experiment_id == row.id)).all()
            where = and_(T.experiment == row.name, T.unserved.is_(False))
            unserved = s.execute(sa_select(func.count(), func.count(T.install_id.distinct()))
                                 .where(T.experiment == row.name, T.unserved.is_(True))).one()
            unserved_unassigned = s.execute(
                sa_select(func.count(T.install_id.distinct())).where(
                    T.experiment == row.name, T.unserved.is_(True),
                    T.install_id.not_in(sa_select(AssignmentRow.install_id).where(
                        AssignmentRow.experiment_id == row.id)))).scalar_one()
            flags = _unit_flags(s, where)
            latencies = _capped_latencies(s, where, latency_cap)
        units = []
        assigned_ids = set()
        for install_id, arm, assigned_at in assignments:
            assigned_ids.add(install_id)
            units.append(_unit(install_id, arm, _utc_day(assigned_at), flags.get(install_id),
                               latencies.get(install_id)))
        source = {"model_channel": f"{model_name}/{row.channel}", "status": row.status,
                  "halted_reason": row.halted_reason, "winner": row.winner,
                  "latency_cap_per_device": latency_cap,
                  "installs_with_telemetry": len(flags),
                  "unassigned_installs_with_telemetry": len(set(flags) - assigned_ids)
                  + int(unserved_unassigned),
                  "excluded_unserved_events": int(unserved[0]),
                  "excluded_unserved_installs": int(unserved[1])}
        return exp, units, source

    # -- releases -------------------------------------------------------------------------
    def release_scope(self, release: Any) -> ReleaseScope:
        """The release and the one it replaced on the same model and channel.

        The baseline is the latest earlier release (lower counter) that served a different
        version or pinned variant — a rollout change that keeps the artifact is not a baseline.
        """
        release_id = _release_id(release)
        with self.session() as s:
            row = s.get(ReleaseRow, release_id)
            if row is None:
                raise ReleaseNotFoundError(f"release id {release_id} does not exist")
            model = s.get(ModelRow, row.model_id)
            version = s.get(VersionRow, row.version_id)
            earlier = s.exec(select(ReleaseRow).where(
                ReleaseRow.model_id == row.model_id, ReleaseRow.channel == row.channel,
                ReleaseRow.counter < row.counter).order_by(ReleaseRow.counter.desc())).all()
            base = next((r for r in earlier
                         if (r.version_id, r.variant) != (row.version_id, row.variant)), None)
            base_version = s.get(VersionRow, base.version_id) if base is not None else None
        return ReleaseScope(
            release_id=row.id, model=model.name, channel=row.channel, counter=row.counter,
            version=version.number, variant=row.variant, since=row.created_at,
            baseline_version=base_version.number if base_version is not None else None,
            baseline_variant=base.variant if base is not None else None,
            baseline_counter=base.counter if base is not None else None)

    def release_units(self, scope: ReleaseScope, *, latency_cap: int = DEFAULT_LATENCY_CAP
                      ) -> list[UnitSummary]:
        """Installs that sent telemetry for the release (arm ``release``) or, over the same
        period, for its baseline (arm ``baseline``) — one unit per install id and arm.

        Only events *received* since the release was created count: a rollback release that
        points at an old version must not inherit that version's history, and the server
        clock, unlike the device's, is trustworthy. Only install ids the server served that
        side's artifact on this model and channel count (``served_installs``), and events
        flagged ``unserved`` at ingestion never do: telemetry is public, install ids are
        whatever a client writes, so anything else could be forged into a halt.
        """
        arms = [("release", scope.version, scope.variant)]
        if scope.baseline_version is not None:
            arms.append(("baseline", scope.baseline_version, scope.baseline_variant))
        units = []
        self.flush_served()  # this process's served rows not yet written (registry/store/_served.py)
        with self.session() as s:
            for arm, number, variant in arms:
                where = and_(T.model == scope.model, T.version == number,
                             T.received_at >= scope.since)
                served = sa_select(ServedRow.install_id).where(
                    ServedRow.model == scope.model, ServedRow.channel == scope.channel,
                    ServedRow.version == number)
                if variant is not None:
                    where = and_(where, T.variant == variant)
                    served = served.where(ServedRow.variant == variant)
                where = and_(where, T.unserved.is_(False), T.install_id.in_(served))
                flags = _unit_flags(s, where)
                latencies = _capped_latencies(s, where, latency_cap)
                for install_id, f in flags.items():
                    units.append(_unit(install_id, arm, _utc_day(f["first_seen"]), f,
                                       latencies.get(install_id)))
        return units


# -- helpers ------------------------------------------------------------------------------
_INSERT_COLUMNS = tuple(c.name for c in TelemetryRow.__table__.columns if c.name != "id")


@lru_cache(maxsize=1)
def _pg_unnest_insert() -> TextClause:
    """``WITH ins AS (INSERT ... SELECT * FROM unnest(CAST(:c AS type[]), ...) ON CONFLICT
    (event_id) DO NOTHING RETURNING 1) SELECT count(*) FROM ins`` — array types come from the
    table definition, so the statement follows the model."""
    dialect = postgresql.dialect()
    table = TelemetryRow.__table__
    arrays = ", ".join(f"CAST(:{c} AS {table.c[c].type.compile(dialect=dialect)}[])"
                       for c in _INSERT_COLUMNS)
    return text(f"WITH ins AS (INSERT INTO {table.name} ({', '.join(_INSERT_COLUMNS)}) "
                f"SELECT * FROM unnest({arrays}) ON CONFLICT (event_id) DO NOTHING RETURNING 1) "
                "SELECT count(*) FROM ins")


def _release_id(release: Any) -> int:
    if isinstance(release, int) and not isinstance(release, bool):
        return release
    if isinstance(release, dict) and isinstance(release.get("id"), int):
        return release["id"]
    rid = getattr(release, "id", None)
    if isinstance(rid, int):
        return rid
    raise TypeError(f"expected a release id or an object with an integer 'id', got {release!r}")


def _experiment_def(row: ExperimentRow) -> ExperimentDef:
    from registry.delivery import InvalidGuardrailError, parse_guardrails

    names = [str(a["name"]) for a in row.arms]
    weights = [int(a.get("weight", 0)) for a in row.arms]
    try:
        guardrails = {g.metric for g in parse_guardrails(row.guardrails)}
    except InvalidGuardrailError:
        guardrails = set()  # stored definitions were validated on the way in
    return ExperimentDef(name=row.name, arms=names, weights=weights, guardrail_metrics=guardrails)


def _kind_count(kind: str, extra: ColumnElement | None = None) -> ColumnElement:
    cond = T.kind == kind if extra is None else and_(T.kind == kind, extra)
    return func.sum(case((cond, 1), else_=0))


def _unit_flags(s: Session, where: ColumnElement) -> dict[str, dict[str, Any]]:
    """Per install id: what happened, reduced in the database to one row per device."""
    stmt = sa_select(
        T.install_id,
        func.max(case((T.kind == "download_finished", T.ts))),
        func.max(case((T.kind == "download_failed", T.ts))),
        _kind_count("install_ok"), _kind_count("install_failed"), _kind_count("crash"),
        _kind_count("inference"), _kind_count("inference", T.correct.is_not(None)),
        _kind_count("inference", T.correct.is_(True)),
        func.min(T.received_at),
    ).where(where).group_by(T.install_id)
    out = {}
    for (install_id, ok_ts, fail_ts, inst_ok, inst_fail, crash, inferences, rated, correct,
         first) in s.execute(stmt):
        # Both timestamps come back as the same type (text on SQLite, which sorts in time
        # order, datetime on PostgreSQL), so they compare directly.
        out[install_id] = {
            "downloaded": ok_ts is not None,
            "download_failed": fail_ts is not None and (ok_ts is None or fail_ts > ok_ts),
            "installed": bool(inst_ok), "install_failed": bool(inst_fail),
            "crashed": bool(crash), "active": bool(inferences),
            "rated": int(rated or 0), "correct": int(correct or 0), "first_seen": first,
        }
    return out


def _capped_latencies(s: Session, where: ColumnElement, cap: int) -> dict[str, list[float]]:
    """Up to ``cap`` inference latencies per install id, a reproducible pseudo-random sample:
    rows are ranked by event id, and event ids are random UUIDs."""
    ranked = sa_select(
        T.install_id, T.latency_ms,
        func.row_number().over(partition_by=T.install_id, order_by=T.event_id).label("rn"),
    ).where(where, T.kind == "inference", T.latency_ms.is_not(None)).subquery()
    stmt = sa_select(ranked.c.install_id, ranked.c.latency_ms).where(ranked.c.rn <= cap)
    out: dict[str, list[float]] = defaultdict(list)
    for install_id, ms in s.execute(stmt):
        out[install_id].append(float(ms))
    return out


def _unit(install_id: str, arm: str, day: date, flags: dict[str, Any] | None,
          latencies: list[float] | None) -> UnitSummary:
    f = flags or {}
    return UnitSummary(
        install_id=install_id, arm=arm, assigned_day=day,
        downloaded=f.get("downloaded", False), download_failed=f.get("download_failed", False),
        installed=f.get("installed", False), install_failed=f.get("install_failed", False),
        crashed=f.get("crashed", False), active=f.get("active", False),
        latencies_ms=list(latencies or []), rated=f.get("rated", 0), correct=f.get("correct", 0))


def _utc_day(value: Any) -> date:
    if isinstance(value, str):  # a raw SQLite aggregate
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).date()


def _uploaded_latency(metadata: dict[str, Any]) -> dict[str, float]:
    raw = metadata.get("latency_ms") or {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float))} \
        if isinstance(raw, dict) else {}


def _lookup_device(table: dict[str, Any], device: str | None) -> Any:
    """Exact device-model match first, then case- and space-insensitive ("Pixel 7" = "pixel7")."""
    if device is None:
        return None
    if device in table:
        return table[device]
    folded = {_fold(k): v for k, v in table.items()}
    return folded.get(_fold(device))


def _fold(name: str) -> str:
    return "".join(name.lower().split())
