"""The auth matrix (issue 13): every route of the URL map × {no token, malformed, revoked,
reader, publisher, admin}. Each route needs a decision in ``DECISIONS``: a route added
without one fails ``test_every_route_has_a_decision``, and the decision must be the one the
view enforces (``@require_role``), checked by really calling it with each credential."""

from __future__ import annotations

import re

import pytest

from registry.auth import ROLE_RANK
from tests.helpers import base_settings

#: "<METHOD> <rule>" -> who may call it. "public": anyone, a token changes nothing it must
#: refuse; "reader"/"publisher"/"admin": that role or higher (401 without a valid token, 403
#: below the role); "dashboard": a reader token or cookie, else a redirect to the sign-in page;
#: "dashboard-public": the sign-in and sign-out pages; "dashboard-publisher"/"dashboard-admin":
#: a dashboard page (sign-in redirect without a valid credential) whose action or content needs
#: that role (a 403 page below it); "redirect": ``/``, a redirect to the dashboard for anyone.
DECISIONS = {
    "GET /": "redirect",
    "GET /dashboard/": "dashboard",
    "GET /dashboard/audit": "dashboard-admin",
    "GET /dashboard/experiments": "dashboard",
    "GET /dashboard/jobs": "dashboard",
    "GET /dashboard/experiments/<name>/<action>": "dashboard-publisher",
    "POST /dashboard/experiments/<name>/<action>": "dashboard-publisher",
    "GET /dashboard/models/<name>/<action>": "dashboard-publisher",
    "POST /dashboard/models/<name>/<action>": "dashboard-publisher",
    "GET /dashboard/models/<name>/versions/<int:number>/retry": "dashboard-publisher",
    "POST /dashboard/models/<name>/versions/<int:number>/retry": "dashboard-publisher",
    "POST /v1/models/<name>/versions/<int:number>/retry": "publisher",
    "GET /dashboard/experiments/<name>": "dashboard",
    "GET /dashboard/login": "dashboard-public",
    "POST /dashboard/login": "dashboard-public",
    "POST /dashboard/logout": "dashboard-public",
    "GET /dashboard/models/<name>": "dashboard",
    "GET /dashboard/models/<name>/versions/<int:number>": "dashboard",
    "GET /healthz": "public",
    "GET /metrics": "reader",
    "GET /openapi.json": "public",
    "GET /static/<path:filename>": "public",
    "GET /tuf/metadata/<name>": "public",
    "GET /tuf/targets/<path:target>": "public",
    "GET /v1/artifacts/<sha256>": "public",  # confidential artifacts: any token (test_confidential.py)
    "GET /v1/audit": "admin",
    "POST /v1/experiments": "publisher",
    "GET /v1/experiments": "reader",
    "GET /v1/experiments/<name>": "reader",
    "PATCH /v1/experiments/<name>": "publisher",
    "GET /v1/experiments/<name>/report": "reader",
    "GET /v1/experiments/<name>/report.html": "reader",
    "POST /v1/experiments/<name>/stop": "publisher",
    "POST /v1/guardrails/check": "admin",
    "GET /v1/jobs/<job_id>": "reader",
    "GET /v1/keys": "public",
    "POST /v1/keys/rotate": "admin",
    "GET /v1/manifest": "public",
    "GET /v1/rulesets/<model>/<channel>": "public",
    "GET /v1/models": "reader",
    "GET /v1/models/<name>": "reader",
    "PATCH /v1/models/<name>": "publisher",
    "PATCH /v1/models/<name>/channels/<channel>": "publisher",
    "POST /v1/models/<name>/channels/<channel>/rollback": "publisher",
    "POST /v1/models/<name>/releases": "publisher",
    "GET /v1/models/<name>/releases": "reader",
    "POST /v1/models/<name>/versions": "publisher",
    "GET /v1/models/<name>/versions": "reader",
    "GET /v1/models/<name>/versions/<int:number>": "reader",
    "PATCH /v1/models/<name>/versions/<int:number>": "publisher",
    "GET /v1/models/<name>/versions/<int:number>/latency": "reader",
    "POST /v1/telemetry": "public",
    "POST /v1/tokens": "admin",
    "GET /v1/tokens": "admin",
    "DELETE /v1/tokens/<int:token_id>": "admin",
    "GET /v1/trusted-root": "public",
}

