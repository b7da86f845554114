"""Dashboard actions: promote, set rollout, pause/resume, roll back, start/stop experiments,
change coverage, retry a failed conversion.

Each action is two requests. The button on the page where the decision is made sends a GET
to the action's URL, which shows a confirmation page restating what will happen ("Promote v5
to production at 10%?") with a reason field and a "Confirm" button; that form POSTs back to
the same URL with the session's anti-forgery token. Both steps need the publisher role (a
reader sees no buttons and a forged POST gets 403). The POST makes the same service call as
the API route and the CLI (``registry.delivery.releases``, ``registry.delivery.experiments``,
``registry.upload_service``), so the rules, the audit row (the signed-in token's name and the
reason) and the errors are theirs; afterwards the browser is sent to the page with the new
state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, abort, redirect, request, url_for

from registry.delivery import experiments, releases
from registry.errors import ModelDropError, PermissionDeniedError, ValidationError
from registry.schemas import validate_name
from registry.services import Services, current_services
from registry.upload_service import retry_conversion
from registry.web import _session
from registry.web._session import reader_page, viewer
from registry.web.views import bp, error_page, page


@dataclass(frozen=True)
class Action:
    """One dashboard action: the fields its form sends, the confirmation question, and the
    service call. ``run`` returns nothing; errors are the service's ``ModelDropError``s."""

    verb: str  # the button's name on the page
    fields: tuple[str, ...]
    question: Callable[[str, Mapping[str, str]], str]
    run: Callable[[Services, str, Mapping[str, str], str, str], Any]


def _int(form: Mapping[str, str], field: str, required: bool = True) -> int | None:
    raw = (form.get(field) or "").strip().lstrip("v")
    if not raw:
        if required:
            raise ValidationError(f"{field!r} is required", field=field)
        return None
    if not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise ValidationError(f"{field!r} must be a positive whole number, got {raw!r}", field=field)
    return int(raw)


def _percent(form: Mapping[str, str], field: str) -> float:
    raw = (form.get(field) or "").strip().rstrip("%")
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{field!r} must be a percentage (0-100), got {raw!r}", field=field) from None
    if not 0 <= value <= 100:
        raise ValidationError(f"{field!r} must be between 0 and 100, got {raw!r}", field=field)
    return value


def _text(form: Mapping[str, str], field: str) -> str | None:
    value = (form.get(field) or "").strip()
    return value or None


def _arm(form: Mapping[str, str], field: str) -> dict[str, Any]:
    """``5`` or ``5/tflite-int8-dynamic``: a version, optionally pinned to one variant."""
    raw = (form.get(field) or "").strip()
    number, _, variant = raw.partition("/")
    arm: dict[str, Any] = {"version": _int({field: number}, field)}
    if variant:
        arm["variant"] = variant
    return arm


def _pct_text(value: float) -> str:
    return f"{value:g}%"


def _arm_text(arm: Mapping[str, Any]) -> str:
    return f"v{arm['version']}" + (f" ({arm['variant']})" if arm.get("variant") else "")


MODEL_ACTIONS: dict[str, Action] = {
    "promote": Action(
        "Promote", ("version", "channel", "rollout_percent", "variant"),
        lambda name, f: f"Promote v{_int(f, 'version')} of {name} to {_text(f, 'channel') or '?'} at "
                        f"{_pct_text(_percent(f, 'rollout_percent'))}"
                        + (f", pinned to {_text(f, 'variant')}" if _text(f, 'variant') else "") + "?",
        lambda s, name, f, actor, reason: releases.promote(
            s, name, _int(f, "version"), channel=_text(f, "channel") or "", actor=actor,
            rollout_percent=_percent(f, "rollout_percent"), variant=_text(f, "variant"),
            reason=reason)),
    "rollout": Action(
        "Set rollout", ("channel", "rollout_percent"),
        lambda name, f: f"Set the {_text(f, 'channel')} rollout of {name} to "
                        f"{_pct_text(_percent(f, 'rollout_percent'))}?",
        lambda s, name, f, actor, reason: releases.set_rollout(
            s, name, _text(f, "channel") or "", actor=actor,
            rollout_percent=_percent(f, "rollout_percent"), reason=reason)),
    "pause": Action(
        "Pause", ("channel",),
        lambda name, f: f"Pause the {_text(f, 'channel')} rollout of {name}? Devices that have the "
                        "release keep it; no other device joins.",
        lambda s, name, f, actor, reason: releases.set_rollout(
            s, name, _text(f, "channel") or "", actor=actor, paused=True, reason=reason)),
    "resume": Action(
        "Resume", ("channel",),
        lambda name, f: f"Resume the {_text(f, 'channel')} rollout of {name}?",
        lambda s, name, f, actor, reason: releases.set_rollout(
            s, name, _text(f, "channel") or "", actor=actor, paused=False, reason=reason)),
    "rollback": Action(
        "Roll back", ("channel", "to_version"),
        lambda name, f: f"Roll back {_text(f, 'channel')} of {name} to "
                        + (f"v{_int(f, 'to_version')}" if _text(f, "to_version") else "the previous version")
                        + "? A new release at 100% points at it.",
        lambda s, name, f, actor, reason: releases.rollback(
            s, name, _text(f, "channel") or "", actor=actor,
            to_version=_int(f, "to_version", required=False), reason=reason)),
    "experiment": Action(
        "Start experiment", ("experiment", "channel", "control", "treatment", "coverage_percent"),
        lambda name, f: f"Start experiment {_text(f, 'experiment') or '?'} on {name}/"
                        f"{_text(f, 'channel') or '?'}: control {_arm_text(_arm(f, 'control'))} versus "
                        f"treatment {_arm_text(_arm(f, 'treatment'))}, half each, at "
                        f"{_pct_text(_percent(f, 'coverage_percent'))} coverage?",
        lambda s, name, f, actor, reason: _start_experiment(s, name, f, actor, reason)),
}

