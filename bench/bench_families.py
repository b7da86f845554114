"""Benchmark: every model family (tests/makers_keras.py FAMILIES) in Keras and PyTorch to all
nine variants, with per-output fidelity measured in the real LiteRT interpreter.

The models are the tests' tiny random-initialised families, with their eval sets (one array
per input, labels ``y__<output>`` for classification outputs) and declared signatures.
Each (framework, family) converts in a fresh Python process through the sandboxed job path
(``registry.jobs.conversion.convert_file``, one converter process) so that no run inherits
another's warm imports. Recorded per variant: works or the error, servable and why not,
the signature read from the artifact, per-output fidelity, size; per run the wall seconds.

Results go to bench/results/families.json (docs/conversion.md, "Support matrix", quotes
them). Run:

    .venv/bin/python bench/bench_families.py                 # everything (~20 min on 2 cores)
    .venv/bin/python bench/bench_families.py --only torch:detector
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "families.json"


def run_one(framework: str, family: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from registry.config import Settings
    from registry.convert import VARIANT_NAMES
    from registry.jobs.conversion import convert_file
    from tests import makers_keras, makers_torch

    with tempfile.TemporaryDirectory(prefix=f"bench-{framework}-{family}-") as tmp:
        root = Path(tmp)
        maker = makers_keras.make_keras_family if framework == "keras" else makers_torch.make_torch_family
        model = maker(family, root / "model")
        settings = Settings.load({"data_dir": root / "data", "latency_runs": 20, "convert_max_parallel": 1,
                                  "convert_sandbox": "required"}, environ={})
        start = time.perf_counter()
        try:
            results = convert_file(settings, model.source, root / "job", eval_path=model.eval_npz,
                                   variants=list(VARIANT_NAMES), declared=model.metadata)
        except Exception as exc:  # noqa: BLE001 - a job-level failure is a result too
            return {"framework": framework, "family": family, "source": model.source.suffix,
                    "job_error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - start, 1)}
        seconds = time.perf_counter() - start
        variants = {}
        for r in results:
            outputs = (r.fidelity or {}).get("outputs") or {}
            variants[r.name] = {
                "works": r.error is None,
                "servable": bool(r.servable),
                "reason": r.reason,
                "size_bytes": r.size,
                "signature": r.signature,
                "outputs": {name: {k: v for k, v in figures.items() if v is not None}
                            for name, figures in outputs.items()},
                "weight_rel_error": (r.fidelity or {}).get("weight_rel_error"),
                "latency_p50_ms": (r.reference_latency_ms or {}).get("p50"),
            }
        return {"framework": framework, "family": family, "source": model.source.suffix,
                "inputs": {n: [str(a.dtype), list(a.shape[1:])] for n, a in model.inputs.items()},
                "tasks": model.tasks, "seconds": round(seconds, 1), "variants": variants}


SHORT = {"tflite-fp32": "tfl fp32", "tflite-fp16": "tfl fp16", "tflite-int8-dynamic": "tfl int8-dyn",
         "tflite-int8-full": "tfl int8-full", "coreml-fp32": "cml fp32", "coreml-fp16": "cml fp16",
         "coreml-int8": "cml int8", "coreml-palettized-6bit": "cml pal6", "coreml-palettized-4bit": "cml pal4"}


def _cell(variant: dict) -> str:
    """✓ servable, ~ built but not servable, ✗ failed; then the worst output's figure:
    classification top-1 agreement (agr) or accuracy drop (drop, pp), regression relative
    RMSE (rr); Core ML the weight error (w)."""
    if not variant["works"]:
        return "✗"
    mark = "✓" if variant["servable"] else "~"
    figures = []
    for out in variant["outputs"].values():
        if out.get("task") == "regression" and "relative_rmse" in out:
            figures.append(f"rr {out['relative_rmse']:.1e}")
        elif "accuracy_drop" in out:
            figures.append(f"drop {out['accuracy_drop']:.1f}")
        elif "top1_agreement" in out:
            figures.append(f"agr {out['top1_agreement']:.2f}")
    if not figures and variant.get("weight_rel_error") is not None:
        figures.append(f"w {variant['weight_rel_error']:.1e}")
    return f"{mark} {' / '.join(figures)}".strip()


def markdown(document: dict) -> str:
    from registry.convert import VARIANT_NAMES

    header = "| framework | family | source | " + " | ".join(SHORT[n] for n in VARIANT_NAMES) + " | s |"
    lines = [header, "|" + "---|" * (len(VARIANT_NAMES) + 4)]
    for run in document["runs"]:
        if "job_error" in run:
            cells = [run["job_error"][:60]] + [""] * (len(VARIANT_NAMES) - 1)
        else:
            cells = [_cell(run["variants"][n]) for n in VARIANT_NAMES]
        lines.append(f"| {run['framework']} | {run['family']} | {run.get('source', '')} | " + " | ".join(cells)
                     + f" | {run.get('seconds', '')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", help="framework:family (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="print the support matrix from the results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.markdown:
        sys.path.insert(0, str(ROOT))
        print(markdown(json.loads(RESULTS.read_text())))
        return 0
    if args.child:
        framework, family = args.child.split(":")
        print(json.dumps(run_one(framework, family)))
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.makers_keras import FAMILIES

    cases = args.only or [f"{fw}:{fam}" for fw in ("keras", "torch") for fam in FAMILIES]
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = {f"{r['framework']}:{r['family']}": r for r in existing.get("runs", [])}
    for case in cases:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            runs[case] = {"framework": case.split(":")[0], "family": case.split(":")[1],
                          "job_error": f"benchmark process failed: {proc.stderr[-500:]}"}
        else:
            runs[case] = json.loads(lines[-1])
        result = runs[case]
        works = sum(v["works"] for v in result.get("variants", {}).values())
        servable = sum(v["servable"] for v in result.get("variants", {}).values())
        print(f"{case:32s} {time.perf_counter() - started:6.1f} s  works {works}/9  servable {servable}/9"
              f"{'  ' + result['job_error'][:80] if 'job_error' in result else ''}", flush=True)
        _write(runs)  # after every case: a long run that is stopped keeps what it measured
    return 0


def _write(runs: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
                "note": "tiny random-initialised models; per-output fidelity vs the source in LiteRT",
                "runs": sorted(runs.values(), key=lambda r: (r["framework"], r["family"]))}
    RESULTS.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
