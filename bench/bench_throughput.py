"""Conversions completed per hour with 1 worker process and with 2, on this machine.

    .venv/bin/python bench/bench_throughput.py [--conversions 4] [--variants tflite-fp32]

Builds MobileNetV2 (weights=None, bench_convert.build_mobilenet_source: nothing is
downloaded), then for each worker count starts an embedded-default registry
(``create_app(start_workers=True)`` with ``worker_processes`` = 1 or 2: the supervised
in-process workers, each converting in the bubblewrap sandbox), uploads ``--conversions``
copies of the model under different model names through ``POST /v1/models/<name>/versions``
with ``metadata.variants`` (default only ``tflite-fp32``, to keep the run short), and times
from the first upload until every job is ``done``. conversions/hour = conversions / wall
seconds x 3600; the ratio is 2 workers over 1.

On one 2-core machine two workers share the same two cores (and a converter already uses
up to ``convert_max_parallel`` processes of its own), so this measures contention, not the
design target of 2 machines' worth of workers (docs/benchmarks.md says what it means).
Writes bench/results/throughput.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_convert import build_mobilenet_source  # noqa: E402


def run(source: Path, workers: int, conversions: int, variants: list[str], scratch: Path) -> dict:
    from registry.app import create_app
    from registry.config import Settings

    settings = Settings.load({"data_dir": scratch / f"data-{workers}", "worker_processes": workers})
    app = create_app(settings, start_workers=True)
    svc = app.extensions["modeldrop"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {svc.store.create_token('publisher').token}"}
        started = time.monotonic()
        jobs = []
        for n in range(conversions):
            with open(source, "rb") as f:
                resp = client.post(f"/v1/models/mnv2-{n}/versions", headers=headers,
                                   data={"file": (f, source.name),
                                         "metadata": json.dumps({"variants": variants})},
                                   content_type="multipart/form-data")
            assert resp.status_code == 201, resp.get_data(as_text=True)
            jobs.append(resp.get_json()["job"])
        finished: dict[str, float] = {}
        while len(finished) < len(jobs):
            for job_id in jobs:
                if job_id in finished:
                    continue
                job = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
                if job["state"] == "failed":
                    raise SystemExit(f"conversion failed: {job['error']}")
                if job["state"] == "done":
                    finished[job_id] = round(time.monotonic() - started, 1)
            time.sleep(0.5)
        wall = time.monotonic() - started
    finally:
        svc.jobs.stop()
    return {"workers": workers, "conversions": conversions, "wall_seconds": round(wall, 1),
            "conversions_per_hour": round(conversions / wall * 3600, 1),
            "done_at_seconds": sorted(finished.values()), "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversions", type=int, default=4, help="uploads per worker count")
    ap.add_argument("--variants", default="tflite-fp32", help="comma-separated variants per conversion")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        scratch = Path(tmp)
        source = build_mobilenet_source(scratch)
        rows = [run(source, workers, args.conversions, variants, scratch) for workers in (1, 2)]
    report = {"benchmark": "MobileNetV2 conversions per hour, 1 vs 2 in-process workers",
              "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "setup": {"model": "keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))",
                        "variants": variants, "conversions_per_run": args.conversions,
                        "sandbox": "bubblewrap (MODELDROP_CONVERT_SANDBOX=auto)",
                        "note": "one 2-core machine shared with other sessions"},
              "results": rows,
              "ratio_2_over_1": round(rows[1]["conversions_per_hour"] / rows[0]["conversions_per_hour"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
