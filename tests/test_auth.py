"""Tokens and roles: 401 without a token, 403 with too small a role, audit of writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.helpers import ApiClient, assert_problem


def test_first_start_writes_admin_token_0600(app, services, admin_api):
    path = Path(services.settings.data_dir) / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert admin_api.get("/v1/tokens").status_code == 200


def test_tokens_are_stored_hashed(services, admin_token):
    from sqlmodel import Session, select

    from registry.tables import TokenRow

    with Session(services.store.engine) as s:
        hashes = [r.token_hash for r in s.exec(select(TokenRow))]
    assert admin_token not in hashes and len(hashes[0]) == 64


def test_missing_token_401_and_wrong_role_403(app, anon_api, reader_token):
    assert_problem(anon_api.get("/v1/models"), 401, "unauthenticated")
    assert_problem(anon_api.upload("digits", b"x"), 401, "unauthenticated")
    bad = ApiClient(app.test_client(), "mdt_not-a-token")
    assert_problem(bad.get("/v1/models"), 401, "unauthenticated")
    reader = ApiClient(app.test_client(), reader_token)
    assert reader.get("/v1/models").status_code == 200
    assert_problem(reader.upload("digits", b"x"), 403, "forbidden")
    assert_problem(reader.post("/v1/tokens", json={"role": "admin"}), 403, "forbidden")


def test_publisher_cannot_manage_tokens(api):
    assert_problem(api.post("/v1/tokens", json={"role": "reader"}), 403, "forbidden")


def test_token_lifecycle_and_audit(app, admin_api):
    created = admin_api.post("/v1/tokens", json={"role": "publisher", "name": "ci"})
    assert created.status_code == 201
    token = created.get_json()["token"]
    pub = ApiClient(app.test_client(), token)
    assert pub.upload("digits", b"abc").status_code == 201
    listed = admin_api.get("/v1/tokens").get_json()["items"]
    assert all("token" not in t or t["token"] is None for t in listed)
    token_id = created.get_json()["id"]
    assert admin_api.delete(f"/v1/tokens/{token_id}").status_code == 200
    assert_problem(pub.upload("digits", b"abcd"), 401, "unauthenticated")
    actions = [a["action"] for a in admin_api.get("/v1/audit").get_json()["items"]]
    for expected in ("token.create", "token.revoke", "version.create", "model.create"):
        assert expected in actions
    assert_problem(admin_api.post("/v1/tokens", json={"role": "root"}), 400, "validation_error")


def test_audit_filters_by_actor_and_leaves_out_system_rows(app, admin_api):
    created = admin_api.post("/v1/tokens", json={"role": "publisher", "name": "ci_bot"}).get_json()
    pub = ApiClient(app.test_client(), created["token"])
    assert pub.upload("digits", b"abc").status_code == 201
    store = app.extensions["modeldrop"].store
    store.audit("system", "delta.create", "delta:a->b")
    store.audit("system:guardrails", "release.halt", "model:digits/channel:production")
    store.audit("ci%bot", "model.update", "model:other")  # LIKE wildcards in a name are literal

    def actors(query):
        return {a["actor"] for a in admin_api.get(f"/v1/audit{query}").get_json()["items"]}

    by_name = actors("?actor=ci_bot")
    assert by_name == {f"token:{created['id']}(ci_bot)"}
    assert actors(f"?actor=token:{created['id']}") == by_name
    assert actors("?actor=system:guardrails") == {"system:guardrails"}
    assert {"system", "system:guardrails"} <= actors("")
    people = actors("?system=false")
    assert people and not any(a == "system" or a.startswith("system:") for a in people)
    assert_problem(admin_api.get("/v1/audit?system=maybe"), 400, "validation_error")


def test_device_endpoints_need_no_token(anon_api):
    assert anon_api.get("/healthz").status_code == 200
    assert anon_api.get("/openapi.json").status_code == 200
    assert anon_api.get("/tuf/metadata/1.root.json").status_code == 200
