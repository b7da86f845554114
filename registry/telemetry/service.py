"""The telemetry services the API, the dashboard and the CLI share: ingest a batch, build an
experiment report (JSON and HTML), read a version's per-device latency.

Reports are computed when asked for, from the stored events; ingestion only inserts. A slow
report therefore never slows devices down, and a report is always as fresh as the data.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from registry import reports  # its statistics and charts load on first use (registry/reports/__init__.py)
from registry.telemetry.ingest import Rejection, validate_batch

__all__ = ["experiment_report", "experiment_report_html", "experiment_report_page", "record_batch",
           "version_latency"]

log = logging.getLogger("modeldrop.telemetry")


def record_batch(services: Any, body: object, *, client_ip: str | None = None,
                 budget: Any = None) -> dict[str, Any]:
    """Validate and store one ``POST /v1/telemetry`` body.

    Returns:
        ``{"accepted": n, "duplicates": n, "rejected": [{"index", "field", "error"}]}``:
        ``accepted`` events were new and stored, ``duplicates`` were already stored (or
        repeated within the batch) and change nothing, ``rejected`` were invalid and dropped.

    Raises:
        ValidationError / TelemetryBatchTooLargeError: the body as a whole is unusable;
            nothing is stored.
    """
    batch = validate_batch(body, services.settings.max_telemetry_batch)
    if budget is not None:
        if client_ip is not None:
            budget.charge_ip(client_ip, len(batch.rows))
        _drop_over_budget(batch, budget, body)
    kept = {r["install_id"] for r in batch.rows}  # not the ones over their budget
    _register_local_decisions(services, [d for d in batch.decisions if d["install_id"] in kept])
    _flag_unserved(services, batch.rows)
    accepted = services.store.insert_telemetry(batch.rows)
    flagged = {(r["model"], r["install_id"]) for r in batch.rows if r["unserved"]}
    if flagged:  # a served row another web process had not written yet (registry/store/_served.py)
        services.store.recount_served(flagged)
    if batch.rejected:
        log.info("telemetry: %d of %d events rejected (first: index %d, %s: %s)",
                 len(batch.rejected), len(batch.rows) + batch.repeats + len(batch.rejected),
                 batch.rejected[0].index, batch.rejected[0].field, batch.rejected[0].error)
    return {"accepted": accepted,
            "duplicates": batch.repeats + len(batch.rows) - accepted,
            "rejected": [r.to_dict() for r in batch.rejected]}


def _drop_over_budget(batch: Any, budget: Any, body: Any) -> None:
    """Reject the events of install ids over their budget (by index, like invalid events)."""
    over = budget.over_budget([r["install_id"] for r in batch.rows])
    if not over:
        return
    index_of = {str(e.get("id", "")).lower(): i for i, e in enumerate(body["events"])
                if isinstance(e, dict)}
    kept = []
    for row in batch.rows:
        if row["install_id"] in over:
            batch.rejected.append(Rejection(
                index_of.get(row["event_id"], -1), "install_id",
                f"over the budget of {budget.per_install} events per hour for one install id"))
        else:
            kept.append(row)
    batch.rows[:] = kept


def _register_local_decisions(services: Any, decisions: list[dict[str, Any]]) -> None:
    """Devices that decided locally report their decision with their events: the server
    recomputes it from the install id and, when it agrees, records the device as served
    (and its arm as assigned), so guardrails and reports count it as if it had been sent a
    manifest; otherwise its events stay flagged unserved."""
    from registry.delivery.rulesets import check_local_decision

    done: set[tuple] = set()
    for d in decisions:
        key = tuple(sorted(d.items()))
        if key not in done:
            done.add(key)
            check_local_decision(services, d["model"], d["channel"], d["release_counter"],
                                 d["version"], d["variant"], d["experiment"], d["arm"],
                                 d["install_id"], platform=d["platform"])


def _flag_unserved(services: Any, rows: list[dict[str, Any]]) -> None:
    """Mark events from install ids the server never served that model (stored, not counted)."""
    served = services.store.served_pairs((r["model"], r["install_id"]) for r in rows)
    for row in rows:
        row["unserved"] = (row["model"], row["install_id"]) not in served


def version_latency(services: Any, name: str, number: int) -> dict[str, Any]:
    """Per (variant, device model) latency of one version, with uploaded and reference figures."""
    return services.store.version_latency(name, number)


def experiment_report(services: Any, experiment: Any, *, bootstrap_samples: int = 1000,
                      latency_cap: int | None = None) -> dict[str, Any]:
    """The experiment report (docs/reports.md) plus a ``source`` section saying what it was
    computed from and when."""
    kwargs = {} if latency_cap is None else {"latency_cap": latency_cap}
    exp, units, source = services.store.experiment_units(experiment, **kwargs)
    report = reports.build_report(exp, units, bootstrap_samples=bootstrap_samples)
    unassigned = source["unassigned_installs_with_telemetry"]
    if unassigned:
        report["health"].append({
            "level": "info", "code": "telemetry_without_assignment",
            "message": f"{unassigned} install ids sent telemetry for this experiment but have no "
                       "assignment; they are not units of the report"})
    if source.get("excluded_unserved_events"):
        report["health"].append({
            "level": "info", "code": "telemetry_from_unserved_installs",
            "message": f"{source['excluded_unserved_events']} events from "
                       f"{source['excluded_unserved_installs']} install ids the server never "
                       "served were excluded (stored, not counted)"})
    source["generated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report["source"] = source
    return report


def experiment_report_page(services: Any, experiment: Any) -> tuple[dict[str, Any], str]:
    """The report and its self-contained HTML page (charts inlined as SVG)."""
    report = experiment_report(services, experiment)
    return report, reports.render_report_html(report, reports.render_charts(report))


def experiment_report_html(services: Any, experiment: Any) -> str:
    """The self-contained HTML page of the report."""
    return experiment_report_page(services, experiment)[1]
