"""Per-device latency of a version on SQLite and PostgreSQL, checked against numpy, with the
uploaded and reference figures next to it; the variant-choice feed; `modeldrop show`."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers import assert_problem, base_settings

META = {"latency_ms": {"pixel7": 6.0, "iPhone12": 4.2}}
REFERENCE = {"tflite-fp32": {"device_class": "server-x86_64", "p50": 2.5, "p90": 2.9, "runs": 5},
             "tflite-int8-dynamic": {"device_class": "server-x86_64", "p50": 1.7, "p90": 2.0,
                                     "runs": 5}}


def make_version(services, name="digits", metadata=None, number=None):
    """A version with two variants carrying reference latencies, without a converter."""
    sha = uuid.uuid4().hex * 2
    version, _ = services.store.create_version(
        name, sha256=sha, size=10, source_format="keras", filename="m.keras",
        metadata=metadata or {}, eval_sha256=None, actor="tests", number=number)
    vid = services.store.version_id(name, version.version)
    for variant, ref in REFERENCE.items():
        services.store.record_variant(vid, name=variant, format="tflite", sha256=None, size=100,
                                      target_path=None, fidelity={}, reference_latency_ms=ref,
                                      servable=True, reason=None, error=None)
    return version.version, vid


def inference(version, variant, device, ms, **extra):
    return {"id": str(uuid.uuid4()), "kind": "inference", "install_id": f"dev-{uuid.uuid4()}",
            "ts": "2026-11-27T14:00:00Z", "model": "digits", "version": version,
            "variant": variant, "device_model": device, "platform": "android",
            "latency_ms": float(ms), **extra}


@pytest.fixture
def db_app(tmp_path, db_url):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, database_url=db_url))
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


@pytest.fixture
def fleet(db_app):
    """Version 1 with known latencies per (variant, device), plus noise that must not count."""
    services = db_app.extensions["modeldrop"]
    v1, vid = make_version(services, metadata=META)
    v2, _ = make_version(services)
    rng = np.random.default_rng(7)
    truth = {("tflite-fp32", "pixel7"): rng.lognormal(1.5, 0.3, 57),
             ("tflite-int8-dynamic", "pixel7"): rng.lognormal(1.0, 0.2, 31),
             ("tflite-fp32", "Galaxy S23"): np.array([9.5])}
    events = [inference(v1, var, dev, ms) for (var, dev), values in truth.items() for ms in values]
    events += [inference(v2, "tflite-fp32", "pixel7", 100.0) for _ in range(5)]  # other version
    events += [{**inference(v1, "tflite-fp32", "pixel7", 1.0), "kind": "crash",
                "latency_ms": None, "error": "x"}]  # not an inference
    client = db_app.test_client()
    for i in range(0, len(events), 40):
        body = client.post("/v1/telemetry", json={"events": events[i:i + 40]}).get_json()
        assert body["rejected"] == [], body
    return services, v1, vid, truth


def test_latency_table_matches_numpy_with_uploaded_and_reference(db_app, fleet):
    services, v1, _, truth = fleet
    token = services.store.create_token("reader", "t").token
    resp = db_app.test_client().get(f"/v1/models/digits/versions/{v1}/latency",
                                    headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_json()
    items = resp.get_json()["items"]
    # catalogue order of variants, then device; uploaded-only devices last
    assert [(r["variant"], r["device_model"]) for r in items] == [
        ("tflite-fp32", "Galaxy S23"), ("tflite-fp32", "pixel7"),
        ("tflite-int8-dynamic", "pixel7"), (None, "iPhone12")]
    for row in items[:3]:
        values = truth[(row["variant"], row["device_model"])]
        assert row["count"] == len(values)
        expected = np.quantile(values, [0.5, 0.9, 0.99])  # linear = percentile_cont
        assert [row["p50"], row["p90"], row["p99"]] == pytest.approx(expected.tolist(), rel=1e-9)
        assert row["reference_ms"] == REFERENCE[row["variant"]]["p50"]
    assert items[1]["uploaded_ms"] == 6.0 and items[0]["uploaded_ms"] is None
    assert items[3] == {"variant": None, "device_model": "iPhone12", "count": 0, "p50": None,
                        "p90": None, "p99": None, "uploaded_ms": 4.2, "reference_ms": None}


def test_latency_by_device_feeds_variant_choice(fleet):
    services, _, vid, truth = fleet
    table = services.store.latency_by_device(vid)
    assert set(table) == {"tflite-fp32", "tflite-int8-dynamic"}
    assert table["tflite-fp32"] == {"pixel7": pytest.approx(np.median(truth[("tflite-fp32", "pixel7")]))}
    assert set(table["tflite-int8-dynamic"]) == {"pixel7"}
    assert "Galaxy S23" in services.store.latency_by_device(vid, min_samples=1)["tflite-fp32"]
    from registry.delivery import choose_variant

    variants = [{"name": n, "format": "tflite", "size": s, "servable": True, "fidelity": 0.99,
                 "latency_by_device": table.get(n, {})}
                for n, s in (("tflite-fp32", 6000), ("tflite-int8-dynamic", 2400))]
    # measured on pixel7: int8 (median ~e^1.0) beats fp32 (~e^1.5)
    assert choose_variant(variants, "android", device_class="pixel7")["name"] == "tflite-int8-dynamic"


def test_latency_needs_a_reader_and_an_existing_version(app, anon_api, api):
    make_version(app.extensions["modeldrop"])
    assert_problem(anon_api.get("/v1/models/digits/versions/1/latency"), 401, "unauthenticated")
    assert_problem(api.get("/v1/models/digits/versions/9/latency"), 404, "version_not_found")
    assert_problem(api.get("/v1/models/nope/versions/1/latency"), 404, "model_not_found")
    empty = api.get("/v1/models/digits/versions/1/latency").get_json()
    assert empty["items"] == [] and empty["reference"]["tflite-fp32"]["p50"] == 2.5


def test_modeldrop_show_prints_the_device_table(app, live_server, reader_token):
    from registry.cli import main

    services = app.extensions["modeldrop"]
    v1, _ = make_version(services, metadata=META)
    events = [inference(v1, "tflite-fp32", "pixel7", ms) for ms in (4.0, 5.0, 6.0)]
    assert app.test_client().post("/v1/telemetry", json={"events": events}).status_code == 200
    result = CliRunner().invoke(main, ["--url", live_server.base_url, "--token", reader_token,
                                       "show", "digits", str(v1)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("VARIANT") and "DEVICE" in line)
    assert "p50 ms" in lines[header] and "UPLOADED ms" in lines[header]
    row = next(line for line in lines[header:] if "pixel7" in line).split()
    assert row == ["tflite-fp32", "pixel7", "3", "5", "5.8", "5.98", "6"]
