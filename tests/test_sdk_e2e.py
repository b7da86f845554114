"""The SDK against the real registry app on loopback (no loopback stand-in).

Versions are published the way the job runner publishes them (``make_ready_version``: bytes
in the blob store, TUF targets, variant rows) with real TFLite files, so no converter runs;
everything from there on is the server's real code: releases, rollback, manifest signing,
ETag/304, deltas, TUF routes, artifact Range/If-Range, telemetry ingestion.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest

from client_sdk import DeviceInfo, ModelClient, UpdateState
from client_sdk.errors import ModelDropError
from tests.makers import make_ready_version
from tests.sdk_origin import fast_config

MODEL, CHANNEL = "digits", "production"
DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")


def _post(server, path: str, body: dict) -> dict:
    import requests

    resp = requests.post(server.base_url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {server.admin_token}"})
    assert resp.status_code == 201, resp.text
    return resp.json()


def _publish(server, data: bytes) -> int:
    version = make_ready_version(server.services, MODEL, variants={
        "tflite-fp32": {"format": "tflite", "data": data}})
    return version.version


def _client(server, tmp_path, root: bytes) -> ModelClient:
    return ModelClient(server.base_url, tmp_path / "cache", trusted_root=root, device=DEVICE,
                       config=fast_config())


def test_fetch_update_delta_rollback_and_telemetry(live_server, tmp_path, tflite_models):
    import requests

    server = live_server
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, v1), "channel": CHANNEL})
    root = requests.get(server.base_url + "/tuf/metadata/1.root.json", timeout=10).content
    client = _client(server, tmp_path, root)

    progress: list[tuple[int, int]] = []
    model = client.get_model(MODEL, CHANNEL, on_progress=lambda d, t: progress.append((d, t)))
    assert (model.version, model.release_counter) == (1, 1)
    assert hashlib.sha256(model.path.read_bytes()).hexdigest() == hashlib.sha256(v1).hexdigest()
    assert progress[-1] == (len(v1), len(v1))
    assert client.get_model(MODEL, CHANNEL).version == 1  # 304 path
    assert client.status(MODEL, CHANNEL).state is UpdateState.UP_TO_DATE

    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, v2), "channel": CHANNEL})
    # Patches are built by a job on the workers; this live server has none, so run it here.
    from registry.delivery.deltas import wait_for_deltas

    assert wait_for_deltas(30)
    deadline = time.monotonic() + 20
    info = client.check_for_update(MODEL, CHANNEL)
    while not info.is_delta and time.monotonic() < deadline:
        time.sleep(0.2)
        info = client.check_for_update(MODEL, CHANNEL)
    assert info.update_available and info.version == 2
    assert info.is_delta and info.download_bytes < len(v2)
    model = client.apply_update(info)
    assert (model.version, model.release_counter) == (2, 2)

    back = _post(server, f"/v1/models/{MODEL}/channels/{CHANNEL}/rollback", {})
    assert back["version"] == 1
    info = client.check_for_update(MODEL, CHANNEL)
    assert (info.version, info.release_counter, info.download_bytes) == (1, 3, 0)
    model = client.apply_update(info)
    assert (model.version, model.release_counter) == (1, 3)

    client.report_inference(model, latency_ms=4.2, correct=True)
    client.wait_for_background(10)
    result = client.flush_telemetry()
    assert result.error is None and result.pending == 0
    assert client.pending_telemetry() == []


def test_resume_against_the_real_artifact_route(live_server, tmp_path, tflite_models):
    import requests

    server = live_server
    big = tflite_models["big"]
    sha = hashlib.sha256(big).hexdigest()
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, big), "channel": CHANNEL})
    root = requests.get(server.base_url + "/v1/trusted-root", timeout=10).content
    staging = tmp_path / "cache" / "staging"
    staging.mkdir(parents=True)
    for etag, partial in ((f'"{sha}"', big[:100_000]), ('"other"', b"\0" * 1000)):
        (staging / f"{sha}.part").write_bytes(partial)
        (staging / f"{sha}.part.json").write_text(json.dumps(
            {"sha256": sha, "length": len(big), "etag": etag, "url": None}))
        seen: list[int] = []
        client = _client(server, tmp_path, root)
        model = client.update(MODEL, CHANNEL, on_progress=lambda d, t: seen.append(d))  # noqa: B023 - used in this iteration
        assert model.sha256 == sha
        assert hashlib.sha256(model.path.read_bytes()).hexdigest() == sha
        if etag == f'"{sha}"':
            assert seen[0] == 100_000  # resumed, not restarted
        for path in (tmp_path / "cache").rglob("channels/*.json"):
            path.unlink()  # forget the install so the next round downloads again
        for path in (tmp_path / "cache" / "models").rglob("slots/*"):
            shutil.rmtree(path)


def test_the_real_server_errors_are_rebuilt_by_code(live_server, tmp_path, tflite_models):
    import requests

    server = live_server
    root = requests.get(server.base_url + "/v1/trusted-root", timeout=10).content
    client = _client(server, tmp_path, root)
    with pytest.raises(ModelDropError) as excinfo:
        client.get_model("no-such-model", CHANNEL)
    assert excinfo.value.code == "model_not_found", excinfo.value
    assert excinfo.value.status == 404 and not excinfo.value.retryable


def test_every_event_kind_the_sdk_emits_is_accepted_by_the_server(live_server, tmp_path,
                                                                   tflite_models):
    from datetime import timedelta

    import requests

    server = live_server
    v1 = tflite_models["v1"]
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, v1), "channel": CHANNEL})
    root = requests.get(server.base_url + "/v1/trusted-root", timeout=10).content
    client = _client(server, tmp_path, root)
    model = client.get_model(MODEL, CHANNEL)  # download_started/finished, install_ok
    client.wait_for_background(10)  # installing sends telemetry in the background
    client.report_inference(model, latency_ms=3.5, correct=False)
    client.report_inference(model, latency_ms=2.0)
    client.report_crash(model, error="SIGABRT in delegate\nframe 1")
    # install_failed: a validly published model that does not load
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, v1[: len(v1) // 2]), "channel": CHANNEL})
    with pytest.raises(ModelDropError):
        client.update(MODEL, CHANNEL)
    # download_failed: a download that cannot meet its deadline
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": _publish(server, tflite_models["big"]), "channel": CHANNEL})
    hurried = ModelClient(server.base_url, tmp_path / "cache", trusted_root=root, device=DEVICE,
                          config=fast_config(download_deadline=timedelta(0)))
    with pytest.raises(ModelDropError):
        hurried.update(MODEL, CHANNEL)
    client.wait_for_background(10)
    kinds = {e["kind"] for e in client.pending_telemetry()}
    assert {"install_failed", "download_failed", "inference", "crash"} <= kinds
    result = client.flush_telemetry()
    assert (result.dropped, result.pending, result.error) == (0, 0, None)
    assert result.sent >= 7
