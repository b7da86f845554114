"""`modeldrop fsck [--repair]` (issue 13), run as the operator runs it (a subprocess on the
data dir), on both blob backends: each kind of inconsistency is planted for real, found, and
repaired, after which a second check is clean. Also: a failed upload leaves no blob."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.helpers import assert_problem, base_settings
from tests.makers import make_ready_version
from tests.procs import Proc, free_port, wait_http


def _env(settings) -> dict[str, str]:
    env = {**os.environ, "MODELDROP_BLOB_BACKEND": settings.blob_backend}
    if settings.blob_backend == "s3":
        env.update(MODELDROP_S3_ENDPOINT_URL=settings.s3_endpoint_url,
                   MODELDROP_S3_BUCKET=settings.s3_bucket,
                   MODELDROP_S3_ACCESS_KEY=settings.s3_access_key,
                   MODELDROP_S3_SECRET_KEY=settings.s3_secret_key)
    return env


def _fsck(settings, *args):
    done = subprocess.run([sys.executable, "-m", "registry.cli", "fsck", "--data-dir",
                           str(settings.data_dir), "--json", *args], capture_output=True, text=True,
                          timeout=300, env=_env(settings))
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)["findings"]


def _overwrite(services, sha256: str, data: bytes) -> None:
    """Change a stored blob's bytes behind the registry's back (bit rot, a bad restore)."""
    if services.settings.blob_backend == "local":
        path = services.blobs.local_path(sha256)
        os.chmod(path, 0o600)
        path.write_bytes(data)
    else:
        services.blobs._client.put_object(Bucket=services.blobs.bucket,
                                          Key=services.blobs._key(sha256), Body=data)


def test_fsck_finds_and_repairs_every_kind(tmp_path, blob_settings):
    from registry.app import create_app
    from registry.delivery import releases
    from registry.jobs.worker import STALE_AFTER

    app = create_app(base_settings(tmp_path, **blob_settings))
    services = app.extensions["modeldrop"]
    settings = services.settings
    # A released version (its variants are TUF targets) and a plain one.
    released = make_ready_version(services, "m")
    releases.promote(services, "m", released.version, channel="production", actor="tests")
    plain = make_ready_version(services, "n")
    targets = {v.name: v for v in services.store.get_version("m", 1).variants}

    orphan = services.blobs.put_bytes(b"bytes no row refers to").sha256
    lost_source = plain.source["sha256"]
    services.blobs.delete(lost_source)  # a row without its blob
    gone_target = targets["tflite-fp32"].sha256
    services.blobs.delete(gone_target)  # a TUF target without its blob
    corrupt = targets["coreml-fp16"].sha256
    _overwrite(services, corrupt, b"rotten")  # bytes that no longer match the name
    job = services.store.create_job(services.store.version_id("n", 1))
    stale = (services.store.dialect == "sqlite") and "datetime('now', '-1 hour')" or "now() - interval '1 hour'"
    with services.store.engine.begin() as conn:  # a job left running by a dead worker
        conn.execute(text(f"UPDATE jobs SET state = 'running', heartbeat_at = {stale} WHERE id = :id"),
                     {"id": job})
    services.store.engine.dispose()

    rc, found = _fsck(settings)
    assert rc == 1
    kinds = {(f["kind"], f["subject"]) for f in found}
    assert ("orphan_blob", orphan) in kinds
    assert ("missing_blob", lost_source) in kinds
    assert ("missing_blob", gone_target) in kinds
    assert ("corrupt_blob", corrupt) in kinds
    assert ("missing_target_blob", targets["tflite-fp32"].target_path) in kinds
    assert ("stuck_job", job) in kinds
    assert not any(f["repaired"] for f in found)

    rc, repaired = _fsck(settings, "--repair")
    assert rc == 0 and all(f["repaired"] for f in repaired), repaired
    rc, again = _fsck(settings)
    assert (rc, again) == (0, []), again

    app2 = create_app(base_settings(tmp_path, **blob_settings))
    s2 = app2.extensions["modeldrop"]
    assert not s2.blobs.exists(orphan) and not s2.blobs.exists(corrupt)
    assert s2.store.get_version("n", 1).status == "failed"
    variants = {v.name: v for v in s2.store.get_version("m", 1).variants}
    assert not variants["tflite-fp32"].servable and not variants["coreml-fp16"].servable
    assert targets["tflite-fp32"].target_path not in s2.signing.target_paths()
    assert s2.store.get_job(job).state == "queued"
    assert s2.store.stale_running_jobs(STALE_AFTER - timedelta(seconds=1)) == []
    s2.store.engine.dispose()


def test_a_refused_upload_leaves_no_blob_and_no_staging_file(api, services):
    first = api.upload("m", content=b"first bytes", version=1)
    assert first.status_code == 201
    before = set(services.blobs.iter_sha256())
    # Different bytes under an existing number: 409 after the bytes were read and stored.
    assert_problem(api.upload("m", content=b"other bytes", version=1), 409, "version_conflict")
    assert set(services.blobs.iter_sha256()) == before
    assert list(services.blobs.staging_dir.iterdir()) == []
    # The same bytes as an existing version, refused: that version's blob stays.
    assert_problem(api.upload("m", content=b"first bytes", version=2), 409, "version_conflict")
    assert set(services.blobs.iter_sha256()) == before


@pytest.mark.parametrize("backend", ["local"])
def test_serve_sweeps_staging_and_work_folders_at_start(tmp_path, backend):
    """A crash mid-upload leaves a staging file; the next `modeldrop serve` removes it even
    though it is seconds old (it used to stay 6 hours)."""
    settings = base_settings(tmp_path)
    staging = settings.data_dir / "blobs" / ".staging"
    staging.mkdir(parents=True)
    (staging / "upload-leftover").write_bytes(b"\0" * 1024)
    job_dir = settings.data_dir / "work" / "job-deadbeef-x1"  # a conversion killed with -9
    (job_dir / "work").mkdir(parents=True)
    (job_dir / "work" / "model.tflite").write_bytes(b"\0" * 1024)
    port = free_port()
    with Proc("serve", [sys.executable, "-m", "registry.cli", "serve", "--data-dir", str(settings.data_dir),
                        "--port", str(port)], {**os.environ, "MODELDROP_WORKER_PROCESSES": "0"},
              tmp_path / "serve.log", grace=30) as proc:
        wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc=proc)
        assert not (staging / "upload-leftover").exists()
        assert not job_dir.exists()
    err = proc.tail(100_000)
    assert "removed the abandoned upload upload-leftover" in err
    assert "removed the abandoned conversion folder job-deadbeef-x1" in err
