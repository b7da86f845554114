"""Content-addressed downloads: ETag, Range, If-Range, If-None-Match, cache headers.

Uploaded sources are confidential (docs/security.md), so most of these download them with
a reader token; ``test_public_variant_download_headers`` covers a released variant.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers import ApiClient, assert_problem


@pytest.fixture
def reader_api(app, reader_token):
    return ApiClient(app.test_client(), reader_token)


def _upload(api, data: bytes) -> str:
    body = api.upload("digits", data).get_json()
    return body["source"]["sha256"]


def test_full_download_headers(api, reader_api):
    data = os.urandom(300_000)
    sha = _upload(api, data)
    resp = reader_api.get(f"/v1/artifacts/{sha}")
    assert resp.status_code == 200
    assert resp.data == data
    assert resp.headers["ETag"] == f'"{sha}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert int(resp.headers["Content-Length"]) == len(data)
    assert hashlib.sha256(resp.data).hexdigest() == sha


def test_public_variant_download_headers(services, api, anon_api):
    from tests.makers import make_ready_version

    version = make_ready_version(services, "digits")
    variant = version.variants[0]
    assert api.post("/v1/models/digits/releases",
                    json={"version": version.version, "channel": "production"}).status_code == 201
    resp = anon_api.get(f"/v1/artifacts/{variant.sha256}")
    assert resp.status_code == 200
    assert resp.headers["ETag"] == f'"{variant.sha256}"'
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert hashlib.sha256(resp.data).hexdigest() == variant.sha256


def test_range_and_resume(api, reader_api):
    data = os.urandom(100_000)
    sha = _upload(api, data)
    part = reader_api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.data == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    tail = reader_api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=60000-",
                                                          "If-Range": f'"{sha}"'})
    assert tail.status_code == 206 and tail.data == data[60000:]
    suffix = reader_api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=-10"})
    assert suffix.status_code == 206 and suffix.data == data[-10:]


def test_if_range_mismatch_sends_everything(api, reader_api):
    data = os.urandom(5000)
    sha = _upload(api, data)
    resp = reader_api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=100-",
                                                          "If-Range": '"' + "0" * 64 + '"'})
    assert resp.status_code == 200 and resp.data == data


def test_unsatisfiable_range(api, reader_api):
    sha = _upload(api, b"x" * 100)
    resp = reader_api.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=500-600"})
    assert_problem(resp, 416, "range_not_satisfiable")


def test_if_none_match_304(api, reader_api):
    sha = _upload(api, b"y" * 100)
    resp = reader_api.get(f"/v1/artifacts/{sha}", headers={"If-None-Match": f'"{sha}"'})
    assert resp.status_code == 304 and resp.data == b""
    assert resp.headers["ETag"] == f'"{sha}"'


def test_unknown_and_malformed_sha(anon_api, api):
    assert_problem(anon_api.get("/v1/artifacts/" + "a" * 64), 404, "artifact_not_found")
    # a path-like key never reaches the store: the route does not even match it
    assert_problem(anon_api.get("/v1/artifacts/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")
    assert_problem(anon_api.get("/v1/artifacts/ABC"), 404, "artifact_not_found")


def test_head_request(api, reader_api):
    sha = _upload(api, b"z" * 1234)
    resp = reader_api.c.head(f"/v1/artifacts/{sha}", headers=reader_api._headers())
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == "1234"
