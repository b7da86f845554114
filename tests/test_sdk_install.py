"""Installing: slots, the active pointer, load checks (TFLite and Core ML), fallbacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk import DeviceInfo, UpdateState
from client_sdk.errors import ModelDropError
from tests.sdk_origin import (
    active_sha,
    make_client,
    make_mlpackage_zip,
    sha256_hex,
)

MODEL, CHANNEL = "digits", "production"
REPO_ROOT = Path(__file__).resolve().parents[1]


def slots(client) -> set[str]:
    return {p.name for p in (client.cache_dir / "models" / MODEL / "slots").iterdir()}


def test_previous_model_is_kept_and_older_slots_are_collected(origin, tmp_path,
                                                               tflite_models):
    v1, v2, big = tflite_models["v1"], tflite_models["v2"], tflite_models["big"]
    client = make_client(origin, tmp_path)
    for version, data in ((1, v1), (2, v2), (3, big)):
        origin.release(MODEL, CHANNEL, version, "tflite-fp32", data)
        assert client.update(MODEL, CHANNEL).version == version
    assert slots(client) == {sha256_hex(big), sha256_hex(v2)}
    pointer = json.loads((client.cache_dir / "models" / MODEL / "channels" /
                          f"{CHANNEL}.json").read_text())
    assert pointer["current"]["version"] == 3 and pointer["previous"]["version"] == 2
    leftovers = [p for p in client.cache_dir.rglob("*") if ".tmp" in p.name]
    assert not leftovers


def test_rollback_is_a_new_release_and_reuses_the_kept_slot(origin, tmp_path, tflite_models):
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    client = make_client(origin, tmp_path)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1)
    client.update(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", v2)
    assert client.update(MODEL, CHANNEL).version == 2
    downloads = len(origin.requests_to("/v1/artifacts/"))
    # the server rolls back: a new release (counter 3) pointing at v1's artifact
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1, counter=3)
    info = client.check_for_update(MODEL, CHANNEL)
    assert info.update_available and info.download_bytes == 0 and info.version == 1
    model = client.apply_update(info)
    assert (model.version, model.release_counter) == (1, 3)
    assert active_sha(client) == sha256_hex(v1)
    assert len(origin.requests_to("/v1/artifacts/")) == downloads  # nothing downloaded


def test_same_bytes_in_a_new_release_update_the_metadata_only(origin, tmp_path, tflite_models):
    v1 = tflite_models["v1"]
    client = make_client(origin, tmp_path)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1)
    client.update(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1, experiment="exp-1", arm="treatment")
    model = client.update(MODEL, CHANNEL)
    assert (model.arm, model.experiment, model.release_counter) == ("treatment", "exp-1", 2)
    assert len(origin.requests_to("/v1/artifacts/")) == 1


def test_damaged_installed_file_is_replaced(origin, tmp_path, tflite_models):
    v1 = tflite_models["v1"]
    client = make_client(origin, tmp_path)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1)
    model = client.update(MODEL, CHANNEL)
    model.path.write_bytes(v1[:100])  # storage damage
    assert client.get_local_model(MODEL, CHANNEL) is None
    assert client.get_model(MODEL, CHANNEL).sha256 == sha256_hex(v1)
    assert active_sha(client) == sha256_hex(v1)


_CRASHING_CHILD = r"""
import os, signal, sys
from pathlib import Path
import client_sdk.client as client_module
from client_sdk import ClientConfig, DeviceInfo, ModelClient

def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)   # the runtime takes the process down

client_module.check_model = crash
base, cache, root_file = sys.argv[1:4]
client = ModelClient(base, cache, trusted_root=Path(root_file).read_bytes(),
                     device=DeviceInfo("android", "14", "pixel7", "2.3.0", "de"),
                     config=ClientConfig(http_retries=0))
