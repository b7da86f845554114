"""MODELDROP_ARTIFACT_REDIRECT=presigned: artifact downloads leave the API for the bucket.

A real SeaweedFS is the S3 backend. The artifact route answers 302 to a presigned URL; Range
and If-Range travel with the redirected request (resume works), a conditional GET the ETag
answers is still a 304 from the API, confidential artifacts are never redirected, and the
SDK installs through the redirect with the manifest still naming the stable URL.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
import requests

from client_sdk import DeviceInfo, ModelClient
from tests.helpers import base_settings
from tests.makers import make_ready_version
from tests.sdk_origin import fast_config

MODEL, CHANNEL = "digits", "production"


@pytest.fixture
def settings(tmp_path, seaweedfs):
    return base_settings(tmp_path, blob_backend="s3", s3_endpoint_url=seaweedfs,
                         s3_bucket="md-" + uuid.uuid4().hex[:10], s3_access_key="any",
                         s3_secret_key="any", artifact_redirect="presigned",
                         artifact_redirect_ttl=120)


def test_public_artifacts_redirect_to_a_presigned_url(live_server, tmp_path, tflite_models,
                                                      seaweedfs):
    server = live_server
    data = tflite_models["big"]
    version = make_ready_version(server.services, MODEL,
                                 variants={"tflite-fp32": {"format": "tflite", "data": data}})
    hidden = make_ready_version(server.services, MODEL)  # never released: confidential
    token = server.admin_token
    resp = requests.post(f"{server.base_url}/v1/models/{MODEL}/releases", timeout=10,
                         json={"version": version.version, "channel": CHANNEL},
                         headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201
    sha = hashlib.sha256(data).hexdigest()
    url = f"{server.base_url}/v1/artifacts/{sha}"

    first = requests.get(url, allow_redirects=False, timeout=10)
    assert first.status_code == 302 and first.content == b""
    location = first.headers["Location"]
    assert location.startswith(seaweedfs) and "Signature" in location
    max_age = int(first.headers["Cache-Control"].split("max-age=")[1])
    assert first.headers["Cache-Control"].startswith("private") and max_age <= 120
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    # resume through the redirect: the Range header goes to the bucket
    part = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=30)
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.url.startswith(seaweedfs)
    # a revalidation the ETag answers never leaves the API
    cached = requests.get(url, headers={"If-None-Match": f'"{sha}"'}, allow_redirects=False,
                          timeout=10)
    assert cached.status_code == 304
    # confidential bytes are streamed to an authorised reader, never redirected
    secret = hidden.variants[0].sha256
    assert requests.get(f"{server.base_url}/v1/artifacts/{secret}", allow_redirects=False,
                        timeout=10).status_code == 401
    own = requests.get(f"{server.base_url}/v1/artifacts/{secret}", allow_redirects=False,
                       timeout=10, headers={"Authorization": f"Bearer {token}"})
    assert own.status_code == 200

    root = requests.get(f"{server.base_url}/tuf/metadata/1.root.json", timeout=10).content
    client = ModelClient(server.base_url, tmp_path / "cache", trusted_root=root,
                         device=DeviceInfo(platform="android", os_version="14",
                                           device_model="pixel7", app_version="1.0"),
                         config=fast_config())
    model = client.get_model(MODEL, CHANNEL)
    assert hashlib.sha256(model.path.read_bytes()).hexdigest() == sha
    manifest = requests.get(f"{server.base_url}/v1/manifest", timeout=10, params={
        "model": MODEL, "channel": CHANNEL, "install_id": client.install_id,
        "platform": "android"}).json()
    assert manifest["artifact"]["urls"] == [url]  # the stable URL: 304s stay valid
    client.close()


def test_the_redirect_can_name_a_cdn_in_front_of_the_bucket(tmp_path, seaweedfs):
    """MODELDROP_ARTIFACT_REDIRECT_BASE_URL: the CDN's host, the bucket's path and signature
    (a CDN that forwards to the bucket gets a URL the bucket accepts)."""
    from registry.app import create_app

    app = create_app(base_settings(
        tmp_path, blob_backend="s3", s3_endpoint_url=seaweedfs,
        s3_bucket="md-" + uuid.uuid4().hex[:10], s3_access_key="any", s3_secret_key="any",
        artifact_redirect="presigned", artifact_redirect_base_url="https://cdn.example.test/edge/"))
    services = app.extensions["modeldrop"]
    try:
        data = b"released bytes for the cdn" * 1000
        version = make_ready_version(services, MODEL,
                                     variants={"tflite-fp32": {"format": "tflite", "data": data}})
        from registry.delivery import releases

        releases.promote(services, MODEL, version.version, channel=CHANNEL, actor="tests")
        sha = hashlib.sha256(data).hexdigest()
        resp = app.test_client().get(f"/v1/artifacts/{sha}")
        assert resp.status_code == 302
        location = resp.headers["Location"]
        prefix = "https://cdn.example.test/edge/"
        assert location.startswith(prefix) and "Signature" in location
        assert f"/blobs/{sha}?" in location
        # what the CDN forwards: the same path and query, to the bucket
        origin = seaweedfs + "/" + location[len(prefix):]
        assert requests.get(origin, timeout=30).content == data
    finally:
        services.store.engine.dispose()
