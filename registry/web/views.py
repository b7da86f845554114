"""Dashboard pages: models with their versions, releases and variant tables, experiments and
their reports, conversion jobs, the audit log (admins), sign-in and sign-out.

Server-rendered, no scripts, no external resources. Every page extends ``_layout.html``, whose
header carries the navigation, who is signed in and the sign-out button. The actions (promote,
pause, retry, ...) are in ``registry.web.actions``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for

from registry.errors import ModelDropError, ValidationError
from registry.schemas import validate_name
from registry.services import current_services
from registry.telemetry.service import version_latency
from registry.web import _session
from registry.web._format import FILTERS
from registry.web._session import reader_page, viewer

bp = Blueprint("web", __name__, url_prefix="/dashboard", template_folder="templates")
bp.add_app_template_filter(FILTERS["ms"], "ms")
bp.add_app_template_filter(FILTERS["pct"], "pct")

_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
VERSIONS_PER_PAGE = 50
RELEASES_PER_PAGE = 50
JOBS_PER_PAGE = 50

# What the page says after an action; the redirect names the action, never free text.
DONE = {"promote": "Promoted: the new release is below.", "rollout": "Rollout changed.",
        "pause": "Paused.", "resume": "Resumed.", "rollback": "Rolled back: a new release points at "
        "the older version.", "experiment": "Experiment started.", "coverage": "Coverage changed.",
        "stop": "Experiment stopped.", "retry": "Conversion queued again."}


def page(template: str, status: int = 200, **context: Any) -> Response:
    """Render a dashboard page with the signed-in viewer and the security headers."""
    context.setdefault("viewer", viewer())
    context.setdefault("notice", DONE.get(request.args.get("done", "")))
    body = render_template(template, **context)
    # same-origin, not no-referrer: with no-referrer Chromium posts the dashboard's own forms
    # with "Origin: null", which cannot be told from a sandboxed cross-site page.
    return Response(body, status=status, mimetype="text/html",
                    headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store",
                             "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})


def error_page(e: ModelDropError, parent: tuple[str, str] | None = None) -> Response:
    """An error as an HTML page with its status and a link to the page above the missing thing."""
    link = {"url": parent[0], "label": parent[1]} if parent else None
    return page("error.html", e.status, title=e.title, detail=e.detail, parent=link)


def _safe_next(target: str | None) -> str:
    """Only redirect to a path inside the dashboard (no open redirect)."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard/") \
            or "\\" in (target or "") or parts.path.startswith("/dashboard/login"):
        return url_for("web.index")
    return target  # type: ignore[return-value]


def _page_arg(name: str) -> int:
    raw = request.args.get(name, "0")
    if not raw.isdigit() or len(raw) > 9:
        raise ValidationError(f"{name!r} must be a page offset", field=name)
    return int(raw)


# -- sign-in ------------------------------------------------------------------------------

def _login_form(next_path: str, error: str | None = None, status: int = 200) -> Response:
    csrf, fresh = _session.login_csrf()
    resp = page("login.html", status, viewer=None, next=next_path, error=error, csrf=csrf)
    if fresh:
        _session.set_login_cookie(resp, csrf)
    return resp


@bp.get("/login")
def login():
    """Dashboard sign-in form: paste an API token (reader or higher)."""
    return _login_form(_safe_next(request.args.get("next")))


@bp.post("/login")
def login_submit():
    """Check the pasted token; start a server-side session; its id goes in an HttpOnly cookie."""
    target = _safe_next(request.form.get("next"))
    if not _session.form_is_genuine(request.cookies.get(_session.LOGIN_COOKIE, "")):
        return _login_form(target, "Sign in from this server's own page.", 403)
    made = _session.sign_in((request.form.get("token") or "").strip())
    if made is None:
        return _login_form(target, "That token is unknown, revoked, or not a reader.", 401)
    resp = redirect(target, code=303)
    _session.set_session_cookie(resp, made[0])
    resp.delete_cookie(_session.LOGIN_COOKIE, path=_session.COOKIE_PATH)
    return resp


@bp.post("/logout")
def logout():
    """End the session (its row is deleted: the cookie is worthless afterwards)."""
    who = viewer()
    if who is not None and who.by_cookie and not _session.form_is_genuine(who.csrf):
        return error_page(_forbidden("Sign out from this server's own page."))
    _session.sign_out()
    resp = redirect(url_for("web.login"), code=303)
    _session.clear_session_cookie(resp)
    return resp


def _forbidden(detail: str) -> ModelDropError:
    from registry.errors import PermissionDeniedError

    return PermissionDeniedError(detail)


# -- pages --------------------------------------------------------------------------------

@bp.get("/")
@reader_page
def index():
    """Dashboard: models and experiments with links to their pages."""
    store = current_services().store
    return page("index.html", section="models", models=store.list_models(),
                experiments=store.list_experiments())


@bp.get("/experiments")
@reader_page
def experiments():
    """Dashboard: every experiment, newest first."""
    return page("experiments.html", section="experiments",
                experiments=current_services().store.list_experiments())


