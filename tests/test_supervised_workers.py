"""`modeldrop serve` supervises its conversion workers: a worker killed with SIGKILL in the
middle of a conversion is replaced within seconds, everything it started dies with it, its job
is requeued and completes, and /healthz says how many workers are alive (503 when none is)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                kids = {int(c) for c in (task / "children").read_text().split()}
            except FileNotFoundError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _until(check, seconds: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from tests.makers_keras import make_digits_model

    return make_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = dict(os.environ, MODELDROP_CONVERT_SANDBOX="required", MODELDROP_LATENCY_RUNS="3",
               # Far longer than the test: only the supervisor can explain a quick requeue.
               MODELDROP_JOB_STALE_AFTER="3600")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--data-dir",
                             str(tmp_path / "data"), "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def health():
        try:
            return requests.get(f"{url}/healthz", timeout=5)
        except requests.ConnectionError:
            return None

    try:
        _until(lambda: (r := health()) is not None and r.status_code == 200, 60, "the server")
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        yield url, token, health, proc, tmp_path / "serve.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _worker_pid(health) -> int:
    body = _until(lambda: (r := health()) is not None and r.status_code == 200
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
    _until(lambda: requests.get(job_url, headers=auth, timeout=5).json()["state"] == "running"
           and _descendants(first), 60, "the conversion to start")
    started = _descendants(first)
    assert started, "the worker started no converter process"
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()

    second = _until(lambda: (r := health()) is not None and r.status_code == 200
                    and r.json()["workers"]["pids"] != [first] and r.json()["workers"]["pids"],
                    10, "a new worker")[0]
    assert second != first
    assert time.monotonic() - killed_at < 10
    assert health().json()["workers"]["restarts"] == 1
    _until(lambda: not any(_alive(p) for p in started), 10,
           "the dead worker's converter processes to end", step=0.2)

    job = _until(lambda: (j := requests.get(job_url, headers=auth, timeout=5).json())["state"]
                 in ("done", "failed") and j, 300, "the requeued job", step=0.5)
    assert job["state"] == "done", (job, log.read_text()[-3000:])
    assert job["attempts"] == 2  # the killed run, then the one that finished
    assert f"job {job_id} of the dead worker: queued" in log.read_text()
    version = requests.get(f"{url}/v1/models/digits/versions/1", headers=auth, timeout=5).json()
    assert version["status"] == "ready"
    assert [v["name"] for v in version["variants"]] == ["tflite-fp32"]


def test_healthz_answers_503_while_no_worker_is_alive(server):
    url, token, health, proc, log = server
    # A worker that keeps dying right after its start is restarted with a growing delay
    # (0, 1, 2, 4 ... s); during a delay nothing converts and /healthz says so.
    for _ in range(4):
        pid = _worker_pid(health)
        os.kill(pid, signal.SIGKILL)
        _until(lambda p=pid: not _alive(p), 10, "the worker to die")
    # (a Response with a 4xx/5xx status is falsy, so the body is what is returned)
    body = _until(lambda: (r := health()) is not None and r.status_code == 503 and r.json(), 5,
                  "a 503 from /healthz")
    assert body["status"] == "no_workers" and body["workers"]["alive"] == 0
    assert body["workers"]["expected"] == 1
    # ... and comes back by itself.
    _worker_pid(health)
    assert health().json()["workers"]["restarts"] >= 4
    assert proc.poll() is None, "the server itself must survive its workers"
