"""Where a manifest request's time goes, in one process: pyinstrument over the Flask test client.

    .venv/bin/python bench/profile_manifest.py [--requests 2800]
    .venv/bin/python bench/profile_manifest.py --ablate [--requests 1000] [--rounds 4]

bench_manifest.prepare's data dir (two releases walked), 200 warm-up requests, then
``--requests`` manifests, each with a new install id (so each pays the served-install write),
profiled with pyinstrument (a dev dependency). Prints wall and CPU time per request and the
call tree (frames under 2% hidden). Not part of run_all: a profile, not a figure.

``--ablate`` measures instead what each part costs: interleaved rounds of ``--requests`` new
devices each, with everything, then with one part replaced by nothing (the signature, the
served-install record, the request log and request metrics, the manifest decision metric),
and a bare Flask app answering a constant 800 B through the same test client; CPU time per
request (``time.process_time``: what the machine's load moves least), medians over the rounds.
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


def ablate(app, ids: list[str], requests: int, rounds: int) -> None:
    """CPU per request with each part removed in turn (module docstring)."""
    import logging
    import statistics

    from flask import Flask

    import registry.api.delivery as delivery

    services = app.extensions["modeldrop"]
    logging.getLogger("modeldrop.request").handlers[0].stream = open(os.devnull, "w")
    client = app.test_client()
    bare = Flask("bare")
    bare.get("/v1/manifest")(lambda: (b"x" * 800, 200, {"Content-Type": "application/json"}))
    bare_client = bare.test_client()
    after = app.after_request_funcs[None]
    before = app.before_request_funcs[None]
    observability = ([f for f in after if getattr(f, "__qualname__", "").endswith("_finish")],
                     [f for f in before if getattr(f, "__qualname__", "").endswith("_start")])

    def without_signature():
        real = services.signing.sign_manifest
        services.signing.sign_manifest = lambda d: dict(d, signatures=[])
        return lambda: setattr(services.signing, "sign_manifest", real)

    def without_served_row():
        services.store.record_served = lambda *a, **k: None
        return lambda: services.store.__dict__.pop("record_served")

    def without_log_and_request_metrics():
        for f in observability[0]:
            after.remove(f)
        for f in observability[1]:
            before.remove(f)
        return lambda: (after.extend(observability[0]), before.extend(observability[1]))

    def without_manifest_metric():
        real = delivery.record_manifest
        delivery.record_manifest = lambda *a: None
        return lambda: setattr(delivery, "record_manifest", real)

    variants = {"everything": None, "no signature": without_signature,
                "no served-install record": without_served_row,
                "no request log + request metrics": without_log_and_request_metrics,
                "no manifest decision metric": without_manifest_metric}
    cpu: dict[str, list[float]] = {name: [] for name in [*variants, "bare Flask (same client)"]}
    it = iter(ids)
    for _ in range(rounds):
        for name, remove in variants.items():
            undo = remove() if remove else None
            started = time.process_time()
            for _ in range(requests):
                assert client.get(QUERY + next(it)).status_code == 200
            cpu[name].append((time.process_time() - started) / requests * 1000)
            if undo:
                undo()
        started = time.process_time()
        for _ in range(requests):
            bare_client.get(QUERY + "x")
        cpu["bare Flask (same client)"].append((time.process_time() - started) / requests * 1000)
    full = statistics.median(cpu["everything"])
    print(f"CPU per request, median of {rounds} rounds of {requests} (load average "
          f"{os.getloadavg()[0]:.2f}):")
    for name, values in cpu.items():
        median = statistics.median(values)
        saved = "" if name == "everything" else f"  (everything minus this: {full - median:+.3f} ms)"
        print(f"  {name:34} {median:.3f} ms{saved}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2800)
    ap.add_argument("--ablate", action="store_true", help="cost of each part instead of a profile")
    ap.add_argument("--rounds", type=int, default=4, help="--ablate: interleaved rounds")
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
        total = args.requests * args.rounds * 5 if args.ablate else args.requests
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(total + 200)]
        for install_id in ids[:200]:
            assert client.get(QUERY + install_id).status_code == 200
        if args.ablate:
            ablate(app, ids[200:], args.requests, args.rounds)
            app.extensions["modeldrop"].store.engine.dispose()
            return
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
