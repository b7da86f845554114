"""Simulate thousands of devices in an A/B experiment and print what the report concludes.

The script starts its own registry (a temporary data dir, SQLite unless ``--database-url``),
publishes two versions of a model with servable variants, promotes the first, and starts an
experiment ``control`` (v1) vs ``treatment`` (v2). Every simulated device then does what an
app does: asks ``GET /v1/manifest`` for its model — which enrols it and records its arm —
downloads, installs, runs inferences and reports telemetry through ``POST /v1/telemetry`` in
batches of up to 1,000 events. Finally it reads ``GET /v1/experiments/<name>/report``.

The true effects are chosen up front (``Scenario``), so the report can be checked: with the
default effect (treatment latency x1.15, install failures 2% -> 5%) it should call latency
and install failures "worse"; with ``--no-effect`` it should call nothing (at the 5% level,
about one seed in twenty shows a false positive somewhere: that is what 5% means).

Transport: ``--transport inprocess`` (default) drives the app through Flask's test client —
the same routes, validation and database, without sockets, so 4,000 devices take well under
a minute; ``--transport http`` serves the app on a loopback port (werkzeug, threaded) and
uses real HTTP, as in production.

    .venv/bin/python bench/simulate_experiment.py                  # known effect
    .venv/bin/python bench/simulate_experiment.py --no-effect
    .venv/bin/python bench/simulate_experiment.py --devices 8000 --transport http
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL, CHANNEL, EXPERIMENT = "digits", "production", "digits-v2-vs-v1"

#: (device model, platform, share of the fleet, typical latency in ms on v1)
DEVICE_MODELS = (
    ("pixel7", "android", 0.30, 6.0),
    ("galaxy-a14", "android", 0.25, 15.0),
    ("iphone13", "ios", 0.30, 4.0),
    ("jetson-nano", "linux", 0.15, 9.0),
)
VARIANTS = {"tflite-fp32": ("tflite", 6000), "tflite-int8-dynamic": ("tflite", 2400),
            "coreml-fp16": ("coreml", 3000)}
_EXT = {"tflite": "tflite", "coreml": "mlpackage.zip"}


@dataclass(frozen=True)
class Scenario:
    """The truth the report should recover. Rates are per device."""

    devices: int = 4000
    latency_ratio: float = 1.15  # treatment / control, for every device
    install_failure: tuple[float, float] = (0.02, 0.05)  # control, treatment
    download_failure: float = 0.03  # first attempt fails; half of those never retry
    crash: float = 0.01  # among devices that run the model
    accuracy: tuple[float, float] = (0.90, 0.90)
    inferences: float = 12.0  # mean inferences per active device (Poisson)
    active: float = 0.85  # installed devices that run the model at all
    seed: int = 1
    guardrails: tuple[str, ...] = ()

    def no_effect(self) -> Scenario:
        return replace(self, latency_ratio=1.0,
                       install_failure=(self.install_failure[0],) * 2,
                       accuracy=(self.accuracy[0],) * 2)


@dataclass
class Outcome:
    report: dict[str, Any]
    enrolled: dict[str, int]
    events: int
    seconds: dict[str, float] = field(default_factory=dict)

    def verdicts(self) -> dict[str, str | None]:
        """metric -> "better" / "worse" / None for the treatment arm."""
        return {m["metric"]: m["verdict"] for m in self.report["metrics"]
                if m["arm"] == "treatment"}


# -- transports: the same calls through Flask's test client or real HTTP ------------------
class InProcess:
    def __init__(self, app: Any) -> None:
        self.client = app.test_client()

    def get(self, path: str, params: dict | None = None, token: str | None = None
            ) -> tuple[int, Any]:
        resp = self.client.get(path, query_string=params or {}, headers=_auth(token))
        return resp.status_code, resp.get_json(silent=True)

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        resp = self.client.post(path, json=body, headers=_auth(token))
        return resp.status_code, resp.get_json(silent=True)


class Http:
    def __init__(self, base_url: str) -> None:
        import requests

        self.base = base_url
        self.session = requests.Session()

    def get(self, path: str, params: dict | None = None, token: str | None = None
            ) -> tuple[int, Any]:
        resp = self.session.get(self.base + path, params=params, headers=_auth(token), timeout=60)
        return resp.status_code, (resp.json() if resp.content else None)

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        resp = self.session.post(self.base + path, json=body, headers=_auth(token), timeout=60)
        return resp.status_code, (resp.json() if resp.content else None)


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app on a free loopback port (werkzeug, threaded) for the life of the block."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# -- the registry side ----------------------------------------------------------------------
def publish_version(services: Any, number: int) -> None:
    """A ready version with servable variants, recorded as the job runner does (bytes, then
    rows), without running a converter. Its variants stay confidential until the release or
    experiment that delivers them publishes them as TUF targets."""
    from registry.signing import variant_target_path

    source = services.blobs.put_bytes(f"{MODEL} source {number} {uuid.uuid4()}".encode())
    version, _ = services.store.create_version(
        MODEL, sha256=source.sha256, size=source.size, source_format="keras",
        filename="model.keras", metadata={"latency_ms": {"pixel7": 5.5, "iphone13": 3.8}},
        eval_sha256=None, actor="simulation", number=number)
    version_id = services.store.version_id(MODEL, version.version)
    stored = []
    for name, (fmt, size) in VARIANTS.items():
        data = np.random.default_rng([number, size]).bytes(size)
        info = services.blobs.put_bytes(data)
        stored.append((name, fmt, info, variant_target_path(MODEL, number, name, _EXT[fmt])))
    for name, fmt, info, path in stored:
        services.store.record_variant(
            version_id, name=name, format=fmt, sha256=info.sha256, size=info.size,
            target_path=path, fidelity={"top1_agreement": 0.99},
            reference_latency_ms={"device_class": "server-x86_64", "p50": 2.0 * number,
                                  "p90": 2.5 * number, "runs": 50},
            servable=True, reason=None, error=None)
    services.store.set_version_status(version_id, "ready")


def setup_experiment(services: Any, api: Any, token: str, scenario: Scenario) -> None:
    """Two versions, v1 promoted to production, experiment v1 (control) vs v2 (treatment)."""
    publish_version(services, 1)
    publish_version(services, 2)
    status, body = api.post(f"/v1/models/{MODEL}/releases",
                            {"version": 1, "channel": CHANNEL, "reason": "simulation"}, token)
    assert status == 201, body
    status, body = api.post("/v1/experiments", {
        "name": EXPERIMENT, "model": MODEL, "channel": CHANNEL, "seed": f"sim-{scenario.seed}",
        "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2}],
        "weights": [50, 50], "guardrails": list(scenario.guardrails)}, token)
    assert status == 201, body


# -- the device side --------------------------------------------------------------------------
def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def device_events(rng: np.random.Generator, scenario: Scenario, install_id: str,
                  device: tuple[str, str, float, float], manifest: dict[str, Any],
                  start: datetime) -> list[dict[str, Any]]:
    """What one device reports after receiving ``manifest`` (its arm, version and variant)."""
    name, platform, _, base_ms = device
    arm = manifest.get("arm")
    treated = arm == "treatment"
    fields = {"install_id": install_id, "model": MODEL, "version": manifest["version"],
              "variant": manifest["variant"], "device_model": name, "platform": platform}
    if manifest.get("experiment"):
        fields |= {"experiment": manifest["experiment"], "arm": arm}
    clock = [start]

    def emit(kind: str, **extra: Any) -> dict[str, Any]:
        clock[0] += timedelta(seconds=float(rng.exponential(30)))
        return {"id": str(uuid.UUID(bytes=rng.bytes(16), version=4)), "kind": kind,
                "ts": _ts(clock[0]), **fields, **extra}

    size = manifest["artifact"]["length"]
    out = [emit("download_started", bytes=size)]
    if rng.random() < scenario.download_failure:
        out.append(emit("download_failed", error="connection_failed", seconds=2.0))
        if rng.random() < 0.5:
            return out  # never retried (app uninstalled, never back online)
        out.append(emit("download_started", bytes=size))
    out.append(emit("download_finished", bytes=size, seconds=round(float(rng.uniform(0.2, 3)), 3)))
    if rng.random() < scenario.install_failure[int(treated)]:
        out.append(emit("install_failed", error="model_load_failed"))
        return out
    out.append(emit("install_ok"))
    if rng.random() >= scenario.active:
        return out
    # Device-level speed (thermal state, OS build...) times the arm's effect, then per-run noise.
    device_ms = base_ms * math.exp(rng.normal(0, 0.25)) * (scenario.latency_ratio if treated else 1)
    accuracy = scenario.accuracy[int(treated)]
    for _ in range(int(rng.poisson(scenario.inferences))):
        extra: dict[str, Any] = {"latency_ms": round(device_ms * math.exp(rng.normal(0, 0.3)), 3)}
        if rng.random() < 0.3:  # some inferences get user feedback
            extra["correct"] = bool(rng.random() < accuracy)
        out.append(emit("inference", **extra))
    if rng.random() < scenario.crash:
        out.append(emit("crash", error="SIGABRT in interpreter"))
    return out


def run_devices(api: Any, scenario: Scenario, *, batch: int = 1000,
                keep: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, int], int]:
    """Every device asks for its manifest, then reports; events go out in full batches.

    Args:
        keep: If given, filled with ``install_id -> {"arm", "device", "events"}`` so a test
            can recompute the report's inputs independently.

    Returns (devices per arm, events sent).
    """
    rng = np.random.default_rng(scenario.seed)
    shares = np.array([d[2] for d in DEVICE_MODELS])
    start = datetime.now(UTC)
    enrolled: dict[str, int] = {}
    pending: list[dict[str, Any]] = []
    sent = 0

    def flush() -> None:
        nonlocal sent, pending
        status, body = api.post("/v1/telemetry", {"events": pending})
        assert status == 200 and not body["rejected"], body
        sent += body["accepted"]
        pending = []

    for _ in range(scenario.devices):
        install_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        device = DEVICE_MODELS[int(rng.choice(len(DEVICE_MODELS), p=shares))]
        status, manifest = api.get("/v1/manifest", {
            "model": MODEL, "channel": CHANNEL, "install_id": install_id,
            "platform": device[1], "device_model": device[0], "app_version": "3.0.0"})
        assert status == 200, (status, manifest)
        arm = manifest.get("arm") or "(none)"
        enrolled[arm] = enrolled.get(arm, 0) + 1
        events = device_events(rng, scenario, install_id, device, manifest, start)
        if keep is not None:
            keep[install_id] = {"arm": manifest.get("arm"), "device": device[0], "events": events}
        pending += events
        if len(pending) >= batch:
            tail = pending[batch:]
            pending = pending[:batch]
            flush()
            pending = tail
    while pending:
        tail = pending[batch:]
        pending = pending[:batch]
        flush()
        pending = tail
    return enrolled, sent


def simulate(scenario: Scenario, *, transport: str = "inprocess", database_url: str = "",
             data_dir: Path | None = None) -> Outcome:
    """Run one experiment end to end and return its report."""
    from registry.app import create_app
    from registry.config import Settings

    with tempfile.TemporaryDirectory(prefix="md-sim-") as tmp:
        settings = Settings.load({"data_dir": Path(data_dir or tmp), "database_url": database_url},
                                 environ={})
        app = create_app(settings)
        services = app.extensions["modeldrop"]
        token = (Path(settings.data_dir) / "admin-token").read_text().strip()
        try:
            with (serve(app) if transport == "http" else _nothing()) as url:
                api = Http(url) if transport == "http" else InProcess(app)
                t0 = time.perf_counter()
                setup_experiment(services, api, token, scenario)
                t1 = time.perf_counter()
                enrolled, events = run_devices(api, scenario)
                t2 = time.perf_counter()
                status, report = api.get(f"/v1/experiments/{EXPERIMENT}/report", token=token)
                assert status == 200, report
                t3 = time.perf_counter()
        finally:
            services.store.engine.dispose()
    return Outcome(report, enrolled, events,
                   {"setup": t1 - t0, "devices": t2 - t1, "report": t3 - t2})


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def summary(outcome: Outcome) -> str:
    """The verdicts as a table for people."""
    from registry.cli._reports import render_text

    lines = [render_text(outcome.report), "",
             f"devices per arm: {outcome.enrolled}; events stored: {outcome.events}; "
             + ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=Scenario.devices)
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    parser.add_argument("--no-effect", action="store_true", help="Same model in both arms.")
    parser.add_argument("--transport", choices=("inprocess", "http"), default="inprocess")
    parser.add_argument("--database-url", default="", help="e.g. postgresql://postgres@127.0.0.1/sim")
    parser.add_argument("--json", action="store_true", help="Print the report JSON.")
    args = parser.parse_args(argv)
    scenario = Scenario(devices=args.devices, seed=args.seed)
    if args.no_effect:
        scenario = scenario.no_effect()
    print(f"scenario: {scenario}", file=sys.stderr)
    outcome = simulate(scenario, transport=args.transport, database_url=args.database_url)
    if args.json:
        print(json.dumps(outcome.report, indent=2))
    else:
        print(summary(outcome))
        print("\ntreatment verdicts:", json.dumps(outcome.verdicts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
