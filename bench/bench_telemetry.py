"""Telemetry ingestion throughput: batches of 1,000 events over HTTP to gunicorn, on SQLite and
PostgreSQL.

    .venv/bin/python bench/bench_telemetry.py [--batches 120] [--clients 4] [--databases sqlite,postgresql]

For each database the script starts gunicorn with deploy/gunicorn.conf.py (``registry.wsgi:app``,
default workers and threads) on 127.0.0.1 with a fresh data dir — and, for PostgreSQL, a
scratch database created on postgresql://postgres@127.0.0.1:5432 and dropped afterwards. Then
``--clients`` threads POST pre-encoded bodies of 1,000 distinct, valid events (what a busy
fleet's SDKs send) over keep-alive connections, and the script reports:

* ``events_per_s``: new events stored per second of wall time, all clients together;
* ``resend_events_per_s``: the same batches sent again (every event a duplicate, as after lost
  responses) — the cost of idempotency;
* request latency percentiles, and a check that the table holds exactly the events sent.

It also times the two server-side steps alone, in this process, without HTTP: validating a
batch (``validate_batch``) and inserting it (``Store.insert_telemetry``) on each database.

The load generator runs on the same machine as the server (2 CPUs here), so the figures are a
lower bound for a server with the machine to itself; the load average before each run is
recorded because other work on the machine moves them. Results go to bench/results/telemetry.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import gunicorn as start_web  # noqa: E402 - after the path set-up

PG_ADMIN = os.environ.get("MODELDROP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 1000
DEVICES = ("pixel7", "galaxy-a14", "iphone13", "jetson-nano")


def make_events(n: int, seed: int) -> list[dict]:
    """Realistic events: mostly inferences, some update-lifecycle events, 2,000 devices."""
    rng = np.random.default_rng(seed)
    installs = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(2000)]
    kinds = rng.choice(["inference", "download_started", "download_finished", "install_ok",
                        "crash"], size=n, p=[0.9, 0.03, 0.03, 0.035, 0.005])
    out = []
    for i in range(n):
        device = DEVICES[i % len(DEVICES)]
        event = {"id": str(uuid.UUID(bytes=rng.bytes(16), version=4)), "kind": str(kinds[i]),
                 "install_id": installs[int(rng.integers(len(installs)))],
                 "ts": f"2026-11-27T14:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
                 "model": "digits", "version": 4, "variant": "tflite-int8-dynamic",
                 "experiment": "digits-v4-vs-v3", "arm": "treatment" if i % 2 else "control",
                 "device_model": device, "platform": "ios" if device == "iphone13" else "android"}
        if event["kind"] == "inference":
            event["latency_ms"] = round(float(rng.lognormal(1.6, 0.4)), 3)
            if rng.random() < 0.3:
                event["correct"] = bool(rng.random() < 0.9)
        elif event["kind"].startswith("download"):
            event["bytes"] = 48213
            if event["kind"] == "download_finished":
                event["seconds"] = 1.25
        elif event["kind"] == "crash":
            event["error"] = "SIGABRT in interpreter"
        out.append(event)
    return out


def bodies(batches: int, seed: int) -> list[bytes]:
    events = make_events(batches * BATCH, seed)
    return [json.dumps({"events": events[i:i + BATCH]}).encode()
            for i in range(0, len(events), BATCH)]


# -- the server ---------------------------------------------------------------------------------
@contextmanager
def scratch_postgres() -> Iterator[str]:
    import psycopg

    name = "md_bench_telemetry_" + uuid.uuid4().hex[:8]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def gunicorn(data_dir: Path, database_url: str) -> Iterator[tuple[str, dict]]:
    with start_web(data_dir, MODELDROP_DATABASE_URL=database_url) as base:
        from importlib import util

        spec = util.spec_from_file_location("gconf", ROOT / "deploy" / "gunicorn.conf.py")
        conf = util.module_from_spec(spec)
        spec.loader.exec_module(conf)  # type: ignore[union-attr]
        yield base, {"workers": conf.workers, "worker_class": conf.worker_class,
                     "threads": conf.threads}


# -- the load ---------------------------------------------------------------------------------
def post_all(base: str, payloads: list[bytes], clients: int) -> dict:
    """POST every payload once, ``clients`` at a time; returns throughput and latencies."""
    import requests

    local = threading.local()
    latencies: list[float] = []
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0}
    lock = threading.Lock()

    def send(body: bytes) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        t = time.perf_counter()
        resp = session.post(f"{base}/v1/telemetry", data=body, timeout=120,
                            headers={"Content-Type": "application/json"})
        elapsed = time.perf_counter() - t
        resp.raise_for_status()
        result = resp.json()
        with lock:
            latencies.append(elapsed)
            totals["accepted"] += result["accepted"]
            totals["duplicates"] += result["duplicates"]
            totals["rejected"] += len(result["rejected"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, payloads))
    wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    return {**totals, "batches": len(payloads), "seconds": round(wall, 2),
            "events_per_s": round(len(payloads) * BATCH / wall),
            "request_ms": {"p50": round(ms[len(ms) // 2], 1),
                           "p90": round(ms[int(len(ms) * 0.9)], 1),
                           "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
                           "mean": round(statistics.fmean(ms), 1)}}


def run_database(kind: str, database_url: str, payloads: list[bytes], warmup: list[bytes],
                 clients: int, tmp: Path) -> dict:
    from registry import db
    from registry.store import Store

    data_dir = tmp / f"data-{kind}"
    with gunicorn(data_dir, database_url) as (base, server):
        post_all(base, warmup, clients)  # every worker connected and compiled
        load_before = [round(x, 2) for x in os.getloadavg()]
        first = post_all(base, payloads, clients)
        again = post_all(base, payloads, clients)
    url = database_url.replace("postgresql://", "postgresql+psycopg://") if database_url else \
        f"sqlite:///{data_dir / 'modeldrop.db'}"
    engine = db.make_engine(url)
    stored = Store(engine).count_telemetry()
    engine.dispose()
    expected = (len(payloads) + len(warmup)) * BATCH
    assert first["accepted"] == len(payloads) * BATCH and first["rejected"] == 0, first
    assert again["accepted"] == 0 and again["duplicates"] == len(payloads) * BATCH, again
    assert stored == expected, (stored, expected)
    return {"database": kind, "server": server, "clients": clients,
            "events_per_s": first["events_per_s"], "request_ms": first["request_ms"],
            "seconds": first["seconds"], "events": len(payloads) * BATCH,
            "resend_events_per_s": again["events_per_s"], "resend_request_ms": again["request_ms"],
            "rows_in_table": stored, "load_average_before": load_before}


# -- the server-side steps alone --------------------------------------------------------------------
def components(database_urls: dict[str, str], tmp: Path, rounds: int = 10) -> dict:
    from registry import db
    from registry.store import Store
    from registry.telemetry.ingest import validate_batch

    out: dict = {}
    batches = [{"events": make_events(BATCH, 1000 + i)} for i in range(rounds)]
    t = time.perf_counter()
    validated = [validate_batch(b, BATCH) for b in batches]
    out["validate_ms_per_1000"] = round(1000 * (time.perf_counter() - t) / rounds, 2)
    raw = [json.dumps(b).encode() for b in batches]
    t = time.perf_counter()
    for r in raw:
        json.loads(r)
    out["json_parse_ms_per_1000"] = round(1000 * (time.perf_counter() - t) / rounds, 2)
    for kind, database_url in database_urls.items():
        url = database_url.replace("postgresql://", "postgresql+psycopg://") if database_url else \
            f"sqlite:///{tmp / 'components.db'}"
        engine = db.make_engine(url)
        db.upgrade(engine)
        store = Store(engine)
        store.insert_telemetry(validate_batch({"events": make_events(BATCH, 999)}, BATCH).rows)
        t = time.perf_counter()
        for v in validated:
            assert store.insert_telemetry(v.rows) == BATCH
        out[f"insert_ms_per_1000_{kind}"] = round(1000 * (time.perf_counter() - t) / rounds, 2)
        t = time.perf_counter()
        for v in validated:
            assert store.insert_telemetry(v.rows) == 0
        out[f"insert_duplicates_ms_per_1000_{kind}"] = round(
            1000 * (time.perf_counter() - t) / rounds, 2)
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=120, help="batches of 1,000 per run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "telemetry.json")
    args = parser.parse_args()

    payloads = bodies(args.batches, seed=1)
    warmup = bodies(2 * args.clients, seed=2)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp_name:
        tmp = Path(tmp_name)
        urls: dict[str, str] = {}
        for kind in args.databases.split(","):
            if kind == "sqlite":
                urls[kind] = ""
                results.append(run_database(kind, "", payloads, warmup, args.clients, tmp))
            else:
                with scratch_postgres() as url:
                    results.append(run_database(kind, url, payloads, warmup, args.clients, tmp))
            r = results[-1]
            print(f"{kind:10} {r['events_per_s']:>7} events/s new, {r['resend_events_per_s']:>7} "
                  f"events/s re-sent; request p50 {r['request_ms']['p50']} ms, "
                  f"p99 {r['request_ms']['p99']} ms", flush=True)
        with scratch_postgres() if "postgresql" in args.databases else _none() as pg_url:
            if pg_url:
                urls["postgresql"] = pg_url
            parts = components(urls, tmp)
        print("server-side steps per 1,000 events (ms):", json.dumps(parts), flush=True)
    report = {
        "benchmark": "POST /v1/telemetry, batches of 1,000 valid events, gunicorn on loopback",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "setup": {"batches": args.batches, "events_per_batch": BATCH, "clients": args.clients,
                  "event_mix": "90% inference, 10% download/install/crash; 2,000 install ids",
                  "load_generator": "same machine (requests, pre-encoded bodies, keep-alive)",
                  "config": "deploy/gunicorn.conf.py defaults"},
        "results": results,
        "server_side_steps_ms_per_1000_events": parts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


@contextmanager
def _none() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
