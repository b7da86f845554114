"""The app-facing API: policies, conditions, 304/204, install id, names, errors, imports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from securesystemslib.formats import encode_canonical

from client_sdk import (
    DeviceState,
    DownloadConditions,
    FixedDeviceState,
    ModelClient,
    Policy,
    UpdateState,
    errors,
)
from client_sdk.errors import ModelDropError
from tests.sdk_origin import (
    DEVICE,
    Fault,
    active_sha,
    make_client,
    sha256_hex,
)

MODEL, CHANNEL = "digits", "production"
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_sdk_imports_nothing_from_the_server_or_heavy_runtimes():
    code = ("import sys, client_sdk; from client_sdk import ModelClient; "
            "import client_sdk.client, client_sdk._updater; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'registry', 'flask', 'sqlmodel', 'sqlalchemy', 'tensorflow', 'keras', "
            "'coremltools'}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                         check=True)
    assert out.stdout.strip() == "[]"
    sources = "".join(p.read_text() for p in (REPO_ROOT / "client_sdk").rglob("*.py"))
    assert not re.search(r"^\s*(from|import)\s+(registry|flask|sqlmodel)\b", sources, re.M)


def test_install_id_is_a_persistent_lowercase_uuid4(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        client.install_id)
    assert make_client(origin, tmp_path).install_id == client.install_id
    assert (tmp_path / "cache" / "install_id").read_text() == client.install_id
    assert (tmp_path / "cache.state" / "install_id").read_text() == client.install_id
    client.get_model(MODEL, CHANNEL)
    query = origin.requests_to("/v1/manifest")[0]["query"]
    assert query["install_id"] == [client.install_id]
    assert query["platform"] == ["android"] and query["device_model"] == ["pixel7"]
    assert query["app_version"] == ["2.3.0"] and query["region"] == ["de"]
    assert query["os_version"] == ["14"] and query["model"] == [MODEL]


def test_state_lives_outside_the_cache(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    client.get_model(MODEL, CHANNEL)
    state = {p.name for p in client.state_dir.iterdir()}
    assert client.state_dir == tmp_path / "cache.state"
    assert {"release_counters.json", "tuf", "telemetry.sqlite", "install_id"} <= state
    assert json.loads((client.state_dir / "release_counters.json").read_text()) == {
        f"{MODEL}/{CHANNEL}": 1}


def test_not_modified_manifest_is_one_small_request(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    client.get_model(MODEL, CHANNEL)
    client.flush_telemetry()  # installing sends telemetry in the background; settle it
    before = len(origin.requests)
    model = client.get_model(MODEL, CHANNEL, policy=Policy.LATEST_MODEL)
    assert model.version == 1
    new = origin.requests[before:]
    assert [r["path"] for r in new] == ["/v1/manifest"]
    assert new[0]["headers"]["If-None-Match"].startswith('"m-')
    assert new[0]["query"]["installed_sha256"] == [sha256_hex(tflite_models["v1"])]
    assert client.status(MODEL, CHANNEL).state is UpdateState.UP_TO_DATE


def test_an_app_upgrade_keeps_the_downloaded_model(origin, tmp_path, tflite_models):
    from client_sdk import DeviceInfo

    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    make_client(origin, tmp_path).get_model(MODEL, CHANNEL)
    upgraded = make_client(origin, tmp_path, device=DeviceInfo(
        "android", "14", "pixel7", "2.4.0", "de"))
    assert upgraded.get_model(MODEL, CHANNEL).version == 1
    assert len(origin.requests_to("/v1/artifacts/")) == 1  # not downloaded again
    assert origin.requests_to("/v1/manifest")[-1]["query"]["app_version"] == ["2.4.0"]


def test_local_model_policy_does_not_touch_the_network(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    assert client.get_model(MODEL, CHANNEL, policy=Policy.LOCAL_MODEL).version == 1
    client.flush_telemetry()  # installing sends telemetry in the background; settle it
    before = len(origin.requests)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", tflite_models["v2"])
    assert client.get_model(MODEL, CHANNEL, policy=Policy.LOCAL_MODEL).version == 1
    assert len(origin.requests) == before


def test_background_policy_returns_now_and_updates_for_next_time(origin, tmp_path,
                                                                 tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    client.get_model(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", tflite_models["big"])
    origin.faults["artifact"] = Fault("trickle", chunk=16 << 10, interval=0.05)  # ~0.9 s
    started = time.monotonic()
    model = client.get_model(MODEL, CHANNEL, policy=Policy.LOCAL_MODEL_UPDATE_IN_BACKGROUND)
    assert model.version == 1 and time.monotonic() - started < 0.5
    assert client.get_local_model(MODEL, CHANNEL).version == 1  # still downloading
    assert client.wait_for_background(timeout=30)
    assert client.get_model(MODEL, CHANNEL, policy=Policy.LOCAL_MODEL).version == 2


def test_background_failures_are_a_status_not_an_exception(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    client.get_model(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", tflite_models["v2"])
    origin.faults["artifact"] = Fault("corrupt")
    assert client.get_model(MODEL, CHANNEL,
                            policy=Policy.LOCAL_MODEL_UPDATE_IN_BACKGROUND).version == 1
    assert client.wait_for_background(timeout=30)
    status = client.status(MODEL, CHANNEL)
    assert status.state is UpdateState.FAILED and status.error.code == "hash_mismatch"
    assert client.get_model(MODEL, CHANNEL, policy=Policy.LOCAL_MODEL).version == 1


def test_no_release_for_this_device(origin, tmp_path, tflite_models):
    client = make_client(origin, tmp_path)
    with pytest.raises(errors.NoModelAvailableError):
        client.get_model(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client.get_model(MODEL, CHANNEL)
    del origin.releases[(MODEL, CHANNEL)]  # 204 again: keep what is installed
    assert client.update(MODEL, CHANNEL).version == 1


@pytest.mark.parametrize("name,channel", [("", "production"), ("../etc", "production"),
                                          ("digits", "a/b"), ("digits", " "),
                                          ("d" * 200, "production")])
def test_invalid_names_fail_clearly_without_a_request(origin, tmp_path, name, channel):
    client = make_client(origin, tmp_path)
    with pytest.raises(errors.InvalidNameError) as excinfo:
        client.get_model(name, channel)
    assert excinfo.value.code == "invalid_name" and isinstance(excinfo.value, ValueError)
    assert not origin.requests


def test_server_problem_is_rebuilt_by_its_code(origin, tmp_path):
    body = json.dumps({"type": "https://modeldrop.dev/problems/model_not_found",
                       "title": "Model not found", "status": 404,
                       "detail": "no model 'digits'", "code": "model_not_found"}).encode()
    origin.faults["manifest"] = Fault("status", 404, body=body,
                                      content_type="application/problem+json")
    client = make_client(origin, tmp_path)
    with pytest.raises(errors.ModelNotFoundError) as excinfo:
        client.get_model(MODEL, CHANNEL)
    err = excinfo.value
    assert (err.code, err.status, err.detail) == ("model_not_found", 404, "no model 'digits'")
    assert not err.retryable


def test_error_from_problem_keeps_unknown_codes():
    err = errors.error_from_problem({"code": "quota_exceeded", "status": 429, "detail": "slow"})
    assert isinstance(err, errors.RemoteError)
    assert (err.code, err.status, err.retryable) == ("quota_exceeded", 429, True)
    err = errors.error_from_problem({"code": "validation_error", "detail": "bad"}, 400)
    assert isinstance(err, errors.ValidationError) and err.status == 400
    assert errors.error_class_for_code("hash_mismatch") is errors.HashMismatchError


def test_every_error_code_is_unique():
    seen: dict[str, type] = {}
    stack = [errors.ModelDropError]
    while stack:
        cls = stack.pop()
        assert seen.setdefault(cls.code, cls) is cls, cls.code
        stack.extend(cls.__subclasses__())
    assert len(seen) > 30


@dataclass
class SwitchableState:
    state: DeviceState

    def current_state(self) -> DeviceState:
        return self.state


def test_conditions_block_the_first_download(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    device = FixedDeviceState(DeviceState(on_wifi=False, charging=True, idle=True))
    client = make_client(origin, tmp_path, state_provider=device)
    wifi = DownloadConditions(wifi_only=True)
    with pytest.raises(errors.ConditionsNotMetError):
        client.get_model(MODEL, CHANNEL, conditions=wifi)
    assert client.status(MODEL, CHANNEL).state is UpdateState.WAITING_FOR_CONDITIONS
    assert not origin.requests_to("/v1/artifacts/")
    # the offer (and its size) is known without meeting the conditions
    assert client.check_for_update(MODEL, CHANNEL).download_bytes == len(tflite_models["v1"])
    device.state = DeviceState(on_wifi=True)
    assert client.get_model(MODEL, CHANNEL, conditions=wifi).version == 1
    # charging and idle are checked the same way
    assert DownloadConditions(require_charging=True, require_idle=True).unmet(
        DeviceState(on_wifi=True, charging=False, idle=False)) == ["charging", "idle"]


def test_conditions_lost_mid_download_pause_it_and_it_resumes_later(origin, tmp_path,
                                                                    tflite_models):
    big = tflite_models["big"]
    sha = sha256_hex(big)
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    device = SwitchableState(DeviceState(on_wifi=True))
    client = make_client(origin, tmp_path, state_provider=device)
    client.get_model(MODEL, CHANNEL)
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", big)
    origin.faults["artifact"] = Fault("trickle", chunk=8 << 10, interval=0.05)  # ~1.7 s
    threading.Timer(0.5, lambda: setattr(device, "state", DeviceState(on_wifi=False))).start()
    model = client.get_model(MODEL, CHANNEL, conditions=DownloadConditions(wifi_only=True))
    assert model.version == 1
    assert client.status(MODEL, CHANNEL).state is UpdateState.WAITING_FOR_CONDITIONS
    part = client.cache_dir / "staging" / f"{sha}.part"
    kept = part.stat().st_size
    assert 0 < kept < len(big) and big.startswith(part.read_bytes())
    del origin.faults["artifact"]
    device.state = DeviceState(on_wifi=True)
    assert client.get_model(MODEL, CHANNEL, conditions=DownloadConditions(wifi_only=True)
                            ).version == 2
    assert origin.requests_to(f"/v1/artifacts/{sha}")[-1]["headers"]["Range"] == \
        f"bytes={kept}-"


def test_experiment_arm_reaches_the_model_and_its_telemetry(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 4, "tflite-int8-dynamic", tflite_models["v1"],
                   experiment="digits-v4-vs-v3", arm="treatment")
    client = make_client(origin, tmp_path)
    model = client.get_model(MODEL, CHANNEL)
    assert (model.version, model.variant, model.arm, model.experiment) == (
        4, "tflite-int8-dynamic", "treatment", "digits-v4-vs-v3")
    client.report_inference(model, latency_ms=4.1, correct=True)
    event = client.pending_telemetry()[-1]
    assert {k: event[k] for k in ("kind", "model", "version", "variant", "experiment", "arm",
                                  "latency_ms", "correct")} == {
        "kind": "inference", "model": MODEL, "version": 4, "variant": "tflite-int8-dynamic",
        "experiment": "digits-v4-vs-v3", "arm": "treatment", "latency_ms": 4.1,
        "correct": True}


def test_manifest_key_rotation_is_followed_through_the_root(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)  # pins root v1
    client.get_model(MODEL, CHANNEL)
    old_signer = origin.keys.signer("manifest")
    origin.repo.rotate_key("manifest")
    origin.release(MODEL, CHANNEL, 2, "tflite-fp32", tflite_models["v2"])
    assert client.update(MODEL, CHANNEL).version == 2  # new key, learned from root v2
    assert (client.state_dir / "tuf" / "root_history" / "2.root.json").exists()

    def signed_by_old_key(doc):
        unsigned = {k: v for k, v in doc.items() if k != "signatures"}
        sig = old_signer.sign(encode_canonical(unsigned).encode())
        return {**unsigned, "signatures": [{"keyid": sig.keyid, "sig": sig.signature}]}

    origin.release(MODEL, CHANNEL, 3, "tflite-fp32", tflite_models["big"])
    origin.manifest_post = signed_by_old_key
    with pytest.raises(ModelDropError) as excinfo:
        client.update(MODEL, CHANNEL)
    assert excinfo.value.code == "manifest_signature_invalid"
    assert active_sha(client) == sha256_hex(tflite_models["v2"])


def test_concurrent_updates_of_two_models_share_one_tuf_state(origin, tmp_path,
                                                               tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    origin.release("faces", CHANNEL, 1, "tflite-fp32", tflite_models["v2"])
    client = make_client(origin, tmp_path)
    for name in (MODEL, "faces"):
        assert client.update_in_background(name, CHANNEL)
    assert client.wait_for_background(timeout=30)
    assert client.get_local_model(MODEL, CHANNEL).sha256 == sha256_hex(tflite_models["v1"])
    assert client.get_local_model("faces", CHANNEL).sha256 == sha256_hex(tflite_models["v2"])
    assert client.status("faces", CHANNEL).state is UpdateState.INSTALLED


def test_constructor_rejects_a_trusted_root_that_is_not_tuf_root(tmp_path):
    with pytest.raises(ValueError):
        ModelClient("http://127.0.0.1:9", tmp_path / "c", trusted_root=b"{}", device=DEVICE)
    with pytest.raises(TypeError):
        ModelClient("http://127.0.0.1:9", tmp_path / "c", trusted_root="root", device=DEVICE)


def test_local_model_runs_in_the_tflite_interpreter(origin, tmp_path, tflite_models):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    model = make_client(origin, tmp_path).get_model(MODEL, CHANNEL)
    interpreter = Interpreter(model_path=str(model.path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], np.ones(inp["shape"], dtype=np.float32))
    interpreter.invoke()
    assert interpreter.get_tensor(out["index"]).shape == (1, 4)



