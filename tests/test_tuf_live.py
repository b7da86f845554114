"""python-tuf's reference client against the registry's own TUF endpoints over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import requests
from tuf.ngclient import Updater


def _updater(base: str, root: bytes, workdir: Path) -> Updater:
    meta, targets = workdir / "metadata", workdir / "targets"
    meta.mkdir(parents=True, exist_ok=True)
    targets.mkdir(parents=True, exist_ok=True)
    return Updater(metadata_dir=str(meta), metadata_base_url=f"{base}/tuf/metadata/",
                   target_dir=str(targets), target_base_url=f"{base}/tuf/targets/",
                   bootstrap=root)


def _push(base: str, token: str, name: str, data: bytes) -> dict:
    resp = requests.post(f"{base}/v1/models/{name}/versions",
                         headers={"Authorization": f"Bearer {token}"},
                         files={"file": ("model.keras", data)}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _release(live, name: str, data: bytes) -> tuple[str, dict]:
    """A ready version whose one variant is ``data``, promoted over HTTP: (target path, version)."""
    from tests.makers import make_ready_version

    version = make_ready_version(live.services, name,
                                 variants={"tflite-fp32": {"format": "tflite", "data": data}})
    resp = requests.post(f"{live.base_url}/v1/models/{name}/releases",
                         json={"version": version.version, "channel": "production"},
                         headers={"Authorization": f"Bearer {live.admin_token}"}, timeout=30)
    assert resp.status_code == 201, resp.text
    return version.variants[0].target_path, version


def test_released_model_verifies_with_python_tuf(live_server, tmp_path):
    base, token = live_server.base_url, live_server.admin_token
    root = requests.get(f"{base}/v1/trusted-root", timeout=10).content
    assert requests.get(f"{base}/tuf/metadata/1.root.json", timeout=10).content == root
    source = os.urandom(50_000)
    _push(base, token, "digits", source)
    data = os.urandom(50_000)
    path, version = _release(live_server, "digits", data)

    updater = _updater(base, root, tmp_path / "client")
    updater.refresh()
    # The upload is confidential: its source is no target at all.
    assert updater.get_targetinfo("digits/1/source.keras") is None
    info = updater.get_targetinfo(path)
    assert info is not None and info.length == len(data)
    assert info.custom == {"model": "digits", "version": version.version,
                           "variant": "tflite-fp32", "format": "tflite", "kind": "variant"}
    downloaded = updater.download_target(info)
    assert hashlib.sha256(Path(downloaded).read_bytes()).hexdigest() == \
        hashlib.sha256(data).hexdigest()
    # A missing root version is a plain 404 so the client's root walk stops cleanly.
    assert requests.get(f"{base}/tuf/metadata/99.root.json", timeout=10).status_code == 404


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets", "manifest", "root"])
def test_client_follows_key_rotation(live_server, tmp_path, role):
    base, token = live_server.base_url, live_server.admin_token
    old_root = requests.get(f"{base}/v1/trusted-root", timeout=10).content
    _release(live_server, "digits", b"before rotation")
    first = _updater(base, old_root, tmp_path / "client")
    first.refresh()
    old_manifest_keys = json.loads(old_root)["signed"]["x-modeldrop-manifest"]["keyids"]

    resp = requests.post(f"{base}/v1/keys/rotate", json={"role": role},
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    path, _ = _release(live_server, "digits", b"after rotation")

    # A client that trusted the old root follows the rotation and verifies the new target.
    later = _updater(base, old_root, tmp_path / "client")
    later.refresh()
    info = later.get_targetinfo(path)
    assert info is not None
    assert Path(later.download_target(info)).read_bytes() == b"after rotation"
    trusted = json.loads((tmp_path / "client" / "metadata" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 2
    new_manifest_keys = trusted["signed"]["x-modeldrop-manifest"]["keyids"]
    if role == "manifest":
        assert new_manifest_keys != old_manifest_keys
    else:
        assert new_manifest_keys == old_manifest_keys
    audit = requests.get(f"{base}/v1/audit?action=keys.rotate",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert audit["items"][0]["target"] == f"role:{role}"


def test_rotation_needs_admin(live_server):
    services = live_server.services
    publisher = services.store.create_token("publisher").token
    resp = requests.post(f"{live_server.base_url}/v1/keys/rotate", json={"role": "timestamp"},
                         headers={"Authorization": f"Bearer {publisher}"}, timeout=10)
    assert resp.status_code == 403 and resp.json()["code"] == "forbidden"
    bad = requests.post(f"{live_server.base_url}/v1/keys/rotate", json={"role": "everything"},
                        headers={"Authorization": f"Bearer {live_server.admin_token}"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["field"] == "role"


def test_timestamp_refresh_by_maintenance(live_server, tmp_path):
    from datetime import timedelta

    from registry.jobs.worker import maintenance
    from registry.signing._policy import utc_now

    base = live_server.base_url
    root = requests.get(f"{base}/v1/trusted-root", timeout=10).content
    before = json.loads(requests.get(f"{base}/tuf/metadata/timestamp.json", timeout=10).content)
    # Nothing is due yet: maintenance leaves the timestamp alone.
    maintenance(live_server.services)
    same = json.loads(requests.get(f"{base}/tuf/metadata/timestamp.json", timeout=10).content)
    assert same["signed"]["version"] == before["signed"]["version"]
    # Close to expiry (a day later), the periodic refresh re-signs it and clients still verify.
    resigned = live_server.services.signing.refresh(utc_now() + timedelta(hours=20))
    assert "timestamp" in resigned
    after = json.loads(requests.get(f"{base}/tuf/metadata/timestamp.json", timeout=10).content)
    assert after["signed"]["version"] > before["signed"]["version"]
    updater = _updater(base, root, tmp_path / "client")
    updater.refresh()
