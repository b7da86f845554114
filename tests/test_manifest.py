"""GET /v1/manifest: resolution per device, the signed schema-1 document, ETag/304, errors."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.formats import encode_canonical

from tests.helpers import assert_problem
from tests.makers import make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7",
           "app_version": "3.2.0", "region": "de"}
IOS = {"platform": "ios", "os_version": "17.2", "device_model": "iPhone15,2",
       "app_version": "3.2.0", "region": "us"}
DEVICE_ID = "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"


def get_manifest(client, install_id=DEVICE_ID, model="digits", channel="production",
                 headers=None, **device):
    query = {"model": model, "channel": channel, "install_id": install_id, **(device or ANDROID)}
    return client.get("/v1/manifest", query_string={k: v for k, v in query.items() if v},
                      headers=headers)


def promote(api, version, channel="production", **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": channel, **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def verify_with_root(client, document) -> None:
    """Check the signature with the manifest key published in the TUF root, using
    cryptography directly (not the server's verify code)."""
    root = client.get("/v1/trusted-root")
    assert root.status_code == 200
    field = json.loads(root.get_data())["signed"]["x-modeldrop-manifest"]
    payload = encode_canonical({k: v for k, v in document.items()
                                if k != "signatures"}).encode("utf-8")
    valid = 0
    for sig in document["signatures"]:
        key = field["keys"].get(sig["keyid"])
        if key is None:
            continue
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["keyval"]["public"]))
        public.verify(bytes.fromhex(sig["sig"]), payload)  # raises InvalidSignature
        valid += 1
    assert valid >= field["threshold"]


