"""Manifest traffic at a constant 80 % of the measured peak while real conversions run.

    .venv/bin/python bench/bench_load.py [--duration 60] [--fraction 0.8] [--models 3]

What it does, all on 127.0.0.1 and stopped at the end (it stops by itself: every wait has a
bound):

1. Builds a data dir with a released model (``bench_manifest.prepare``: two ready versions,
   the second at a 50 % staged rollout, so each manifest walks two releases) and trains
   ``--models`` small digits classifiers with ``modeldrop example digits`` (different seeds,
   so different bytes), before any server runs.
2. Starts the web tier and the conversion workers as docs/deployment.md says: ``gunicorn -c
   deploy/gunicorn.conf.py registry.wsgi:app`` plus ``--conversion-workers`` ``modeldrop
   worker`` processes on the same data dir (``--server serve`` runs ``modeldrop serve``
   instead: Werkzeug plus its supervised in-process workers).
3. Measures the manifest peak with wrk, unpaced (``-t2 -c64``, 10,000 distinct install ids,
   as bench/bench_manifest.py), with no conversion running.
4. Runs wrk for ``--duration`` seconds at ``--fraction`` of that peak at a *constant rate*:
   the Lua script's ``delay()`` hands every request the next slot of a fixed schedule (the
   wrk2 idea; wrk2 itself is not packaged), so the offered rate does not fall when the
   server slows down as long as a connection is free. A request that went out more than
   10 ms after its slot is counted as ``late_sends`` (all connections were busy). Two or
   more seconds in, the models are pushed with ``modeldrop push`` (the CLI, a subprocess)
   and converted by the workers during the load.
5. Counts every response by status (``response()`` in Lua): anything but 2xx and 304 is an
   error, and so is every connect, read, write error or timeout (``--timeout`` 5 s). Latency
   percentiles are wrk's (from the moment a request was written).

Writes bench/results/load.json: the peak, the target and achieved rate, errors by kind,
p50/p90/p99/max, how long conversions overlapped the load window, each conversion's state
and wall time, and the load average before, during (every 5 s) and after: the machine is
shared, and the load average says what else ran.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import RESULTS, free_port, start_gunicorn, stop_group, wait_http  # noqa: E402
from bench.bench_manifest import QUERY, ensure_wrk, prepare  # noqa: E402

MODELDROP = str(Path(sys.executable).with_name("modeldrop"))

# One script for both runs: RATE_PER_THREAD 0 means unpaced (the peak); otherwise delay()
# gives each request the next slot of a fixed schedule, so the offered rate stays constant.
LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
struct md_timeval { long tv_sec; long tv_usec; };
int gettimeofday(struct md_timeval *tv, void *tz);
]]
local tv = ffi.new("struct md_timeval")
local function now_ms()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000 + tonumber(tv.tv_usec) / 1000
end

local RATE_PER_THREAD = %(rate_per_thread)s
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
local threads = {}

function setup(thread)
  thread:set("offset", #threads * 5003)
  table.insert(threads, thread)
end

function init(args)
  counter = tonumber(wrk.thread:get("offset")) or 0
  codes = {}
  late_sends = 0
  slots = 0
  started = nil
end

function request()
  counter = counter + 1
  return wrk.format("GET", "%(query)s" .. ids[(counter %% #ids) + 1])
end

if RATE_PER_THREAD > 0 then
  local interval = 1000 / RATE_PER_THREAD
  function delay()
    local now = now_ms()
    if started == nil then started = now end
    slots = slots + 1
    local wait = started + slots * interval - now
    if wait < -10 then late_sends = late_sends + 1 end
    if wait <= 0 then return 0 end
    return math.floor(wait)
  end
end

function response(status, headers, body)
  local key = tostring(status)
  codes[key] = (codes[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged, late = {}, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("codes")) do merged[code] = (merged[code] or 0) + n end
    late = late + thread:get("late_sends")
  end
  local parts = {}
  for code, n in pairs(merged) do parts[#parts + 1] = string.format("\"%%s\": %%d", code, n) end
  io.write(string.format(
    "RESULT {\"requests\": %%d, \"duration_us\": %%d, \"p50_us\": %%d, \"p90_us\": %%d, " ..
    "\"p99_us\": %%d, \"max_us\": %%d, \"connect\": %%d, \"read\": %%d, \"write\": %%d, " ..
    "\"timeout\": %%d, \"late_sends\": %%d, \"codes\": {%%s}}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, late, table.concat(parts, ", ")))
end
"""


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_script(directory: Path, ids_file: Path, rate: float, threads: int) -> Path:
    path = directory / (f"paced-{round(rate)}.lua" if rate else "peak.lua")
    path.write_text(LUA % {"rate_per_thread": f"{rate / threads:.3f}" if rate else "0",
                           "ids": ids_file, "query": QUERY})
    return path


