"""End-to-end conversion time through the job system vs the converters called directly.

Uploads MobileNetV2 (weights=None) to an embedded-default registry whose in-process worker
pool converts it into every variant, and records the wall time from upload to `done` under
`end_to_end["inprocess-job"]` in bench/results/convert.json (next to `bench_convert.py`'s
direct and engine timings). Run: .venv/bin/python bench/bench_jobs.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_convert import RESULTS, measure_end_to_end


def run_through_jobs(source: Path) -> None:
    from registry.app import create_app
    from registry.config import Settings

    with tempfile.TemporaryDirectory(prefix="modeldrop-bench-jobs-") as tmp:
        settings = Settings.load({"data_dir": Path(tmp) / "data"})
        app = create_app(settings, start_workers=True)
        svc = app.extensions["modeldrop"]
        try:
            client = app.test_client()
            token = svc.store.create_token("publisher").token
            headers = {"Authorization": f"Bearer {token}"}
            with open(source, "rb") as f:
                resp = client.post("/v1/models/mobilenet/versions", headers=headers,
                                   data={"file": (f, source.name)}, content_type="multipart/form-data")
            job_id = resp.get_json()["job"]
            while True:
                job = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
                if job["state"] in ("done", "failed"):
                    break
                time.sleep(0.5)
            if job["state"] != "done":
                raise SystemExit(f"conversion failed: {job['error']}")
        finally:
            svc.jobs.stop()


def main() -> None:
    seconds = measure_end_to_end("inprocess-job", run_through_jobs)
    report = json.loads(Path(RESULTS).read_text())
    direct = report["modes"]["direct"]["total_seconds"]
    print(f"through the job system: {seconds:.1f} s; converters called directly, serially: "
          f"{direct:.1f} s; ratio {seconds / direct:.2f}x")


if __name__ == "__main__":
    main()
