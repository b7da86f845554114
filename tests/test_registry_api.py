"""Models and versions over the HTTP API: uploads, idempotency, bad input, metadata, audit."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.helpers import assert_problem

META = {"framework": "keras", "description": "digits CNN", "tags": ["cnn"],
        "labels": [str(i) for i in range(10)],
        "input": [{"name": "input", "shape": [None, 8, 8, 1], "dtype": "float32"}],
        "output": [{"name": "probs", "shape": [None, 10], "dtype": "float32"}],
        "accuracy": {"top1": 0.97}, "latency_ms": {"iphone12": 4.2, "pixel7": 6.0},
        "min_app_version": "2.1.0", "extra": {"commit": "abc"}}


def test_upload_creates_version_with_metadata_and_job(api):
    resp = api.upload("digits", b"first model", metadata=META)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["model"] == "digits" and body["version"] == 1
    assert body["status"] == "uploaded"
    assert body["source"]["sha256"] == hashlib.sha256(b"first model").hexdigest()
    assert body["source"]["size"] == len(b"first model")
    assert body["metadata"]["latency_ms"] == {"iphone12": 4.2, "pixel7": 6.0}
    assert body["job"]
    job = api.get(f"/v1/jobs/{body['job']}").get_json()
    assert job["state"] == "queued" and job["version"] == 1
    assert resp.headers["Location"].endswith("/v1/models/digits/versions/1")


def test_reupload_same_bytes_is_idempotent(api):
    first = api.upload("digits", b"same bytes").get_json()
    again = api.upload("digits", b"same bytes")
    assert again.status_code == 200
    assert again.get_json()["version"] == first["version"]
    assert api.upload("digits", b"other bytes").get_json()["version"] == 2
    assert len(api.get("/v1/models/digits/versions").get_json()["items"]) == 2


def test_conflicting_bytes_for_existing_version(api):
    api.upload("digits", b"v1 bytes", version=1)
    assert api.upload("digits", b"v1 bytes", version=1).status_code == 200
    assert_problem(api.upload("digits", b"different", version=1), 409, "version_conflict")
    assert len(api.get("/v1/models/digits/versions").get_json()["items"]) == 1


@pytest.mark.parametrize("name", ["../x", "Digits", "-lead", "a" * 65, "sp ace", "x/y", "é"])
def test_bad_names_rejected(api, name):
    resp = api.post(f"/v1/models/{name}/versions", data={}, content_type="multipart/form-data")
    assert resp.status_code in (400, 404, 405)
    if resp.status_code == 400:
        assert resp.get_json()["code"] == "invalid_name"


def test_path_like_name_in_url_is_invalid(api):
    assert_problem(api.upload("..", b"x"), 400, "invalid_name")
    assert_problem(api.get("/v1/models/.x"), 400, "invalid_name")


def test_missing_and_empty_file(api, services):
    resp = api.post("/v1/models/digits/versions", data={"metadata": "{}"},
                    content_type="multipart/form-data")
    assert_problem(resp, 400, "missing_file")
    assert_problem(api.upload("digits", b""), 400, "empty_file")
    assert services.store.list_models() == []


def test_unsupported_extension(api):
    body = assert_problem(api.upload("digits", b"abc", filename="model.onnx"), 400,
                          "unsupported_format")
    assert body["field"] == "file"


@pytest.mark.parametrize("metadata,field", [
    ("{not json", "metadata"),
    ("[1, 2]", "metadata"),
    ({"accuracy": {"top1": "high"}}, "accuracy.top1"),
    ({"latency_ms": {"pixel7": -3}}, "latency_ms"),
    ({"input": [{"name": "x", "shape": [1, 0], "dtype": "float32"}]}, "input.0.shape"),
    ({"input": [{"name": "x", "shape": [1], "dtype": "complex"}]}, "input.0.dtype"),
    ({"min_app_version": "two"}, "min_app_version"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"variants": ["tflite-fp32", "onnx-fp32"]}, "variants"),
])
def test_malformed_metadata_names_the_field(api, services, metadata, field):
    body = assert_problem(api.upload("digits", b"model", metadata=metadata), 400, "invalid_metadata")
    assert body["field"] == field, body
    assert services.store.list_models() == []
    assert list(services.blobs.staging_dir.iterdir()) == []


def test_oversize_upload_413_and_nothing_left(tmp_path):
    from registry.app import create_app
    from tests.helpers import ApiClient, base_settings

    app = create_app(base_settings(tmp_path, max_upload_bytes=1000))
    svc = app.extensions["modeldrop"]
    api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
    assert_problem(api.upload("digits", b"x" * 5000), 413, "upload_too_large")
    assert svc.store.list_models() == []
    assert list(svc.blobs.staging_dir.iterdir()) == []
    assert api.upload("digits", b"x" * 999).status_code == 201


def test_unknown_model_and_version(api):
    assert_problem(api.get("/v1/models/nope"), 404, "model_not_found")
    assert_problem(api.get("/v1/models/nope/versions"), 404, "model_not_found")
    api.upload("digits", b"m")
    assert_problem(api.get("/v1/models/digits/versions/9"), 404, "version_not_found")
    assert_problem(api.get("/v1/jobs/nope"), 404, "job_not_found")


def test_listing_is_newest_first_and_paginated(api):
    for i in range(5):
        api.upload("digits", f"model {i}".encode())
    page1 = api.get("/v1/models/digits/versions?limit=2").get_json()
    assert [v["version"] for v in page1["items"]] == [5, 4]
    page2 = api.get(f"/v1/models/digits/versions?limit=2&cursor={page1['next_cursor']}").get_json()
    assert [v["version"] for v in page2["items"]] == [3, 2]
    page3 = api.get(f"/v1/models/digits/versions?limit=2&cursor={page2['next_cursor']}").get_json()
    assert [v["version"] for v in page3["items"]] == [1] and page3["next_cursor"] is None
    assert_problem(api.get("/v1/models/digits/versions?limit=0"), 400, "validation_error")
    models = api.get("/v1/models").get_json()["items"]
    assert models[0]["name"] == "digits" and models[0]["latest_version"] == 5
    assert api.get("/v1/models/digits").get_json()["version_count"] == 5


def test_patch_metadata_merges_and_is_audited(api, admin_api):
    api.upload("digits", b"m", metadata=META)
    resp = api.patch("/v1/models/digits/versions/1", json={"latency_ms": {"galaxy-s23": 5.5}})
    assert resp.status_code == 200, resp.get_json()
    lat = resp.get_json()["metadata"]["latency_ms"]
    assert lat == {"iphone12": 4.2, "pixel7": 6.0, "galaxy-s23": 5.5}
    assert_problem(api.patch("/v1/models/digits/versions/1", json={"latency_ms": {"x": "fast"}}),
                   400, "invalid_metadata")
    assert_problem(api.patch("/v1/models/digits/versions/1", json={"framework": "torch"}),
                   400, "invalid_metadata")
    entries = admin_api.get("/v1/audit?action=version.update").get_json()["items"]
    assert len(entries) == 1
    assert entries[0]["details"]["latency_ms"]["to"]["galaxy-s23"] == 5.5
    assert entries[0]["actor"].startswith("token:")


def test_eval_set_stored_and_size_limited(tmp_path):
    import io

    import numpy as np

    from registry.app import create_app
    from tests.helpers import ApiClient, base_settings

    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((2, 2), np.float32))  # 272 bytes
    npz = buf.getvalue()
    app = create_app(base_settings(tmp_path, max_eval_bytes=len(npz)))
    svc = app.extensions["modeldrop"]
    api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
    assert_problem(api.upload("digits", b"m", eval_bytes=npz + b"e"), 413, "upload_too_large")
    assert svc.store.list_models() == []
    body = api.upload("digits", b"m", eval_bytes=npz).get_json()
    assert body["source"]["eval_sha256"] == hashlib.sha256(npz).hexdigest()


def test_json_body_instead_of_multipart(api):
    resp = api.post("/v1/models/digits/versions", json={"file": "x"})
    assert_problem(resp, 400, "validation_error")


def test_problem_json_for_unknown_route(anon_api):
    resp = anon_api.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.mimetype == "application/problem+json"
    assert json.loads(resp.get_data())["code"] == "not_found"


def test_model_threshold_setting_and_precedence(api, admin_api, services):
    api.upload("digits", b"v1")
    resp = api.patch("/v1/models/digits", json={"accuracy_drop_threshold_pp": 0.5,
                                                "description": "digits CNN"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["accuracy_drop_threshold_pp"] == 0.5
    assert_problem(api.patch("/v1/models/digits", json={"accuracy_drop_threshold_pp": -1}),
                   400, "validation_error")
    assert_problem(api.patch("/v1/models/digits", json={"owner": "me"}), 400, "validation_error")
    assert_problem(api.patch("/v1/models/nope", json={"description": "x"}), 404, "model_not_found")
    api.upload("digits", b"v2", metadata={"accuracy_drop_threshold_pp": 2.0})
    v1 = services.store.version_id("digits", 1)
    v2 = services.store.version_id("digits", 2)
    assert services.store.model_threshold(v1) == 0.5   # the model's setting
    assert services.store.model_threshold(v2) == 2.0   # the upload's own wins
    entry = admin_api.get("/v1/audit?action=model.update").get_json()["items"][0]
    assert entry["details"]["accuracy_drop_threshold_pp"] == {"from": None, "to": 0.5}


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/manifest", {"GET", "HEAD", "OPTIONS"}),
    ("PUT", "/v1/telemetry", {"POST", "OPTIONS"}),
    ("DELETE", "/v1/models/digits/versions", {"GET", "HEAD", "OPTIONS", "POST"}),
])
def test_a_405_is_a_problem_that_says_which_methods_are_allowed(app, method, path, allowed):
    """RFC 9110: a 405 carries Allow (schemathesis found one without it)."""
    resp = app.test_client().open(path, method=method)
    assert_problem(resp, 405, "method_not_allowed")
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed


def test_model_max_relative_rmse_is_set_validated_cleared_and_audited(api, admin_api, services):
    api.upload("boxes", b"v1")
    resp = api.patch("/v1/models/boxes", json={"max_relative_rmse": 0.02})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["max_relative_rmse"] == 0.02
    assert api.get("/v1/models/boxes").get_json()["max_relative_rmse"] == 0.02
    assert services.store.model_max_relative_rmse(services.store.version_id("boxes", 1)) == 0.02
    for bad in (-0.1, 101, "0.1", True):
        body = assert_problem(api.patch("/v1/models/boxes", json={"max_relative_rmse": bad}),
                              400, "validation_error")
        assert body["field"] == "max_relative_rmse"
    resp = api.patch("/v1/models/boxes", data='{"max_relative_rmse": Infinity}',
                     content_type="application/json")
    assert resp.status_code == 400
    assert api.get("/v1/models/boxes").get_json()["max_relative_rmse"] == 0.02
    assert api.patch("/v1/models/boxes", json={"max_relative_rmse": None}).get_json()[
        "max_relative_rmse"] is None  # null clears: the server's default applies again
    entries = admin_api.get("/v1/audit?action=model.update").get_json()["items"]
    assert entries[0]["details"]["max_relative_rmse"] == {"from": 0.02, "to": None}
    assert entries[1]["details"]["max_relative_rmse"] == {"from": None, "to": 0.02}


def test_max_relative_rmse_precedence_upload_then_model_then_server(api, services):
    from registry.jobs.runner import max_relative_rmse

    api.upload("boxes", b"v1")
    api.upload("boxes", b"v2", metadata={"max_relative_rmse": 0.2})
    v1 = services.store.get_version("boxes", 1)
    v2 = services.store.get_version("boxes", 2)
    id1, id2 = services.store.version_id("boxes", 1), services.store.version_id("boxes", 2)
    assert max_relative_rmse(services, v1, id1) == services.settings.max_relative_rmse == 0.05
    assert api.patch("/v1/models/boxes", json={"max_relative_rmse": 0.01}).status_code == 200
    assert max_relative_rmse(services, v1, id1) == 0.01  # the model's setting
    assert max_relative_rmse(services, v2, id2) == 0.2  # the upload's own wins
    api.patch("/v1/models/boxes", json={"max_relative_rmse": None})
    assert max_relative_rmse(services, v1, id1) == 0.05  # cleared: the server's again
