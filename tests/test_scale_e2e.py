"""The scale mode as a whole, on real parts: a private PostgreSQL cluster, Redis or RabbitMQ,
SeaweedFS for S3, two gunicorn API processes, two Celery workers and one beat, all started with
the commands of docs/deployment.md, and then broken the way machines break.

- push through API 1, convert, promote through API 2, fetch with the SDK through either;
- SIGKILL the worker (its whole process group) that runs the conversion: the job completes
  on the other worker, with one object per blob in the bucket, one TUF target per artifact
  and one row per variant;
- SIGKILL an API process mid-upload: no version row and no blob is left behind;
- stop PostgreSQL during manifest traffic: every answer is a manifest or a clean 503
  problem+json (``database_unavailable``), and once it is back the same processes answer
  200 again by themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

from tests.scale_cluster import (
    REDIS_DB,
    Cluster,
    broker,
    cmdline,
    descendants,
    postgres_available,
    private_postgres,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.scale,
              pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL 15 binaries and root")]

MODEL, CHANNEL = "digits", "production"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from tests.makers_keras import make_digits_model

    return make_digits_model(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def cluster(request, tmp_path_factory, seaweedfs):
    from tests.seaweed import ACCESS_KEY, SECRET_KEY

    root = tmp_path_factory.mktemp(f"scale-{request.param}")
    with private_postgres() as pg, broker(request.param) as broker_url:
        if request.param == "redis":
            import redis

            redis.Redis.from_url(broker_url).flushdb()  # this test's own db: no stale messages
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDROP_")}
        env.update(MODELDROP_DATABASE_URL=pg.url, MODELDROP_BLOB_BACKEND="s3",
                   MODELDROP_S3_ENDPOINT_URL=seaweedfs, MODELDROP_S3_BUCKET=f"scale-{uuid.uuid4().hex[:10]}",
                   MODELDROP_S3_ACCESS_KEY=ACCESS_KEY, MODELDROP_S3_SECRET_KEY=SECRET_KEY,
                   MODELDROP_JOB_BACKEND="celery", MODELDROP_BROKER_URL=broker_url,
                   MODELDROP_KEYS_DIR=str(root / "keys"), MODELDROP_CONVERT_SANDBOX="required",
                   MODELDROP_LATENCY_RUNS="3", MODELDROP_JOB_STALE_AFTER="8",
                   MODELDROP_REFRESH_INTERVAL="4", MODELDROP_CELERY_VISIBILITY_TIMEOUT="20",
                   # as docs/deployment.md says: the web processes share their rate-limit counters
                   MODELDROP_RATE_LIMIT_STORAGE_URL=f"redis://127.0.0.1:6379/{REDIS_DB}")
        c = Cluster(root, env)
        c.pg = pg
        try:
            c.start_api("api1")  # first: it migrates the database and creates the keys
            c.start_api("api2")
            c.start_worker("worker1")
            c.start_worker("worker2")
            c.start_beat()
            c.token = (root / "api1" / "admin-token").read_text().strip()
            wait_for(lambda: (requests.get(c.url("api2") + "/healthz", timeout=5).json()["workers"] or {})
                     .get("alive") == 2, 60, "both workers to answer a ping", step=1)
            yield c
        finally:
            c.stop()


def _auth(c: Cluster) -> dict:
    return {"Authorization": f"Bearer {c.token}"}


def _bucket_keys(c: Cluster) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=c.env["MODELDROP_S3_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=c.env["MODELDROP_S3_ACCESS_KEY"],
                      aws_secret_access_key=c.env["MODELDROP_S3_SECRET_KEY"])
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=c.env["MODELDROP_S3_BUCKET"]):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _targets(url: str) -> dict:
    get = lambda name: requests.get(f"{url}/tuf/metadata/{name}", timeout=10).json()["signed"]  # noqa: E731
    snapshot = get("timestamp.json")["meta"]["snapshot.json"]["version"]
    targets = get(f"{snapshot}.snapshot.json")["meta"]["targets.json"]["version"]
    return get(f"{targets}.targets.json")["targets"]


def _sql(c: Cluster, query: str) -> list:
    from sqlalchemy import create_engine, text

    engine = create_engine(c.pg.url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(query)))
    finally:
        engine.dispose()


def _converting_worker(c: Cluster, job_url: str) -> str | None:
    """The worker running the job's converter (not the sandbox probe a worker runs at its
    first task, ``registry.convert.probe``)."""
    if requests.get(job_url, headers=_auth(c), timeout=10).json()["state"] != "running":
        return None
    for name in ("worker1", "worker2"):
        proc = c.procs[name]
        if proc.popen.poll() is None and any("registry.convert.confined" in cmdline(p)
                                             for p in descendants(proc.pid)):
            return name
    return None


def test_push_convert_kill_worker_promote_fetch(cluster, digits, tmp_path):
    from client_sdk import DeviceInfo, ModelClient
    from tests.sdk_origin import fast_config

    c = cluster
    keras_path, eval_npz = digits
    meta = json.dumps({"variants": ["tflite-fp32"], "labels": [str(i) for i in range(10)]})
    with open(keras_path, "rb") as model, open(eval_npz, "rb") as ev:
        created = requests.post(f"{c.url('api1')}/v1/models/{MODEL}/versions", headers=_auth(c), timeout=60,
                                files={"file": ("m.keras", model), "eval": ("eval.npz", ev)},
                                data={"metadata": meta})
    assert created.status_code == 201, created.text
    job_url = f"{c.url('api2')}/v1/jobs/{created.json()['job']}"

    victim = wait_for(lambda: _converting_worker(c, job_url), 90, "a worker to start converting")
    c.procs[victim].kill()  # SIGKILL to the worker's whole process group, mid-conversion
    survivor = "worker2" if victim == "worker1" else "worker1"

    job = wait_for(lambda: (j := requests.get(job_url, headers=_auth(c), timeout=10).json())["state"]
                   in ("done", "failed") and j, 180, "the job to finish on the other worker", step=1)
    assert job["state"] == "done", (job, c.logs())
    assert job["attempts"] == 2, job  # the killed run, then the one on the survivor
    assert c.procs[victim].popen.poll() is not None and c.procs[survivor].popen.poll() is None

    version = requests.get(f"{c.url('api1')}/v1/models/{MODEL}/versions/1", headers=_auth(c), timeout=10).json()
    assert version["status"] == "ready", version
    variant = version["variants"][0]
    assert [v["name"] for v in version["variants"]] == ["tflite-fp32"]
    rows = _sql(c, "SELECT version_id, name, count(*) FROM variants GROUP BY version_id, name")
    assert [r[2] for r in rows] == [1], rows  # every variant row written once

    released = requests.post(f"{c.url('api2')}/v1/models/{MODEL}/releases", headers=_auth(c), timeout=30,
                             json={"version": 1, "channel": CHANNEL})
    assert released.status_code == 201, released.text

    keys = _bucket_keys(c)
    assert len(keys) == len(set(keys))
    expected = {version["source"]["sha256"], variant["sha256"]}
    if version["source"].get("eval_sha256"):
        expected.add(version["source"]["eval_sha256"])
    # The release re-published the channel's signed ruleset, a blob listed only as its TUF target.
    rulesets = {path: t["hashes"]["sha256"] for path, t in _targets(c.url("api1")).items()
                if path.startswith("rulesets/")}
    assert list(rulesets) == [f"rulesets/{MODEL}/{CHANNEL}.json"], rulesets
    expected |= set(rulesets.values())
    assert {k.rsplit("/", 1)[-1] for k in keys} == expected, keys  # no blob of the killed run
    for api in ("api1", "api2"):
        targets = _targets(c.url(api))
        assert sum(1 for t in targets.values() if t["hashes"]["sha256"] == variant["sha256"]) == 1, targets

    root = requests.get(c.url("api1") + "/v1/trusted-root", timeout=10).content
    device = DeviceInfo(platform="android", os_version="14", device_model="pixel7", app_version="2.3.0")
    for api in ("api1", "api2"):
        client = ModelClient(c.url(api), tmp_path / f"cache-{api}", trusted_root=root, device=device,
                             config=fast_config())
        got = client.get_model(MODEL, CHANNEL)
        assert got.sha256 == variant["sha256"]
        assert hashlib.sha256(got.path.read_bytes()).hexdigest() == variant["sha256"]

    # /metrics under gunicorn sums both web workers (multiprocess mode): 20 fresh connections
    # spread over them are all counted in one scrape of either.
    def scrape() -> dict[str, float]:
        text = requests.get(c.url("api2") + "/metrics", headers=_auth(c), timeout=10).text
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines()
                                         if line and not line.startswith("#"))}

    key = 'modeldrop_http_requests_total{method="GET",route="/v1/trusted-root",status="200"}'
    before = scrape().get(key, 0.0)
    for _ in range(20):
        assert requests.get(c.url("api2") + "/v1/trusted-root", timeout=10).status_code == 200
    samples = scrape()
    assert samples[key] - before == 20
    assert samples['modeldrop_jobs{kind="convert",state="done"}'] == 1
    assert samples['modeldrop_http_requests_total{method="POST",route="/v1/models/<name>/releases",status="201"}'] == 1
    offers = 'modeldrop_manifest_decisions_total{arm="",channel="production",decision="offer",model="digits"}'
    assert samples[offers] >= 1  # the SDK's manifest through api2


def test_api_killed_mid_upload_leaves_no_orphan(cluster):
    c = cluster
    before_keys = sorted(_bucket_keys(c))
    before_rows = _sql(c, "SELECT count(*) FROM versions")[0][0]
    sent = threading.Event()
    outcome: dict = {}

    def body():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.keras\"\r\n\r\n"
        for i in range(400):  # 400 MiB, far more than is sent before the kill
            yield os.urandom(1 << 20)
            if i == 8:
                sent.set()
            time.sleep(0.05)

    def upload():
        try:
            outcome["resp"] = requests.post(
                f"{c.url('api1')}/v1/models/orphan/versions", data=body(), timeout=60,
                headers={**_auth(c), "Content-Type": "multipart/form-data; boundary=x"})
        except requests.RequestException as e:
            outcome["error"] = e

    t = threading.Thread(target=upload, daemon=True)
    t.start()
    assert sent.wait(60)
    staging = c.root / "api1" / "staging"
    staged = wait_for(lambda: list(staging.glob("upload-*")) if staging.is_dir() else None, 10,
                      "the upload to be staged")
    c.procs["api1"].kill()  # the gunicorn master and its workers, mid-upload
    t.join(30)
    assert "error" in outcome, outcome  # the client saw the connection drop, not an answer
    # Nothing committed: no version row, no object in the bucket.
    assert _sql(c, "SELECT count(*) FROM versions")[0][0] == before_rows
    assert sorted(_bucket_keys(c)) == before_keys
    assert requests.get(f"{c.url('api2')}/v1/models/orphan", headers=_auth(c), timeout=10).status_code == 404
    # The same command brings the process back; the partial file is a local leftover of that
    # machine only (swept by age, MODELDROP_STAGING_MAX_AGE).
    c.start_api("api1")
    assert requests.get(f"{c.url('api1')}/v1/models/orphan", headers=_auth(c), timeout=10).status_code == 404
    assert staged  # it was really mid-upload when killed


def test_postgres_restart_under_manifest_traffic(cluster):
    c = cluster
    statuses: Counter = Counter()
    bad: list = []
    stop = threading.Event()

    def poll(api: str, n: int):
        i = 0
        while not stop.is_set():
            i += 1
            params = {"model": MODEL, "channel": CHANNEL, "install_id": f"device-{n:04d}-{i % 50:04d}",
                      "platform": "android"}
            try:
                r = requests.get(f"{c.url(api)}/v1/manifest", params=params, timeout=10)
            except requests.RequestException as e:
                bad.append(("exception", api, repr(e)))
                continue
            statuses[r.status_code] += 1
            if r.status_code == 200:
                continue
            if r.status_code == 503 and r.headers.get("Content-Type", "").startswith(PROBLEM) \
                    and r.json().get("code") == "database_unavailable" and r.headers.get("Retry-After"):
                time.sleep(0.05)
                continue
            bad.append((r.status_code, api, r.text[:300]))

    threads = [threading.Thread(target=poll, args=(api, n), daemon=True)
               for n, api in enumerate(["api1", "api2", "api1", "api2"])]
    for t in threads:
        t.start()
    wait_for(lambda: statuses[200] >= 20, 30, "manifest traffic")
    c.pg.stop()
    wait_for(lambda: statuses[503] >= 8, 30, "clean 503 answers while the database is down")
    c.pg.start()
    ok_before = statuses[200]
    wait_for(lambda: statuses[200] >= ok_before + 40, 30, "manifests again after the restart")
    stop.set()
    for t in threads:
        t.join(15)
    assert not bad, bad[:5]
    assert set(statuses) <= {200, 503}, statuses
