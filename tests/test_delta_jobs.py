"""Delta patches are jobs on the conversion workers, not threads of the web process: a
supervised worker builds and publishes them, and a lost delta job is retried like a
conversion without ever failing the (ready) version it belongs to."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from registry.delivery.deltas import delta_target_path
from tests.helpers import ApiClient, base_settings
from tests.makers import make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7", "app_version": "3.2.0"}
DEVICE = "5d9c0e8e-6b1f-4a43-9d3e-2f1d7c9b8a10"
VARIANT = "tflite-int8-dynamic"


def _promote(api: ApiClient, version: int) -> None:
    resp = api.post("/v1/models/digits/releases", json={"version": version, "channel": "production"})
    assert resp.status_code == 201, resp.get_json()


@pytest.mark.slow
def test_a_supervised_worker_builds_and_publishes_the_delta(tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, worker_processes=1), start_workers=True)
    svc = app.extensions["modeldrop"]
    try:
        api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
        v1 = make_ready_version(svc, "digits")
        v2 = make_ready_version(svc, "digits")
        _promote(api, 1)
        threads_before = {t.name for t in threading.enumerate()}
        _promote(api, 2)
        # Nothing in this process builds it: no thread was started, only a job was queued.
        assert {t.name for t in threading.enumerate()} - threads_before <= {"modeldrop-supervisor"}
        assert svc.store.has_jobs(kind="deltas", states=("queued", "running", "done"))
        deadline = time.monotonic() + 120
        while svc.store.has_jobs(kind="deltas", states=("queued", "running")):
            assert time.monotonic() < deadline, "the worker did not run the delta jobs"
            time.sleep(0.2)
        assert not svc.store.has_jobs(kind="deltas", states=("failed",))
        base = next(v for v in v1.variants if v.name == VARIANT)
        doc = app.test_client().get("/v1/manifest", query_string={
            "model": "digits", "channel": "production", "install_id": DEVICE,
            "installed_sha256": base.sha256, **ANDROID}).get_json()
        assert doc["delta"]["target"] == delta_target_path("digits", 2, VARIANT, base.sha256)
        # Listed by the worker as a TUF target (it holds the targets key), read back here.
        client = app.test_client()
        meta = lambda name: client.get(f"/tuf/metadata/{name}").get_json()["signed"]  # noqa: E731
        snapshot = meta("timestamp.json")["meta"]["snapshot.json"]["version"]
        targets = meta(f"{snapshot}.snapshot.json")["meta"]["targets.json"]["version"]
        assert doc["delta"]["target"] in meta(f"{targets}.targets.json")["targets"]
        assert next(v for v in v2.variants if v.name == VARIANT).sha256 == doc["artifact"]["sha256"]
    finally:
        svc.jobs.stop()
        svc.store.engine.dispose()


def test_a_lost_delta_job_is_retried_then_given_up_without_failing_the_version(services, api):
    from sqlmodel import Session

    from registry.delivery.deltas import schedule_release_deltas
    from registry.tables import JobRow, utcnow

    make_ready_version(services, "digits")
    _promote(api, 1)
    release = services.store.list_releases("digits")[0]
    job_id = schedule_release_deltas(services, release)
    for attempt in range(1, 4):
        assert services.store.claim_job(job_id) is not None
        with Session(services.store.engine) as s:  # the worker's heartbeat stops
            row = s.get(JobRow, job_id)
            row.heartbeat_at = utcnow() - timedelta(minutes=10)
            s.add(row)
            s.commit()
        assert job_id in services.store.requeue_stale_jobs(timedelta(minutes=2))
        assert services.store.get_job(job_id).attempts == attempt
    assert services.store.get_job(job_id).state == "failed"
    assert services.store.get_version("digits", 1).status == "ready"
    # A delta job is never taken for the version's conversion job (this version, made
    # without a conversion, has none).
    assert services.store.latest_job_for_version(services.store.version_id("digits", 1)) is None
