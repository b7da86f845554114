"""Health and the OpenAPI document, which is generated from the live URL map so that every
route is described (a test keeps it that way)."""

from __future__ import annotations

import re

from flask import Blueprint, current_app

from registry import __version__
from registry.api._util import respond
from registry.auth import require_role
from registry.services import current_services

bp = Blueprint("meta", __name__)
_PARAM_RE = re.compile(r"<(?:(\w+):)?(\w+)>")

# What each endpoint takes and returns, beyond what the URL map says.
DESCRIPTIONS: dict[str, dict] = {
    "meta.metrics": {"summary": "Prometheus metrics (text/plain exposition, reader): requests and "
                                "latency by route and status, manifest decisions by model, channel "
                                "and arm, telemetry events by outcome, jobs by kind and state, queue "
                                "depth and oldest job age, guardrail halts"},
    "meta.healthz": {"summary": "Liveness and database check; says whether the converter sandbox is full "
                               "or degraded, how many conversion workers are alive and how old the "
                               "oldest queued job is (503 when `modeldrop serve` has no live worker)"},
    "meta.openapi": {"summary": "This document"},
    "models.list_models": {"summary": "List models", "response": "ModelOut", "list": True},
    "models.get_model": {"summary": "One model", "response": "ModelOut"},
    "models.patch_model": {"summary": "Model-wide settings: description, "
                                      "accuracy_drop_threshold_pp (audited)",
                           "request": "ModelPatch", "response": "ModelOut"},
    "models.create_version": {
        "summary": "Upload a model version (multipart: file, metadata JSON, optional eval .npz, "
                   "optional version number). 201 created, 200 identical bytes already uploaded.",
        "multipart": True, "response": "VersionOut", "request": "VersionMetadata"},
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
                           "response": "TokenOut"},
    "admin.list_tokens": {"summary": "List API tokens", "response": "TokenOut", "list": True},
    "admin.revoke_token": {"summary": "Revoke an API token"},
    "admin.audit_log": {"summary": "Audit log, newest first (?limit=, ?action=, ?actor=, "
                                   "?system=false leaves out the server's own rows)",
                        "response": "AuditOut", "list": True},
    "admin.rotate_key": {"summary": "Rotate a signing key (root, targets, snapshot, timestamp, manifest)"},
    "tuf.metadata": {"summary": "TUF metadata file (signed bytes, unchanged)", "binary": True},
    "tuf.target": {"summary": "TUF target file (consistent snapshot name)", "binary": True},
    "tuf.trusted_root": {"summary": "Current TUF root metadata"},
    "tuf.public_keys": {"summary": "Manifest (director) public keys"},
    "delivery.ruleset": {"summary": "Signed ruleset of (model, channel) (public): the TUF target "
                         "rulesets/<model>/<channel>.json, strong ETag, 304, public caching"},
    "delivery.manifest": {"summary": "Signed manifest for one device (public): model, channel, "
                                     "platform, install_id, os_version, device_model, "
                                     "app_version, region, installed_sha256. 200 signed JSON "
                                     "with ETag, 304 on If-None-Match, 204 when no release "
                                     "targets the device"},
    "delivery.promote": {"summary": "Promote a version to a channel: a new release (version, "
                                    "channel, rollout_percent, variant, targeting, guardrails, "
                                    "reason); 201", "response": "ReleaseOut"},
    "delivery.list_releases": {"summary": "Release history, newest first per channel "
                                          "(?channel=): counter, version, rollout, state, who, "
                                          "when, why", "response": "ReleaseOut", "list": True},
    "delivery.update_channel": {"summary": "Change the newest release of a channel: "
                                           "rollout_percent, paused (pause/resume), reason",
                                "response": "ReleaseOut"},
    "delivery.rollback": {"summary": "Roll back: a new release (higher counter) pointing at an "
                                     "older version (to_version, reason); 201",
                          "response": "ReleaseOut"},
    "delivery.create_experiment": {"summary": "Start an A/B experiment (name, model, channel, "
                                              "arms, weights, coverage_percent, seed, targeting, "
                                              "guardrails); 201", "response": "ExperimentOut"},
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
                                         "charts (text/html)"},
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


def _add_worker_health(svc, body: dict) -> int:  # noqa: ANN001 - Services
    """Worker liveness and the queue's oldest job (registry.jobs: ``workers``); 503 when this
    process owns its workers and none is alive."""
    from registry.jobs.worker import stale_after
    from registry.models import utcnow

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
        body["status"] = "no_workers"
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
                                        "schema": {"type": "integer" if m.group(1) == "int"
                                                   else "string"}}
                                       for m in _PARAM_RE.finditer(rule.rule)],
                        "responses": _responses(info, schema_names)}
            role = getattr(view, "required_role", None)
            if role:
                op["security"] = [{"bearer": []}]
                op["x-required-role"] = role
            if info.get("request"):
                schema_names.add(info["request"])
                ref = {"$ref": f"#/components/schemas/{info['request']}"}
                if info.get("multipart"):
                    op["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                        "schema": {"type": "object", "required": ["file"], "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "eval": {"type": "string", "format": "binary"},
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
    return {"openapi": "3.1.0",
            "info": {"title": "ModelDrop", "version": __version__,
                     "description": "Model registry and over-the-air model delivery. Errors are "
                                    "application/problem+json with a stable `code`."},
            "paths": dict(sorted(paths.items())), "components": components}


def _responses(info: dict, schema_names: set[str]) -> dict:
    problem = {"description": "Error", "content": {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}}
    if info.get("binary"):
        ok = {"description": "Bytes", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}}
    elif info.get("response"):
        schema_names.add(info["response"])
        ref = {"$ref": f"#/components/schemas/{info['response']}"}
        schema = {"type": "object", "properties": {"items": {"type": "array", "items": ref}}} \
            if info.get("list") else ref
        ok = {"description": "OK", "content": {"application/json": {"schema": schema}}}
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {"200": ok, "default": problem}
