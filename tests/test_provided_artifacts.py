"""Bring-your-own artifacts: an engineer's .tflite, zipped .mlpackage or .mlmodel pushed alone
becomes a version whose one variant is exactly those bytes, checked and measured inside the
sandbox (real LiteRT interpreter, real coremltools), and served byte-identical. Hostile files
(garbage after the TFLite magic, a zip-slip package, a zip bomb) fail with a clear reason and
leave nothing servable. ONNX is refused at upload from the part's header."""

from __future__ import annotations

import hashlib

import pytest

from tests import makers_provided
from tests.helpers import ApiClient, assert_problem, converting_app, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("provided")
    return {"tflite": makers_provided.make_tflite(tmp / "classifier.tflite"),
            "mlpackage": makers_provided.make_mlpackage_zip(tmp / "ios.mlpackage.zip"),
            "mlmodel": makers_provided.make_mlmodel(tmp / "legacy.mlmodel")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with converting_app(tmp_path_factory.mktemp("provided-server")) as (app, services, token):
        yield {"app": app, "services": services, "api": ApiClient(app.test_client(), token)}


def _wait(api, job_id: str, timeout: float = 300) -> dict:
    return wait_job(lambda j: api.get(f"/v1/jobs/{j}").get_json(), job_id, timeout, step=0.3)


def _push(server, name, path, filename=None, metadata=None):
    resp = server["api"].upload(name, path.read_bytes(), filename=filename or path.name, metadata=metadata)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    return body, _wait(server["api"], body["job"])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# What each artifact of makers_provided really has (the TFLite leaves its batch free: null).
DECLARED = {
    "tflite": {"input": [{"name": "x", "dtype": "float32", "shape": [1, 8]}],
               "output": [{"name": "output_0", "dtype": "float32", "shape": [None, 4]}]},
    "mlpackage": {"input": [{"name": "x", "dtype": "float32", "shape": [1, 8]}],
                  "output": [{"name": "probs", "dtype": "float32", "shape": [1, 4]}]},
    "mlmodel": {"input": [{"name": "x", "dtype": "float32", "shape": [8]}],
                "output": [{"name": "y", "dtype": "float32", "shape": [4]}]},
}


@pytest.mark.parametrize(("kind", "variant", "fmt"), [
    ("tflite", "tflite-provided", "tflite"),
    ("mlpackage", "coreml-provided", "coreml"),
    ("mlmodel", "coreml-provided-mlmodel", "coreml"),
])
def test_a_provided_artifact_is_served_as_uploaded(server, artifacts, kind, variant, fmt):
    path = artifacts[kind]
    body, job = _push(server, f"byo-{kind}", path, metadata=DECLARED[kind])  # a true declaration passes
    assert job["state"] == "done", job
    assert body["source"]["format"] == kind
    version = server["api"].get(f"/v1/models/byo-{kind}/versions/1").get_json()
    assert version["status"] == "ready", version
    (row,) = version["variants"]
    assert row["name"] == variant and row["format"] == fmt and row["servable"], row
    assert row["sha256"] == _sha(path.read_bytes()) and row["size"] == path.stat().st_size
    assert row["fidelity"]["comparison"] == "no source to compare"
    # The artifact route serves the very bytes that were pushed.
    served = server["api"].get(row["url"])
    assert served.status_code == 200 and _sha(served.data) == _sha(path.read_bytes())
    if kind == "tflite":
        latency = row["reference_latency_ms"]
        assert latency["device_class"] == "server-x86_64" and 0 < latency["p50"] <= latency["p90"]
    else:
        assert row["fidelity"]["spec_valid"] is True and row["reference_latency_ms"] is None
        assert row["fidelity"]["model_type"] == ("mlProgram" if kind == "mlpackage" else "neuralNetwork")


def test_provided_artifacts_are_checked_in_the_sandbox(server, tmp_path):
    """It passes the upload's header checks; the sandbox finds what is wrong."""
    garbage = makers_provided.garbage_after_magic(tmp_path / "garbage.tflite")
    _, job = _push(server, "byo-garbage", garbage)
    assert job["state"] == "failed" and job["error"].startswith("invalid_artifact: the TFLite model does not load"), job
    version = server["api"].get("/v1/models/byo-garbage/versions/1").get_json()
    assert version["status"] == "failed" and not any(v["servable"] for v in version["variants"]), version


def test_a_package_declaring_a_bomb_is_refused_at_upload(server, tmp_path):
    """Its central directory declares 1 GiB once extracted: 400 before anything is stored."""
    api = server["api"]
    bomb = makers_provided.huge_declared_package(tmp_path / "bomb.mlpackage.zip", 1 << 30)
    body = assert_problem(api.upload("byo-bomb", bomb.read_bytes(), filename="bomb.mlpackage.zip"), 400,
                          "unsupported_format")
    assert "declare" in body["detail"] and "once extracted" in body["detail"], body
    assert api.get("/v1/models/byo-bomb").status_code == 404


def test_unsafe_or_mislabelled_artifacts_are_refused_at_upload(server, tmp_path, artifacts):
    api = server["api"]
    slip = makers_provided.zip_slip_package(tmp_path / "slip.mlpackage.zip")
    body = assert_problem(api.upload("byo-bad", slip.read_bytes(), filename="slip.mlpackage.zip"), 400,
                          "unsupported_format")
    assert "unsafe member path" in body["detail"]
    body = assert_problem(api.upload("byo-bad", b"\x00" * 64, filename="m.tflite"), 400, "unsupported_format")
    assert "TFL3" in body["detail"]
    body = assert_problem(api.upload("byo-bad", artifacts["mlpackage"].read_bytes(), filename="m.mlmodel"), 400,
                          "unsupported_format")
    assert ".mlpackage.zip" in body["detail"]
    body = assert_problem(api.upload("byo-bad", artifacts["tflite"].read_bytes(), filename="m.tflite",
                                     metadata={"variants": ["tflite-fp32"]}), 400, "invalid_metadata")
    assert "served as uploaded" in body["detail"]
    body = assert_problem(api.upload("byo-bad", b"onnx" * 100, filename="model.onnx"), 400, "unsupported_format")
    assert "coremltools 9 does not read ONNX" in body["detail"] and ".tflite" in body["detail"]
    assert all(m.name != "byo-bad" for m in server["services"].store.list_models())


@pytest.mark.parametrize(("kind", "platform", "variant"), [
    ("tflite", {"platform": "android", "os_version": "14", "device_model": "Pixel 8"}, "tflite-provided"),
    ("mlmodel", {"platform": "ios", "os_version": "17.4", "device_model": "iPhone15,2"},
     "coreml-provided-mlmodel"),
])
def test_a_released_provided_artifact_reaches_a_device_of_its_format(server, artifacts, tmp_path,
                                                                    kind, platform, variant):
    from client_sdk._loadcheck import check_model

    api, services = server["api"], server["services"]
    name = f"deliver-{kind}"
    _, job = _push(server, name, artifacts[kind])
    assert job["state"] == "done", job
    resp = api.post(f"/v1/models/{name}/releases", json={"version": 1, "channel": "production"})
    assert resp.status_code == 201, resp.get_json()
    manifest = api.get("/v1/manifest", query_string={
        "model": name, "channel": "production", "install_id": "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c",
        **platform})
    assert manifest.status_code == 200, manifest.get_data(as_text=True)
    doc = manifest.get_json()
    assert doc["variant"] == variant
    art = doc["artifact"]
    assert art["sha256"] == _sha(artifacts[kind].read_bytes())
    info = services.signing.target_info(art["target"])  # a TUF target with the uploaded bytes' hash
    assert info["hashes"]["sha256"] == art["sha256"] and info["length"] == artifacts[kind].stat().st_size
    body = api.get(art["urls"][0].split("localhost", 1)[1]).get_data()
    assert _sha(body) == art["sha256"]
    # The SDK's load check accepts what it downloaded, in the manifest's format.
    installed = tmp_path / art["target"].rsplit("/", 1)[1]
    installed.write_bytes(body)
    check_model(installed, doc["format"])


def test_modeldrop_push_of_a_tflite_over_http(server, artifacts, tmp_path):
    """`modeldrop push NAME model.tflite --wait` as a user runs it: a subprocess over loopback."""
    import os
    import subprocess
    import sys

    from tests.live import serve_app

    token = server["services"].store.create_token("publisher", "cli").token
    with serve_app(server["app"]) as url:
        env = {**os.environ, "MODELDROP_URL": url, "MODELDROP_TOKEN": token}
        done = subprocess.run([sys.executable, "-m", "registry.cli", "push", "cli-tflite", str(artifacts["tflite"]),
                               "--wait"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tflite-provided" in done.stdout, done.stdout
    version = server["api"].get("/v1/models/cli-tflite/versions/1").get_json()
    assert version["variants"][0]["sha256"] == _sha(artifacts["tflite"].read_bytes())


@pytest.mark.parametrize(("kind", "role", "field", "value", "error"), [
    ("tflite", "input", "dtype", "int32", "declared input 'x' is int32 but the model's is float32"),
    ("mlpackage", "input", "shape", [1, 9], "declared input 'x' has shape [1, 9] but the model's is [1, 8]"),
    ("tflite", "output", "name", "scores",
     "declared output 'scores' is not in the model, whose outputs are 'output_0'"),
])
def test_a_declared_signature_that_is_not_the_artifacts_fails_the_job_naming_the_tensor(
        server, artifacts, kind, role, field, value, error):
    """As for a source model (tests/test_model_families.py): the declaration is checked in the
    sandbox against the signature read from the artifact; the job fails naming the tensor.
    (A true declaration of each kind, the .mlmodel's batch-less shapes included, passes in
    test_a_provided_artifact_is_served_as_uploaded; one Core ML case here, since each Core ML
    job pays for importing coremltools in the converter.)"""
    import copy

    declared = copy.deepcopy(DECLARED[kind])
    declared[role][0][field] = value
    name = f"lie-{kind}-{field}"
    _, job = _push(server, name, artifacts[kind], metadata=declared)
    assert job["state"] == "failed" and job["error"] == error, job
    version = server["api"].get(f"/v1/models/{name}/versions/1").get_json()
    assert version["status"] == "failed" and version["error"] == error, version
    assert not any(v["servable"] for v in version["variants"]), version


def test_the_sandbox_still_refuses_a_package_beyond_its_budget(tmp_path):
    """Behind the upload's check, the converter's own extraction refuses the same bomb."""
    from registry.convert._provided import check_coreml

    bomb = makers_provided.huge_declared_package(tmp_path / "bomb.mlpackage.zip", 1 << 30)
    (tmp_path / "build").mkdir()
    with pytest.raises(Exception, match=r"^upload_too_large: bomb\.mlpackage\.zip declares"):
        check_coreml(bomb, "mlpackage", tmp_path / "build", 64 << 20)
    assert not any((tmp_path / "build").rglob("*.bin")), "nothing of the bomb was extracted"
