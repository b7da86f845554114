"""The eval set is checked at upload against the metadata's declared inputs and outputs (issue
12/13): a bad one is a 400 naming the array and the problem, and nothing is stored — no blob,
no staging file, no version row. Real uploads through the app's multipart parser; one over
real HTTP with requests."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests

from tests.helpers import assert_problem

TWO_INPUTS = {
    "input": [{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32"},
              {"name": "tokens", "shape": [None, 12], "dtype": "int32"}],
    "output": [{"name": "boxes", "shape": [None, 4], "task": "regression"},
               {"name": "scores", "shape": [None, 3], "task": "classification"}],
}


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def good(n: int = 5, **override) -> dict:
    arrays = {"image": np.zeros((n, 8, 8, 1), np.float32),
              "tokens": np.zeros((n, 12), np.int32),
              "y__scores": np.zeros(n, np.int64)}
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def _nothing_stored(services, name: str) -> None:
    assert list(services.blobs.iter_sha256()) == []
    assert list(services.blobs.staging_dir.glob("upload-*")) == []
    assert services.store.list_models() == [] or all(m.name != name for m in services.store.list_models())


@pytest.mark.parametrize(("arrays", "array", "words"), [
    (good(tokens=None), "tokens", "the declared input 'tokens' has no array"),
    (good(tokens=np.zeros((5, 12), np.float32)), "tokens", "cannot feed the declared int32"),
    (good(image=np.zeros((5, 8, 8, 3), np.float32)), "image", "per-sample shape (8, 8, 3)"),
    (good(image=np.zeros((5, 64), np.float32)), "image", "per-sample shape (64,)"),
    (good(tokens=np.zeros((4, 12), np.int32)), None, "different numbers of samples"),
    (good(y__scores=np.zeros(5, np.float32)), "y__scores", "1-D integer"),
    (good(y__scores=np.zeros((5, 3), np.int64)), "y__scores", "1-D integer"),
    (good(y__labels=np.zeros(5, np.int64)), "y__labels", "name no declared output"),
    (good(image=None, imgae=np.zeros((5, 8, 8, 1), np.float32)), "image",
     "no array named 'image' (found: imgae, tokens, y__scores)"),
    (good(tokens=np.zeros((5, 12), bool)), "tokens", "cannot feed the declared int32"),
    (good(image=np.array(["a"] * 5)), "image", "must be numbers or booleans"),
])
def test_an_eval_set_that_does_not_fit_the_declared_signature_is_400(api, services, arrays,
                                                                     array, words):
    body = assert_problem(api.upload("twoin", metadata=TWO_INPUTS, eval_bytes=npz(**arrays)),
                          400, "invalid_eval_set")
    assert body["field"] == "eval"
    assert words in body["detail"], body["detail"]
    assert body.get("array") == array
    _nothing_stored(services, "twoin")


def test_a_fitting_eval_set_is_accepted(api, services):
    resp = api.upload("twoin", metadata=TWO_INPUTS, eval_bytes=npz(**good()))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["source"]["eval_sha256"]
    # integer pixels feed a float input; a dynamic declared dimension takes any size
    meta = {"input": [{"name": "image", "shape": [None, None, 8, 1]}]}
    resp = api.upload("onein", b"other bytes", metadata=meta,
                      eval_bytes=npz(x=np.zeros((3, 5, 8, 1), np.uint8), y=np.arange(3)))
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_x_stands_for_a_single_declared_input_only(api, services):
    one = {"input": [{"name": "image", "shape": [None, 4]}]}
    assert api.upload("one", metadata=one, eval_bytes=npz(x=np.zeros((2, 4), np.float32))
                      ).status_code == 201
    body = assert_problem(api.upload("two", b"b2", metadata=TWO_INPUTS, eval_bytes=npz(
        x=np.zeros((5, 8, 8, 1), np.float32), tokens=np.zeros((5, 12), np.int32))),
        400, "invalid_eval_set")
    assert body["array"] == "image" and "(found: tokens, x)" in body["detail"]
    assert "(or 'x')" not in body["detail"]  # x is no stand-in when two inputs are declared


def test_without_declared_inputs_only_the_structure_is_checked(api, services):
    assert api.upload("free", metadata={}, eval_bytes=npz(
        x=np.zeros((3, 7), np.float32), y=np.zeros(3, np.int32))).status_code == 201
    for bad, words in ((b"not a zip", "not a readable .npz"),
                       (npz(x=np.zeros((3, 7)), y=np.zeros(2, np.int32)), "different numbers"),
                       (npz(x=np.array([{"a": 1}] * 3, dtype=object)), "Python objects"),
                       (npz(x=np.float32(1.0)), "scalar")):
        body = assert_problem(api.upload("free2", b"free2 bytes", eval_bytes=bad), 400,
                              "invalid_eval_set")
        assert words in body["detail"], body["detail"]
    assert all(m.name != "free2" for m in services.store.list_models())
    assert list(services.blobs.staging_dir.glob("upload-*")) == []


@pytest.mark.parametrize(("metadata", "field"), [
    ({"input": [{"name": "a", "shape": [None, 2]}, {"name": "a", "shape": [None, 3]}]}, "input"),
    ({"output": [{"name": "o", "shape": [None, 2], "dtype": "complex64"}]}, "output.0.dtype"),
    ({"input": [{"name": "a", "shape": [None, 2], "task": "regression"}]}, "input"),
    ({"output": [{"name": "o", "shape": [None, 2], "task": "ranking"}]}, "output.0.task"),
    ({"max_relative_rmse": -0.1}, "max_relative_rmse"),
])
def test_a_self_inconsistent_declared_signature_is_400(api, services, metadata, field):
    body = assert_problem(api.upload("bad", metadata=metadata), 400, "invalid_metadata")
    assert body["field"] == field, body
    _nothing_stored(services, "bad")


def test_retry_checks_the_new_eval_set_against_the_versions_metadata(api, services):
    meta = {"input": [{"name": "image", "shape": [None, 4]}]}
    assert api.upload("r", metadata=meta).status_code == 201
    version_id = services.store.version_id("r", 1)
    services.store.set_version_status(version_id, "failed", "boom")
    for job in [services.store.latest_job_for_version(version_id)]:
        services.store.finish_job(job, "failed", {}, "boom")
    resp = api.post("/v1/models/r/versions/1/retry", content_type="multipart/form-data",
                    data={"eval": (io.BytesIO(npz(x=np.zeros((2, 5), np.float32))), "e.npz")})
    body = assert_problem(resp, 400, "invalid_eval_set")
    assert "per-sample shape (5,)" in body["detail"]
    assert services.store.get_version("r", 1).status == "failed"
    assert list(services.blobs.staging_dir.glob("upload-*")) == []


def test_over_real_http_the_400_names_the_array(tmp_path):
    from registry.app import create_app
    from tests.helpers import base_settings
    from tests.live import serve_app

    app = create_app(base_settings(tmp_path))
    services = app.extensions["modeldrop"]
    token = services.store.create_token("publisher", "p").token
    import json

    try:
        with serve_app(app) as url:
            resp = requests.post(f"{url}/v1/models/twoin/versions", timeout=30,
                                 headers={"Authorization": f"Bearer {token}"},
                                 data={"metadata": json.dumps(TWO_INPUTS)},
                                 files={"file": ("m.keras", b"model bytes"),
                                        "eval": ("e.npz", npz(**good(tokens=None)))})
        assert resp.status_code == 400 and resp.headers["Content-Type"].startswith(
            "application/problem+json")
        assert resp.json()["array"] == "tokens"
        assert list(services.blobs.iter_sha256()) == []
        assert list(services.blobs.staging_dir.glob("upload-*")) == []
        assert services.store.list_models() == []
    finally:
        services.store.engine.dispose()
