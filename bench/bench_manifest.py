"""Manifest throughput under gunicorn, driven by wrk with 10,000 distinct install ids.

    .venv/bin/python bench/bench_manifest.py [--duration 15] [--classes sync,gthread]

Builds a data dir with one model (two ready versions of three variants, version 2 at a 50%
staged rollout for Android, so the resolver walks two releases), starts gunicorn with
deploy/gunicorn.conf.py on 127.0.0.1, and runs ``wrk -t2 -c64 --latency`` for a bounded
time with a Lua script that cycles through the install ids (every request is a different
device: a real resolution, signature and ETag each time). Writes
bench/results/manifest.json with requests/s, p50/p90/p99 latency and the ratio to the
bare-Flask figure in FIELD-NOTES (a constant 800 B body under gunicorn sync workers on this
machine: ~5,450 req/s, p99 ~20 ms, same wrk settings).

It also measures that bare-Flask reference again, now, with the same gunicorn and wrk
settings (``baseline_measured_now``), because this machine is shared and its load moves both
figures; the ratio to the fresh baseline is the comparable one.

Installs wrk with apt-get when it is missing. Everything listens on 127.0.0.1 and is
stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BARE_FLASK_REQ_S = 5450  # FIELD-NOTES: bare Flask, gunicorn sync, 2 cores, wrk -t2 -c64
BARE_FLASK_P99_MS = 20
QUERY = ("/v1/manifest?model=digits&channel=production&platform=android&os_version=14"
         "&device_model=pixel7&app_version=3.2.0&region=DE&install_id=")

LUA = r"""
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
local counter = 1
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 5003)
  table.insert(threads, thread)
end

function init(args)
  counter = tonumber(wrk.thread:get("offset")) or 0
end

