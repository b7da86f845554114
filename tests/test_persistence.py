"""The same registry behaviour on every database and blob backend (SQLite/PostgreSQL x local/S3)."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers import ApiClient, assert_problem, base_settings


@pytest.fixture
def backend_app(tmp_path, db_url, blob_settings):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, database_url=db_url, **blob_settings))
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


def test_registry_round_trip_on_every_backend(backend_app):
    svc = backend_app.extensions["modeldrop"]
    api = ApiClient(backend_app.test_client(), svc.store.create_token("publisher").token)
    data = os.urandom(2_500_000)
    created = api.upload("digits", data, metadata={"accuracy": {"top1": 0.9}})
    assert created.status_code == 201, created.get_json()
    sha = created.get_json()["source"]["sha256"]
    assert sha == hashlib.sha256(data).hexdigest()
    assert api.upload("digits", data).status_code == 200
    assert_problem(api.upload("digits", b"other", version=1), 409, "version_conflict")
    assert api.upload("digits", b"second").get_json()["version"] == 2

    full = api.get(f"/v1/artifacts/{sha}")
    assert full.status_code == 200 and full.data == data
    part = api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=1000000-1000099"})
    assert part.status_code == 206 and part.data == data[1_000_000:1_000_100]

    patched = api.patch("/v1/models/digits/versions/1", json={"latency_ms": {"pixel7": 5.0}})
    assert patched.get_json()["metadata"]["latency_ms"] == {"pixel7": 5.0}
    listing = api.get("/v1/models/digits/versions").get_json()["items"]
    assert [v["version"] for v in listing] == [2, 1]

    # The source is confidential: never a TUF target, no tokenless download.
    from tests.makers import make_ready_version

    anon = ApiClient(backend_app.test_client(), None)
    assert_problem(anon.get(f"/v1/artifacts/{sha}"), 401, "unauthenticated")
    assert "digits/1/source.keras" not in _current_targets(api)
    assert api.get(f"/tuf/targets/digits/1/{sha}.source.keras").status_code == 404

    # A promoted variant is a TUF target, served under its consistent-snapshot name.
    variant = make_ready_version(svc, "digits").variants[0]
    assert anon.get(f"/v1/artifacts/{variant.sha256}").status_code == 401
    assert api.post("/v1/models/digits/releases",
                    json={"version": 3, "channel": "production"}).status_code == 201
    entry = _current_targets(api)[variant.target_path]
    assert entry["hashes"]["sha256"] == variant.sha256 and entry["length"] == variant.size
    assert entry["custom"]["kind"] == "variant"
    directory, _, filename = variant.target_path.rpartition("/")
    served = anon.get(f"/tuf/targets/{directory}/{variant.sha256}.{filename}")
    assert served.status_code == 200 and hashlib.sha256(served.data).hexdigest() == variant.sha256
    assert anon.get(f"/v1/artifacts/{variant.sha256}").status_code == 200
    assert anon.get(f"/tuf/targets/{directory}/{'0' * 64}.{filename}").status_code == 404


def _current_targets(api) -> dict:
    import json

    ts = json.loads(api.get("/tuf/metadata/timestamp.json").data)
    snap_version = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = json.loads(api.get(f"/tuf/metadata/{snap_version}.snapshot.json").data)
    targets_name = f"{snap['signed']['meta']['targets.json']['version']}.targets.json"
    return json.loads(api.get(f"/tuf/metadata/{targets_name}").data)["signed"]["targets"]


def test_restart_keeps_everything(tmp_path, db_url):
    from registry.app import create_app

    settings = base_settings(tmp_path, database_url=db_url)
    app = create_app(settings)
    svc = app.extensions["modeldrop"]
    token = svc.store.create_token("publisher").token
    ApiClient(app.test_client(), token).upload("digits", b"persisted")
    root = svc.signing.trusted_root()
    svc.store.engine.dispose()

    again = create_app(settings)  # migrations are idempotent, keys reused, admin token not re-made
    api = ApiClient(again.test_client(), token)
    assert api.get("/v1/models/digits/versions/1").get_json()["source"]["size"] == len(b"persisted")
    assert again.extensions["modeldrop"].signing.trusted_root() == root
    assert len(again.extensions["modeldrop"].store.list_tokens()) == 2
    again.extensions["modeldrop"].store.engine.dispose()
