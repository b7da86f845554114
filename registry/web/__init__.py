"""The web dashboard: server-rendered, read-only pages for people with a reader token.

Browsers cannot attach an ``Authorization`` header to a link, so the dashboard accepts the
same API token two ways: the header (scripts, curl) or an HttpOnly, SameSite=Strict cookie
set by ``/dashboard/login`` from a pasted token. There is no separate account system and no
public mode: experiment results are business data. Pages only read, so the cookie cannot be
used to change anything.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_web"]


def register_web(app: Flask) -> None:
    from registry.web.views import bp

    app.register_blueprint(bp)