function request()
  counter = counter + 1
  return wrk.format("GET", "%(query)s" .. ids[(counter %% #ids) + 1])
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT {\"requests\": %%d, \"duration_us\": %%d, \"p50_us\": %%d, \"p90_us\": %%d, " ..
    "\"p99_us\": %%d, \"max_us\": %%d, \"non_2xx_3xx\": %%d, \"socket_errors\": %%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout))
end
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk with apt-get ...", flush=True)
    if subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True).returncode:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(data_dir: Path) -> None:
    """A model with two ready versions, published as the job runner does, and releases."""
    from registry.app import build_services
    from registry.config import Settings
    from registry.delivery import releases
    from registry.jobs.runner import variant_target_path

    services = build_services(Settings.load({"data_dir": data_dir}))
    variants = {"tflite-fp32": ("tflite", "tflite", 200_000),
                "tflite-int8-dynamic": ("tflite", "tflite", 60_000),
                "coreml-fp16": ("coreml", "mlpackage.zip", 100_000)}
    for number in (1, 2):
        source = services.blobs.put_bytes(f"bench source {number} {uuid.uuid4()}".encode())
        version, _ = services.store.create_version(
            "digits", sha256=source.sha256, size=source.size, source_format="keras",
            filename="model.keras", metadata={"framework": "keras"}, eval_sha256=None,
            actor="bench")
        version_id = services.store.version_id("digits", version.version)
        specs = []
        for name, (fmt, ext, size) in variants.items():
            info = services.blobs.put_bytes(random.Random(f"{name}{number}").randbytes(size))
            specs.append((name, fmt, info, variant_target_path("digits", number, name, ext)))
        services.signing.add_targets([
            services.target_spec(path, info.sha256, info.size, model="digits", version=number,
                                 variant=name, format=fmt, kind="variant")
            for name, fmt, info, path in specs])
        for name, fmt, info, path in specs:
            services.store.record_variant(
                version_id, name=name, format=fmt, sha256=info.sha256, size=info.size,
                target_path=path, fidelity={"top1_agreement": 0.99}, reference_latency_ms=None,
                servable=True, reason=None, error=None)
        services.store.set_version_status(version_id, "ready")
    releases.promote(services, "digits", 1, channel="production", actor="bench")
    releases.promote(services, "digits", 2, channel="production", actor="bench",
                     rollout_percent=50, targeting={"platforms": ["android"]})
    from registry.delivery.deltas import wait_for_deltas

    wait_for_deltas(120)
    services.store.engine.dispose()


BARE_APP = """
from flask import Flask
app = Flask(__name__)
BODY = b"x" * 800
@app.get("/v1/manifest")
def constant():
    return BODY, 200, {"Content-Type": "application/json"}
@app.get("/healthz")
def healthz():
    return "ok"
"""


def run_scenario(wrk: str, data_dir: Path, script: Path, worker_class: str, workers: int,
                 duration: int, connections: int, bare: bool = False) -> dict:
    """One gunicorn run; ``bare`` serves a constant 800 B Flask route instead (baseline)."""
    port = free_port()
    env = dict(os.environ, MODELDROP_DATA_DIR=str(data_dir), MODELDROP_BIND=f"127.0.0.1:{port}",
               MODELDROP_WEB_WORKERS=str(workers), MODELDROP_WEB_WORKER_CLASS=worker_class,
               PYTHONPATH=str(ROOT))
    if bare:
        (data_dir / "bare_app.py").write_text(BARE_APP)
        env["PYTHONPATH"] = str(data_dir)
        gunicorn = [str(Path(sys.executable).with_name("gunicorn")), "-b", f"127.0.0.1:{port}",
                    "-w", str(workers), "-k", worker_class, "--threads",
                    "8" if worker_class == "gthread" else "1", "bare_app:app"]
    else:
        gunicorn = [str(Path(sys.executable).with_name("gunicorn")), "-c",
                    str(ROOT / "deploy" / "gunicorn.conf.py"), "registry.wsgi:app"]
    log = open(data_dir / f"gunicorn-{worker_class}{'-bare' if bare else ''}.log", "wb")
    proc = subprocess.Popen(gunicorn, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"gunicorn did not start; see {log.name}")
            time.sleep(0.3)
        if not bare:
            with urllib.request.urlopen(base + QUERY + "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c") as r:
                sample = json.loads(r.read())
                assert sample["schema"] == 1 and sample["signatures"], sample
        # warm every worker's caches, then measure
        subprocess.run([wrk, "-t2", f"-c{connections}", "-d3s", "-s", str(script), base],
                       check=True, capture_output=True)
        load_before = os.getloadavg()
        out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                              "-s", str(script), base], check=True, capture_output=True,
                             text=True).stdout
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    rps = raw["requests"] / (raw["duration_us"] / 1e6)
    return {"app": "bare Flask, constant 800 B" if bare else "ModelDrop manifest",
            "worker_class": worker_class, "workers": workers,
            "threads_per_worker": 8 if worker_class == "gthread" else 1,
            "requests": raw["requests"], "requests_per_s": round(rps),
            "p50_ms": round(raw["p50_us"] / 1000, 2), "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 1),
            "non_2xx_3xx": raw["non_2xx_3xx"], "socket_errors": raw["socket_errors"],
            "ratio_vs_bare_flask": round(rps / BARE_FLASK_REQ_S, 3),
            "load_average_before": [round(x, 2) for x in load_before],
            "wrk_output": out.strip().splitlines()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--classes", default="sync,gthread", help="gunicorn worker classes")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--ids", type=int, default=10_000, help="distinct install ids")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip measuring the bare-Flask reference on this machine")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "manifest.json")
    args = parser.parse_args()

    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        tmp_path = Path(tmp)
        data_dir = tmp_path / "data"
        prepare(data_dir)
        rng = random.Random(42)
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.ids)]
        (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
        script = tmp_path / "manifest.lua"
        script.write_text(LUA % {"ids": tmp_path / "ids.txt", "query": QUERY})
        scenarios = []
        baseline = None
        if not args.no_baseline:  # the bare-Flask reference, measured now on this machine
            baseline = run_scenario(wrk, data_dir, script, "sync", args.workers, args.duration,
                                    args.connections, bare=True)
            print(f"{'bare':8} {baseline['requests_per_s']:>6} req/s  p50 "
                  f"{baseline['p50_ms']} ms  p99 {baseline['p99_ms']} ms", flush=True)
        for worker_class in args.classes.split(","):
            result = run_scenario(wrk, data_dir, script, worker_class, args.workers,
                                  args.duration, args.connections)
            if baseline is not None:
                result["ratio_vs_bare_flask_measured_now"] = round(
                    result["requests_per_s"] / baseline["requests_per_s"], 3)
            print(f"{worker_class:8} {result['requests_per_s']:>6} req/s  p50 "
                  f"{result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
                  f"({result['ratio_vs_bare_flask']:.2f}x the FIELD-NOTES bare Flask"
                  + (f", {result['ratio_vs_bare_flask_measured_now']:.2f}x bare Flask now"
                     if baseline else "") + ")", flush=True)
            scenarios.append(result)
    report = {
        "benchmark": "GET /v1/manifest, signed, 10k distinct install ids",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "setup": {"wrk": f"-t2 -c{args.connections} -d{args.duration}s --latency",
                  "install_ids": args.ids, "database": "sqlite", "blob_backend": "local",
                  "releases": "v1 at 100%, v2 at 50% for android (two releases walked)",
                  "response": "200 signed manifest (no If-None-Match), ~800 B"},
        "reference": {"bare_flask_gunicorn_sync_req_s": BARE_FLASK_REQ_S,
                      "bare_flask_p99_ms": BARE_FLASK_P99_MS, "source": "FIELD-NOTES.md"},
        "baseline_measured_now": baseline,
        "scenarios": scenarios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