def run_wrk(wrk: str, base: str, script: Path, seconds: int, *, threads: int,
            connections: int) -> dict:
    """One bounded wrk run; the figures of its RESULT line, with errors summed up."""
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                          "--latency", "-s", str(script), base], check=True, capture_output=True,
                         text=True, timeout=seconds + 60).stdout
    raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    seconds_run = raw["duration_us"] / 1e6
    codes = {int(k): v for k, v in sorted(raw["codes"].items())}
    bad_status = sum(n for code, n in codes.items() if not (200 <= code < 300 or code == 304))
    socket_errors = {k: raw[k] for k in ("connect", "read", "write", "timeout")}
    return {"seconds": round(seconds_run, 2), "requests": raw["requests"],
            "requests_per_s": round(raw["requests"] / seconds_run, 1),
            "status_codes": codes, "errors": bad_status + sum(socket_errors.values()),
            "error_statuses": bad_status, "socket_errors": socket_errors,
            "late_sends": raw["late_sends"],
            "p50_ms": round(raw["p50_us"] / 1000, 2), "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2), "max_ms": round(raw["max_us"] / 1000, 1)}


def train_models(directory: Path, count: int, epochs: int) -> list[dict[str, Path]]:
    """``modeldrop example digits`` with seeds 1..count (a subprocess each: TensorFlow never
    enters this process)."""
    models = []
    for seed in range(1, count + 1):
        out = directory / f"model-{seed}"
        subprocess.run([MODELDROP, "example", "digits", "--out", str(out), "--epochs", str(epochs),
                        "--seed", str(seed)], check=True, capture_output=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
        models.append({"name": f"load-{seed}", "model": out / "model.keras",
                       "metadata": out / "meta.json", "eval": out / "eval.npz"})
    return models


class Conversions:
    """Pushes the models with the CLI and follows their jobs from a thread, so that the
    bench knows when conversions ran (monotonic seconds from the load's start)."""

    def __init__(self, base: str, token: str, models: list[dict], t0: float) -> None:
        self.base, self.token, self.models, self.t0 = base, token, models, t0
        self.jobs: list[dict] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._stop = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def _get(self, path: str) -> dict:
        req = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def _run(self) -> None:
        env = dict(os.environ, MODELDROP_URL=self.base, MODELDROP_TOKEN=self.token, PYTHONPATH=str(ROOT))
        for m in self.models:
            pushed = time.monotonic()
            proc = subprocess.run([MODELDROP, "push", m["name"], str(m["model"]), "--metadata",
                                   str(m["metadata"]), "--eval", str(m["eval"]), "--no-wait", "--json"],
                                  capture_output=True, text=True, env=env, timeout=300)
            job = {"model": m["name"], "pushed_at_s": round(pushed - self.t0, 1),
                   "push_seconds": round(time.monotonic() - pushed, 2), "state": "push failed"}
            if proc.returncode == 0:
                job.update(id=json.loads(proc.stdout)["job"], state="queued")
            else:
                job["error"] = (proc.stderr or proc.stdout).strip()[-300:]
            self.jobs.append(job)
        while not self._stop.is_set() and any(j["state"] in ("queued", "running") for j in self.jobs):
            for job in self.jobs:
                if job["state"] not in ("queued", "running"):
                    continue
                with contextlib.suppress(OSError, ValueError):
                    state = self._get(f"/v1/jobs/{job['id']}")["state"]
                    now = round(time.monotonic() - self.t0, 1)
                    if state != "queued" and "running_from_s" not in job:
                        job["running_from_s"] = now
                    if state in ("done", "failed"):
                        job["ended_at_s"] = now
                    job["state"] = state
            self._stop.wait(1.0)

    def wait(self, seconds: float) -> None:
        self._thread.join(seconds)
        self._stop.set()
        self._thread.join(15)

    def overlap(self, window: float) -> float:
        """Seconds of [0, window] during which at least one conversion was running."""
        spans = sorted((j["running_from_s"], j.get("ended_at_s", window)) for j in self.jobs
                       if "running_from_s" in j)
        covered, edge = 0.0, 0.0
        for start, end in spans:
            start, end = max(start, edge), min(end, window)
            if end > start:
                covered += end - start
                edge = end
        return round(covered, 1)


def start_servers(server: str, data_dir: Path, port: int, workers: int, web_workers: int,
                  logs: Path) -> list[tuple[subprocess.Popen, object]]:
    env = dict(os.environ, MODELDROP_DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    procs = []
    if server == "serve":
        log = open(logs / "serve.log", "wb")  # closed in stop_all
        procs.append((subprocess.Popen([MODELDROP, "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1",
                                        "--port", str(port), "--workers", str(workers)],
                                       env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=ROOT), log))
        return procs
    log = open(logs / "gunicorn.log", "wb")  # closed in stop_all
    procs.append((start_gunicorn(dict(env, MODELDROP_BIND=f"127.0.0.1:{port}",
                                      MODELDROP_WEB_WORKERS=str(web_workers)), log), log))
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=procs[0][0], log=log.name, timeout=120)
    for n in range(workers):  # after gunicorn's master created the schema and keys
        wlog = open(logs / f"worker-{n}.log", "wb")  # closed in stop_all
        procs.append((subprocess.Popen([MODELDROP, "worker", "--data-dir", str(data_dir)], env=env,
                                       stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True,
                                       cwd=ROOT), wlog))
    return procs


def stop_all(procs: list[tuple[subprocess.Popen, object]]) -> None:
    for proc, log in reversed(procs):
        stop_group(proc)
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=60, help="seconds of paced load")
    parser.add_argument("--peak-duration", type=int, default=10, help="seconds of the unpaced peak run")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the measured peak")
    parser.add_argument("--models", type=int, default=2, help="models pushed during the load (2 or more)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each model")
    parser.add_argument("--push-after", type=float, default=2.0, help="seconds into the load")
    parser.add_argument("--conversion-workers", type=int, default=2)
    parser.add_argument("--web-workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--server", choices=("gunicorn", "serve"), default="gunicorn")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ids", type=int, default=10_000, help="distinct install ids")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    args = parser.parse_args(argv)
    if args.models < 2:
        parser.error("--models must be 2 or more: conversions are to run during the load")

    wrk = ensure_wrk()
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        tmp_path = Path(tmp)
        data_dir = tmp_path / "data"
        print("preparing the data dir and training the models ...", flush=True)
        prepare(data_dir)
        models = train_models(tmp_path, args.models, args.epochs)
        rng = random.Random(13)
        ids_file = tmp_path / "ids.txt"
        ids_file.write_text("\n".join(str(uuid.UUID(int=rng.getrandbits(128), version=4))
                                      for _ in range(args.ids)) + "\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs = start_servers(args.server, data_dir, port, args.conversion_workers, args.web_workers, tmp_path)
        try:
            wait_http(f"{base}/healthz", proc=procs[0][0], log=str(tmp_path / "*.log"), timeout=120)
            token = (data_dir / "admin-token").read_text().strip()
            peak_script = write_script(tmp_path, ids_file, 0, args.threads)
            run_wrk(wrk, base, peak_script, 3, threads=args.threads, connections=args.connections)  # warm-up
            load_before_peak = load_average()
            peak = run_wrk(wrk, base, peak_script, args.peak_duration, threads=args.threads,
                           connections=args.connections)
            target = peak["requests_per_s"] * args.fraction
            print(f"peak {peak['requests_per_s']} req/s (p99 {peak['p99_ms']} ms); "
                  f"paced run at {target:.0f} req/s for {args.duration} s", flush=True)
            paced_script = write_script(tmp_path, ids_file, target, args.threads)
            samples: list[dict] = []
            t0 = time.monotonic()
            conversions = Conversions(base, token, models, t0)
            timer = threading.Timer(args.push_after, conversions.start)
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.wait(5.0):
                    samples.append({"t_s": round(time.monotonic() - t0, 1), "load_average": load_average()})

            sampler = threading.Thread(target=sample, daemon=True)
            timer.start()
            sampler.start()
            load = run_wrk(wrk, base, paced_script, args.duration, threads=args.threads,
                           connections=args.connections)
            window = time.monotonic() - t0
            sampling.set()
            load_after = load_average()
            conversions.wait(600)
            health = json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=10).read())
        finally:
            stop_all(procs)

    load["target_requests_per_s"] = round(target, 1)
    load["achieved_fraction_of_target"] = round(load["requests_per_s"] / target, 3)
    load["conversion_overlap_s"] = conversions.overlap(window)
    jobs = conversions.jobs
    for job in jobs:
        if "running_from_s" in job and "ended_at_s" in job:
            job["convert_seconds"] = round(job["ended_at_s"] - job["running_from_s"], 1)
    report = {
        "benchmark": "GET /v1/manifest at a constant fraction of the measured peak while conversions run",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "note": "shared with other sessions: see the load averages"},
        "setup": {"server": ("gunicorn -c deploy/gunicorn.conf.py registry.wsgi:app + "
                             f"{args.conversion_workers} x modeldrop worker" if args.server == "gunicorn"
                             else f"modeldrop serve --workers {args.conversion_workers}"),
                  "web_workers": args.web_workers if args.server == "gunicorn" else None,
                  "database": "sqlite", "blob_backend": "local", "install_ids": args.ids,
                  "wrk": f"-t{args.threads} -c{args.connections} --timeout 5s",
                  "fraction": args.fraction, "duration_s": args.duration,
                  "models_pushed": len(models),
                  "model": "modeldrop example digits (Keras, 3 variants: tflite-fp32, "
                           "tflite-int8-dynamic, coreml-fp16)",
                  "errors_counted": "any status but 2xx/304, connect/read/write errors, timeouts over 5 s"},
        "peak": {**peak, "load_average_before": load_before_peak},
        "load": load,
        "conversions": jobs,
        "health_after": {k: health.get(k) for k in ("status", "workers", "queue")},
        "load_average": {"start": load_start, "during": samples, "after_load": load_after},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"paced: {load['requests_per_s']} of {target:.0f} req/s, {load['errors']} errors of "
          f"{load['requests']}, p50 {load['p50_ms']} ms, p99 {load['p99_ms']} ms; conversions "
          f"{[j['state'] for j in jobs]} overlapping {load['conversion_overlap_s']} s of the load; "
          f"load average after {load_after}")
    print(f"wrote {args.out}")
    if any(j["state"] != "done" for j in jobs):
        raise SystemExit("a conversion did not finish: see conversions in " + str(args.out))


if __name__ == "__main__":
    main()
