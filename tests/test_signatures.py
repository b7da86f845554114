"""Variant I/O signatures over real HTTP: stored per variant, served in the API, the signed
manifest and the ruleset, and checked by the SDK's ModelContract for every tensor — against
the manifest before any byte is downloaded, against the real TFLite interpreter after.

Models are real TFLite files built in a subprocess from tiny Keras models: a text classifier on
int32 token ids (embedding) and a two-input, two-output model (image + feature vector ->
boxes + scores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from client_sdk import DeviceInfo, ModelClient, ModelContract, TensorSpec
from client_sdk.errors import ModelDropError
from tests.makers import make_ready_version
from tests.sdk_origin import fast_config

CHANNEL = "production"
DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")

_BUILD = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path
import keras, tensorflow as tf
out = Path(sys.argv[1])
keras.utils.set_random_seed(3)
tokens = keras.Input((12,), dtype="int32", name="tokens")
h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(tokens))
text = keras.Model(tokens, keras.layers.Dense(3, activation="softmax")(h))
image, feats = keras.Input((8, 8, 1), name="image"), keras.Input((4,), name="features")
g = keras.layers.Dense(16, activation="relu")(
    keras.layers.Concatenate()([keras.layers.Flatten()(image), feats]))
two = keras.Model([image, feats], [keras.layers.Dense(4)(g),
                                   keras.layers.Dense(3, activation="softmax")(g)])
for name, m in (("text", text), ("two", two)):
    m.export(str(out / f"{name}-saved"), verbose=False)
    (out / f"{name}.tflite").write_bytes(
        tf.lite.TFLiteConverter.from_saved_model(str(out / f"{name}-saved")).convert())
"""

# What the server stores for these artifacts: the names of their serving signature, in the
# interpreter's order, batch dimension dynamic (null).
TEXT_SIGNATURE = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [None, 12]}],
                  "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 3]}]}
