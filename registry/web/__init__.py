"""The web dashboard: server-rendered pages for release managers.

People sign in by pasting an API token; the server keeps a session (``web_sessions``) and the
browser only its id, in an HttpOnly, SameSite=Strict cookie (``registry.web._session``).
Readers see models, versions, releases, experiment reports and jobs; publishers also get the
actions (promote, rollout, pause/resume, roll back, experiments, retry), each behind a
confirmation page and an anti-forgery token (``registry.web.actions``). There is no separate
account system and no public mode: experiment results are business data.
"""

from __future__ import annotations

from flask import Flask

__all__ = ["register_web"]


def register_web(app: Flask) -> None:
    from registry.web import actions  # noqa: F401 - registers the action routes on the blueprint
    from registry.web.views import bp, root_redirect

    app.register_blueprint(bp)
    app.add_url_rule("/", "web.root", root_redirect)
