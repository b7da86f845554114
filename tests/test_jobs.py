"""Conversion through the job system: the in-process worker pool and Celery over Redis and
RabbitMQ, job state and progress, failures, and recovery from a crashed worker."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import ApiClient, base_settings
from tests.procs import Proc

pytestmark = pytest.mark.slow
VARIANTS = ["tflite-fp32", "tflite-int8-dynamic", "coreml-fp16"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from tests.makers_keras import make_digits_model

    return make_digits_model(tmp_path_factory.mktemp("digits"))


def _upload(api: ApiClient, model: Path, eval_npz: Path | None, variants, name="digits"):
    meta = {"variants": variants, "labels": [str(i) for i in range(10)]}
    return api.upload(name, model.read_bytes(), filename=model.name, metadata=meta,
                      eval_bytes=eval_npz.read_bytes() if eval_npz else None)


def _wait_job(api: ApiClient, job_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    seen_progress = set()
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").get_json()
        seen_progress.add((job["state"], job["progress"]["done"]))
        if job["state"] in ("done", "failed"):
            job["seen"] = seen_progress
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_inprocess_worker_converts_and_publishes(tmp_path, digits):
    from registry.app import create_app

    model, eval_npz = digits
    app = create_app(base_settings(tmp_path, worker_processes=1), start_workers=True)
    svc = app.extensions["modeldrop"]
    try:
        api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
        created = _upload(api, model, eval_npz, VARIANTS).get_json()
        job = _wait_job(api, created["job"])
        assert job["state"] == "done", job
        assert job["progress"]["done"] == job["progress"]["total"] == len(VARIANTS)
        version = api.get("/v1/models/digits/versions/1").get_json()
        assert version["status"] == "ready"
        by_name = {v["name"]: v for v in version["variants"]}
        assert set(by_name) == set(VARIANTS)
        fp32 = by_name["tflite-fp32"]
        assert fp32["servable"] and fp32["fidelity"]["eval_source"] == "uploaded"
        assert fp32["fidelity"]["top1_agreement"] > 0.99
        assert fp32["reference_latency_ms"]["device_class"] == "server-x86_64"
        assert by_name["coreml-fp16"]["fidelity"].get("weight_rel_error") is not None
        # Every servable variant is stored and downloadable with a token, but confidential
        # (not a TUF target, no tokenless download) until a release makes it deliverable.
        anon = ApiClient(app.test_client(), None)
        servable = [v for v in version["variants"] if v["servable"]]
        assert servable
        for v in servable:
            data = api.get(f"/v1/artifacts/{v['sha256']}").data
            assert len(data) == v["size"]
            assert v["public"] is False and v["target_path"]
            assert svc.signing.target_info(v["target_path"]) is None
            assert anon.get(f"/v1/artifacts/{v['sha256']}").status_code == 401
        assert api.post("/v1/models/digits/releases",
                        json={"version": 1, "channel": "production"}).status_code == 201
        # The release published them: signed TUF targets, downloadable without a token.
        for v in servable:
            info = svc.signing.target_info(v["target_path"])
            assert info["hashes"]["sha256"] == v["sha256"] and info["length"] == v["size"]
            assert info["custom"] == {"model": "digits", "version": 1, "variant": v["name"],
                                      "format": v["format"], "kind": "variant"}
            assert len(anon.get(f"/v1/artifacts/{v['sha256']}").data) == v["size"]
    finally:
        svc.jobs.stop()


def test_broken_model_fails_with_converter_message(tmp_path):
    from registry.app import create_app
    from registry.jobs.worker import worker_main

    settings = base_settings(tmp_path)
    app = create_app(settings)
    svc = app.extensions["modeldrop"]
    api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
    created = api.upload("broken", b"this is not a keras file", filename="m.keras",
                         metadata={"variants": ["tflite-fp32"]}).get_json()
    worker_main(settings, once=True)
    job = api.get(f"/v1/jobs/{created['job']}").get_json()
    assert job["state"] == "failed" and job["error"]
    version = api.get("/v1/models/broken/versions/1").get_json()
    assert version["status"] == "failed" and version["error"] == job["error"]
    assert version["variants"] == []


def test_crashed_worker_job_is_requeued_then_given_up(tmp_path):
    from sqlmodel import Session

    from registry.app import create_app
    from registry.tables import JobRow, utcnow

    app = create_app(base_settings(tmp_path))
    svc = app.extensions["modeldrop"]
    api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
    job_id = api.upload("digits", b"model").get_json()["job"]

    def claim_and_die():
        assert svc.store.claim_job(job_id) is not None
        with Session(svc.store.engine) as s:  # the worker's heartbeat stops
            row = s.get(JobRow, job_id)
            row.heartbeat_at = utcnow() - timedelta(minutes=10)
            s.add(row)
            s.commit()

    for attempt in range(1, 4):
        claim_and_die()
        requeued = svc.store.requeue_stale_jobs(timedelta(minutes=2))
        assert requeued == [job_id]
        state = svc.store.get_job(job_id)
        assert state.attempts == attempt
        if attempt < 3:
            assert state.state == "queued"
    assert svc.store.get_job(job_id).state == "failed"
    assert svc.store.get_version("digits", 1).status == "failed"


def _celery_worker(env: dict, log: Path, queues: str = "modeldrop,convert-tf,convert-torch",
                   *extra: str) -> Proc:
    return Proc("celery worker", [sys.executable, "-m", "celery", "-A", "registry.jobs.celery_app", "worker",
                                  "--pool=solo", "-Q", queues, "--loglevel=INFO", "--without-gossip",
                                  "--without-mingle", "--without-heartbeat", *extra], env, log, grace=20).start()


@pytest.mark.parametrize("broker", ["redis://127.0.0.1:6379/15",
                                    "amqp://guest:guest@127.0.0.1:5672//"])
def test_celery_worker_runs_conversion(tmp_path, digits, broker, db_url):
    from registry.app import create_app

    model, eval_npz = digits
    overrides = {"job_backend": "celery", "broker_url": broker, "database_url": db_url}
    settings = base_settings(tmp_path, **overrides)
    app = create_app(settings)
    svc = app.extensions["modeldrop"]
    env = dict(os.environ, MODELDROP_DATA_DIR=str(settings.data_dir),
               MODELDROP_JOB_BACKEND="celery", MODELDROP_BROKER_URL=broker,
               MODELDROP_DATABASE_URL=db_url, MODELDROP_LATENCY_RUNS="5")
    worker = _celery_worker(env, tmp_path / "celery.log")
    try:
        api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
        created = _upload(api, model, eval_npz, ["tflite-fp32"]).get_json()
        job = _wait_job(api, created["job"], timeout=300)
        assert job["state"] == "done", (job, (tmp_path / "celery.log").read_text()[-3000:])
        version = api.get("/v1/models/digits/versions/1").get_json()
        assert version["status"] == "ready"
        assert [v["name"] for v in version["variants"]] == ["tflite-fp32"]
    finally:
        worker.stop()
        svc.store.engine.dispose()


def test_celery_jobs_go_to_their_toolchains_queue_and_an_unserved_one_fails(tmp_path, digits, pg_database):
    """A real worker on Redis that consumes only the general and TensorFlow queues (as an
    image without PyTorch would) converts a Keras upload, is never handed the PyTorch job,
    and the maintenance its embedded beat runs fails that job as toolchain_missing once
    MODELDROP_TOOLCHAIN_GRACE has passed with no consumer for convert-torch."""
    import zipfile

    from registry.app import create_app

    broker = "redis://127.0.0.1:6379/14"
    model, eval_npz = digits
    import redis

    db_url = pg_database
    redis.Redis(db=14).flushdb()  # no message of an earlier run
    settings = base_settings(tmp_path, job_backend="celery", broker_url=broker, database_url=db_url,
                             toolchain_grace=2)
    app = create_app(settings)
    svc = app.extensions["modeldrop"]
    env = dict(os.environ, MODELDROP_DATA_DIR=str(settings.data_dir), MODELDROP_JOB_BACKEND="celery",
               MODELDROP_BROKER_URL=broker, MODELDROP_DATABASE_URL=db_url, MODELDROP_LATENCY_RUNS="5",
               MODELDROP_TOOLCHAIN_GRACE="2", MODELDROP_REFRESH_INTERVAL="2")
    log = tmp_path / "celery.log"
    worker = _celery_worker(env, log, "modeldrop,convert-tf", "-B", "-s", str(tmp_path / "beat-schedule"))
    try:
        api = ApiClient(app.test_client(), svc.store.create_token("publisher").token)
        # A zip named .pt2 passes the upload's container check; what it holds never matters,
        # since no worker here may open it.
        pt2 = tmp_path / "m.pt2"
        with zipfile.ZipFile(pt2, "w") as archive:
            archive.writestr("m/data.pkl", b"never read")
        torch_job = api.upload("torchy", pt2.read_bytes(), filename="m.pt2").get_json()["job"]
        keras_job = _upload(api, model, eval_npz, ["tflite-fp32"]).get_json()["job"]
        keras = _wait_job(api, keras_job, timeout=300)
        assert keras["state"] == "done", keras
        job = _wait_job(api, torch_job, timeout=120)
        assert job["state"] == "failed", job
        assert job["error"].startswith("toolchain_missing: no live worker consumes the Celery queue 'convert-torch'")
        assert "MODELDROP_TOOLCHAIN_GRACE" in job["error"]
        # Never handed to this worker: never claimed, never started.
        assert job["attempts"] == 0 and job["started_at"] is None
        received = [line for line in log.read_text().splitlines()
                    if "Task modeldrop.convert[" in line and line.endswith("received")]
        assert len(received) == 1, received  # the Keras job's message only
        version = api.get("/v1/models/torchy/versions/1").get_json()
        assert version["status"] == "failed" and version["error"] == job["error"]
    finally:
        worker.stop()
        svc.store.engine.dispose()
        redis.Redis(db=14).flushdb()  # the PyTorch job's message, which nothing consumed
