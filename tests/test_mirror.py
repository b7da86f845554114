"""`modeldrop mirror export|sync`, then a device in ``resolve="local"`` mode with the API stopped.

The CLI runs as a subprocess against the real server over HTTP. The mirror is then served
by ``python -m http.server`` (a plain static server) and, synced into SeaweedFS, read with
public (unsigned, presigned-free) S3 GETs; in both cases the API is down while the SDK
fetches, verifies and installs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

from client_sdk import DeviceInfo, ModelClient
from tests.live import serve_app
from tests.makers import make_ready_version
from tests.sdk_origin import fast_config

MODEL, CHANNEL = "digits", "production"
DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")
ROOT = Path(__file__).resolve().parents[1]


def _admin(app) -> str:
    return (Path(app.extensions["modeldrop"].settings.data_dir) / "admin-token").read_text().strip()


def _promote(base: str, app, version: int) -> None:
    resp = requests.post(f"{base}/v1/models/{MODEL}/releases", timeout=10,
                         json={"version": version, "channel": CHANNEL},
                         headers={"Authorization": f"Bearer {_admin(app)}"})
    assert resp.status_code == 201, resp.text


def _cli(base: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "registry.cli", "--url", base, *args],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def static_server(directory: Path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(base + "/", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in directory.rglob("*") if p.is_file()}


def _client(base: str, cache: Path, root: bytes) -> ModelClient:
    # Telemetry to a port nobody listens on: the API is down, events wait in the outbox.
    return ModelClient(base, cache, trusted_root=root, device=DEVICE, config=fast_config(),
                       resolve="local", telemetry_url=f"http://127.0.0.1:{_free_port()}/t")


def test_export_then_static_server_with_the_api_stopped(app, tmp_path, tflite_models):
    services = app.extensions["modeldrop"]
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    for data in (v1, v2):
        make_ready_version(services, MODEL,
                           variants={"tflite-fp32": {"format": "tflite", "data": data}})
    make_ready_version(services, "other")
    mirror = tmp_path / "mirror"
    with serve_app(app) as api:
        _promote(api, app, 1)
        resp = requests.post(f"{api}/v1/models/other/releases", timeout=10,
                             json={"version": 1, "channel": CHANNEL},
                             headers={"Authorization": f"Bearer {_admin(app)}"})
        assert resp.status_code == 201
        root = requests.get(f"{api}/tuf/metadata/1.root.json", timeout=10).content
        out = _cli(api, "mirror", "export", str(mirror), "--model", MODEL)
        assert "files written" in out
    files = _snapshot(mirror)
    assert "tuf/metadata/timestamp.json" in files and "tuf/metadata/1.root.json" in files
    assert f"v1/rulesets/{MODEL}/{CHANNEL}" in files
    v1_sha = hashlib.sha256(v1).hexdigest()
    assert f"v1/artifacts/{v1_sha}" in files
    assert not any(name.startswith("tuf/targets/other/") for name in files)  # --model

    with static_server(mirror) as base:
        client = _client(base, tmp_path / "cache", root)
        model = client.get_model(MODEL, CHANNEL)
        assert (model.version, model.release_counter) == (1, 1)
        assert hashlib.sha256(model.path.read_bytes()).hexdigest() == v1_sha

    with serve_app(app) as api:  # the API back for a release, then the mirror is synced
        _promote(api, app, 2)
        _cli(api, "mirror", "sync", str(mirror))
    after = _snapshot(mirror)
    for name, stamp in files.items():
        if name.startswith(("tuf/targets/", "v1/artifacts/")) or \
                name.endswith((".root.json", ".targets.json", ".snapshot.json")):
            assert after[name] == stamp, f"{name} was rewritten"
    assert after["tuf/metadata/timestamp.json"] != files["tuf/metadata/timestamp.json"]
    assert any(n.startswith("tuf/targets/other/") for n in after)  # sync without --model

    with static_server(mirror) as base:
        client = _client(base, tmp_path / "cache", root)
        model = client.get_model(MODEL, CHANNEL)
        assert (model.version, model.release_counter) == (2, 2)
        assert hashlib.sha256(model.path.read_bytes()).digest() == hashlib.sha256(v2).digest()
        assert client.pending_telemetry()  # kept for when the API is reachable again
        client.close()


def test_sync_to_seaweedfs_and_install_from_public_reads(app, tmp_path, tflite_models,
                                                        seaweedfs):
    from tests.seaweed import ACCESS_KEY, SECRET_KEY

    services = app.extensions["modeldrop"]
    make_ready_version(services, MODEL,
                       variants={"tflite-fp32": {"format": "tflite", "data": tflite_models["v1"]}})
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": seaweedfs}
    with serve_app(app) as api:
        _promote(api, app, 1)
        root = requests.get(f"{api}/tuf/metadata/1.root.json", timeout=10).content
        _cli(api, "mirror", "sync", "s3://edge-mirror/fleet/v1", env=env)
        again = _cli(api, "mirror", "sync", "s3://edge-mirror/fleet/v1", env=env)
        assert again.startswith("mirror s3://edge-mirror/fleet/v1: 0 files written")
    base = f"{seaweedfs}/edge-mirror/fleet/v1"
    # an anonymous GET, no signature, no presigned URL
    assert requests.get(f"{base}/tuf/metadata/timestamp.json", timeout=10).status_code == 200
    client = _client(base, tmp_path / "cache", root)
    model = client.get_model(MODEL, CHANNEL)
    assert (model.version, model.release_counter) == (1, 1)
    assert hashlib.sha256(model.path.read_bytes()).digest() == \
        hashlib.sha256(tflite_models["v1"]).digest()
    client.close()