EXPERIMENT_ACTIONS: dict[str, Action] = {
    "coverage": Action(
        "Set coverage", ("coverage_percent",),
        lambda name, f: f"Change the coverage of experiment {name} to "
                        f"{_pct_text(_percent(f, 'coverage_percent'))}?",
        lambda s, name, f, actor, reason: experiments.update_experiment(
            s, name, actor=actor, coverage_percent=_percent(f, "coverage_percent"), reason=reason)),
    "pause": Action(
        "Pause", (),
        lambda name, f: f"Pause experiment {name}? Enrolled devices keep their arm; no device joins.",
        lambda s, name, f, actor, reason: experiments.update_experiment(
            s, name, actor=actor, paused=True, reason=reason)),
    "resume": Action(
        "Resume", (),
        lambda name, f: f"Resume experiment {name}?",
        lambda s, name, f, actor, reason: experiments.update_experiment(
            s, name, actor=actor, paused=False, reason=reason)),
    "stop": Action(
        "Stop experiment", ("winner",),
        lambda name, f: f"Stop experiment {name} and release arm {_text(f, 'winner')} to 100% of its "
                        "devices?" if _text(f, "winner") else
        f"Stop experiment {name} without a winner? Its devices go back to the channel's release.",
        lambda s, name, f, actor, reason: experiments.stop_experiment(
            s, name, actor=actor, winner=_text(f, "winner"), reason=reason)),
}

RETRY = Action(
    "Retry", (),
    lambda label, f: f"Retry the conversion of {label}?",
    lambda s, target, f, actor, reason: retry_conversion(
        s, target[0], target[1], actor=actor, reason=reason))


def _start_experiment(services: Services, model: str, form: Mapping[str, str], actor: str,
                      reason: str) -> Any:
    arms = [{"name": "control", **_arm(form, "control")}, {"name": "treatment", **_arm(form, "treatment")}]
    created = experiments.create_experiment(
        services, _text(form, "experiment") or "", model=model, channel=_text(form, "channel") or "",
        arms=arms, actor=actor, coverage_percent=_percent(form, "coverage_percent"))
    if reason:  # the experiment service takes no reason; keep the person's words in the audit log
        services.store.audit(actor, "experiment.reason", f"experiment:{created.name}", {"reason": reason})
    return created


def _gate(action: Action) -> Response | None:
    """None when the viewer may take the action now; else the 403 page."""
    who = viewer()
    if request.method == "POST" and who.by_cookie and not _session.form_is_genuine(who.csrf):
        return error_page(PermissionDeniedError(
            "This form did not come from this server's own page (missing or wrong anti-forgery "
            "token, or another origin). Nothing was changed."))
    if not who.can("publisher"):
        return error_page(PermissionDeniedError(
            f"{action.verb} needs the 'publisher' role; you are signed in as a {who.role}."))
    return None


def _handle(action: Action, target: Any, label: str, back: str, done_page: str,
            done: str) -> Response:
    refused = _gate(action)
    if refused is not None:
        return refused
    form = request.form if request.method == "POST" else request.args
    values = {k: form.get(k, "") for k in action.fields}
    reason = (form.get("reason") or "").strip()
    error = None
    try:
        question = action.question(label, values)
    except ModelDropError as e:
        question, error = f"{action.verb}: {label}", e
    if request.method == "POST" and error is None:
        try:
            action.run(current_services(), target, values, viewer().actor, reason)
        except ModelDropError as e:
            error = e
        else:
            return redirect(f"{done_page}?done={done}", code=303)
    status = 200 if error is None else error.status
    return page("confirm.html", status, question=question, verb=action.verb, values=values,
                reason=reason, error=error, back=back, can_confirm=error is None)


@bp.route("/models/<name>/<action>", methods=["GET", "POST"])
@reader_page
def model_action(name: str, action: str):
    """Dashboard action on a model's releases: GET asks for confirmation, POST does it."""
    try:
        name = validate_name(name)
    except ModelDropError as e:
        return error_page(e, (url_for("web.index"), "All models"))
    if action not in MODEL_ACTIONS:
        abort(404)
    back = url_for("web.model", name=name)
    return _handle(MODEL_ACTIONS[action], name, name, back, back, action)


@bp.route("/experiments/<name>/<action>", methods=["GET", "POST"])
@reader_page
def experiment_action(name: str, action: str):
    """Dashboard action on an experiment: GET asks for confirmation, POST does it."""
    try:
        name = validate_name(name, "experiment name")
    except ModelDropError as e:
        return error_page(e, (url_for("web.experiments"), "All experiments"))
    if action not in EXPERIMENT_ACTIONS:
        abort(404)
    back = url_for("web.experiment", name=name)
    return _handle(EXPERIMENT_ACTIONS[action], name, name, back, back, action)


@bp.route("/models/<name>/versions/<int:number>/retry", methods=["GET", "POST"])
@reader_page
def retry(name: str, number: int):
    """Dashboard: re-run a failed conversion (GET asks for confirmation, POST queues it)."""
    try:
        name = validate_name(name)
    except ModelDropError as e:
        return error_page(e, (url_for("web.index"), "All models"))
    return _handle(RETRY, (name, number), f"{name} v{number}", url_for("web.version", name=name, number=number),
                   url_for("web.jobs"), "retry")