TWO_SIGNATURE = {"inputs": [{"name": "features", "dtype": "float32", "shape": [None, 4]},
                            {"name": "image", "dtype": "float32", "shape": [None, 8, 8, 1]}],
                 "outputs": [{"name": "output_1", "dtype": "float32", "shape": [None, 3]},
                             {"name": "output_0", "dtype": "float32", "shape": [None, 4]}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("signature-models")
    subprocess.run([sys.executable, "-c", _BUILD, str(out)], check=True, capture_output=True,
                   timeout=300)
    return {p.stem: p.read_bytes() for p in out.glob("*.tflite")}


class CountingSession(requests.Session):
    """The SDK's HTTP session, recording every artifact request it makes."""

    def __init__(self) -> None:
        super().__init__()
        self.artifact_requests: list[str] = []

    def request(self, method, url, *args, **kwargs):
        if "/v1/artifacts/" in url or ("/tuf/targets/" in url and "/rulesets/" not in url):
            self.artifact_requests.append(url)
        return super().request(method, url, *args, **kwargs)


def _post(server, path: str, body: dict, status: int = 201) -> dict:
    resp = requests.post(server.base_url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {server.admin_token}"})
    assert resp.status_code == status, resp.text
    return resp.json()


def _release(server, name: str, data: bytes, signature: dict | None) -> int:
    version = make_ready_version(server.services, name, variants={
        "tflite-fp32": {"format": "tflite", "data": data, "signature": signature}})
    _post(server, f"/v1/models/{name}/releases", {"version": version.version, "channel": CHANNEL})
    return version.version


def _client(server, root, contract: ModelContract | None, name: str, **kwargs) -> ModelClient:
    trusted = requests.get(server.base_url + "/tuf/metadata/1.root.json", timeout=10).content
    return ModelClient(server.base_url, root, trusted_root=trusted, device=DEVICE,
                       config=fast_config(), contracts={name: contract} if contract else None,
                       **kwargs)


def test_api_manifest_and_ruleset_carry_the_signature(live_server, models):
    server = live_server
    _release(server, "two", models["two"], TWO_SIGNATURE)
    auth = {"Authorization": f"Bearer {server.admin_token}"}
    version = requests.get(f"{server.base_url}/v1/models/two/versions/1", headers=auth,
                           timeout=10).json()
    served = version["variants"][0]["signature"]
    assert [t["name"] for t in served["inputs"]] == ["features", "image"]
    assert served["inputs"][1] == {"name": "image", "dtype": "float32", "shape": [None, 8, 8, 1],
                                   "narrowed_from": None}
    listed = requests.get(f"{server.base_url}/v1/models/two/versions", headers=auth,
                          timeout=10).json()["items"][0]["variants"][0]["signature"]
    assert listed == served
    manifest = requests.get(f"{server.base_url}/v1/manifest", timeout=10, params={
        "model": "two", "channel": CHANNEL, "platform": "android",
        "install_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}).json()
    assert manifest["signature"] == TWO_SIGNATURE
    ruleset = requests.get(f"{server.base_url}/v1/rulesets/two/{CHANNEL}", timeout=10).json()
    assert ruleset["versions"][0]["variants"][0]["signature"] == TWO_SIGNATURE

    # A variant recorded before signatures were kept serves null, and its ruleset entry has
    # none (an SDK from before signatures still reads that ruleset).
    _release(server, "old", models["text"], None)
    old = requests.get(f"{server.base_url}/v1/models/old/versions/1", headers=auth,
                       timeout=10).json()
    assert old["variants"][0]["signature"] is None
    manifest = requests.get(f"{server.base_url}/v1/manifest", timeout=10, params={
        "model": "old", "channel": CHANNEL, "platform": "android",
        "install_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}).json()
    assert manifest["signature"] is None
    ruleset = requests.get(f"{server.base_url}/v1/rulesets/old/{CHANNEL}", timeout=10).json()
    assert "signature" not in ruleset["versions"][0]["variants"][0]


@pytest.mark.parametrize("resolve", ["server", "local"])
def test_a_model_whose_signature_differs_is_refused_before_download(live_server, models,
                                                                    tmp_path, resolve):
    server = live_server
    _release(server, "text", models["text"], TEXT_SIGNATURE)
    right = ModelContract(inputs=(TensorSpec((-1, 12), "int32", name="tokens"),),
                          outputs=(TensorSpec((-1, 3), "float32"),))
    installed = _client(server, tmp_path / "a", right, "text", resolve=resolve).get_model("text")
    assert installed.version == 1

    # Version 2 takes 64-bit token ids: an app written for int32 must not download it.
    wide = json.loads(json.dumps(TEXT_SIGNATURE))
    wide["inputs"][0]["dtype"] = "int64"
    _release(server, "text", models["two"], wide)
    session = CountingSession()
    client = _client(server, tmp_path / "a", right, "text", resolve=resolve, http=session)
    with pytest.raises(ModelDropError) as excinfo:
        client.update("text")
    assert excinfo.value.code == "model_contract_mismatch"
    assert "input 'tokens' should be int32 (-1, 12)" in excinfo.value.detail
    assert "int64" in excinfo.value.detail
    assert session.artifact_requests == []  # not one byte of the artifact was fetched
    assert client.get_model("text").version == 1  # the installed model stays
    failed = [e for e in client.pending_telemetry() if e["kind"] == "install_failed"]
    assert failed and failed[-1]["error"] == "model_contract_mismatch"
    assert failed[-1]["version"] == 2
    # remembered: the next cycle says so without asking for the artifact either
    with pytest.raises(ModelDropError) as again:
        client.update("text")
    assert again.value.code == "model_contract_mismatch"
    assert session.artifact_requests == []


def test_contract_names_and_counts_are_checked_against_the_manifest(live_server, models,
                                                                    tmp_path):
    server = live_server
    _release(server, "two", models["two"], TWO_SIGNATURE)
    cases = [
        (ModelContract(inputs=(TensorSpec((-1, 8, 8, 1), "float32", name="picture"),
                               TensorSpec((-1, 4), "float32", name="features"))),
         "an input named 'picture'"),
        (ModelContract(inputs=(TensorSpec((-1, 4), "float32"),)), "expects 1 input(s)"),
        (ModelContract(outputs=(TensorSpec((-1, 3), "float32", name="output_1"),
                                TensorSpec((-1, 5), "float32", name="output_0"))),
         "output 'output_0' should be float32 (-1, 5)"),
    ]
    for i, (contract, words) in enumerate(cases):
        session = CountingSession()
        client = _client(server, tmp_path / str(i), contract, "two", http=session)
        with pytest.raises(ModelDropError) as excinfo:
            client.update("two")
        assert excinfo.value.code == "model_contract_mismatch"
        assert words in excinfo.value.detail, excinfo.value.detail
        assert session.artifact_requests == []
    # Named in any order, shapes with -1 wildcards: installs and load-checks.
    ok = ModelContract(inputs=(TensorSpec((-1, 8, 8, 1), "float32", name="image"),
                               TensorSpec((1, 4), "float32", name="features")),
                       outputs=(TensorSpec((-1, 4), "float32", name="output_0"),
                                TensorSpec((-1, -1), "float32", name="output_1")))
    assert _client(server, tmp_path / "ok", ok, "two").get_model("two").version == 1


def test_interpreter_tensors_that_differ_from_the_manifest_are_refused(live_server, models,
                                                                       tmp_path):
    server = live_server
    # The manifest says what the app wants, the artifact is the two-input model: the load
    # check (by name, against the interpreter's own tensors) catches it.
    lying = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [None, 12]}],
             "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 3]}]}
    _release(server, "text", models["two"], lying)
    contract = ModelContract(inputs=(TensorSpec((-1, 12), "int32", name="tokens"),))
    session = CountingSession()
    client = _client(server, tmp_path / "c", contract, "text", http=session)
    with pytest.raises(ModelDropError) as excinfo:
        client.update("text")
    assert excinfo.value.code == "model_contract_mismatch"
    assert "the downloaded model has 2" in excinfo.value.detail
    assert session.artifact_requests  # this one was downloaded, then refused
    assert client.get_local_model("text") is None


def test_int_input_model_installs_and_load_checks(live_server, models, tmp_path):
    server = live_server
    _release(server, "text", models["text"], TEXT_SIGNATURE)
    contract = ModelContract(inputs=(TensorSpec((-1, 12), "int32"),),
                             outputs=(TensorSpec((-1, 3), "float32"),))
    model = _client(server, tmp_path / "i", contract, "text").get_model("text")
    assert model.version == 1 and model.path.read_bytes() == models["text"]


def test_cli_show_prints_one_line_per_output_and_the_signature(cli, models):
    from tests.test_dashboard_pages import TWO_OUTPUT_FIDELITY, TWO_OUTPUT_SIGNATURE

    services = cli.server.services
    version = make_ready_version(services, "detector", variants={
        "tflite-fp32": {"format": "tflite", "data": models["two"]}})
    vid = services.store.version_id("detector", version.version)
    v = version.variants[0]
    services.store.record_variant(
        vid, name=v.name, format=v.format, sha256=v.sha256, size=v.size, target_path=v.target_path,
        fidelity=TWO_OUTPUT_FIDELITY, reference_latency_ms=None, servable=True, reason=None,
        error=None, signature=TWO_OUTPUT_SIGNATURE)
    out = cli("show", "detector", str(version.version)).output
    lines = out.splitlines()
    boxes = next(line for line in lines if " boxes " in line and "regression" in line)
    scores = next(line for line in lines if " scores " in line and "classification" in line)
    assert boxes.startswith("tflite-fp32") and "0.0123" in boxes
    assert not scores.startswith("tflite-fp32") and "0.9876" in scores and "0.91" in scores
    assert any(line.startswith("all variants") and " image " in line and "[?, 8, 8, 1]" in line
               for line in lines)
    assert any(" tokens " in line and "int32 (from int64)" in line for line in lines)
    shown = json.loads(cli("show", "detector", str(version.version), "--json").output)
    assert shown["variants"][0]["signature"]["inputs"][1]["narrowed_from"] == "int64"


def test_a_narrowed_int64_input_takes_an_int32_contract_not_an_int64_one(live_server, models,
                                                                        tmp_path):
    server = live_server
    narrowed = json.loads(json.dumps(TEXT_SIGNATURE))
    narrowed["inputs"][0]["narrowed_from"] = "int64"  # the source model took int64 token ids
    _release(server, "text", models["text"], narrowed)
    wide = ModelContract(inputs=(TensorSpec((-1, 12), "int64", name="tokens"),))
    session = CountingSession()
    with pytest.raises(ModelDropError) as excinfo:
        _client(server, tmp_path / "w", wide, "text", http=session).update("text")
    assert "narrowed from int64 by the converter: feed int32" in excinfo.value.detail
    assert session.artifact_requests == []
    narrow = ModelContract(inputs=(TensorSpec((-1, 12), "int32", name="tokens"),))
    assert _client(server, tmp_path / "n", narrow, "text").get_model("text").version == 1


def test_core_ml_is_checked_against_the_manifest_signature(live_server, tmp_path):
    from tests.sdk_origin import make_mlpackage_zip

    server = live_server
    signature = {"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, 8, 8]}],
                 "outputs": [{"name": "scores", "dtype": "float32", "shape": None}]}
    version = make_ready_version(server.services, "ios-model", variants={
        "coreml-fp16": {"format": "coreml", "data": make_mlpackage_zip(), "signature": signature}})
    _post(server, "/v1/models/ios-model/releases", {"version": version.version, "channel": CHANNEL})
    ios = DeviceInfo(platform="ios", os_version="17.4", device_model="iphone15,2",
                     app_version="2.3.0", region="de")
    trusted = requests.get(server.base_url + "/tuf/metadata/1.root.json", timeout=10).content

    def client(root, contract, **kwargs):
        return ModelClient(server.base_url, root, trusted_root=trusted, device=ios,
                           config=fast_config(), contracts={"ios-model": contract}, **kwargs)

    wrong = ModelContract(inputs=(TensorSpec((1, 8, 8, 3), "float32", name="image"),))
    session = CountingSession()
    with pytest.raises(ModelDropError) as excinfo:
        client(tmp_path / "w", wrong, http=session).update("ios-model")
    assert "input 'image' should be float32 (1, 8, 8, 3)" in excinfo.value.detail
    assert session.artifact_requests == []
    # An output whose shape the artifact does not state matches any shape the app reads.
    right = ModelContract(inputs=(TensorSpec((1, 3, 8, 8), "float32", name="image"),),
                          outputs=(TensorSpec((1, 10), "float32", name="scores"),))
    assert client(tmp_path / "r", right).get_model("ios-model").version == version.version