def test_targeted_device_gets_a_signed_schema_1_manifest(services, api, anon_api):
    version = make_ready_version(services, "digits")
    promote(api, 1, targeting={"platforms": ["android"]}, reason="first")
    resp = get_manifest(anon_api)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    assert resp.headers["Cache-Control"] == "private, max-age=300"
    doc = resp.get_json()
    assert set(doc) == {"schema", "model", "channel", "release_counter", "version", "variant",
                        "format", "artifact", "experiment", "arm", "install_id", "issued_at",
                        "expires_at", "delta", "signature", "signatures"}
    smallest = next(v for v in version.variants if v.name == "tflite-int8-dynamic")
    assert doc["schema"] == 1 and doc["model"] == "digits" and doc["channel"] == "production"
    assert doc["release_counter"] == 1 and doc["version"] == 1
    assert (doc["variant"], doc["format"]) == ("tflite-int8-dynamic", "tflite")
    art = doc["artifact"]
    assert art["target"] == "digits/1/tflite-int8-dynamic.tflite"
    assert (art["length"], art["sha256"]) == (smallest.size, smallest.sha256)
    assert art["urls"][0].endswith(f"/v1/artifacts/{smallest.sha256}")
    assert (doc["experiment"], doc["arm"], doc["delta"]) == (None, None, None)
    assert doc["install_id"] == DEVICE_ID
    for key in ("issued_at", "expires_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc[key])
    issued = datetime.fromisoformat(doc["issued_at"][:-1]).replace(tzinfo=UTC)
    expires = datetime.fromisoformat(doc["expires_at"][:-1]).replace(tzinfo=UTC)
    assert expires - issued == timedelta(seconds=services.settings.manifest_ttl)
    assert abs((issued - datetime.now(UTC)).total_seconds()) < 60
    verify_with_root(anon_api, doc)
    # The URL serves exactly the bytes the manifest describes, and TUF lists the same target.
    path = art["urls"][0].split("localhost", 1)[1]
    body = anon_api.get(path).get_data()
    assert hashlib.sha256(body).hexdigest() == art["sha256"] and len(body) == art["length"]
    info = services.signing.target_info(art["target"])
    assert info["length"] == art["length"] and info["hashes"]["sha256"] == art["sha256"]
    assert info["custom"]["kind"] == "variant"


def test_untargeted_device_gets_204_and_ios_gets_core_ml(services, api, anon_api):
    make_ready_version(services, "digits")
    promote(api, 1, targeting={"platforms": ["android"], "regions": ["DE"]})
    resp = get_manifest(anon_api, **IOS)
    assert resp.status_code == 204 and resp.get_data() == b""
    assert get_manifest(anon_api, **{**ANDROID, "region": "fr"}).status_code == 204
    assert get_manifest(anon_api, **{**ANDROID, "region": None}).status_code == 204  # fail closed
    promote(api, 1, targeting={"platforms": ["ios"]})
    doc = get_manifest(anon_api, **IOS).get_json()
    assert (doc["variant"], doc["format"]) == ("coreml-fp16", "coreml")
    assert doc["artifact"]["target"] == "digits/1/coreml-fp16.mlpackage.zip"
    # the Android device is not targeted by release 2 and falls back to release 1
    doc = get_manifest(anon_api).get_json()
    assert doc["format"] == "tflite" and doc["release_counter"] == 2


def test_channel_without_release_is_204_and_unknown_model_is_404(services, api, anon_api):
    make_ready_version(services, "digits")
    promote(api, 1, channel="beta")
    assert get_manifest(anon_api).status_code == 204
    assert get_manifest(anon_api, channel="beta").status_code == 200
    assert_problem(get_manifest(anon_api, model="nope"), 404, "model_not_found")


def test_min_app_version_is_never_violated(services, api, anon_api):
    make_ready_version(services, "digits")
    make_ready_version(services, "digits", min_app_version="3.0")
    promote(api, 1)
    promote(api, 2)
    assert get_manifest(anon_api, **{**ANDROID, "app_version": "2.9.9"}).get_json()["version"] == 1
    assert get_manifest(anon_api, **{**ANDROID, "app_version": "3.0"}).get_json()["version"] == 2
    assert get_manifest(anon_api, **{**ANDROID, "app_version": "3.1.0"}).get_json()["version"] == 2
    # missing or unparseable app versions count as too old
    assert get_manifest(anon_api, **{**ANDROID, "app_version": None}).get_json()["version"] == 1
    assert get_manifest(anon_api, **{**ANDROID, "app_version": "3.2 (45)"}).get_json()["version"] == 1


def test_min_app_version_without_fallback_is_204(services, api, anon_api):
    make_ready_version(services, "digits", min_app_version="4.0")
    promote(api, 1)
    assert get_manifest(anon_api).status_code == 204
    assert get_manifest(anon_api, **{**ANDROID, "app_version": "4.1"}).status_code == 200


def test_pinned_variant_is_served_or_falls_back(services, api, anon_api):
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2, variant="tflite-fp32")
    doc = get_manifest(anon_api).get_json()
    assert (doc["version"], doc["variant"]) == (2, "tflite-fp32")
    # iOS cannot run the pinned TFLite file: it keeps the previous release
    doc = get_manifest(anon_api, **IOS).get_json()
    assert (doc["version"], doc["variant"], doc["release_counter"]) == (1, "coreml-fp16", 2)


def test_measured_latency_picks_the_faster_variant(services, api, anon_api, monkeypatch):
    from registry.delivery import manifest

    make_ready_version(services, "digits")
    promote(api, 1)
    assert get_manifest(anon_api).get_json()["variant"] == "tflite-int8-dynamic"  # smallest
    table = {"tflite-fp32": {"pixel7": 7.0}, "tflite-int8-dynamic": {"pixel7": 12.5}}
    monkeypatch.setattr(services.store, "latency_by_device", lambda version_id: table,
                        raising=False)
    monkeypatch.setattr(manifest, "_latency_cache", {})
    assert get_manifest(anon_api).get_json()["variant"] == "tflite-fp32"
    other = get_manifest(anon_api, **{**ANDROID, "device_model": "pixel6"}).get_json()
    assert other["variant"] == "tflite-int8-dynamic"  # no measurements for that class


