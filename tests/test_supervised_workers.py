"""`modeldrop serve` supervises its conversion workers: a worker killed with SIGKILL in the
middle of a conversion is replaced within seconds, everything it started dies with it, its job
is requeued and completes, and /healthz says how many workers are alive (503 when none is)."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import requests

from tests.procs import Proc, alive, descendants, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from tests.makers_keras import make_digits_model

    return make_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = dict(os.environ, MODELDROP_CONVERT_SANDBOX="required", MODELDROP_LATENCY_RUNS="3",
               # Far longer than the test: only the supervisor can explain a quick requeue.
               MODELDROP_JOB_STALE_AFTER="3600")
    proc = Proc("serve", [sys.executable, "-m", "registry.cli", "serve", "--data-dir",
                          str(tmp_path / "data"), "--port", str(port), "--workers", "1"],
                env, tmp_path / "serve.log", grace=30)
    url = f"http://127.0.0.1:{port}"

    def health():
        try:
            return requests.get(f"{url}/healthz", timeout=5)
        except requests.ConnectionError:
            return None

    with proc.start():
        wait_for(lambda: (r := health()) is not None and r.status_code == 200, 60, "the server", proc=proc)
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        yield url, token, health, proc, proc.log


def _worker_pid(health) -> int:
    body = wait_for(lambda: (r := health()) is not None and r.status_code == 200
                  and r.json()["workers"]["pids"] and r.json(), 30, "a live worker")
    return body["workers"]["pids"][0]


def test_killed_worker_is_replaced_and_its_job_completes(server, digits):
    url, token, health, proc, log = server
    auth = {"Authorization": f"Bearer {token}"}
    first = _worker_pid(health)
    body = health().json()
    assert body["workers"] == {"alive": 1, "expected": 1, "restarts": 0, "pids": [first]}
    assert body["queue"]["queued"] == 0 and body["queue"]["oldest_queued_age"] is None

    meta = '{"variants": ["tflite-fp32"], "labels": ["0","1","2","3","4","5","6","7","8","9"]}'
    keras_path, eval_npz = digits
    with open(keras_path, "rb") as model, open(eval_npz, "rb") as ev:
        created = requests.post(f"{url}/v1/models/digits/versions", headers=auth, timeout=60,
                                files={"file": ("m.keras", model), "eval": ("eval.npz", ev)},
                                data={"metadata": meta})
    assert created.status_code == 201, created.text
    job_id = created.json()["job"]
    job_url = f"{url}/v1/jobs/{job_id}"
    # Mid-conversion: the job is running and the worker has started the sandboxed converter.
    wait_for(lambda: requests.get(job_url, headers=auth, timeout=5).json()["state"] == "running"
           and descendants(first), 60, "the conversion to start")
    started = descendants(first)
    assert started, "the worker started no converter process"
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()

    second = wait_for(lambda: (r := health()) is not None and r.status_code == 200
                    and r.json()["workers"]["pids"] != [first] and r.json()["workers"]["pids"],
                    10, "a new worker")[0]
    assert second != first
    assert time.monotonic() - killed_at < 10
    assert health().json()["workers"]["restarts"] == 1
    wait_for(lambda: not any(alive(p) for p in started), 10,
           "the dead worker's converter processes to end", step=0.2)

    job = wait_for(lambda: (j := requests.get(job_url, headers=auth, timeout=5).json())["state"]
                 in ("done", "failed") and j, 300, "the requeued job", step=0.5)
    assert job["state"] == "done", (job, log.read_text()[-3000:])
    assert job["attempts"] == 2  # the killed run, then the one that finished
    assert f"job {job_id} of the dead worker: queued" in log.read_text()
    version = requests.get(f"{url}/v1/models/digits/versions/1", headers=auth, timeout=5).json()
    assert version["status"] == "ready"
    assert [v["name"] for v in version["variants"]] == ["tflite-fp32"]
    # Neither the killed attempt's conversion folder nor the finished one's is left behind.
    work = log.parent / "data" / "work"
    assert not list(work.glob("job-*")), sorted(p.name for p in work.iterdir())


def test_healthz_answers_503_while_no_worker_is_alive(server):
    url, token, health, proc, log = server
    # A worker that keeps dying right after its start is restarted with a growing delay
    # (0, 1, 2, 4 ... s); during a delay nothing converts and /healthz says so.
    for _ in range(4):
        pid = _worker_pid(health)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda p=pid: not alive(p), 10, "the worker to die")
    # (a Response with a 4xx/5xx status is falsy, so the body is what is returned)
    body = wait_for(lambda: (r := health()) is not None and r.status_code == 503 and r.json(), 5,
                    "a 503 from /healthz", step=0.1)
    assert body["status"] == "no_workers" and body["workers"]["alive"] == 0
    assert body["workers"]["expected"] == 1
    # ... and comes back by itself.
    _worker_pid(health)
    assert health().json()["workers"]["restarts"] >= 4
    assert proc.poll() is None, "the server itself must survive its workers"
