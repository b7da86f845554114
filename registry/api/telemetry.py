"""Telemetry ingestion, per-device latency and experiment reports.

``POST /v1/telemetry`` is public (devices carry no API tokens) and therefore strict: the body
is size-limited before it is parsed and every event is validated (registry/telemetry/ingest.py).
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from registry.api._util import loads_strict, respond
from registry.auth import require_role
from registry.errors import UnsupportedMediaTypeError
from registry.observability import record_telemetry
from registry.ratelimit import telemetry_budget
from registry.schemas import validate_name
from registry.services import current_services
from registry.telemetry.errors import TelemetryBatchTooLargeError
from registry.telemetry.service import (
    experiment_report,
    experiment_report_html,
    record_batch,
    version_latency,
)

bp = Blueprint("telemetry", __name__)

#: Body bytes allowed per event of the batch limit. A full event is about 400 bytes; a
#: failure description may add 1,000 characters (up to 6 bytes each when JSON-escaped).
BYTES_PER_EVENT = 8192


def _telemetry_body() -> object:
    if request.mimetype != "application/json":
        raise UnsupportedMediaTypeError("send telemetry as application/json")
    limit = current_services().settings.max_telemetry_batch * BYTES_PER_EVENT
    if request.content_length is not None and request.content_length > limit:
        raise TelemetryBatchTooLargeError(f"the body is larger than {limit} bytes", limit=limit)
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise TelemetryBatchTooLargeError(f"the body is larger than {limit} bytes", limit=limit)
    return loads_strict(raw, max_bytes=limit)


@bp.post("/v1/telemetry")
def ingest():
    """Store a batch of device telemetry events (public)."""
    result = record_batch(current_services(), _telemetry_body(),
                          client_ip=request.remote_addr or "unknown", budget=telemetry_budget())
    record_telemetry(result)
    return respond(result)


@bp.get("/v1/models/<name>/versions/<int:number>/latency")
@require_role("reader")
def version_latency_table(name: str, number: int):
    """Per (variant, device model) latency percentiles of one version."""
    return respond(version_latency(current_services(), validate_name(name), number))


@bp.get("/v1/experiments/<name>/report")
@require_role("reader")
def report(name: str):
    """The experiment report as JSON."""
    return respond(experiment_report(current_services(), validate_name(name)))


@bp.get("/v1/experiments/<name>/report.html")
@require_role("reader")
def report_html(name: str):
    """The experiment report as a self-contained HTML page."""
    page = experiment_report_html(current_services(), validate_name(name))
    return Response(page, mimetype="text/html",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "default-src 'none'; "
                                                        "style-src 'unsafe-inline'; img-src data:"})
