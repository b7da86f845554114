"""The scale mode's health and job metrics with real parts: a Celery worker on Redis runs real
jobs (delta builds; one fails after its retries), a gunicorn web process answers ``/healthz``
and ``/metrics`` over HTTP, and the worker is then killed with SIGKILL.

- ``/metrics`` (parsed with prometheus_client's own parser) gives the finished jobs' durations
  and the failures by kind and toolchain, the queue depth and the oldest queued job's age.
- ``/healthz`` answers 200 and names the worker while it answers Celery's ping, and 503
  ``no_workers`` once it is gone (the ping's answer is cached ``CeleryQueue.PING_CACHE``
  seconds, so within that window plus the ping timeout).

SQLite on one data directory shared by every process (one machine's scale mode), and a Redis
database number of this module's own; everything on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from registry.config import Settings
from registry.delivery import releases
from registry.delivery.deltas import forget_scheduled
from registry.services import build_services
from tests.makers import make_ready_version
from tests.scale_cluster import BIN, Proc, free_port, wait_for

REDIS_DB = 12  # this module's own Redis database number (the scale test uses 11)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("celery-health")
    data = root / "data"
    broker = f"redis://127.0.0.1:6379/{REDIS_DB}"
    redis.Redis.from_url(broker).flushdb()
    env = {"MODELDROP_DATA_DIR": str(data), "MODELDROP_JOB_BACKEND": "celery",
           "MODELDROP_BROKER_URL": broker, "MODELDROP_JOB_STALE_AFTER": "20"}
    full_env = {**os.environ, **env}
    settings = Settings.load({"data_dir": data, "job_backend": "celery", "broker_url": broker,
                              "job_stale_after": 20})
    services = build_services(settings)
    token = services.store.create_token("reader", name="prometheus", created_by="tests").token
    port = free_port()
    web = Proc("web", [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "registry.wsgi:app"],
               {**full_env, "MODELDROP_BIND": f"127.0.0.1:{port}", "MODELDROP_WEB_WORKERS": "1"},
               root / "web.log").start()
    worker = Proc("worker", [str(BIN / "celery"), "-A", "registry.jobs.celery_app", "worker", "-Q",
                             "modeldrop", "--concurrency", "1", "-n", "health1@%h", "--loglevel", "INFO"],
                  full_env, root / "worker.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(base, "/healthz") is not None, 90, "the web process")
        yield {"base": base, "services": services, "token": token, "web": web, "worker": worker}
    finally:
        worker.stop()
        web.stop()
        # Its delta jobs were the killed worker's: no later wait_for_deltas may wait on them.
        forget_scheduled(services)
        services.store.engine.dispose()
        redis.Redis.from_url(broker).flushdb()


def _get(base: str, path: str, token: str | None = None):
    try:
        return requests.get(base + path, timeout=10,
                            headers={"Authorization": f"Bearer {token}"} if token else {})
    except requests.RequestException:
        return None


def _scrape(deployment) -> dict[tuple[str, tuple], float]:
    resp = _get(deployment["base"], "/metrics", deployment["token"])
    assert resp.status_code == 200, resp.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _sample(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_report_real_worker_jobs_by_toolchain_and_the_queue(deployment):
    services, worker = deployment["services"], deployment["worker"]
    wait_for(lambda: (_get(deployment["base"], "/healthz").json()["workers"] or {}).get("alive"),
             90, f"the Celery worker to answer a ping:\n{worker.tail()}", step=1)
    # Two releases of a model whose artifacts differ a little: version 2's release is a real
    # delta job on the worker (bsdiff against version 1's artifacts).
    shared = bytes(range(256)) * 40
    for number in (1, 2):
        make_ready_version(services, "digits", variants={
            "tflite-fp32": {"format": "tflite", "data": shared + f"v{number}".encode() * 50}})
    releases.promote(services, "digits", 1, channel="production", actor="tests")
    done = releases.promote(services, "digits", 2, channel="production", actor="tests")
    # A model whose base artifact is gone from the blob store: its delta job fails on every
    # attempt (the worker retries it like a conversion) and ends failed.
    for number in (1, 2):
        make_ready_version(services, "broken", variants={
            "tflite-fp32": {"format": "tflite", "data": shared + f"b{number}".encode() * 50}})
    releases.promote(services, "broken", 1, channel="production", actor="tests")
    base_sha = services.store.get_version("broken", 1).variants[0].sha256
    services.blobs.delete(base_sha)
    releases.promote(services, "broken", 2, channel="production", actor="tests")

    def finished() -> bool:
        samples = _scrape(deployment)
        return (_sample(samples, "modeldrop_job_failures", kind="deltas", toolchain="tensorflow") == 1
                and (_sample(samples, "modeldrop_jobs_by_toolchain", kind="deltas", toolchain="tensorflow",
                             state="done") or 0) >= 3)

    wait_for(finished, 180, f"the worker's delta jobs to finish:\n{worker.tail()}", step=1)
    assert services.store.find_delta(
        services.store.get_version("digits", 1).variants[0].sha256,
        services.store.get_version("digits", 2).variants[0].sha256) is not None, done
    samples = _scrape(deployment)
    # three jobs done (both releases of digits, version 1 of broken), one failed
    assert _sample(samples, "modeldrop_jobs_by_toolchain", kind="deltas", toolchain="tensorflow",
                   state="done") == 3
    assert _sample(samples, "modeldrop_jobs_by_toolchain", kind="deltas", toolchain="tensorflow",
                   state="failed") == 1
    assert _sample(samples, "modeldrop_job_duration_jobs", kind="deltas", toolchain="tensorflow",
                   state="done") == 3
    quantiles = [_sample(samples, "modeldrop_job_duration_seconds", kind="deltas", toolchain="tensorflow",
                         state="done", quantile=q) for q in ("0.5", "0.95", "1.0")]
    assert all(q is not None and q > 0 for q in quantiles) and quantiles == sorted(quantiles), quantiles
    longest = max((j.finished_at - j.started_at).total_seconds()
                  for j in _finished_jobs(services, "deltas", "done"))
    assert quantiles[-1] == pytest.approx(longest, abs=1e-3)
    assert _sample(samples, "modeldrop_job_queue_depth", kind="deltas") is None  # nothing waits
    assert _sample(samples, "modeldrop_job_oldest_queued_seconds") == 0

    # With the worker stopped, a new release's job waits: queue depth 1 and an age.
    worker.kill(signal.SIGSTOP)
    try:
        make_ready_version(services, "digits", variants={
            "tflite-fp32": {"format": "tflite", "data": shared + b"v3" * 50}})
        releases.promote(services, "digits", 3, channel="production", actor="tests")
        samples = wait_for(lambda: (lambda s: s if (_sample(s, "modeldrop_job_oldest_queued_seconds") or 0) > 0
                                    else None)(_scrape(deployment)), 30, "the queued job's age")
        assert _sample(samples, "modeldrop_job_queue_depth", kind="deltas") == 1
    finally:
        worker.kill(signal.SIGCONT)


def _finished_jobs(services, kind: str, state: str):
    from sqlmodel import Session, select

    from registry.tables import JobRow

    with Session(services.store.engine) as s:
        return s.exec(select(JobRow).where(JobRow.kind == kind, JobRow.state == state)).all()


def test_healthz_lists_live_celery_workers_and_answers_503_once_they_are_killed(deployment):
    base, worker = deployment["base"], deployment["worker"]
    body = wait_for(lambda: (lambda r: r.json() if r is not None and r.status_code == 200
                             and (r.json()["workers"] or {}).get("alive") else None)(_get(base, "/healthz")),
                    90, f"a 200 /healthz with the worker:\n{worker.tail()}", step=1)
    assert body["status"] == "ok" and body["job_backend"] == "celery"
    assert body["workers"]["alive"] == 1 and body["workers"]["names"][0].startswith("health1@")
    worker.kill(signal.SIGKILL)
    worker.popen.wait(timeout=30)
    # The ping's answer is cached for PING_CACHE seconds: 503 comes within that window.
    seen = []

    def unhealthy():
        resp = _get(base, "/healthz")
        seen.append(None if resp is None else (resp.status_code, resp.text))
        return (resp,) if resp is not None and resp.status_code == 503 else None  # a 503 Response is falsy

    try:
        (gone,) = wait_for(unhealthy, 60, "a 503 /healthz after the kill", step=1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last answers {seen[-2:]}") from None
    body = gone.json()
    assert body["status"] == "no_workers" and body["workers"] == {"alive": 0, "names": []}
