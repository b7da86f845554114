"""Delivery: the device manifest, releases and rollouts, experiments, guardrail checks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response, request, url_for

from registry.api._util import artifact_url, body_bytes, json_body, respond
from registry.auth import current_actor, require_role
from registry.delivery import experiments, releases
from registry.delivery.guardrail_check import check_guardrails
from registry.delivery.manifest import manifest_answer
from registry.errors import ValidationError
from registry.observability import record_manifest
from registry.services import current_services

bp = Blueprint("delivery", __name__)
MAX_REASON = 1000  # characters of a reason (kept in the release, the experiment and the audit log)


def _body(allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, Any]:
    body = json_body()
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
                              field=unknown[0])
    for name in required:
        if body.get(name) is None:
            raise ValidationError(f"{name!r} is required", field=name)
    reason = body.get("reason", "")
    if not isinstance(reason, str | None) or len(reason or "") > MAX_REASON:  # {} was taken as ""
        raise ValidationError(f"'reason' must be a string of at most {MAX_REASON} characters",
                              field="reason")
    return body


# -- the device side ----------------------------------------------------------------------

@bp.get("/v1/manifest")
def manifest():
    """Signed manifest for one device (public)."""
    answer = manifest_answer(current_services(), request.args, artifact_url=artifact_url,
                             etag_matches=request.if_none_match.contains_weak)
    record_manifest(answer.status, answer.document, request.args)
    headers = {"Cache-Control": f"private, max-age={current_services().settings.manifest_max_age}"}
    if answer.status == 204:
        return Response(status=204, headers=headers)
    if answer.status == 304:
        resp = Response(status=304, headers=headers)
    else:
        body = json.dumps(answer.document, sort_keys=True, separators=(",", ":"))
        resp = Response(body, status=200, headers=headers, mimetype="application/json")
    resp.set_etag(answer.etag)
    return resp


@bp.get("/v1/rulesets/<model>/<channel>")
def ruleset(model: str, channel: str):
    """The signed ruleset of (model, channel) (public): the TUF target's exact bytes, with a
    strong ETag (their sha256), 304 and public cache headers, so any cache may serve it."""
    from registry.delivery.errors import RulesetNotFoundError
    from registry.delivery.rulesets import published_ruleset, ruleset_etag
    from registry.schemas import validate_name

    services = current_services()
    data = published_ruleset(services, validate_name(model), releases.validate_channel(channel))
    if data is None:
        raise RulesetNotFoundError(f"no ruleset is published for {model}/{channel}")
    etag = ruleset_etag(data)
    headers = {"Cache-Control": f"public, max-age={services.settings.ruleset_max_age}"}
    if request.if_none_match.contains(etag):
        resp = Response(status=304, headers=headers)
    else:
        resp = Response(data, status=200, headers=headers, mimetype="application/json")
    resp.set_etag(etag)
    return resp


# -- releases -----------------------------------------------------------------------------

@bp.post("/v1/models/<name>/releases")
@require_role("publisher")
def promote(name: str):
    body = _body(("version", "channel", "rollout_percent", "variant", "targeting", "guardrails",
                  "reason"), required=("version", "channel"))
    release = releases.promote(
        current_services(), name, body["version"], channel=body["channel"], actor=current_actor(),
        rollout_percent=body.get("rollout_percent", 100), variant=body.get("variant"),
        targeting=body.get("targeting"), guardrails=body.get("guardrails"),
        reason=body.get("reason") or "")
    return respond(release, 201, Location=url_for("delivery.list_releases", name=name,
                                                  channel=release.channel))


@bp.get("/v1/models/<name>/releases")
@require_role("reader")
def list_releases(name: str):
    return respond({"items": releases.history(current_services(), name, request.args.get("channel"))})


@bp.patch("/v1/models/<name>/channels/<channel>")
@require_role("publisher")
def update_channel(name: str, channel: str):
    body = _body(("rollout_percent", "paused", "reason"))
    return respond(releases.set_rollout(
        current_services(), name, channel, actor=current_actor(),
        rollout_percent=body.get("rollout_percent"), paused=body.get("paused"),
        reason=body.get("reason") or ""))


@bp.post("/v1/models/<name>/channels/<channel>/rollback")
@require_role("publisher")
def rollback(name: str, channel: str):
    body = _body(("to_version", "reason")) if body_bytes() else {}
    release = releases.rollback(current_services(), name, channel, actor=current_actor(),
                                to_version=body.get("to_version"),
                                reason=body.get("reason") or "")
    return respond(release, 201)


# -- experiments ----------------------------------------------------------------------------

@bp.post("/v1/experiments")
@require_role("publisher")
def create_experiment():
    body = _body(("name", "model", "channel", "arms", "weights", "coverage_percent", "seed",
                  "targeting", "guardrails"), required=("name", "model", "channel", "arms"))
    experiment = experiments.create_experiment(
        current_services(), body["name"], model=body["model"], channel=body["channel"],
        arms=body["arms"], actor=current_actor(), weights=body.get("weights"),
        coverage_percent=body.get("coverage_percent", 100), seed=body.get("seed"),
        targeting=body.get("targeting"), guardrails=body.get("guardrails"))
    return respond(experiment, 201,
                   Location=url_for("delivery.get_experiment", name=experiment.name))


@bp.get("/v1/experiments")
@require_role("reader")
def list_experiments():
    return respond({"items": experiments.list_experiments(
        current_services(), request.args.get("model"), request.args.get("status"))})


@bp.get("/v1/experiments/<name>")
@require_role("reader")
def get_experiment(name: str):
    return respond(experiments.get_experiment(current_services(), name))


@bp.patch("/v1/experiments/<name>")
@require_role("publisher")
def update_experiment(name: str):
    body = _body(("coverage_percent", "paused", "reason"))
    return respond(experiments.update_experiment(
        current_services(), name, actor=current_actor(), coverage_percent=body.get("coverage_percent"),
        paused=body.get("paused"), reason=body.get("reason") or ""))


@bp.post("/v1/experiments/<name>/stop")
@require_role("publisher")
def stop_experiment(name: str):
    body = _body(("winner", "reason")) if body_bytes() else {}
    stopped, release = experiments.stop_experiment(
        current_services(), name, actor=current_actor(), winner=body.get("winner"),
        reason=body.get("reason") or "")
    return respond({"experiment": stopped, "release": release})


# -- guardrails ---------------------------------------------------------------------------

@bp.post("/v1/guardrails/check")
@require_role("admin")
def check():
    return respond({"halted": [h.to_dict() for h in check_guardrails(current_services())]})
