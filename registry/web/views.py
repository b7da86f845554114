"""Dashboard pages: models with their variant and per-device latency tables, experiments and
their reports, login and logout. Server-rendered, no scripts, no external resources."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, redirect, render_template, request, url_for

from registry.auth import ROLE_RANK, bearer_token
from registry.errors import ModelDropError
from registry.services import current_services
from registry.telemetry.service import experiment_report_page, version_latency
from registry.uploads import validate_name

bp = Blueprint("web", __name__, url_prefix="/dashboard", template_folder="templates")

COOKIE = "modeldrop_token"
COOKIE_MAX_AGE = 12 * 3600  # seconds: a working day, then paste the token again
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _token() -> str | None:
    return bearer_token() or request.cookies.get(COOKIE) or None


def _reader(token: str | None) -> str | None:
    """The actor behind a token with at least the reader role, else None."""
    if not token:
        return None
    found = current_services().store.token_role(token)
    if found is None or ROLE_RANK[found[1]] < ROLE_RANK["reader"]:
        return None
    return found[0]


def _page(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/html",
                    headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-store",
                             "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


def reader_page(view: Callable) -> Callable:
    """Require a reader token (header or cookie); browsers without one go to the login page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        if _reader(_token()) is None:
            return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper


def _safe_next(target: str | None) -> str:
    """Only redirect to a path inside the dashboard (no open redirect)."""
    parts = urlsplit(target or "")
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard/") \
            or "\\" in (target or ""):
        return url_for("web.index")
    return target  # type: ignore[return-value]


@bp.get("/login")
def login():
    """Dashboard sign-in form: paste an API token (reader or higher)."""
    return _page(render_template("login.html", next=_safe_next(request.args.get("next")),
                                 error=None))


@bp.post("/login")
def login_submit():
    """Check the pasted token and keep it in an HttpOnly cookie."""
    origin = request.headers.get("Origin")
    if origin and urlsplit(origin).netloc != request.host:
        return _page(render_template("login.html", next=url_for("web.index"),
                                     error="Sign in from this server's own page."), 403)
    token = (request.form.get("token") or "").strip()
    target = _safe_next(request.form.get("next"))
    if _reader(token) is None:
        return _page(render_template("login.html", next=target,
                                     error="That token is unknown, revoked, or not a reader."), 401)
    resp = redirect(target, code=303)
    resp.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, path="/dashboard", httponly=True,
                    samesite="Strict", secure=request.is_secure)
    return resp


@bp.post("/logout")
def logout():
    """Forget the token cookie."""
    resp = redirect(url_for("web.login"), code=303)
    resp.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="Strict",
                       secure=request.is_secure)
    return resp


@bp.get("/")
@reader_page
def index():
    """Dashboard: models and experiments with links to their pages."""
    store = current_services().store
    return _page(render_template("index.html", models=store.list_models(),
                                 experiments=store.list_experiments()))


def _error_page(e: ModelDropError) -> Response:
    return _page(render_template("error.html", title=e.title, detail=e.detail), e.status)


@bp.get("/models/<name>")
@reader_page
def model(name: str):
    """Dashboard: a model's versions and its release history per channel."""
    store = current_services().store
    try:
        name = validate_name(name)
        versions, _ = store.list_versions(name, limit=50)
        releases = store.list_releases(name)
    except ModelDropError as e:
        return _error_page(e)
    return _page(render_template("model.html", name=name, versions=versions, releases=releases))


@bp.get("/models/<name>/versions/<int:number>")
@reader_page
def version(name: str, number: int):
    """Dashboard: one version's metadata, variant table and per-device latency."""
    try:
        found = current_services().store.get_version(validate_name(name), number)
        latency = version_latency(current_services(), name, number)["items"]
    except ModelDropError as e:
        return _error_page(e)
    return _page(render_template("version.html", v=found, latency=latency))


@bp.get("/experiments/<name>")
@reader_page
def experiment(name: str):
    """Dashboard: one experiment's report with charts."""
    try:
        report, page = experiment_report_page(current_services(), validate_name(name, "experiment name"))
    except ModelDropError as e:
        return _error_page(e)
    nav = render_template("nav.html", name=name, source=report.get("source") or {})
    # The report page is a complete document; the dashboard adds its navigation on top.
    return _page(page.replace("<body>\n", "<body>\n" + nav + "\n", 1))
