"""A real two-input, two-output Keras model through the real server: pushed over HTTP with its
declared signature and a per-input eval set, converted by the worker in the sandbox (fp32
TFLite only, to keep CI short), its artifact's signature stored and served, promoted, and
fetched by the SDK with a matching contract (installs and load-checks with both inputs) and
with a non-matching one (refused before a byte is downloaded)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from client_sdk import DeviceInfo, ModelClient, ModelContract, TensorSpec
from client_sdk.errors import ModelDropError
from tests.helpers import converting_app, wait_job
from tests.live import serve_app
from tests.sdk_origin import fast_config
from tests.test_signatures import CountingSession

pytestmark = pytest.mark.slow

DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")

_BUILD = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, numpy as np
keras.utils.set_random_seed(7)
image, feats = keras.Input((8, 8, 1), name="image"), keras.Input((4,), name="features")
g = keras.layers.Dense(16, activation="relu")(
    keras.layers.Concatenate()([keras.layers.Flatten()(image), feats]))
model = keras.Model([image, feats], [keras.layers.Dense(4, name="boxes")(g),
                                     keras.layers.Dense(3, activation="softmax", name="scores")(g)])
model.save(sys.argv[1])
"""

METADATA = {
    "variants": ["tflite-fp32"],
    "input": [{"name": "image", "shape": [None, 8, 8, 1], "dtype": "float32"},
              {"name": "features", "shape": [None, 4], "dtype": "float32"}],
    "output": [{"name": "boxes", "shape": [None, 4], "task": "regression"},
               {"name": "scores", "shape": [None, 3], "task": "classification"}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("signature-server")
    with converting_app(tmp, "admin") as (app, services, token), serve_app(app) as url:
        yield {"url": url, "services": services, "token": token, "tmp": tmp}


def _wait(server, job_id: str, timeout: float = 300) -> dict:
    return wait_job(lambda j: requests.get(f"{server['url']}/v1/jobs/{j}", timeout=10, headers={
        "Authorization": f"Bearer {server['token']}"}).json(), job_id, timeout)


def test_two_input_two_output_keras_model_end_to_end(server, tmp_path):
    model_path = tmp_path / "detector.keras"
    subprocess.run([sys.executable, "-c", _BUILD, str(model_path)], check=True,
                   capture_output=True, timeout=300)
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez(buf, image=rng.random((32, 8, 8, 1), dtype=np.float32),
             features=rng.random((32, 4), dtype=np.float32), y__scores=rng.integers(0, 3, 32))
    auth = {"Authorization": f"Bearer {server['token']}"}
    resp = requests.post(f"{server['url']}/v1/models/detector/versions", headers=auth, timeout=60,
                         data={"metadata": json.dumps(METADATA)},
                         files={"file": ("detector.keras", model_path.read_bytes()),
                                "eval": ("eval.npz", buf.getvalue())})
    assert resp.status_code == 201, resp.text
    job = _wait(server, resp.json()["job"])
    assert job["state"] == "done", job

    version = requests.get(f"{server['url']}/v1/models/detector/versions/1", headers=auth,
                           timeout=10).json()
    variant = version["variants"][0]
    assert variant["servable"], variant
    signature = variant["signature"]
    assert sorted(t["name"] for t in signature["inputs"]) == ["features", "image"]
    by_name = {t["name"]: t for t in signature["inputs"]}
    assert by_name["image"]["shape"][1:] == [8, 8, 1] and by_name["features"]["dtype"] == "float32"
    # The artifact's outputs carry the model's output names, the same keys as the fidelity table.
    assert [t["name"] for t in signature["outputs"]] == ["boxes", "scores"]
    assert [t["shape"] for t in signature["outputs"]] == [[None, 4], [None, 3]]
    outputs = variant["fidelity"]["outputs"]
    assert sorted(outputs) == ["boxes", "scores"]
    assert outputs["boxes"]["task"] == "regression" and outputs["scores"]["task"] == "classification"
    assert outputs["boxes"]["relative_rmse"] < 1e-3  # fp32 is the source, to rounding
    assert outputs["scores"]["top1_agreement"] > 0.99

    promoted = requests.post(f"{server['url']}/v1/models/detector/releases", headers=auth,
                             timeout=30, json={"version": 1, "channel": "production"})
    assert promoted.status_code == 201, promoted.text
    root = requests.get(f"{server['url']}/tuf/metadata/1.root.json", timeout=10).content
    out_names = [t["name"] for t in signature["outputs"]]
    out_shape = {t["name"]: tuple(-1 if d is None else d for d in t["shape"])
                 for t in signature["outputs"]}
    matching = ModelContract(
        inputs=(TensorSpec((1, 4), "float32", name="features"),
                TensorSpec((-1, 8, 8, 1), "float32", name="image")),
        outputs=tuple(TensorSpec(out_shape[n], "float32", name=n) for n in out_names))
    client = ModelClient(server["url"], tmp_path / "ok", trusted_root=root, device=DEVICE,
                         config=fast_config(), contracts={"detector": matching})
    model = client.get_model("detector")
    assert model.version == 1 and Path(model.path).stat().st_size == variant["size"]

    other = ModelContract(inputs=(TensorSpec((-1, 8, 8, 3), "float32", name="image"),
                                  TensorSpec((-1, 4), "float32", name="features")))
    session = CountingSession()
    refusing = ModelClient(server["url"], tmp_path / "no", trusted_root=root, device=DEVICE,
                           config=fast_config(), contracts={"detector": other}, http=session)
    with pytest.raises(ModelDropError) as excinfo:
        refusing.update("detector")
    assert excinfo.value.code == "model_contract_mismatch"
    assert "input 'image' should be float32 (-1, 8, 8, 3)" in excinfo.value.detail
    assert session.artifact_requests == []
    assert refusing.get_local_model("detector") is None
