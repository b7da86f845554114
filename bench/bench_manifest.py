"""Manifest throughput under gunicorn, driven by wrk with 10,000 distinct install ids.

    .venv/bin/python bench/bench_manifest.py [--duration 15] [--rounds 2] [--classes sync,gthread]

Builds a data dir with one model (two ready versions of three variants, version 2 at a 50%
staged rollout for Android, so the resolver walks two releases), starts gunicorn with
deploy/gunicorn.conf.py on 127.0.0.1, and runs ``wrk -t2 -c64 --latency`` for a bounded
time with a Lua script that cycles through the install ids (every request is a different
device: a real resolution, signature and ETag each time). Writes
bench/results/manifest.json with requests/s, p50/p90/p99 latency and the ratio to the
bare-Flask reference measured earlier on the development machine (a constant 800 B body under
gunicorn sync workers, 2 cores: ~5,450 req/s, p99 ~20 ms, same wrk settings).

It also measures that bare-Flask reference again with the same gunicorn and wrk settings,
in interleaved rounds (bare, sync, gthread, bare, ...; servers stay up, idle ones cost
nothing), because this machine is shared and its load moves every figure; the ratio to the
same round's baseline (``ratio_vs_bare_flask_same_round``, median over rounds) is the
comparable one. A third reference, the floor app (``FLOOR_APP``, ``--no-floor`` to skip), is a
Flask route under the same gunicorn command that only signs a device-bound document (no
database, log or metrics): a bound for any implementation of the manifest in Flask
here. Figures are medians over the rounds. Each round also records the CPU the
server's processes used per answered request (``cpu_ms_per_request``: user + system time of
the gunicorn master and workers over the run, from /proc; wrk's own is not in it), and
``cpu_ratio_vs_bare_flask_same_round`` is bare Flask's over the server's: the figure the
machine's load moves least, and the req/s ratio two free cores would tend to.

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
import statistics
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import free_port, start_gunicorn, stop_group, wait_http  # noqa: E402 - after the path set-up

BARE_FLASK_REQ_S = 5450  # earlier run: bare Flask, gunicorn sync, 2 cores, wrk -t2 -c64
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


def prepare(data_dir: Path) -> None:
    """A model with two ready versions, published as the job runner does, and releases."""
    from registry.config import Settings
    from registry.delivery import releases
    from registry.services import build_services
    from registry.signing import variant_target_path

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

# The least a device-bound signed manifest can cost in Flask: no database, no resolution, no
# log line, no metrics, no ETag; only what every answer needs however it is computed (read
# the install id, stamp it and the issue and expiry times into a ~1 KB document shaped like
# the real one, encode it canonically with json's C encoder, sign it with Ed25519, write the
# body). Measured beside bare Flask it bounds the ratio any ModelDrop manifest could reach.
FLOOR_APP = """
import json, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, request
app = Flask(__name__)
KEY = Ed25519PrivateKey.generate()
KEYID = "f" * 64
CANONICAL = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))
SHA = "a" * 64
TEMPLATE = {"schema": 1, "model": "digits", "channel": "production", "release_counter": 3,
            "version": 2, "variant": "tflite-int8-dynamic", "format": "tflite",
            "artifact": {"target": "models/digits/2/tflite-int8-dynamic." + SHA + ".tflite",
                         "length": 60000, "sha256": SHA,
                         "urls": ["http://127.0.0.1:8080/v1/artifacts/" + SHA]},
            "experiment": None, "arm": None, "delta": None,
            "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [1, 64]}],
                          "outputs": [{"name": "probabilities", "dtype": "float32",
                                       "shape": [1, 10]}]}}
@app.get("/v1/manifest")
def floor():
    now = int(time.time())
    doc = dict(TEMPLATE, install_id=request.args.get("install_id", ""),
               issued_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
               expires_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 86400)))
    payload = CANONICAL.encode(doc).encode()
    doc["signatures"] = [{"keyid": KEYID, "sig": KEY.sign(payload).hex()}]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")), 200, {"Content-Type": "application/json"}
@app.get("/healthz")
def healthz():
    return "ok"