CREDENTIALS = ("none", "malformed", "revoked", "reader", "publisher", "admin")
PLACEHOLDERS = {"name": "m", "action": "pause", "number": "1", "channel": "prod", "token_id": "999999",
                "sha256": "0" * 64, "job_id": "no-such-job", "filename": "none.css",
                "target": "m/" + "0" * 64 + ".x.tflite"}


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield f"{method} {rule.rule}", method, rule


def _url(rule) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_0-9]+)>", lambda m: PLACEHOLDERS.get(m.group(1), "x"), rule.rule)


@pytest.fixture
def matrix_app(tmp_path):
    from registry.app import create_app

    # No rate limits: the matrix makes a few hundred requests from one IP.
    app = create_app(base_settings(tmp_path, write_requests_per_ip=0, write_requests_per_token=0))
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


def _tokens(services) -> dict[str, list[str | None]]:
    store = services.store
    tokens = {role: store.create_token(role, f"matrix-{role}").token for role in ROLE_RANK}
    revoked = store.create_token("admin", "matrix-revoked")
    store.revoke_token(revoked.id, "tests")
    admin = tokens["admin"]
    return {
        "none": [None],
        # Wrong schemes carrying a real admin token, a bearer with nothing or garbage after it.
        "malformed": [f"Token {admin}", f"Basic {admin}", "Bearer", "Bearer  ", f"Bearer{admin}",
                      "Bearer mdt_not-a-token", f"Bearer {admin}x"],
        "revoked": [f"Bearer {revoked.token}"],
        "reader": [f"Bearer {tokens['reader']}"],
        "publisher": [f"Bearer {tokens['publisher']}"],
        # The scheme is case-insensitive (docs/security.md, "Tokens").
        "admin": [f"Bearer {admin}", f"bearer {admin}", f"BEARER {admin}"],
    }


def test_every_route_has_a_decision(matrix_app):
    seen = {key for key, _, _ in _routes(matrix_app)}
    missing = sorted(seen - DECISIONS.keys())
    assert not missing, f"routes without an auth decision in DECISIONS: {missing}"
    assert not sorted(DECISIONS.keys() - seen), "decisions for routes that no longer exist"


def test_each_decision_is_what_the_view_enforces(matrix_app):
    for key, _, rule in _routes(matrix_app):
        view = matrix_app.view_functions[rule.endpoint]
        declared = getattr(view, "required_role", None)
        decision = DECISIONS[key]
        if decision in ROLE_RANK:
            assert declared == decision, key
        else:
            assert declared is None, key


def test_the_matrix(matrix_app):
    services = matrix_app.extensions["modeldrop"]
    creds = _tokens(services)
    client = matrix_app.test_client()
    checked = 0
    for key, method, rule in _routes(matrix_app):
        decision = DECISIONS[key]
        url = _url(rule)
        for who in CREDENTIALS:
            for header in creds[who]:
                headers = {"Authorization": header} if header is not None else {}
                resp = client.open(url, method=method, headers=headers)
                checked += 1
                what = (key, who, header and header[:12], resp.status_code, resp.get_data(as_text=True)[:200])
                assert resp.status_code < 500, what
                if decision in ROLE_RANK:
                    if who in ("none", "malformed", "revoked"):
                        assert resp.status_code == 401, what
                        assert resp.get_json()["code"] == "unauthenticated", what
                    elif ROLE_RANK[who] < ROLE_RANK[decision]:
                        assert resp.status_code == 403, what
                        assert resp.get_json()["code"] == "forbidden", what
                    else:
                        assert resp.status_code not in (401, 403), what
                elif decision.startswith("dashboard") and decision != "dashboard-public":
                    to_login = resp.status_code == 302 and "/dashboard/login" in resp.headers["Location"]
                    assert to_login == (who in ("none", "malformed", "revoked")), what
                    needed = decision.partition("-")[2]
                    if needed and not to_login:
                        assert (resp.status_code == 403) == (ROLE_RANK[who] < ROLE_RANK[needed]), what
                elif decision == "redirect":
                    assert resp.status_code == 302 and resp.headers["Location"].endswith("/dashboard/"), what
                elif decision == "public":
                    assert resp.status_code not in (401, 403), what
    assert checked >= len(DECISIONS) * len(CREDENTIALS)
    services.settings.extra["auth_matrix_requests"] = checked
