"""Who is looking at a dashboard page, and whether a form post really came from this server.

A browser signs in once with an API token; the server answers with a random session id in an
``HttpOnly``, ``SameSite=Strict`` cookie (the token itself never goes back to the browser) and
keeps the session in the database (``web_sessions``: the id's sha256, the token, an expiry and
the session's anti-forgery token). Scripts may send ``Authorization: Bearer <token>`` instead.

Every form post is checked twice: its hidden ``csrf`` field must equal the session's
anti-forgery token (the sign-in form, which has no session yet, carries the value of a
short-lived sign-in cookie instead), and the browser's ``Origin`` / ``Sec-Fetch-Site`` headers,
when it sends them, must name this server. Pages are sent with ``Referrer-Policy: same-origin``
so that Chromium sends the real ``Origin`` on the dashboard's own posts (with ``no-referrer`` it
sends ``Origin: null``). A request with a bearer header needs neither check: a browser never
attaches that header to a cross-site request by itself.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Response, g, redirect, request, url_for

from registry.auth import ROLE_RANK, bearer_token
from registry.services import current_services
from registry.store import hash_token

SESSION_COOKIE = "modeldrop_session"
LOGIN_COOKIE = "modeldrop_signin"  # the sign-in form's anti-forgery value (no session exists yet)
SESSION_MAX_AGE = timedelta(hours=12)  # a working day, then paste the token again
LOGIN_MAX_AGE = 3600  # seconds a sign-in form stays usable
COOKIE_PATH = "/dashboard"


@dataclass(frozen=True)
class Viewer:
    """The signed-in person: the actor string the audit log records, the token's role, the
    session's anti-forgery token ("" for a bearer request) and whether a cookie was used."""

    actor: str
    role: str
    csrf: str
    by_cookie: bool

    @property
    def name(self) -> str:
        """The token's name for the header ("token:3(alice)" -> "alice")."""
        if "(" in self.actor and self.actor.endswith(")"):
            return self.actor.split("(", 1)[1][:-1]
        return self.actor

    def can(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def viewer() -> Viewer | None:
    """The reader (or higher) behind this request's bearer header or session cookie, else None."""
    if "md_viewer" in g:
        return g.md_viewer
    found: Viewer | None = None
    store = current_services().store
    token = bearer_token()
    if token is not None:
        role = store.token_role(token)
        if role is not None:
            found = Viewer(role[0], role[1], "", by_cookie=False)
    else:
        sid = request.cookies.get(SESSION_COOKIE)
        session = store.web_session(sid) if sid else None
        if session is not None:
            found = Viewer(session.actor, session.role, session.csrf, by_cookie=True)
    if found is not None and not found.can("reader"):
        found = None
    g.md_viewer = found
    return found


def sign_in(token: str) -> tuple[str, Viewer] | None:
    """A new server-side session for a valid reader-or-higher token: (cookie value, viewer)."""
    store = current_services().store
    found = store.token_role(token)
    if found is None or ROLE_RANK[found[1]] < ROLE_RANK["reader"]:
        return None
    made = store.create_web_session(hash_token(token), SESSION_MAX_AGE)
    if made is None:
        return None
    sid, session = made
    return sid, Viewer(session.actor, session.role, session.csrf, by_cookie=True)


def sign_out() -> None:
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        current_services().store.end_web_session(sid)


def set_session_cookie(resp: Response, sid: str) -> None:
    resp.set_cookie(SESSION_COOKIE, sid, max_age=int(SESSION_MAX_AGE.total_seconds()),
                    path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.is_secure)


def clear_session_cookie(resp: Response) -> None:
    resp.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict",
                       secure=request.is_secure)


def login_csrf() -> tuple[str, bool]:
    """The sign-in form's anti-forgery value: the browser's sign-in cookie, or a new one
    (second item True: the response must set it)."""
    value = request.cookies.get(LOGIN_COOKIE) or ""
    if len(value) >= 32:
        return value, False
    return secrets.token_urlsafe(32), True


def set_login_cookie(resp: Response, value: str) -> None:
    resp.set_cookie(LOGIN_COOKIE, value, max_age=LOGIN_MAX_AGE, path=COOKIE_PATH, httponly=True,
                    samesite="Strict", secure=request.is_secure)


def from_this_site() -> bool:
    """False when the browser says the post came from another origin."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        parts = urlsplit(origin)
        return parts.netloc == request.host and parts.scheme == request.scheme
    return True


def form_is_genuine(expected: str) -> bool:
    """The post came from this server's own form: same origin, and its ``csrf`` field matches."""
    sent = request.form.get("csrf") or ""
    return from_this_site() and bool(expected) and hmac.compare_digest(sent, expected)


def reader_page(view: Callable) -> Callable:
    """Require a reader (header or session); a browser without one goes to the sign-in form."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        if viewer() is None:
            return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper
