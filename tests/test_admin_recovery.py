"""Admin recovery (issue 13): the last admin token cannot be revoked, and `modeldrop token
create --role admin --data-dir D` on the server's machine always gets an admin back in, with
no server and no token (a subprocess, as an operator runs it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from sqlalchemy import text

from tests.helpers import assert_problem


def test_the_last_admin_token_cannot_be_revoked(admin_api, services):
    only = services.store.list_tokens()[0]
    assert only.role == "admin"
    body = assert_problem(admin_api.delete(f"/v1/tokens/{only.id}"), 409, "last_admin_token")
    assert "modeldrop token create" in body["detail"]
    assert admin_api.get("/v1/tokens").status_code == 200  # still in
    second = services.store.create_token("admin", "second")
    assert admin_api.delete(f"/v1/tokens/{second.id}").status_code == 200
    assert_problem(admin_api.delete(f"/v1/tokens/{only.id}"), 409, "last_admin_token")
    # Other roles can be revoked to the last one.
    reader = services.store.create_token("reader", "r")
    assert admin_api.delete(f"/v1/tokens/{reader.id}").status_code == 200


def test_revoking_the_last_admin_token_is_refused_on_postgresql_too(pg_database, tmp_path):
    from registry.app import create_app
    from registry.errors import LastAdminTokenError
    from tests.helpers import base_settings

    app = create_app(base_settings(tmp_path, database_url=pg_database))
    store = app.extensions["modeldrop"].store
    first = store.list_tokens()[0]
    with pytest.raises(LastAdminTokenError):
        store.revoke_token(first.id, "tests")
    store.engine.dispose()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_offline_token_create_gets_an_admin_back_in(live_server):
    data_dir = live_server.services.settings.data_dir
    url = live_server.base_url
    # Lose every admin token the way the fuzzer did before the fix (straight in the database).
    with live_server.services.store.engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET revoked = true WHERE role = 'admin'"))
    (data_dir / "admin-token").unlink()
    assert requests.get(f"{url}/v1/tokens", timeout=10).status_code == 401

    done = _cli("token", "create", "--role", "admin", "--name", "recovery", "--data-dir",
                str(data_dir), env={"MODELDROP_URL": "http://127.0.0.1:9", "MODELDROP_TOKEN": ""})
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("mdt_")
    resp = requests.get(f"{url}/v1/tokens", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200
    made = [t for t in resp.json()["items"] if t["name"] == "recovery"]
    assert made and made[0]["role"] == "admin" and made[0]["created_by"] == "cli:offline"
    audit = requests.get(f"{url}/v1/audit", params={"action": "token.create"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["items"]
    assert audit[0]["actor"] == "cli:offline"


def test_offline_token_create_refuses_a_missing_data_dir(tmp_path):
    done = _cli("token", "create", "--role", "admin", "--data-dir", str(tmp_path / "nope"))
    assert done.returncode != 0 and "does not exist" in done.stderr
