"""`modeldrop backup DIR` / `modeldrop restore DIR` (issue 13), as subprocesses: a registry
with a release is backed up (from SQLite and from PostgreSQL), restored into a fresh data dir
(SQLite, and PostgreSQL into an empty database), and the restored server gives byte-identical
manifests for the same time (same release counter, same signature), byte-identical artifacts, the same TUF metadata, and
python-tuf's Updater, trusting the old root, accepts it and downloads the target."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import requests
from tuf.ngclient import Updater

from tests.helpers import base_settings
from tests.makers import make_ready_version

INSTALL = "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def _cli(*args, env=None):
    done = subprocess.run([sys.executable, "-m", "registry.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    return done


def _manifest(services) -> bytes:
    from registry.delivery.manifest import manifest_answer

    answer = manifest_answer(services, {"model": "m", "channel": "production", "install_id": INSTALL,
                                        "platform": "android"},
                             artifact_url=lambda sha, public=True: f"https://cdn/{sha}",
                             etag_matches=lambda _: False, now=NOW)
    assert answer.status == 200
    import json

    return json.dumps(answer.document, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(("source_db", "target_db"),
                         [("sqlite", "sqlite"), ("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_backup_and_restore_serve_the_same_registry(tmp_path, request, source_db, target_db):
    from registry.app import create_app
    from registry.delivery import releases
    from tests.live import serve_app

    source_env = {}
    if source_db == "postgresql":
        source_env["MODELDROP_DATABASE_URL"] = request.getfixturevalue("pg_database")
    src_settings = base_settings(tmp_path / "src", database_url=source_env.get("MODELDROP_DATABASE_URL", ""))
    app = create_app(src_settings)
    services = app.extensions["modeldrop"]
    version = make_ready_version(services, "m")
    releases.promote(services, "m", version.version, channel="production", actor="tests")
    # A version with an engineer's own artifact attached (not yet converted): its row and blob.
    attached = services.blobs.put_bytes(b"\x1c\x00\x00\x00TFL3 an attached flatbuffer")
    att_source = services.blobs.put_bytes(b"a source with an attachment")
    services.store.create_version(
        "att", sha256=att_source.sha256, size=att_source.size, source_format="keras", filename="m.keras",
        metadata={}, eval_sha256=None, actor="tests",
        attachments=[{"variant": "tflite-attached", "format": "tflite", "sha256": attached.sha256,
                      "size": attached.size, "filename": "android.tflite"}])
    before = {"manifest": _manifest(services),
              "attachments": services.store.get_version("att", 1).source["attachments"],
              "root": services.signing.get_metadata("root.json"),
              "timestamp": services.signing.get_metadata("timestamp.json"),
              "artifacts": {v.sha256: services.blobs.read_bytes(v.sha256) for v in version.variants},
              "releases": [r.model_dump(mode="json") for r in releases.history(services, "m", None)],
              "tokens": [t.model_dump(mode="json") for t in services.store.list_tokens()]}
    services.store.engine.dispose()

    out = tmp_path / "backup"
    done = _cli("backup", str(out), "--data-dir", str(src_settings.data_dir), env=source_env)
    assert done.returncode == 0, done.stderr
    assert (out / "backup.json").exists() and (out / "keys").is_dir()

    env = {}
    overrides = {}
    if target_db == "postgresql":
        url = request.getfixturevalue("pg_database")
        env["MODELDROP_DATABASE_URL"] = url
        overrides["database_url"] = url
    dest = tmp_path / "restored"
    done = _cli("restore", str(out), "--data-dir", str(dest), env=env)
    assert done.returncode == 0, done.stderr
    # Restoring again on top is refused: it would mix two registries.
    again = _cli("restore", str(out), "--data-dir", str(dest), env=env)
    assert again.returncode != 0 and "fresh data dir" in again.stderr

    app2 = create_app(base_settings(tmp_path / "restored-settings", data_dir=dest, **overrides))
    s2 = app2.extensions["modeldrop"]
    assert _manifest(s2) == before["manifest"]  # same counter, same key, same bytes
    assert s2.signing.get_metadata("root.json") == before["root"]
    assert [r.model_dump(mode="json") for r in releases.history(s2, "m", None)] == before["releases"]
    assert [t.model_dump(mode="json") for t in s2.store.list_tokens()] == before["tokens"]
    assert s2.store.get_version("att", 1).source["attachments"] == before["attachments"] != []
    assert s2.blobs.read_bytes(attached.sha256) == b"\x1c\x00\x00\x00TFL3 an attached flatbuffer"
    with serve_app(app2) as base:
        for sha, data in before["artifacts"].items():
            resp = requests.get(f"{base}/v1/artifacts/{sha}", timeout=10,
                                headers={"Authorization": f"Bearer {(dest / 'admin-token').read_text().strip()}"})
            assert resp.status_code == 200 and resp.content == data
        meta, targets = tmp_path / "tuf" / "metadata", tmp_path / "tuf" / "targets"
        meta.mkdir(parents=True)
        targets.mkdir()
        updater = Updater(metadata_dir=str(meta), metadata_base_url=f"{base}/tuf/metadata/",
                          target_dir=str(targets), target_base_url=f"{base}/tuf/targets/",
                          bootstrap=before["root"])
        updater.refresh()
        path = next(v.target_path for v in version.variants if v.servable)
        info = updater.get_targetinfo(path)
        assert info is not None
        downloaded = updater.download_target(info)
        with open(downloaded, "rb") as f:
            assert f.read() in before["artifacts"].values()
        # The restored server keeps working: a new version and release on top.
        make_ready_version(s2, "m")
        assert releases.promote(s2, "m", 2, channel="production", actor="tests").counter > 1
    s2.store.engine.dispose()


def test_restore_refuses_a_damaged_backup(tmp_path):
    from registry.app import create_app

    settings = base_settings(tmp_path / "src")
    app = create_app(settings)
    make_ready_version(app.extensions["modeldrop"], "m")
    app.extensions["modeldrop"].store.engine.dispose()
    out = tmp_path / "backup"
    assert _cli("backup", str(out), "--data-dir", str(settings.data_dir)).returncode == 0
    blob = next((out / "blobs").iterdir())
    blob.write_bytes(b"damaged")
    done = _cli("restore", str(out), "--data-dir", str(tmp_path / "dest"))
    assert done.returncode != 0 and "damaged" in done.stderr