client.update("digits", "production")
"""


def test_process_dying_during_the_load_check_is_detected_next_time(origin, tmp_path,
                                                                    tflite_models):
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    client = make_client(origin, tmp_path)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", v1)
    client.update(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", v2)
    root_file = tmp_path / "root.json"
    root_file.write_bytes(origin.trusted_root())
    child = subprocess.run(
        [sys.executable, "-c", _CRASHING_CHILD, origin.base_url, str(client.cache_dir),
         str(root_file)], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, timeout=60)
    assert child.returncode == -9
    assert client.get_local_model(MODEL, CHANNEL).version == 1  # pointer never moved

    downloads = len(origin.requests_to("/v1/artifacts/"))
    with pytest.raises(ModelDropError) as excinfo:
        client.update(MODEL, CHANNEL)
    assert excinfo.value.code == "model_load_failed"
    assert client.get_model(MODEL, CHANNEL).version == 1
    assert sha256_hex(v2) not in slots(client)
    assert len(origin.requests_to("/v1/artifacts/")) == downloads
    assert any(e["kind"] == "install_failed" for e in client.pending_telemetry())

    # an app upgrade (maybe a newer runtime) gets to try that model again
    upgraded = make_client(origin, tmp_path, device=DeviceInfo(
        "android", "14", "pixel7", "2.4.0", "de"))
    assert upgraded.update(MODEL, CHANNEL).version == 2


def test_model_that_breaks_the_apps_tensor_contract_is_refused(origin, tmp_path,
                                                                 tflite_models):
    from client_sdk import ModelContract, TensorSpec

    contract = ModelContract(inputs=(TensorSpec((-1, 16), "float32"),),
                             outputs=(TensorSpec((-1, 4), "float32"),))
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])  # 16 -> 4
    client = make_client(origin, tmp_path, contracts={MODEL: contract})
    assert client.get_model(MODEL, CHANNEL).version == 1
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", tflite_models["big"])  # 64 -> 4
    with pytest.raises(ModelDropError) as excinfo:
        client.update(MODEL, CHANNEL)
    assert excinfo.value.code == "model_contract_mismatch"
    assert "input 0 should be float32 (-1, 16)" in excinfo.value.detail
    assert client.get_model(MODEL, CHANNEL).version == 1
    assert client.status(MODEL, CHANNEL).error.code == "model_contract_mismatch"  # remembered
    assert sha256_hex(tflite_models["big"]) not in slots(client)
    # an app without that expectation installs it
    other = make_client(origin, tmp_path / "other")
    assert other.get_model(MODEL, CHANNEL).version == 2


def test_coreml_package_installs_after_a_structural_check(origin, tmp_path):
    package = make_mlpackage_zip()
    origin.release(MODEL, CHANNEL, 1, "coreml-fp16", package, fmt="coreml")
    ios = make_client(origin, tmp_path, device=DeviceInfo("ios", "17.4", "iphone15,2",
                                                          "2.3.0", "de"))
    model = ios.get_model(MODEL, CHANNEL)
    assert model.format == "coreml" and model.path.name.endswith(".mlpackage.zip")
    assert model.path.read_bytes() == package


@pytest.mark.parametrize("broken", ["bad_spec", "not_a_zip", "unsafe_entry", "no_manifest"])
def test_broken_coreml_package_falls_back(origin, tmp_path, broken):
    import io
    import zipfile

    good = make_mlpackage_zip()
    origin.release(MODEL, CHANNEL, 1, "coreml-fp16", good, fmt="coreml")
    ios = make_client(origin, tmp_path, device=DeviceInfo("ios", "17.4", "iphone15,2",
                                                          "2.3.0", "de"))
    ios.update(MODEL, CHANNEL)
    if broken == "bad_spec":
        data = make_mlpackage_zip(valid=False)
    elif broken == "not_a_zip":
        data = good[: len(good) // 2]
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(buf, "w") as dst:
            for item in src.infolist():
                if broken == "no_manifest" and item.filename.endswith("Manifest.json"):
                    continue
                dst.writestr(item, src.read(item))
            if broken == "unsafe_entry":
                dst.writestr("../../escape.txt", b"x")
        data = buf.getvalue()
    origin.release(MODEL, CHANNEL, 2, "coreml-fp16", data, fmt="coreml")
    with pytest.raises(ModelDropError) as excinfo:
        ios.update(MODEL, CHANNEL)
    assert excinfo.value.code == "model_load_failed"
    assert ios.get_model(MODEL, CHANNEL).version == 1
    assert active_sha(ios) == sha256_hex(good)
    assert ios.status(MODEL, CHANNEL).state is UpdateState.FAILED


def test_unsupported_format_is_refused_before_downloading(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "onnx-fp32", tflite_models["v1"], fmt="onnx")
    client = make_client(origin, tmp_path)
    with pytest.raises(ModelDropError) as excinfo:
        client.get_model(MODEL, CHANNEL)
    assert excinfo.value.code == "manifest_invalid"
    assert not origin.requests_to("/v1/artifacts/")