"""
APPS = {"bare": ("bare Flask, constant 800 B", BARE_APP),
        "floor": ("floor: signed device-bound constant (Flask)", FLOOR_APP)}


class Server:
    """One gunicorn on 127.0.0.1 for the whole bench (its own process group)."""

    def __init__(self, data_dir: Path, worker_class: str, workers: int, bare: str | None,
                 env: dict[str, str] | None = None, code: Path | None = None,
                 label: str = "") -> None:
        """``bare``: one of APPS (a reference app, not ModelDrop), or None. ``code``: run the
        ModelDrop of that checkout (``--before``), not this one."""
        self.name = f"{bare}-{worker_class}" if bare else worker_class
        if label:
            self.name += "-" + label
        self.label = label
        self.worker_class, self.workers, self.bare = worker_class, workers, bare
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, MODELDROP_DATA_DIR=str(data_dir),
                   MODELDROP_BIND=f"127.0.0.1:{port}", MODELDROP_WEB_WORKERS=str(workers),
                   MODELDROP_WEB_WORKER_CLASS=worker_class, PYTHONPATH=str(ROOT),
                   **(env or {}))
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        if bare:
            (data_dir / f"{bare}_app.py").write_text(APPS[bare][1])
            env["PYTHONPATH"] = str(data_dir)
            command = [gunicorn, "-b", f"127.0.0.1:{port}", "-w", str(workers), "-k",
                       worker_class, "--threads", "8" if worker_class == "gthread" else "1",
                       f"{bare}_app:app"]
        else:
            root = code or ROOT
            env["PYTHONPATH"] = str(root)
            command = [gunicorn, "-c", str(root / "deploy" / "gunicorn.conf.py"),
                       "registry.wsgi:app"]
        self.log = open(data_dir / f"gunicorn-{self.name}.log", "wb")
        self.proc = start_gunicorn(env, self.log, command, cwd=code or ROOT)

    def wait_ready(self) -> None:
        wait_http(f"{self.base}/healthz", proc=self.proc, log=self.log.name)
        if not self.bare:
            url = self.base + QUERY + "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"
            with urllib.request.urlopen(url) as resp:
                sample = json.loads(resp.read())
                assert sample["schema"] == 1 and sample["signatures"], sample

    def stop(self) -> None:
        stop_group(self.proc)
        self.log.close()


def measure(wrk: str, server: Server, script: Path, duration: int, connections: int) -> dict:
    """Warm up for 3 s, then one bounded wrk run; returns the figures."""
    subprocess.run([wrk, "-t2", f"-c{connections}", "-d3s", "-s", str(script), server.base],
                   check=True, capture_output=True)
    load_before = os.getloadavg()
    cpu_before = session_cpu_seconds(server.proc.pid)
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s",
                          str(script), server.base], check=True, capture_output=True,
                         text=True).stdout
    cpu = session_cpu_seconds(server.proc.pid) - cpu_before
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {"requests_per_s": round(raw["requests"] / (raw["duration_us"] / 1e6)),
            "requests": raw["requests"],
            # CPU the server's processes used per answered request (wrk's own not included):
            # the figure the machine's load moves least
            "cpu_ms_per_request": round(cpu * 1000 / max(1, raw["requests"]), 3),
            "p50_ms": round(raw["p50_us"] / 1000, 2), "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 1),
            "non_2xx_3xx": raw["non_2xx_3xx"], "socket_errors": raw["socket_errors"],
            "load_average_before": [round(x, 2) for x in load_before]}


def stamp_schema_for(code: Path, database: Path) -> None:
    """Let an older checkout (``--before``) open a database this checkout migrated: record
    that checkout's newest migration as applied. Later migrations' additions (columns with
    defaults, indexes) are left in place; the older code does not use them."""
    import re
    import sqlite3

    revisions, parents = set(), set()
    for path in (code / "registry" / "migrations" / "versions").glob("*.py"):
        source = path.read_text()
        found = re.search(r'^revision = "([^"]+)"', source, re.M)
        parent = re.search(r'^down_revision = "([^"]+)"', source, re.M)
        if found:
            revisions.add(found.group(1))
        if parent:
            parents.add(parent.group(1))
    [head] = revisions - parents
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (head,))


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of every live process of session ``sid`` (the gunicorn
    master and its workers; reaped children's time is in the master's cutime/cstime)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # state ppid pgrp session ... utime(11) stime cutime cstime
            total += sum(int(x) for x in fields[11:15])
    return total / ticks


def summarise(server: Server, runs: list[dict], bare_runs: list[dict]) -> dict:
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    out = {"app": APPS[server.bare][0] if server.bare
           else "ModelDrop manifest" + (f" ({server.label})" if server.label else ""),
           "worker_class": server.worker_class, "workers": server.workers,
           "threads_per_worker": 8 if server.worker_class == "gthread" else 1,
           "requests_per_s": round(median("requests_per_s")),
           "p50_ms": round(median("p50_ms"), 2), "p90_ms": round(median("p90_ms"), 2),
           "p99_ms": round(median("p99_ms"), 2),
           "cpu_ms_per_request": round(median("cpu_ms_per_request"), 3),
           "ratio_vs_field_notes_bare_flask": round(median("requests_per_s") / BARE_FLASK_REQ_S,
                                                    3),
           "rounds": runs}
    if server.bare != "bare" and bare_runs:
        # the same round's baseline: both ran within a minute, under the same machine load
        out["ratio_vs_bare_flask_same_round"] = round(statistics.median(
            r["requests_per_s"] / b["requests_per_s"] for r, b in zip(runs, bare_runs)), 3)
        # bare Flask's CPU per request over this server's: the req/s ratio two free cores
        # would allow if CPU were all that bounds them
        out["cpu_ratio_vs_bare_flask_same_round"] = round(statistics.median(
            b["cpu_ms_per_request"] / max(r["cpu_ms_per_request"], 1e-9)
            for r, b in zip(runs, bare_runs)), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (bare, sync, gthread, ...) per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--classes", default="sync,gthread", help="gunicorn worker classes")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--ids", type=int, default=10_000, help="distinct install ids")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip measuring the bare-Flask reference on this machine")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor app (a signed device-bound constant, FLOOR_APP)")
    parser.add_argument("--before", default="",
                        help="a git revision: also measure the ModelDrop of that commit (git archive "
                             "into a temporary directory), interleaved in the same rounds")
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
        kinds = ([] if args.no_baseline else [("sync", "bare", None)]) + \
            ([] if args.no_floor else [("sync", "floor", None)]) + \
            [(c, None, None) for c in args.classes.split(",")]
        if args.before:
            code = tmp_path / "before"
            code.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
            kinds += [(c, None, code) for c in args.classes.split(",")]
        servers: list[Server] = []
        try:
            for n, (worker_class, bare, code) in enumerate(kinds):  # one at a time: masters bootstrap in turn
                # each server on a copy of the prepared data, so no server finds the served
                # rows another one wrote (a conflicting insert is cheaper than a new row)
                own = tmp_path / f"data-{n}"
                shutil.copytree(data_dir, own)
                if code is not None:
                    stamp_schema_for(code, own / "modeldrop.db")
                servers.append(Server(own, worker_class, args.workers, bare, code=code,
                                      label=f"before {args.before}" if code else ""))
                servers[-1].wait_ready()
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for round_no in range(args.rounds):
                for server in servers:  # interleaved, so load drift hits every server alike
                    result = measure(wrk, server, script, args.duration, args.connections)
                    runs[server.name].append(result)
                    print(f"round {round_no + 1} {server.name:10} {result['requests_per_s']:>6} "
                          f"req/s  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
                          f"CPU {result['cpu_ms_per_request']} ms/req  "
                          f"load {result['load_average_before'][0]}", flush=True)
        finally:
            for server in servers:
                server.stop()
    bare_runs = runs.get("bare-sync", [])
    summaries = [summarise(s, runs[s.name], bare_runs) for s in servers]
    for summary in summaries:
        line = (f"{summary['app']:28} {summary['worker_class']:8} "
                f"{summary['requests_per_s']:>6} req/s  p50 {summary['p50_ms']} ms  "
                f"p99 {summary['p99_ms']} ms  CPU {summary['cpu_ms_per_request']} ms/req")
        if "ratio_vs_bare_flask_same_round" in summary:
            line += (f"  {summary['ratio_vs_bare_flask_same_round']:.2f}x bare Flask req/s, "
                     f"{summary['cpu_ratio_vs_bare_flask_same_round']:.2f}x by CPU (same "
                     f"rounds), {summary['ratio_vs_field_notes_bare_flask']:.2f}x the "
                     "earlier bare-Flask reference")
        print(line)
    report = {
        "benchmark": "GET /v1/manifest, signed, 10k distinct install ids",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "note": "shared with other sessions; see load_average_before per round"},
        "setup": {"wrk": f"-t2 -c{args.connections} -d{args.duration}s --latency",
                  "rounds": args.rounds, "install_ids": args.ids, "database": "sqlite",
                  "before": args.before or None,
                  "blob_backend": "local", "gunicorn_workers": args.workers,
                  "releases": "v1 at 100%, v2 at 50% for android (two releases walked)",
                  "response": "200 signed manifest (no If-None-Match), ~1 KB"},
        "reference": {"bare_flask_gunicorn_sync_req_s": BARE_FLASK_REQ_S,
                      "bare_flask_p99_ms": BARE_FLASK_P99_MS,
                      "source": "earlier bare-Flask run on the development machine"},
        "results": summaries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