def test_if_none_match_gives_304_until_something_changes(services, api, anon_api):
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    first = get_manifest(anon_api)
    etag = first.headers["ETag"]
    again = get_manifest(anon_api, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == etag
    assert again.headers["Cache-Control"] == "private, max-age=300"
    # another device, another document: no 304 with someone else's ETag
    other = get_manifest(anon_api, install_id="ffffffff-0000-4000-8000-000000000000",
                         headers={"If-None-Match": etag})
    assert other.status_code == 200
    promote(api, 2)
    changed = get_manifest(anon_api, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.get_json()["release_counter"] == 2


def test_etag_ignores_issue_time(services, api, app):
    from registry.delivery.manifest import manifest_answer

    make_ready_version(services, "digits")
    promote(api, 1)
    args = {"model": "digits", "channel": "production", "install_id": DEVICE_ID, **ANDROID}
    with app.test_request_context():
        url = lambda sha: f"http://cdn.example/{sha}"  # noqa: E731
        early = manifest_answer(services, args, artifact_url=url,
                                now=datetime(2026, 1, 1, tzinfo=UTC))
        late = manifest_answer(services, args, artifact_url=url,
                               now=datetime(2026, 1, 2, 12, tzinfo=UTC))
        cached = manifest_answer(services, args, artifact_url=url,
                                 etag_matches=lambda e: e == early.etag)
    assert early.document["issued_at"] != late.document["issued_at"]
    assert early.etag == late.etag
    assert cached.status == 304 and cached.document is None


@pytest.mark.parametrize("install_id", ["ABCDEF12-3456", "short", "-leading-dash-id",
                                        "ünïcode-install-id", "a" * 65, None])
def test_invalid_install_id_is_400(services, api, anon_api, install_id):
    make_ready_version(services, "digits")
    promote(api, 1)
    resp = anon_api.get("/v1/manifest", query_string={
        k: v for k, v in {"model": "digits", "platform": "android",
                          "install_id": install_id}.items() if v is not None})
    assert_problem(resp, 400, "invalid_install_id")


@pytest.mark.parametrize("query, code", [
    ({"platform": "windows"}, "invalid_device"),
    ({"platform": None}, "invalid_device"),
    ({"model": None}, "validation_error"),
    ({"model": "Bad Name"}, "invalid_name"),
    ({"channel": "Prod_1"}, "invalid_channel"),
    ({"installed_sha256": "abc"}, "validation_error"),
    ({"device_model": "x" * 200}, "validation_error"),
])
def test_bad_manifest_requests_are_400_with_codes(anon_api, query, code):
    base = {"model": "digits", "channel": "production", "platform": "android",
            "install_id": DEVICE_ID}
    base.update(query)
    resp = anon_api.get("/v1/manifest", query_string={k: v for k, v in base.items() if v})
    assert_problem(resp, 400, code)


def test_channel_defaults_to_production(services, api, anon_api):
    make_ready_version(services, "digits")
    promote(api, 1)
    resp = anon_api.get("/v1/manifest", query_string={"model": "digits", "platform": "android",
                                                      "install_id": DEVICE_ID})
    assert resp.status_code == 200 and resp.get_json()["channel"] == "production"


def test_signing_failures_are_problems_with_their_code(services, api, anon_api, monkeypatch):
    from registry.signing import MissingSigningKeyError

    make_ready_version(services, "digits")
    promote(api, 1)

    def offline(document):
        raise MissingSigningKeyError("no private manifest key on this server")

    monkeypatch.setattr(services.signing, "sign_manifest", offline)
    body = assert_problem(get_manifest(anon_api), 503, "missing_signing_key")
    assert "manifest key" in body["detail"]


def test_artifact_urls_are_what_url_for_builds_for_any_host(app):
    """artifact_url keeps url_for's prefix per scheme, host and script root (it is most of a
    manifest's URL building); the answer stays url_for's, Host headers included."""
    from flask import url_for

    from registry.api._util import artifact_url

    sha = "ab" * 32
    for base, headers in [("http://localhost/", {}), ("https://md.example:8443/", {}),
                          ("http://localhost/", {"Host": "evil.example"}),
                          ("http://[::1]:8080/", {}), ("http://localhost/mount/", {})]:
        root = "/mount" if "mount" in base else ""
        for _ in range(2):  # the first builds the prefix, the second reuses it
            with app.test_request_context("/v1/manifest", base_url=base, headers=headers,
                                          environ_overrides={"SCRIPT_NAME": root} if root else None):
                assert artifact_url(sha) == url_for("artifacts.get_artifact", sha256=sha, _external=True)
                assert artifact_url("not-hex") == url_for("artifacts.get_artifact", sha256="not-hex",
                                                          _external=True)
