"""Health and the OpenAPI document, which is generated from the live URL map so that every
route is described (a test keeps it that way)."""

from __future__ import annotations

import re

from flask import Blueprint, current_app

from registry import __version__
from registry.api._util import respond
from registry.auth import require_role
from registry.convert.catalog import VARIANTS
from registry.services import current_services

bp = Blueprint("meta", __name__)
_PARAM_RE = re.compile(r"<(?:(\w+):)?(\w+)>")
_INT64_MAX = 2**63 - 1

# What the path parameters accept, by name (an endpoint's "path" entry overrides). The
# patterns are the server's own validation; schemathesis (tests/test_schemathesis.py) checks
# that what they allow is accepted and what they refuse is refused.
_NAME = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]{0,63}$"}
_CHANNEL = {"type": "string", "pattern": r"^[a-z0-9-]{1,32}$"}
_SHA256 = {"type": "string", "pattern": r"^[0-9a-f]{64}$"}
_TEXT = {"type": "string", "maxLength": 128}
PATH_PARAMS = {"name": _NAME, "model": _NAME, "channel": _CHANNEL, "sha256": _SHA256,
               "job_id": {"type": "string", "minLength": 1}, "target": {"type": "string"}}


def _q(name: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


_JV = {"$ref": "#/components/schemas/JsonValue"}
_MODEL = {"type": "string", "minLength": 1}
_TARGETING = {"type": "object", "additionalProperties": False,
              "description": "Device targeting (docs/delivery.md); every field optional",
              "properties": {
                  # null leaves a field out, as if it were not sent
                  "platforms": {"type": ["array", "null"], "minItems": 1,
                                "items": {"enum": ["ios", "android", "linux"]}},
                  "device_models": {"type": ["array", "null"], "minItems": 1, "items": _MODEL},
                  "device_model_prefixes": {"type": ["array", "null"], "minItems": 1, "items": _MODEL},
                  "regions": {"type": ["array", "null"], "minItems": 1,
                              "items": {"type": "string", "pattern": "^[A-Za-z]{2}$"}},
                  "os_version": {"type": ["string", "null"], "pattern": r"^>=\d{1,3}(\.\d{1,3}){0,2}$",
                                 "description": "a version range such as '>=14,<16'"},
                  "app_version": {"type": ["string", "null"], "pattern": r"^>=\d{1,3}(\.\d{1,3}){0,2}$",
                                  "description": "a version range such as '>=2.1'"}}}
_GUARDRAILS = {"type": "array", "maxItems": 0,
               "description": "guardrail expressions such as 'load_failure_rate < 0.02' "
                              "(docs/delivery.md, 'Guardrails'); their grammar is not a JSON "
                              "schema, so this document admits only the empty list"}
_REASON = {"type": "string", "maxLength": 1000}
# Rollouts and coverage are kept in basis points: at most two decimals.
_PERCENT = {"type": "number", "minimum": 0, "maximum": 100, "multipleOf": 0.01}
BODIES: dict[str, dict] = {
    # null is "not given" in the optional fields of these bodies (the CLI sends it so).
    "delivery.promote": {"type": "object", "additionalProperties": False,
                         "required": ["version", "channel"], "properties": {
                             "version": {"type": "integer", "minimum": 1, "maximum": _INT64_MAX},
                             "channel": _CHANNEL,
                             "rollout_percent": _PERCENT,
                             "variant": {"enum": [*VARIANTS, None]},
                             "targeting": {"anyOf": [_TARGETING, {"type": "null"}]},
                             "guardrails": {"anyOf": [_GUARDRAILS, {"type": "null"}]},
                             "reason": {"anyOf": [_REASON, {"type": "null"}]}}},
    "delivery.update_channel": {
        "type": "object", "additionalProperties": False, "properties": {
            "rollout_percent": {"anyOf": [_PERCENT, {"type": "null"}]},
            "paused": {"type": ["boolean", "null"]}, "reason": {"anyOf": [_REASON, {"type": "null"}]}},
        "anyOf": [{"required": ["rollout_percent"], "properties": {"rollout_percent": _PERCENT}},
                  {"required": ["paused"], "properties": {"paused": {"type": "boolean"}}}]},
    "delivery.rollback": {"type": "object", "additionalProperties": False, "properties": {
        "to_version": {"type": "integer", "minimum": 1, "maximum": _INT64_MAX}, "reason": _REASON}},
    "delivery.create_experiment": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "model", "channel", "arms"], "properties": {
            "name": _NAME, "model": _NAME, "channel": _CHANNEL,
            "arms": {"type": "array", "minItems": 2, "maxItems": 10, "uniqueItems": True,
                     "description": "arm names must differ", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "version"],
                "properties": {"name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"},
                               "version": {"type": "integer", "minimum": 1, "maximum": _INT64_MAX},
                               "variant": {"type": "string"},
                               "weight": {"type": "number", "minimum": 0, "maximum": 100}}}},
            "coverage_percent": _PERCENT,
            "seed": {"type": "string", "pattern": "^[!-~]{1,64}$"},
            "targeting": _TARGETING, "guardrails": _GUARDRAILS}},
    "delivery.update_experiment": {
        "type": "object", "additionalProperties": False, "properties": {
            "coverage_percent": {"anyOf": [_PERCENT, {"type": "null"}]},
            "paused": {"type": ["boolean", "null"]}, "reason": {"anyOf": [_REASON, {"type": "null"}]}},
        "anyOf": [{"required": ["coverage_percent"], "properties": {"coverage_percent": _PERCENT}},
                  {"required": ["paused"], "properties": {"paused": {"type": "boolean"}}}]},
    "delivery.stop_experiment": {"type": "object", "additionalProperties": False, "properties": {
        "winner": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,31}$"}, "reason": _REASON}},
    "admin.rotate_key": {"type": "object", "required": ["role"], "additionalProperties": False,
                         "properties": {
        "role": {"enum": ["root", "targets", "snapshot", "timestamp", "manifest"]}}},
    "telemetry.ingest": {"type": "object", "required": ["events"], "additionalProperties": False,
                         "properties": {
        "events": {"type": "array", "maxItems": 1000, "items": _JV,
                   "description": "event objects (docs/wire-format.md); each is validated on "
                                  "its own, and one that is not valid (not even an object) is "
                                  "listed under rejected while the rest are stored"}}},
}
#: Bodies that may be left out altogether (the route then takes its defaults).
OPTIONAL_BODIES = {"delivery.rollback", "delivery.stop_experiment"}
_BOOL = {"type": "string", "enum": ["true", "false", "1", "0"]}
QUERIES: dict[str, list[dict]] = {
    "models.list_versions": [_q("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                             _q("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"})],
    "admin.audit_log": [_q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _q("action", {"type": "string"}), _q("actor", {"type": "string"}),
                        _q("system", _BOOL)],
    "delivery.list_releases": [_q("channel", _CHANNEL)],
    "delivery.list_experiments": [_q("model", _NAME),
                                  _q("status", {"enum": ["running", "paused", "stopped"]})],
    "delivery.manifest": [
        _q("model", _NAME, True), _q("channel", _CHANNEL),
        _q("install_id", {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{7,63}$"}, True),
        _q("platform", {"enum": ["ios", "android", "linux"]}, True),
        _q("os_version", {"type": "string", "pattern": r"^\d{1,3}(\.\d{1,3}){0,2}$"}),
        _q("device_model", {"type": "string", "pattern": "^[A-Za-z0-9 ._-]{1,64}$"}),
        _q("app_version", {"type": "string", "pattern": r"^\d{1,3}(\.\d{1,3}){0,2}$"}),
        _q("region", {"type": "string", "pattern": "^[A-Za-z]{2}$"}),
        _q("installed_sha256", {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"})],
}

# What each endpoint takes and returns, beyond what the URL map says.
DESCRIPTIONS: dict[str, dict] = {
    "meta.metrics": {"summary": "Prometheus metrics (text/plain exposition, reader): requests and "
                                "latency by route and status, manifest decisions by model, channel "
                                "and arm, telemetry events by outcome, jobs by kind and state, queue "
                                "depth and oldest job age, guardrail halts", "text": True},
    "meta.healthz": {"summary": "Liveness and database check; says whether the converter sandbox is full "
                               "or degraded, how many conversion workers are alive and how old the "
                               "oldest queued job is (503 `no_workers` when no conversion worker is alive: "
                               "`modeldrop serve`'s own, or Celery workers answering a ping)"},
    "meta.openapi": {"summary": "This document"},
    "models.list_models": {"summary": "List models", "response": "ModelOut", "list": True},
    "models.get_model": {"summary": "One model", "response": "ModelOut"},
    "models.patch_model": {"summary": "Model-wide settings: description, "
                                      "accuracy_drop_threshold_pp, max_relative_rmse (audited)",
                           "request": "ModelPatch", "response": "ModelOut"},
    "models.create_version": {
        "summary": "Upload a model version (multipart: file, metadata JSON, optional eval .npz, "
                   "optional artifact parts (your own .tflite / .mlpackage.zip / .mlmodel, attached as "
                   "extra variants), optional version number). 201 created, 200 identical bytes already "
                   "uploaded, 409 the same source with other attachments.",
        "multipart": True, "response": "VersionOut", "request": "VersionMetadata",
        "status": (200, 201)},
    "models.list_versions": {"summary": "Versions, newest first (limit, cursor)",
                             "response": "VersionOut", "list": True},
    "models.get_version": {"summary": "One version with its variants", "response": "VersionOut"},
    "models.patch_version": {"summary": "Update metadata (audited)", "request": "MetadataPatch",
                             "response": "VersionOut"},
    "models.retry_version": {"summary": "Re-run a failed conversion (optional multipart eval .npz, "
                                        "metadata JSON, reason); 202 version + job id; audited",
                             "response": "VersionOut"},
    "models.get_job": {"summary": "Conversion job state and progress", "response": "JobOut"},
    "artifacts.get_artifact": {"summary": "Download an artifact by sha256 (Range, If-Range, "
                                          "If-None-Match; immutable); reader token unless released", "binary": True},
    "admin.create_token": {"summary": "Create an API token", "request": "TokenCreate",
                           "response": "TokenOut", "status": (201,)},
    "admin.list_tokens": {"summary": "List API tokens", "response": "TokenOut", "list": True},
    "admin.revoke_token": {"summary": "Revoke an API token"},
    "admin.audit_log": {"summary": "Audit log, newest first (?limit=, ?action=, ?actor=, "
                                   "?system=false leaves out the server's own rows)",
                        "response": "AuditOut", "list": True},
    "admin.rotate_key": {"summary": "Rotate a signing key (root, targets, snapshot, timestamp, manifest)"},
    "tuf.metadata": {"summary": "TUF metadata file (signed bytes, unchanged)", "raw_json": True,
                     "path": {"name": {"type": "string", "pattern":
                                       r"^([1-9][0-9]{0,18}\.)?(root|targets|snapshot|timestamp)\.json$"}}},
    "tuf.target": {"summary": "TUF target file (consistent snapshot name)", "binary": True},
    "tuf.trusted_root": {"summary": "Current TUF root metadata", "raw_json": True},
    "tuf.public_keys": {"summary": "Manifest (director) public keys"},
    "delivery.ruleset": {"summary": "Signed ruleset of (model, channel) (public): the TUF target "
                         "rulesets/<model>/<channel>.json, strong ETag, 304, public caching"},
    "delivery.manifest": {"summary": "Signed manifest for one device (public): model, channel, "
                                     "platform, install_id, os_version, device_model, "
                                     "app_version, region, installed_sha256. 200 signed JSON "
                                     "with ETag, 304 on If-None-Match, 204 when no release "
                                     "targets the device",
                          "empty": {204: "No release targets this device",
                                    304: "Not modified (If-None-Match)"}},
    "delivery.promote": {"summary": "Promote a version to a channel: a new release (version, "
                                    "channel, rollout_percent, variant, targeting, guardrails, "
                                    "reason); 201", "response": "ReleaseOut", "status": (201,)},
    "delivery.list_releases": {"summary": "Release history, newest first per channel "
                                          "(?channel=): counter, version, rollout, state, who, "
                                          "when, why", "response": "ReleaseOut", "list": True},
    "delivery.update_channel": {"summary": "Change the newest release of a channel: "
                                           "rollout_percent, paused (pause/resume), reason",
                                "response": "ReleaseOut"},
    "delivery.rollback": {"summary": "Roll back: a new release (higher counter) pointing at an "
                                     "older version (to_version, reason); 201",
                          "response": "ReleaseOut", "status": (201,)},
    "delivery.create_experiment": {"summary": "Start an A/B experiment (name, model, channel, "
                                              "arms, weights, coverage_percent, seed, targeting, "
                                              "guardrails); 201", "response": "ExperimentOut",
                                   "status": (201,)},
    "delivery.list_experiments": {"summary": "Experiments, newest first (?model=, ?status=)",
                                  "response": "ExperimentOut", "list": True},
    "delivery.get_experiment": {"summary": "Experiment definition: seed, hash_version 2, arms "
                                           "with basis-point ranges, coverage, targeting, "
                                           "status", "response": "ExperimentOut"},
    "delivery.update_experiment": {"summary": "Change an experiment's coverage_percent, or "
                                              "pause/resume enrolment (paused)",
                                   "response": "ExperimentOut"},
    "delivery.stop_experiment": {"summary": "Stop an experiment; with a winner, release that "
                                            "arm at 100% of the experiment's targeting"},
    "delivery.check": {"summary": "Evaluate every guardrail now; halts breached releases and "
                                  "experiments (admin)"},
    "telemetry.ingest": {"summary": "Device telemetry batch (public; <= max_telemetry_batch "
                                    "events). 200 with accepted, duplicates and rejected "
                                    "[{index, field, error}]: valid events are stored, invalid "
                                    "ones dropped; 400/413 for a malformed or oversized body"},
    "telemetry.version_latency_table": {"summary": "Per-device latency of a version: count, "
                                                   "p50/p90/p99 per variant x device model, with "
                                                   "uploaded and reference figures"},
    "telemetry.report": {"summary": "Experiment report (intent-to-treat funnel, SRM, metrics "
                                    "with lift, 95% CI, p-values, latency percentiles)"},
    "telemetry.report_html": {"summary": "Experiment report as a self-contained HTML page with "
                                         "charts (text/html)", "html": True},
}


@bp.get("/healthz")
def healthz():
    svc = current_services()
    svc.store.has_tokens()  # touches the database
    from registry.jobs.sandbox import Sandbox

    sandbox = Sandbox(svc.settings).status()
    body = {"status": "ok", "version": __version__, "database": svc.store.dialect,
            "blob_backend": svc.settings.blob_backend, "job_backend": svc.settings.job_backend,
            "sandbox": sandbox.state}
    if sandbox.reason:
        body["sandbox_reason"] = sandbox.reason
    status = _add_worker_health(svc, body)
    return respond(body, status)


def _add_worker_health(svc, body: dict) -> int:
    """Worker liveness and the queue's oldest job (registry.jobs: ``workers``); 503 when this
    process owns its workers and none is alive."""
    from registry.jobs.worker import stale_after
    from registry.tables import utcnow

    queue = svc.store.job_queue(stale_after(svc.settings))
    oldest = queue.oldest_queued_at
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=utcnow().tzinfo)
    body["queue"] = {"queued": queue.queued, "running": queue.running,
                     "stale_running": queue.stale_running,
                     "oldest_queued_age": None if oldest is None
                     else round((utcnow() - oldest).total_seconds(), 1)}
    workers = svc.jobs.workers()
    body["workers"] = workers
    if svc.jobs.needs_workers() and workers is not None and not workers.get("alive"):
        # alive 0: no worker answered; alive None: the broker itself did not (Celery)
        body["status"] = "no_workers" if workers.get("alive") == 0 else "broker_unreachable"
        return 503
    return 200


@bp.get("/metrics")
@require_role("reader")
def metrics():
    """Prometheus metrics (text exposition format)."""
    from registry.observability import metrics_response

    return metrics_response(current_services())


@bp.get("/openapi.json")
def openapi():
    return respond(build_openapi())


def build_openapi() -> dict:
    from registry import schemas

    paths: dict[str, dict] = {}
    schema_names: set[str] = set()
    for rule in current_app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _PARAM_RE.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        view = current_app.view_functions[rule.endpoint]
        info = DESCRIPTIONS.get(rule.endpoint, {})
        for method in sorted(rule.methods - {"OPTIONS", "HEAD"}):
            op: dict = {"operationId": rule.endpoint.replace(".", "_") + "_" + method.lower(),
                        "summary": info.get("summary") or (view.__doc__ or rule.endpoint).strip()
                        .splitlines()[0],
                        "tags": [rule.endpoint.split(".")[0]],
                        "parameters": [{"name": m.group(2), "in": "path", "required": True,
                                        "schema": _path_schema(info, m.group(1), m.group(2))}
                                       for m in _PARAM_RE.finditer(rule.rule)]
                        + QUERIES.get(rule.endpoint, []),
                        "responses": _responses(rule.endpoint, info, schema_names)}
            role = getattr(view, "required_role", None)
            if role:
                op["security"] = [{"bearer": []}]
                op["x-required-role"] = role
            if rule.endpoint in BODIES:
                op["requestBody"] = {"required": rule.endpoint not in OPTIONAL_BODIES,
                                     "content": {"application/json": {"schema": BODIES[rule.endpoint]}}}
            elif info.get("request"):
                schema_names.add(info["request"])
                ref = {"$ref": f"#/components/schemas/{info['request']}"}
                if info.get("multipart"):
                    op["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                        "schema": {"type": "object", "required": ["file"], "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "eval": {"type": "string", "format": "binary"},
                            "artifact": {
                                "type": "array", "maxItems": 3, "items": {"type": "string", "format": "binary"},
                                "description": "your own conversion of the source (.tflite, .mlpackage.zip, "
                                               ".mlmodel; repeatable, at most one per format): an extra variant "
                                               "tflite-attached / coreml-attached / coreml-attached-mlmodel, "
                                               "served as these exact bytes and measured against the source "
                                               "(docs/conversion.md, 'Attach your own artifact to a source')"},
                            "metadata": {"type": "string", "description": "JSON document", **ref},
                            "version": {"type": "integer"}}}}}}
                else:
                    op["requestBody"] = {"required": True,
                                         "content": {"application/json": {"schema": ref}}}
            paths.setdefault(path, {})[method.lower()] = op
    components = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                  "schemas": {"Problem": {"type": "object", "properties": {
                      k: {"type": "string"} for k in ("type", "title", "detail", "code", "instance")}
                      | {"status": {"type": "integer"}}}}}
    for name in sorted(schema_names):
        model = getattr(schemas, name, None)
        if model is not None:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for def_name, definition in js.pop("$defs", {}).items():
                components["schemas"][def_name] = definition
            components["schemas"][name] = js
    components["schemas"]["JsonValue"] = JSON_VALUE
    _free_form_to_json_value(components["schemas"])
    return {"openapi": "3.1.0",
            "info": {"title": "ModelDrop", "version": __version__,
                     "description": "Model registry and over-the-air model delivery. Errors are "
                                    "application/problem+json with a stable `code`."},
            "paths": dict(sorted(paths.items())), "components": components}


# Any JSON value the server accepts in a free-form field (``extra``): numbers within the 64-bit
# range (registry/api/_util.loads_strict), nesting within MODELDROP_MAX_JSON_DEPTH.
JSON_VALUE = {"anyOf": [{"type": ["string", "boolean", "null"]},
                        {"type": "number", "minimum": -(2**63), "maximum": _INT64_MAX},
                        {"type": "array", "items": _JV},
                        {"type": "object", "additionalProperties": _JV}]}


def _free_form_to_json_value(node: object) -> None:
    """pydantic writes ``dict[str, Any]`` as an object of anything (say what anything is) and
    numbers without bounds (give them the parser's)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and node.get("additionalProperties") is True:
            node["additionalProperties"] = _JV
        if node.get("type") in ("number", "integer"):  # every number a client sends
            node.setdefault("minimum", -(2**63))
            node.setdefault("maximum", _INT64_MAX)
        for value in node.values():
            _free_form_to_json_value(value)
    elif isinstance(node, list):
        for value in node:
            _free_form_to_json_value(value)


def _path_schema(info: dict, converter: str | None, name: str) -> dict:
    if name in info.get("path", {}):
        return info["path"][name]
    if converter == "int":
        return {"type": "integer", "minimum": 0, "maximum": _INT64_MAX}
    return PATH_PARAMS.get(name, {"type": "string"})


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_HTML = {"text/html": {"schema": {"type": "string"}}}
_BYTES = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _responses(endpoint: str, info: dict, schema_names: set[str]) -> dict:
    """What the route really answers: its success status(es) and media type, its redirects,
    and problem+json (or an HTML page on the dashboard) for every error."""
    if endpoint.startswith("web."):
        out = {"200": {"description": "HTML page", "content": _HTML},
               "302": {"description": "Not signed in: to the sign-in page"},
               "303": {"description": "Signed in or out: to the next page"}}
        if endpoint in ("web.login_submit", "web.logout"):
            del out["200"], out["302"]
        return out | {"default": {"description": "Error page (HTML) or problem",
                                  "content": _HTML | _PROBLEM}}
    if info.get("html"):
        ok = {"description": "HTML page", "content": _HTML}
    elif info.get("text"):
        ok = {"description": "Plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    elif info.get("binary"):
        ok = {"description": "Bytes", "content": _BYTES}
    elif info.get("raw_json"):
        ok = {"description": "Signed JSON bytes, unchanged",
              "content": {"application/json": {"schema": {"type": "object"}}}}
    elif info.get("response"):
        schema_names.add(info["response"])
        ref = {"$ref": f"#/components/schemas/{info['response']}"}
        schema = {"type": "object", "properties": {"items": {"type": "array", "items": ref}}} \
            if info.get("list") else ref
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    out = {str(status): ok for status in info.get("status", (200,))}
    for status, what in info.get("empty", {}).items():
        out[str(status)] = {"description": what}
    if info.get("binary"):
        out["206"] = {"description": "Partial content (Range)", "content": _BYTES}
        out["304"] = {"description": "Not modified (If-None-Match)"}
    return out | {"default": {"description": "Error", "content": _PROBLEM}}