@bp.get("/models/<name>")
@reader_page
def model(name: str):
    """Dashboard: a model's versions and its release history per channel, page by page."""
    store = current_services().store
    parent = (url_for("web.index"), "All models")
    try:
        name = validate_name(name)
        before = request.args.get("before")
        if before is not None and (not before.isdigit() or len(before) > 18):
            raise ValidationError("'before' must be a version number", field="before")
        versions, next_before = store.list_versions(name, limit=VERSIONS_PER_PAGE,
                                                    before=int(before) if before else None)
        offset = _page_arg("releases")
        # Every release, newest first per channel (the "current" flags need them all; a few
        # hundred rows are cheap, bench/bench_dashboard.py measures 200), shown a page at a time.
        everything = store.list_releases(name, limit=100_000)
        releases = everything[offset:offset + RELEASES_PER_PAGE]
        current = [r for r in everything if r.current]
        active = [e for e in store.list_experiments(name) if e.status in ("running", "paused")]
    except ModelDropError as e:
        return error_page(e, parent)
    overrides = {e.channel: e for e in active}
    return page("model.html", section="models", name=name, versions=versions,
                next_before=next_before, releases=releases, current=current,
                releases_offset=offset, more_releases=len(everything) > offset + RELEASES_PER_PAGE,
                releases_per_page=RELEASES_PER_PAGE, overrides=overrides,
                first_page=before is None)


@bp.get("/models/<name>/versions/<int:number>")
@reader_page
def version(name: str, number: int):
    """Dashboard: one version's metadata, variant table and per-device latency."""
    services = current_services()
    try:
        name = validate_name(name)
    except ModelDropError as e:
        return error_page(e, (url_for("web.index"), "All models"))
    try:
        found = services.store.get_version(name, number)
        latency = version_latency(services, name, number)["items"]
    except ModelDropError as e:
        if e.code == "model_not_found":
            return error_page(e, (url_for("web.index"), "All models"))
        return error_page(e, (url_for("web.model", name=name), f"All versions of {name}"))
    return page("version.html", section="models", v=found, latency=latency,
                signatures=_signature_groups(found))


def _signature_groups(version) -> list[tuple[str, object]]:
    """(which variants, signature) per distinct signature, in variant order."""
    groups: dict[str, tuple[list[str], object]] = {}
    for variant in version.variants:
        if variant.signature is not None:
            key = variant.signature.model_dump_json()
            groups.setdefault(key, ([], variant.signature))[0].append(variant.name)
    if len(groups) == 1 and len(next(iter(groups.values()))[0]) == len(version.variants):
        return [("all variants", next(iter(groups.values()))[1])]
    return [(", ".join(names), signature) for names, signature in groups.values()]


@bp.get("/experiments/<name>")
@reader_page
def experiment(name: str):
    """Dashboard: one experiment's report with charts, and its actions."""
    from registry.delivery import experiments as experiment_service
    from registry.reports import REPORT_CSS, render_charts, render_report_body
    from registry.telemetry.service import experiment_report

    services = current_services()
    try:
        name = validate_name(name, "experiment name")
        definition = experiment_service.get_experiment(services, name)
        report = experiment_report(services, name)
    except ModelDropError as e:
        return error_page(e, (url_for("web.experiments"), "All experiments"))
    return page("experiment.html", section="experiments", e=definition,
                source=report.get("source") or {}, report_css=REPORT_CSS,
                report_body=render_report_body(report, render_charts(report)))


@bp.get("/jobs")
@reader_page
def jobs():
    """Dashboard: conversion jobs, newest first, with progress; refreshes while any runs."""
    try:
        offset = _page_arg("offset")
    except ModelDropError as e:
        return error_page(e, (url_for("web.jobs"), "Jobs"))
    items, more = current_services().store.list_jobs(limit=JOBS_PER_PAGE, offset=offset)
    busy = any(j.state in ("queued", "running") for j in items)
    newest: dict[tuple[str, int], int] = {}  # a version's newest job on the page: only it offers Retry
    for i, job in enumerate(items):
        newest.setdefault((job.model, job.version), i)
    return page("jobs.html", section="jobs", jobs=items, offset=offset, more=more, newest=newest,
                per_page=JOBS_PER_PAGE, refresh=2 if busy else None)


@bp.get("/audit")
@reader_page
def audit():
    """Dashboard: the audit log, newest first (admins only, like ``GET /v1/audit``)."""
    who = viewer()
    if not who.can("admin"):
        return error_page(_forbidden("the audit log needs the 'admin' role"))
    actor = (request.args.get("actor") or "").strip()[:200] or None
    entries = current_services().store.audit_log(limit=200, actor=actor,
                                                 system=request.args.get("system") != "false")
    return page("audit.html", section="audit", entries=entries, actor=actor or "")


def root_redirect():
    """``/``: the dashboard (people who type the server's address land on it)."""
    return redirect(url_for("web.index"), code=302)
