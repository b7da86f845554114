"""Forged telemetry cannot halt a release (issue 13), on SQLite and PostgreSQL, over real HTTP.

The attack of the issue: anyone, with no token, posts ``crash`` events for made-up install
ids against a guarded production release. Guardrails now count only install ids the server
served that release's artifact (a manifest it answered), each device once, and only once at
least ``guardrail_min_devices`` distinct served devices reported; events from install ids it
never served are stored, flagged, left out of guardrails and reports, and counted in the
report. ``POST /v1/telemetry`` has per-client-IP and per-install-id event budgets.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from registry.config import Settings
from registry.delivery.guardrail_check import check_guardrails
from registry.telemetry.metrics import experiment_arm_metrics, release_metrics
from tests.live import serve_app
from tests.makers import fleet_ids, make_ready_version, telemetry_event

MODEL, CHANNEL = "digits", "production"
GUARD = {"expression": "crash_rate < 0.05", "min_samples": 3}


def crash(install_id: str, version: int = 1, **fields) -> dict:
    values = {"experiment": None, "arm": None, **fields}
    return telemetry_event(kind="crash", install_id=install_id, model=MODEL, version=version,
                           variant="tflite-fp32", latency_ms=None, correct=None,
                           error="SIGSEGV", **values)


def inference(install_id: str, version: int = 1) -> dict:
    return telemetry_event(install_id=install_id, model=MODEL, version=version,
                           variant="tflite-fp32", experiment=None, arm=None)


@pytest.fixture
def server(tmp_path, db_url):
    from registry.app import create_app

    settings = Settings.load({"data_dir": tmp_path / "data", "testing": True,
                              "database_url": db_url, "guardrail_min_devices": 5,
                              "telemetry_events_per_install": 400,
                              "telemetry_events_per_ip": 100_000}, environ={})
    app = create_app(settings)
    services = app.extensions["modeldrop"]
    make_ready_version(services, MODEL, variants={"tflite-fp32": {"format": "tflite",
                                                                  "size": 3000}})
    with serve_app(app) as base_url:
        http = requests.Session()
        admin = (tmp_path / "data" / "admin-token").read_text().strip()
        r = http.post(f"{base_url}/v1/models/{MODEL}/releases",
                      json={"version": 1, "channel": CHANNEL, "guardrails": [GUARD]},
                      headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert r.status_code == 201, r.text
        yield base_url, services, http
    services.store.engine.dispose()


def post(http, base_url, events):
    r = http.post(f"{base_url}/v1/telemetry", json={"events": events}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def serve(http, base_url, install_id):
    r = http.get(f"{base_url}/v1/manifest", params={
        "model": MODEL, "channel": CHANNEL, "platform": "android", "install_id": install_id},
        timeout=10)
    assert r.status_code == 200, r.text


def test_forged_crashes_from_unserved_install_ids_never_halt(server):
    base_url, services, http = server
    forged = [crash(str(uuid.uuid4())) for _ in range(300)]  # the attack, no token
    assert post(http, base_url, forged)["accepted"] == 300  # stored (they may be real)
    assert check_guardrails(services) == []
    assert services.store.current_release(MODEL, CHANNEL).state == "active"
    assert release_metrics(services, services.store.current_release(MODEL, CHANNEL)) == {}


def test_one_served_device_counts_once_and_a_few_cannot_trip(server):
    base_url, services, http = server
    devices = fleet_ids(4, "forged-few")
    for d in devices:
        serve(http, base_url, d)
    # 300 crashes from each of four served devices: four devices, one crash each.
    post(http, base_url, [crash(d) for d in devices for _ in range(100)])
    release = services.store.current_release(MODEL, CHANNEL)
    assert release_metrics(services, release) == {}  # 4 < guardrail_min_devices (5)
    assert check_guardrails(services) == []

    # Healthy served devices bring the release over the minimum; the 4 crashing devices
    # of 20 (each counted once, however many events it sent) are a 20% crash rate.
    healthy = fleet_ids(16, "forged-healthy")
    for d in healthy:
        serve(http, base_url, d)
    post(http, base_url, [inference(d) for d in healthy])
    metrics = release_metrics(services, release)
    assert metrics["crash_rate"] == (4 / 20, 20)
    halts = check_guardrails(services)
    assert [(h.kind, h.target) for h in halts] == [("release", f"{MODEL}/{CHANNEL}#1")]


def test_unserved_events_are_flagged_and_the_report_says_how_many(server):
    base_url, services, http = server
    served = fleet_ids(6, "forged-report")
    admin = (services.settings.data_dir / "admin-token").read_text().strip()
    auth = {"Authorization": f"Bearer {admin}"}
    make_ready_version(services, MODEL, variants={"tflite-fp32": {"format": "tflite",
                                                                  "size": 3100}})
    r = http.post(f"{base_url}/v1/experiments", headers=auth, timeout=10, json={
        "name": "digits-ab", "model": MODEL, "channel": CHANNEL, "seed": "forged",
        "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2}],
        "guardrails": [GUARD]})
    assert r.status_code == 201, r.text
    for d in served:
        serve(http, base_url, d)
    arms = services.store.experiment_assignments("digits-ab")
    treated = next(d for d in served if arms[d] == "treatment")
    strangers = [str(uuid.uuid4()) for _ in range(7)]
    post(http, base_url, [crash(s, version=2, experiment="digits-ab", arm="treatment")
                          for s in strangers for _ in range(3)]
         + [crash(treated, version=2, experiment="digits-ab", arm="treatment")])
    report = http.get(f"{base_url}/v1/experiments/digits-ab/report", headers=auth,
                      timeout=30).json()
    assert report["source"]["excluded_unserved_events"] == 21
    assert report["source"]["excluded_unserved_installs"] == 7
    assert any(h["code"] == "telemetry_from_unserved_installs" for h in report["health"])
    with services.store.engine.connect() as conn:
        from sqlalchemy import text
        flagged = dict(conn.execute(text(
            "SELECT unserved, count(*) FROM telemetry_events GROUP BY unserved")).all())
    assert {bool(k): v for k, v in flagged.items()} == {True: 21, False: 1}
    per_arm = experiment_arm_metrics(services, "digits-ab")
    for arm, metrics in per_arm.items():  # an arm under guardrail_min_devices has no data
        assert (metrics == {}) == (sum(a == arm for a in arms.values()) < 5)


def test_budgets_per_install_id_and_per_client_ip(server):
    base_url, services, http = server
    noisy, quiet = fleet_ids(2, "forged-budget")
    body = post(http, base_url, [inference(noisy) for _ in range(450)] + [inference(quiet)])
    assert body["accepted"] == 1  # the noisy device's 450 are over its 400 per hour
    assert len(body["rejected"]) == 450
    assert {r["field"] for r in body["rejected"]} == {"install_id"}
    assert sorted(r["index"] for r in body["rejected"]) == list(range(450))
    assert post(http, base_url, [inference(quiet)])["accepted"] == 1

    from registry.ratelimit import TelemetryBudget

    small = TelemetryBudget(services.settings.replace(telemetry_events_per_ip=1000))
    small.charge_ip("192.0.2.1", 1000)
    from registry.errors import RateLimitedError

    with pytest.raises(RateLimitedError) as e:
        small.charge_ip("192.0.2.1", 1)
    assert 1 <= e.value.retry_after <= 60
    small.charge_ip("192.0.2.2", 1)  # another IP has its own budget


def test_an_ip_over_its_budget_gets_429_with_retry_after(tmp_path):
    from registry.app import create_app

    app = create_app(Settings.load({"data_dir": tmp_path / "data", "testing": True,
                                    "telemetry_events_per_ip": 50}, environ={}))
    with serve_app(app) as base_url:
        events = [inference(d) for d in fleet_ids(50, "forged-ip")]
        assert requests.post(f"{base_url}/v1/telemetry", json={"events": events},
                             timeout=10).status_code == 200
        r = requests.post(f"{base_url}/v1/telemetry", json={"events": [inference(
            str(uuid.uuid4()))]}, timeout=10)
    assert r.status_code == 429
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    app.extensions["modeldrop"].store.engine.dispose()


def test_budgets_in_redis_are_shared_by_web_processes():
    """The scale mode: two web processes (two budgets) on one Redis count together."""
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    from registry.errors import RateLimitedError
    from registry.ratelimit import TelemetryBudget

    settings = Settings.load({"rate_limit_storage_url": url, "telemetry_events_per_ip": 10,
                              "telemetry_events_per_install": 5}, environ={})
    ip = f"198.51.100.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    install = str(uuid.uuid4())
    one, two = TelemetryBudget(settings), TelemetryBudget(settings)
    one.charge_ip(ip, 6)
    with pytest.raises(RateLimitedError):
        two.charge_ip(ip, 6)
    assert one.over_budget([install] * 3) == set()
    assert two.over_budget([install] * 3) == {install}


@pytest.mark.parametrize("flush", ["after_the_telemetry", "between_its_check_and_insert"])
def test_telemetry_that_races_another_process_writing_the_served_rows_still_counts(server, flush,
                                                                                   monkeypatch):
    """Served rows are buffered per web process (registry/store/_served.py): a device's
    telemetry can reach another process before the one that answered its manifest has
    written the row. Whichever commits second makes the events count; forged ones never do."""
    from registry.app import create_app
    from registry.store import _served

    base_url, services, http = server
    # the test decides when the other process writes (its thread would within 0.1 s)
    monkeypatch.setattr(_served, "_FLUSH_INTERVAL", 3600)
    monkeypatch.setattr(_served, "_IDLE_ROUNDS", 1)  # woken at the end, it exits
    other_app = create_app(services.settings)  # a second web process on the same database
    other = other_app.extensions["modeldrop"]
    crashing, healthy = fleet_ids(4, "race-crash"), fleet_ids(16, "race-healthy")
    forged = str(uuid.uuid4())
    try:
        with serve_app(other_app) as other_url:
            for d in crashing + healthy:
                serve(http, other_url, d)
            if flush == "between_its_check_and_insert":
                # the ingesting process has already looked the pairs up (not served yet) when
                # the other process commits its rows; its events are inserted after that
                insert = services.store.insert_telemetry

                def insert_after_the_flush(rows):
                    assert other.store.flush_served() == 20
                    return insert(rows)

                monkeypatch.setattr(services.store, "insert_telemetry", insert_after_the_flush)
            post(http, base_url, [crash(d) for d in crashing + [forged]]
                 + [inference(d) for d in healthy])
            release = services.store.current_release(MODEL, CHANNEL)
            if flush == "after_the_telemetry":
                assert release_metrics(services, release) == {}  # flagged: not served yet
                assert other.store.flush_served() == 20
            metrics = release_metrics(services, release)
            assert metrics["crash_rate"] == (4 / 20, 20)  # the forged crash is not among them
            halts = check_guardrails(services)
            assert [(h.kind, h.target) for h in halts] == [("release", f"{MODEL}/{CHANNEL}#1")]
    finally:
        buffer = other.store._served_buffer()
        thread = buffer.thread
        buffer.wake.set()  # its idle thread exits
        if thread is not None:
            thread.join(timeout=30)
        other.store.engine.dispose()
