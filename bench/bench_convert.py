"""Benchmark: MobileNetV2 (224x224x3, untrained, weights=None) into every variant.

Measures, each in a fresh Python process so no run inherits another's warm TensorFlow:

* ``direct``: the converters called one after another in one process (SavedModel export
  once, then every variant); per-variant conversion seconds and artifact sizes.
* ``engine-serial``: ``convert_version(max_parallel=1)`` -- conversion plus all measurements
  (interpreter fidelity, 50-run latency, Core ML checks) in one process.
* ``engine-parallel``: ``convert_version(max_parallel=2)`` -- the same with a pool of two
  spawned workers.

Results go to bench/results/convert.json and a printed table. Run:

    .venv/bin/python bench/bench_convert.py

The job-system owner can add the end-to-end time through the job queue with
``measure_end_to_end(label, run_job)``; it merges ``{"end_to_end": {label: ...}}`` into the
same JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "convert.json"
INPUT_SHAPE = (224, 224, 3)
MODES = ("direct", "engine-serial", "engine-parallel")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_mobilenet_source(directory: Path) -> Path:
    """Save an untrained MobileNetV2 as .keras (no weights are downloaded: weights=None)."""
    import keras

    path = directory / "mobilenet_v2.keras"
    if not path.exists():
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None, input_shape=INPUT_SHAPE)
        model.save(path)
    return path


def _peak_rss_mib() -> dict:
    to_mib = 1 / 1024  # ru_maxrss is in KiB on Linux
    return {
        "self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_mib, 1),
        "largest_child": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * to_mib, 1),
    }


def run_direct(source: Path, workdir: Path) -> dict:
    """Call the converters one after another in this process, as a baseline."""
    import numpy as np

    from registry.convert import VARIANT_NAMES, VARIANTS
    from registry.convert._coreml import BASE_VARIANT
    from registry.convert._engine import _SCHEDULE_ORDER
    from registry.convert._evalset import synthetic_eval_set
    from registry.convert._source import load_source
    from registry.convert._tasks import ConvertTask, run_task

    start = time.perf_counter()
    signature = load_source(source, workdir).signature
    export_seconds = time.perf_counter() - start
    calibration = workdir / "calibration.npz"
    np.savez(calibration, **synthetic_eval_set(signature.inputs).calibration_inputs())
    outcomes = {}
    for name in _SCHEDULE_ORDER:  # bases before the variants derived from them
        base = BASE_VARIANT.get(name)
        task = ConvertTask(
            variant=name, signature=signature, build_dir=str(workdir / "build"),
            artifact_path=str(workdir / "variants" / VARIANTS[name].filename()),
            calibration_path=str(calibration) if name == "tflite-int8-full" else None,
            base_package=outcomes[base].package_path if base else None,
        )
        outcomes[name] = run_task(task)
        if outcomes[name].error:
            raise RuntimeError(f"{name}: {outcomes[name].error}")
    total = time.perf_counter() - start
    variants = {
        name: {
            "convert_seconds": round(outcomes[name].seconds, 2),
            "size_bytes": Path(outcomes[name].artifact_path).stat().st_size,
        }
        for name in VARIANT_NAMES
    }
    return {"total_seconds": round(total, 2), "load_and_export_seconds": round(export_seconds, 2),
            "variants": variants, "peak_rss_mib": _peak_rss_mib()}


def run_engine(source: Path, workdir: Path, max_parallel: int) -> dict:
    import logging

    from registry.convert import convert_version

    # The engine logs each variant's build time; keep it on stderr for the curious.
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    logging.getLogger("registry.convert").setLevel(logging.INFO)

    start = time.perf_counter()
    finished = {}

    def progress(k, n, name):
        finished[name] = round(time.perf_counter() - start, 2)

    results = convert_version(source, workdir, max_parallel=max_parallel, progress=progress)
    total = time.perf_counter() - start
    failed = {r.name: r.error for r in results if r.error}
    if failed:
        raise RuntimeError(f"variants failed: {failed}")
    variants = {
        r.name: {
            "size_bytes": r.size,
            "servable": r.servable,
            "finished_at_seconds": finished[r.name],
            "latency_p50_ms": r.reference_latency_ms["p50"] if r.reference_latency_ms else None,
            "latency_p90_ms": r.reference_latency_ms["p90"] if r.reference_latency_ms else None,
            "top1_agreement": r.fidelity.get("top1_agreement"),
            "weight_rel_error": r.fidelity.get("weight_rel_error"),
        }
        for r in results
    }
    return {"total_seconds": round(total, 2), "max_parallel": max_parallel, "variants": variants,
            "peak_rss_mib": _peak_rss_mib()}


def _run_mode_in_subprocess(mode: str, source: Path, scratch: Path) -> dict:
    out = scratch / f"{mode}.json"
    command = [sys.executable, __file__, "--mode", mode, "--source", str(source),
               "--workdir", str(scratch / mode), "--out", str(out)]
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def _merge_results(update: dict) -> dict:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key].update(value)
        else:
            current[key] = value
    RESULTS.write_text(json.dumps(current, indent=2) + "\n")
    return current


def measure_end_to_end(label: str, run_job: Callable[[Path], object], *, scratch: Path | None = None) -> float:
    """Time ``run_job(source_path)`` on the MobileNetV2 upload and record it in convert.json.

    For the job-system owner: ``run_job`` should enqueue a conversion of the given
    ``.keras`` file through the real job path (all variants, no eval set) and return
    when it has finished. The seconds land under ``end_to_end[label]``.
    """
    with tempfile.TemporaryDirectory(prefix="modeldrop-bench-") as tmp:
        source = build_mobilenet_source(Path(scratch or tmp))
        start = time.perf_counter()
        run_job(source)
        seconds = round(time.perf_counter() - start, 2)
    _merge_results({"end_to_end": {label: {"total_seconds": seconds}}})
    return seconds


def _print_table(report: dict) -> None:
    direct = report["modes"]["direct"]["variants"]
    serial = report["modes"]["engine-serial"]["variants"]
    parallel = report["modes"]["engine-parallel"]["variants"]

    def latency(row):
        if row["latency_p50_ms"] is None:
            return "-"
        return f"{row['latency_p50_ms']:.2f}/{row['latency_p90_ms']:.2f}"

    print(f"{'variant':<24}{'convert s':>10}{'size MiB':>10}{'p50/p90 ms serial':>20}{'p50/p90 ms pool':>18}")
    for name, row in direct.items():
        print(f"{name:<24}{row['convert_seconds']:>10.2f}{row['size_bytes'] / 2**20:>10.2f}"
              f"{latency(serial[name]):>20}{latency(parallel[name]):>18}")
    for mode in MODES:
        runs = ", ".join(f"{t:.1f}" for t in report["all_totals_seconds"][mode])
        print(f"{mode:<24}total {report['modes'][mode]['total_seconds']:.1f} s  (runs: {runs})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode; the fastest is reported")
    parser.add_argument("--table", action="store_true", help="print the table from the saved results and exit")
    args = parser.parse_args()
    if args.table:
        _print_table(json.loads(RESULTS.read_text()))
        return
    if args.mode:  # one measurement, in this fresh process
        if args.mode == "direct":
            report = run_direct(args.source, args.workdir)
        else:
            report = run_engine(args.source, args.workdir, 1 if args.mode == "engine-serial" else 2)
        args.out.write_text(json.dumps(report, indent=2))
        return

    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="modeldrop-bench-") as tmp:
        scratch = Path(tmp)
        source = build_mobilenet_source(scratch)
        # Interleave repeats so that a burst of load from other processes on the machine
        # does not land on one mode only; the load average before each run is recorded.
        for repeat in range(args.repeats):
            for mode in MODES:
                load_before = os.getloadavg()[0]
                run = _run_mode_in_subprocess(mode, source, scratch / f"r{repeat}")
                run["loadavg_1min_before"] = round(load_before, 2)
                runs[mode].append(run)
    # The fastest run of each mode is the one least disturbed by other work.
    modes = {mode: min(results, key=lambda r: r["total_seconds"]) for mode, results in runs.items()}
    totals = {mode: [r["total_seconds"] for r in results] for mode, results in runs.items()}
    loads = {mode: [r["loadavg_1min_before"] for r in results] for mode, results in runs.items()}
    import ai_edge_litert
    import coremltools
    import tensorflow

    report = {
        "model": "keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))",
        "eval_set": "synthetic (64 samples; also the int8 calibration set)",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"tensorflow": tensorflow.__version__, "coremltools": coremltools.__version__,
                     "ai_edge_litert": getattr(ai_edge_litert, "__version__", "2.3.0")},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "repeats": args.repeats,
        "all_totals_seconds": totals,
        "loadavg_1min_before_each_run": loads,
        "modes": modes,
        "parallel_speedup": round(modes["engine-serial"]["total_seconds"]
                                  / modes["engine-parallel"]["total_seconds"], 2),
    }
    _print_table(_merge_results(report))


if __name__ == "__main__":
    main()
