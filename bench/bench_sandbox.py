"""Benchmark: what the converter sandbox costs, on MobileNetV2 into every variant.

Two paths, interleaved (A, B, A, B, ...) in one run so that machine drift hits both:

* ``unsandboxed``: today's library call, ``registry.convert.convert_version`` in a fresh
  Python process (the path jobs took before the sandbox);
* ``sandboxed``: the job path, ``registry.jobs.conversion.convert_file``: bubblewrap, the
  converter process with its limits, then the worker's result checks and re-hash of
  every artifact.

Both use the server defaults (two conversion processes, 50 latency runs). The work
directory's peak size is sampled too (it sizes MODELDROP_CONVERT_WORK_FACTOR's cap).
Results go to bench/results/sandbox.json. Run:

    .venv/bin/python bench/bench_sandbox.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "sandbox.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_convert import build_mobilenet_source  # noqa: E402 - after the path fix above

_UNSANDBOXED = """
import sys, time
from pathlib import Path
from registry.convert import convert_version
t = time.perf_counter()
results = convert_version(Path(sys.argv[1]), Path(sys.argv[2]))
elapsed = time.perf_counter() - t
bad = [r.name for r in results if r.error]
print("RESULT", elapsed, ",".join(bad))
"""

_SANDBOXED = """
import sys, time
from pathlib import Path
from registry.config import Settings
from registry.jobs.conversion import convert_file
from registry.jobs.sandbox import Sandbox
settings = Settings.load({"data_dir": Path(sys.argv[2]) / "data", "convert_sandbox": "required"}, environ={})
assert Sandbox(settings).status().state == "full"
t = time.perf_counter()
results = convert_file(settings, Path(sys.argv[1]), Path(sys.argv[2]) / "job")
elapsed = time.perf_counter() - t
bad = [r.name for r in results if r.error]
print("RESULT", elapsed, ",".join(bad))
"""


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def run_once(mode: str, source: Path) -> dict:
    code = _SANDBOXED if mode == "sandboxed" else _UNSANDBOXED
    with tempfile.TemporaryDirectory(prefix=f"bench-{mode}-") as tmp:
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                peak[0] = max(peak[0], _du(Path(tmp)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(source), tmp], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    _, seconds, failed = line.split(" ", 2) if line.count(" ") >= 2 else (*line.split(" "), "")
    return {"convert_seconds": round(float(seconds), 2), "process_seconds": round(wall, 2),
            "failed_variants": [f for f in failed.split(",") if f], "peak_work_dir_bytes": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-src-") as src_dir:
        source = build_mobilenet_source(Path(src_dir))
        source_bytes = source.stat().st_size
        runs: dict[str, list[dict]] = {"unsandboxed": [], "sandboxed": []}
        for i in range(args.repeats):
            for mode in (("unsandboxed", "sandboxed") if i % 2 == 0 else ("sandboxed", "unsandboxed")):
                result = run_once(mode, source)
                runs[mode].append(result)
                print(f"{mode:12s} run {i + 1}: {result['convert_seconds']:.1f} s "
                      f"(process {result['process_seconds']:.1f} s, peak work dir "
                      f"{result['peak_work_dir_bytes'] / 2**20:.0f} MiB)", flush=True)
    summary = {m: statistics.median(r["convert_seconds"] for r in rs) for m, rs in runs.items()}
    ratio = summary["sandboxed"] / summary["unsandboxed"]
    document = {
        "model": "MobileNetV2 224x224x3, weights=None, every variant, server defaults",
        "source_bytes": source_bytes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "euid": os.geteuid()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repeats": args.repeats,
        "runs": runs,
        "median_convert_seconds": summary,
        "sandboxed_over_unsandboxed": round(ratio, 3),
        "peak_work_dir_over_source": round(max(r["peak_work_dir_bytes"] for r in runs["sandboxed"]) / source_bytes, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"median: unsandboxed {summary['unsandboxed']:.1f} s, sandboxed {summary['sandboxed']:.1f} s, "
          f"ratio {ratio:.3f}; written to {args.out}")


if __name__ == "__main__":
    main()
