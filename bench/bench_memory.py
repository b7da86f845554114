"""Resident memory of one web worker: after start, after N manifests, after a large download.

    .venv/bin/python bench/bench_memory.py [--manifests 10000] [--artifact-mb 100]

One gunicorn (deploy/gunicorn.conf.py, ``MODELDROP_WEB_WORKERS=1``, the default gthread
class) on bench_manifest.prepare's data dir plus a ``--artifact-mb`` public TUF target. Its
single worker's ``VmRSS`` and ``VmHWM`` (peak) come from /proc after the first manifest, after
``--manifests`` manifests (each a different install id, over one keep-alive connection), and
after downloading the artifact once (sha256 checked). Then, in a separate Python, which of
the heavy modules importing ``registry.wsgi`` and answering a manifest loads (the web
process must never load TensorFlow, PyTorch or coremltools; statistics and charts load on
first use), and tracemalloc's largest Python allocations after 1,000 manifests through the
Flask test client.

Writes bench/results/memory.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_manifest import QUERY, prepare  # noqa: E402

from bench._common import free_port, start_gunicorn, stop_group, wait_http  # noqa: E402

HEAVY = ["tensorflow", "torch", "coremltools", "ai_edge_litert", "numpy", "scipy", "pandas",
         "matplotlib", "PIL", "sklearn", "celery", "boto3"]

PROBE = r"""
import json, os, sys, tracemalloc
os.environ["MODELDROP_DATA_DIR"] = sys.argv[1]
import registry.wsgi
app = registry.wsgi.app
client = app.test_client()
query, ids = sys.argv[2], json.loads(sys.argv[3])
assert client.get(query + ids[0]).status_code == 200
loaded = {m: m in sys.modules for m in json.loads(sys.argv[4])}
tracemalloc.start(1)
before = tracemalloc.take_snapshot()
for i in ids[1:]:
    client.get(query + i)
after = tracemalloc.take_snapshot()
top = [{"where": str(s.traceback[0]), "kib": round(s.size_diff / 1024, 1), "blocks": s.count_diff}
       for s in after.compare_to(before, "lineno")[:8]]
print("PROBE " + json.dumps({"modules_loaded": loaded, "modules": len(sys.modules),
                             "tracemalloc_growth_top": top}))
"""


def status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return int(children[0])


def mb(kib: dict[str, int]) -> dict[str, float]:
    return {"rss_mb": round(kib["VmRSS"] / 1024, 1), "peak_rss_mb": round(kib["VmHWM"] / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifests", type=int, default=10_000)
    ap.add_argument("--artifact-mb", type=int, default=100)
    ap.add_argument("--worker-class", default="gthread")
    ap.add_argument("--before", default="", help="a git revision: measure that commit's server instead "
                    "(git archive into a temporary directory; the data is prepared with this checkout)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = ap.parse_args()
    rng = random.Random(3)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.manifests)]
    results: dict = {"benchmark": "web worker resident memory", "date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "cpus": os.cpu_count(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
                     "setup": {"gunicorn": f"deploy/gunicorn.conf.py, 1 worker, {args.worker_class}",
                               "manifests": args.manifests, "artifact_mb": args.artifact_mb,
                               "database": "sqlite", "blob_backend": "local"}}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        code = ROOT
        if args.before:
            code = Path(tmp) / "before"
            code.mkdir()
            archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
            results["setup"]["code"] = f"git archive {args.before}"
        data_dir = Path(tmp) / "data"
        prepare(data_dir)
        from registry.config import Settings
        from registry.services import build_services

        services = build_services(Settings.load({"data_dir": data_dir}))
        big = random.Random(7).randbytes(args.artifact_mb << 20)
        info = services.blobs.put_bytes(big)
        target = f"/tuf/targets/digits/99/{info.sha256}.big.tflite"
        services.signing.add_targets([services.target_spec(
            "digits/99/big.tflite", info.sha256, info.size, model="digits", version=99,
            variant="big", format="tflite", kind="variant")])
        services.store.engine.dispose()
        del big

        port = free_port()
        env = dict(os.environ, MODELDROP_DATA_DIR=str(data_dir), MODELDROP_BIND=f"127.0.0.1:{port}",
                   MODELDROP_WEB_WORKERS="1", MODELDROP_WEB_WORKER_CLASS=args.worker_class,
                   PYTHONPATH=str(code))
        log = open(Path(tmp) / "gunicorn.log", "wb")
        proc = start_gunicorn(env, log, cwd=code)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc, log=log.name)
            pid = worker_pid(proc.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

            def get(path: str) -> bytes:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == 200, (path, resp.status, body[:200])
                return body

            get(QUERY + ids[0])
            results["after_first_manifest"] = mb(status_kib(pid))
            started = time.monotonic()
            for install_id in ids:
                get(QUERY + install_id)
            results["manifests_seconds"] = round(time.monotonic() - started, 1)
            results["after_manifests"] = mb(status_kib(pid))
            digest = hashlib.sha256()
            conn.request("GET", target)
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
            assert digest.hexdigest() == info.sha256
            results["after_download"] = mb(status_kib(pid))
            conn.close()
        finally:
            stop_group(proc)
            log.close()
        probe = subprocess.run([sys.executable, "-c", PROBE, str(data_dir), QUERY,
                                json.dumps(ids[:1000]), json.dumps(HEAVY)],
                               capture_output=True, text=True, cwd=code, env=dict(os.environ, PYTHONPATH=str(code)))
        line = next((x for x in probe.stdout.splitlines() if x.startswith("PROBE ")), None)
        if line is None:
            raise SystemExit(f"probe failed:\n{probe.stderr[-3000:]}")
        results["imports"] = json.loads(line[6:])
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
