"""Where a manifest request's time goes, in one process: pyinstrument over the Flask test client.

    .venv/bin/python bench/profile_manifest.py [--requests 2800]

bench_manifest.prepare's data dir (two releases walked), 200 warm-up requests, then
``--requests`` manifests, each with a new install id (so each pays the served-install write),
profiled with pyinstrument (a dev dependency). Prints wall and CPU time per request and the
call tree (frames under 2% hidden). Not part of run_all: a profile, not a figure.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_manifest import QUERY, prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2800)
    args = ap.parse_args()
    from pyinstrument import Profiler

    with tempfile.TemporaryDirectory(prefix="profile-manifest-") as tmp:
        data_dir = Path(tmp) / "data"
        prepare(data_dir)
        os.environ["MODELDROP_DATA_DIR"] = str(data_dir)
        from registry.app import create_app

        app = create_app()
        client = app.test_client()
        rng = random.Random(1)
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.requests + 200)]
        for install_id in ids[:200]:
            assert client.get(QUERY + install_id).status_code == 200
        profiler = Profiler(interval=0.0005)
        wall, cpu = time.perf_counter(), time.process_time()
        profiler.start()
        for install_id in ids[200:]:
            client.get(QUERY + install_id)
        profiler.stop()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"per request: {wall / args.requests * 1000:.2f} ms wall, {cpu / args.requests * 1000:.2f} ms CPU "
              f"(load average {os.getloadavg()[0]:.2f})")
        print(profiler.output_text(unicode=False, color=False))
        app.extensions["modeldrop"].store.engine.dispose()


if __name__ == "__main__":
    main()
