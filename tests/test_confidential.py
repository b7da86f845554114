"""Sources and unreleased variants are confidential; a release or experiment publishes.

Real HTTP on loopback (``live_server``) where the behaviour is HTTP, python-tuf's
``ngclient.Updater`` for what TUF clients see; store-level checks for the per-sha rule and
the migration.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import requests
from tuf.ngclient import Updater

from tests.helpers import npz_bytes
from tests.makers import make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7",
           "app_version": "3.2.0"}
DEVICE = "5d9c0e8e-6b1f-4a43-9d3e-2f1d7c9b8a10"


class Http:
    """requests against the live server, with an optional bearer token."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base, self.token = base, token

    def _headers(self, headers: dict | None) -> dict:
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def get(self, path: str, headers: dict | None = None, **kw) -> requests.Response:
        return requests.get(self.base + path, headers=self._headers(headers), timeout=30, **kw)

    def head(self, path: str, headers: dict | None = None) -> requests.Response:
        return requests.head(self.base + path, headers=self._headers(headers), timeout=30)

    def post(self, path: str, body: dict | None = None, **kw) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=self._headers(None),
                             timeout=30, **kw)


def assert_problem(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = resp.json()
    assert body["code"] == code and body["status"] == status
    return body


@pytest.fixture
def http(live_server):
    """(anonymous, reader, publisher) clients of the live server."""
    store = live_server.services.store
    return (Http(live_server.base_url),
            Http(live_server.base_url, store.create_token("reader", "tests").token),
            Http(live_server.base_url, store.create_token("publisher", "tests").token))


def _updater(base: str, workdir: Path) -> Updater:
    root = requests.get(f"{base}/v1/trusted-root", timeout=10).content
    meta, targets = workdir / "metadata", workdir / "targets"
    meta.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    updater = Updater(metadata_dir=str(meta), metadata_base_url=f"{base}/tuf/metadata/",
                      target_dir=str(targets), target_base_url=f"{base}/tuf/targets/",
                      bootstrap=root)
    updater.refresh()
    return updater


def _signed_targets(base: str) -> dict:
    """The current targets metadata, as a TUF client reaches it (timestamp -> snapshot)."""
    ts = requests.get(f"{base}/tuf/metadata/timestamp.json", timeout=10).json()
    snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
    snap = requests.get(f"{base}/tuf/metadata/{snap_v}.snapshot.json", timeout=10).json()
    targets_v = snap["signed"]["meta"]["targets.json"]["version"]
    return requests.get(f"{base}/tuf/metadata/{targets_v}.targets.json",
                        timeout=10).json()["signed"]["targets"]


def _variant(version, name: str = "tflite-int8-dynamic"):
    return next(v for v in version.variants if v.name == name)


def _promote(publisher: Http, model: str, version: int, **body) -> dict:
    resp = publisher.post(f"/v1/models/{model}/releases",
                          {"version": version, "channel": "production", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_source_and_eval_need_a_reader_token(live_server, http):
    anon, reader, publisher = http
    data, eval_set = os.urandom(40_000), npz_bytes(int.from_bytes(os.urandom(4), "big"), 64, 8)
    resp = requests.post(f"{live_server.base_url}/v1/models/digits/versions",
                         headers={"Authorization": f"Bearer {publisher.token}"},
                         files={"file": ("model.keras", io.BytesIO(data)),
                                "eval": ("eval.npz", io.BytesIO(eval_set))}, timeout=30)
    assert resp.status_code == 201, resp.text
    sha = resp.json()["source"]["sha256"]
    eval_sha = hashlib.sha256(eval_set).hexdigest()

    for digest in (sha, eval_sha):
        assert_problem(anon.get(f"/v1/artifacts/{digest}"), 401, "unauthenticated")
        assert anon.head(f"/v1/artifacts/{digest}").status_code == 401
        # A conditional or partial request says nothing more without a token either.
        assert_problem(anon.get(f"/v1/artifacts/{digest}",
                                headers={"If-None-Match": f'"{digest}"'}), 401, "unauthenticated")
        assert_problem(anon.get(f"/v1/artifacts/{digest}", headers={"Range": "bytes=0-9"}),
                       401, "unauthenticated")
    bad = Http(live_server.base_url, "md_not-a-token")
    assert_problem(bad.get(f"/v1/artifacts/{sha}"), 401, "unauthenticated")

    got = reader.get(f"/v1/artifacts/{sha}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert reader.get(f"/v1/artifacts/{eval_sha}").content == eval_set
    part = reader.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    # An unknown sha256 is still a 404, with or without a token.
    assert_problem(anon.get("/v1/artifacts/" + "b" * 64), 404, "artifact_not_found")
    assert_problem(reader.get("/v1/artifacts/" + "b" * 64), 404, "artifact_not_found")

    assert not [p for p, t in _signed_targets(live_server.base_url).items()
                if t["custom"].get("kind") == "source"]
    assert requests.get(f"{live_server.base_url}/tuf/targets/digits/1/{sha}.source.keras",
                        timeout=10).status_code == 404


def test_variant_is_public_from_its_first_release_and_after_rollback(
        live_server, http, tmp_path):
    anon, reader, publisher = http
    services, base = live_server.services, live_server.base_url
    v1 = make_ready_version(services, "digits")
    v2 = make_ready_version(services, "digits")
    one, two = _variant(v1), _variant(v2)

    # Unreleased: refused without a token, served with one, not a TUF target.
    assert_problem(anon.get(f"/v1/artifacts/{one.sha256}"), 401, "unauthenticated")
    got = reader.get(f"/v1/artifacts/{one.sha256}")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == one.sha256
    assert _updater(base, tmp_path / "before").get_targetinfo(one.target_path) is None
    shown = reader.get("/v1/models/digits/versions/1").json()
    assert {v["name"]: v["public"] for v in shown["variants"]} == \
        {v.name: False for v in v1.variants}
    assert all(v["target_path"] for v in shown["variants"])  # the planned path is recorded

    _promote(publisher, "digits", 1)
    updater = _updater(base, tmp_path / "after-promote")
    for v in v1.variants:  # an unpinned release can deliver any servable variant
        info = updater.get_targetinfo(v.target_path)
        assert info is not None and info.length == v.size
        assert info.custom == {"model": "digits", "version": 1, "variant": v.name,
                               "format": v.format, "kind": "variant"}
        assert anon.get(f"/v1/artifacts/{v.sha256}").status_code == 200
    downloaded = updater.download_target(updater.get_targetinfo(one.target_path))
    assert hashlib.sha256(Path(downloaded).read_bytes()).hexdigest() == one.sha256
    public = anon.get(f"/v1/artifacts/{one.sha256}")
    assert public.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert reader.get("/v1/models/digits/versions/1").json()["variants"][0]["public"] is True
    assert_problem(anon.get(f"/v1/artifacts/{two.sha256}"), 401, "unauthenticated")

    # The manifest names a target the device's TUF client verifies.
    manifest = anon.get("/v1/manifest", params={"model": "digits", "channel": "production",
                                                "install_id": DEVICE, **ANDROID}).json()
    assert updater.get_targetinfo(manifest["artifact"]["target"]) is not None

    _promote(publisher, "digits", 2)
    assert anon.get(f"/v1/artifacts/{two.sha256}").status_code == 200
    back = publisher.post("/v1/models/digits/channels/production/rollback", {})
    assert back.status_code == 201 and back.json()["version"] == 1
    # Rolling back keeps both public: devices may still hold version 2.
    later = _updater(base, tmp_path / "after-rollback")
    for v in (one, two):
        assert later.get_targetinfo(v.target_path) is not None
        assert anon.get(f"/v1/artifacts/{v.sha256}").status_code == 200
    assert not [p for p, t in _signed_targets(base).items() if t["custom"]["kind"] == "source"]
    published = services.store.audit_log(limit=10, action="variant.publish")
    assert sorted(e.target for e in published) == ["model:digits/version:1",
                                                  "model:digits/version:2"]


def test_pinned_release_publishes_only_its_variant(live_server, http, tmp_path):
    anon, reader, publisher = http
    v1 = make_ready_version(live_server.services, "digits")
    _promote(publisher, "digits", 1, variant="tflite-int8-dynamic")
    updater = _updater(live_server.base_url, tmp_path / "client")
    for v in v1.variants:
        pinned = v.name == "tflite-int8-dynamic"
        assert (updater.get_targetinfo(v.target_path) is not None) is pinned
        assert anon.get(f"/v1/artifacts/{v.sha256}").status_code == (200 if pinned else 401)
        assert reader.get(f"/v1/artifacts/{v.sha256}").status_code == 200


def test_experiment_arm_publishes_its_version(live_server, http, tmp_path):
    anon, _, publisher = http
    services = live_server.services
    make_ready_version(services, "digits")
    v2 = make_ready_version(services, "digits")
    _promote(publisher, "digits", 1)
    arms = [{"name": "control", "version": 1},
            {"name": "int8", "version": 2, "variant": "tflite-int8-dynamic"}]
    # A refused experiment (its name is taken) publishes nothing.
    resp = publisher.post("/v1/models/digits/releases", {"version": 1, "channel": "beta"})
    assert resp.status_code == 201, resp.text
    taken = publisher.post("/v1/experiments", {"name": "taken", "model": "digits",
                                               "channel": "beta", "arms": arms[:1] + [
                                                   {"name": "fp32", "version": 1}]})
    assert taken.status_code == 201, taken.text
    refused = publisher.post("/v1/experiments", {"name": "taken", "model": "digits",
                                                 "channel": "production", "arms": arms})
    assert_problem(refused, 409, "experiment_conflict")
    assert_problem(anon.get(f"/v1/artifacts/{_variant(v2).sha256}"), 401, "unauthenticated")

    created = publisher.post("/v1/experiments", {"name": "int8-test", "model": "digits",
                                                 "channel": "production", "arms": arms})
    assert created.status_code == 201, created.text
    updater = _updater(live_server.base_url, tmp_path / "client")
    for v in v2.variants:
        arm_variant = v.name == "tflite-int8-dynamic"
        assert (updater.get_targetinfo(v.target_path) is not None) is arm_variant
        assert anon.get(f"/v1/artifacts/{v.sha256}").status_code == (200 if arm_variant else 401)
    stopped = publisher.post("/v1/experiments/int8-test/stop", {"winner": "int8"})
    assert stopped.status_code == 200, stopped.text
    assert anon.get(f"/v1/artifacts/{_variant(v2).sha256}").status_code == 200


def test_targets_are_listed_before_the_release_is_written(services, api, monkeypatch):
    v1 = make_ready_version(services, "digits")
    seen = []
    create_release = services.store.create_release

    def spy(*args, **kwargs):
        seen.extend(services.signing.target_info(v.target_path) is not None
                    for v in v1.variants)
        seen.extend(services.store.public_artifacts([v.sha256]) == {v.sha256}
                    for v in v1.variants)
        return create_release(*args, **kwargs)

    monkeypatch.setattr(services.store, "create_release", spy)
    resp = api.post("/v1/models/digits/releases", json={"version": 1, "channel": "production"})
    assert resp.status_code == 201
    assert seen == [True] * (2 * len(v1.variants))


def test_a_shared_blob_is_public_when_any_variant_with_it_is(services, api, anon_api):
    data = os.urandom(5000)
    spec = {"tflite-fp32": {"format": "tflite", "data": data}}
    v1 = make_ready_version(services, "digits", variants=spec)
    v2 = make_ready_version(services, "digits", variants=spec)
    sha = v1.variants[0].sha256
    assert v2.variants[0].sha256 == sha
    assert services.store.artifact_visibility(sha) == "confidential"
    assert anon_api.get(f"/v1/artifacts/{sha}").status_code == 401
    assert api.post("/v1/models/digits/releases",
                    json={"version": 2, "channel": "production"}).status_code == 201
    # Version 1's row is still confidential, but its bytes are version 2's public target.
    assert not services.store.get_version("digits", 1).variants[0].public
    assert services.store.get_version("digits", 2).variants[0].public
    assert services.store.artifact_visibility(sha) == "public"
    assert anon_api.get(f"/v1/artifacts/{sha}").data == data


def test_delta_is_public_only_between_public_ends(services, api, anon_api):
    from registry.delivery.deltas import wait_for_deltas

    v1 = make_ready_version(services, "digits")
    # Version 1 ships only its int8 variant; its fp32 bytes stay confidential.
    assert api.post("/v1/models/digits/releases",
                    json={"version": 1, "channel": "production",
                          "variant": "tflite-int8-dynamic"}).status_code == 201
    v2 = make_ready_version(services, "digits")
    assert api.post("/v1/models/digits/releases",
                    json={"version": 2, "channel": "production"}).status_code == 201
    assert wait_for_deltas()
    kept = services.store.find_delta(_variant(v1).sha256, _variant(v2).sha256)
    assert kept is not None and kept.sha256
    assert services.signing.target_info(kept.target_path)["hashes"]["sha256"] == kept.sha256
    assert anon_api.get(f"/v1/artifacts/{kept.sha256}").status_code == 200
    # No patch from the confidential fp32 of version 1: it would be derived from it.
    fp32 = "tflite-fp32"
    assert services.store.find_delta(_variant(v1, fp32).sha256, _variant(v2, fp32).sha256) is None
    assert anon_api.get(f"/v1/artifacts/{_variant(v1, fp32).sha256}").status_code == 401


def test_manifest_offers_only_public_variants(services):
    v1 = make_ready_version(services, "digits")
    version_id = services.store.version_id("digits", 1)
    assert services.store.servable_variants(version_id) == []
    services.store.publish_variants(version_id, ["coreml-fp16"], "tests")
    assert [v["name"] for v in services.store.servable_variants(version_id)] == ["coreml-fp16"]
    # Re-recording different bytes makes the row confidential again.
    coreml = _variant(v1, "coreml-fp16")
    services.store.record_variant(
        version_id, name="coreml-fp16", format="coreml", sha256="c" * 64, size=coreml.size,
        target_path=coreml.target_path, fidelity={}, reference_latency_ms=None, servable=True,
        reason=None, error=None)
    assert services.store.servable_variants(version_id) == []


def test_confidential_urls_never_name_the_cdn(tmp_path):
    from registry.app import create_app
    from tests.helpers import ApiClient, base_settings

    app = create_app(base_settings(tmp_path, cdn_base_url="https://cdn.example",
                                   public_base_url="https://registry.example"))
    services = app.extensions["modeldrop"]
    try:
        api = ApiClient(app.test_client(), services.store.create_token("publisher").token)
        make_ready_version(services, "digits")
        shown = api.get("/v1/models/digits/versions/1").get_json()
        assert shown["source"]["url"].startswith("https://registry.example/v1/artifacts/")
        assert all(v["url"].startswith("https://registry.example/") for v in shown["variants"])
        api.post("/v1/models/digits/releases", json={"version": 1, "channel": "production"})
        shown = api.get("/v1/models/digits/versions/1").get_json()
        assert all(v["url"].startswith("https://cdn.example/") for v in shown["variants"])
    finally:
        services.store.engine.dispose()


def test_migration_0003_marks_already_published_variants_public(tmp_path):
    from alembic import command
    from sqlalchemy import text

    from registry import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        cfg = db.alembic_config(str(engine.url))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO models (id, name, description, created_at, created_by) "
                "VALUES (1, 'digits', '', '2026-11-01 00:00:00', 'x')"))
            conn.execute(text(
                "INSERT INTO versions (id, model_id, number, status, source_sha256, source_size, "
                "source_format, source_filename, metadata_json, created_at, created_by, "
                "updated_at) VALUES (1, 1, 1, 'ready', :sha, 1, 'keras', '', '{}', "
                "'2026-11-01 00:00:00', 'x', '2026-11-01 00:00:00')"), {"sha": "a" * 64})
            for i, (name, servable, path) in enumerate(
                    [("tflite-fp32", True, "digits/1/tflite-fp32.tflite"),
                     ("coreml-fp16", False, None)], start=1):
                conn.execute(text(
                    "INSERT INTO variants (id, version_id, name, format, sha256, size, "
                    "target_path, fidelity, servable, created_at) VALUES (:id, 1, :name, "
                    "'tflite', :sha, 1, :path, '{}', :servable, '2026-11-01 00:00:00')"),
                    {"id": i, "name": name, "sha": str(i) * 64, "path": path,
                     "servable": servable})
        db.upgrade(engine)
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT name, public FROM variants")).all())
        assert rows == {"tflite-fp32": 1, "coreml-fp16": 0}
    finally:
        engine.dispose()


def test_start_unlists_sources_an_older_release_published(tmp_path):
    from registry.app import create_app
    from tests.helpers import ApiClient, base_settings

    settings = base_settings(tmp_path)
    app = create_app(settings)
    services = app.extensions["modeldrop"]
    api = ApiClient(app.test_client(), services.store.create_token("publisher").token)
    sha = api.upload("digits", b"older source").get_json()["source"]["sha256"]
    # What ModelDrop did before sources were confidential:
    services.signing.add_targets([services.target_spec(
        "digits/1/source.keras", sha, len(b"older source"), model="digits", version=1,
        variant="source", format="keras", kind="source")])
    services.store.engine.dispose()

    again = create_app(settings)
    try:
        signing = again.extensions["modeldrop"].signing
        assert signing.target_info("digits/1/source.keras") is None
        assert again.test_client().get(
            f"/tuf/targets/digits/1/{sha}.source.keras").status_code == 404
        version = json.loads(signing.get_metadata("timestamp.json"))["signed"]["version"]
        create_app(settings).extensions["modeldrop"].store.engine.dispose()
        assert json.loads(signing.get_metadata("timestamp.json"))["signed"]["version"] == version
    finally:
        again.extensions["modeldrop"].store.engine.dispose()
