"""POST /v1/telemetry on SQLite and PostgreSQL: partial acceptance, idempotency, limits, and the
real SDK sender against a real server."""

from __future__ import annotations

import json

import pytest

from tests.helpers import assert_problem, base_settings
from tests.live import serve_app
from tests.makers import EVENT_INSTALL_ID as INSTALL
from tests.makers import telemetry_event as event


@pytest.fixture
def db_app(tmp_path, db_url):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, database_url=db_url, max_telemetry_batch=50))
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


@pytest.fixture
def client(db_app):
    return db_app.test_client()  # no token: devices have none


def post(client, events):
    return client.post("/v1/telemetry", json={"events": events})


def test_partial_acceptance_and_idempotent_resend(db_app, client):
    store = db_app.extensions["modeldrop"].store
    events = [event(), event(latency_ms=-1.0), event(kind="crash", latency_ms=None, correct=None,
                                                     error="boom"), event(version="4")]
    resp = post(client, events)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"accepted": 2, "duplicates": 0, "rejected": [
        {"index": 1, "field": "latency_ms", "error": "must be > 0 and at most 3.6e+06"},
        {"index": 3, "field": "version", "error": "must be an integer"}]}
    assert store.count_telemetry() == 2
    # the same batch again (a lost response): nothing new, nothing counted twice
    again = post(client, events).get_json()
    assert (again["accepted"], again["duplicates"], len(again["rejected"])) == (0, 2, 2)
    # a batch overlapping the first, with an id repeated inside it
    fresh = event()
    mixed = post(client, [events[0], fresh, fresh]).get_json()
    assert (mixed["accepted"], mixed["duplicates"], mixed["rejected"]) == (1, 2, [])
    assert store.count_telemetry() == 3


def test_full_batch_of_the_limit_in_one_request(db_app, client):
    events = [event(install_id=f"device-{i:04d}") for i in range(50)]
    assert post(client, events).get_json() == {"accepted": 50, "duplicates": 0, "rejected": []}
    body = assert_problem(post(client, events + [event()]), 413, "telemetry_batch_too_large")
    assert body["limit"] == 50
    assert db_app.extensions["modeldrop"].store.count_telemetry() == 50


def test_extreme_but_valid_values_store_on_both_databases(db_app, client):
    """What validation lets through must never fail the batch INSERT (PostgreSQL is strict)."""
    events = [
        event(device_model="Galaxy S23 Ultra \u2122 \u00e9\u00e8 \U0001f4f1" + "x" * 40,
              arm="a" * 32, experiment="e" * 64, model="m" * 64, version=2**31 - 1,
              latency_ms=3_600_000.0, ts="9999-12-31T23:59:59.999999999Z"),
        event(kind="download_finished", latency_ms=None, correct=None, bytes=3 * 2**30,
              seconds=0.0, ts="0001-01-01T00:00:00Z"),
        event(kind="crash", latency_ms=None, correct=None,
              error="Traceback\n\t\u00fcnicode \u2603" + "y" * 980),
        event(latency_ms=1e-300, correct=False),
    ]
    resp = post(client, events).get_json()
    assert resp == {"accepted": 4, "duplicates": 0, "rejected": []}


@pytest.mark.parametrize("raw,status,code", [
    (b"{not json", 400, "validation_error"),
    (b"\xff\xfe", 400, "validation_error"),
    (b'{"events": {}}', 400, "validation_error"),
    (b"[" * 100_000, 400, "validation_error"),
    (b'{"events": [], "more": 1}', 400, "validation_error"),
])
def test_malformed_bodies_store_nothing(app, raw, status, code):
    resp = app.test_client().post("/v1/telemetry", data=raw, content_type="application/json")
    assert_problem(resp, status, code)
    assert app.extensions["modeldrop"].store.count_telemetry() == 0


def test_wrong_media_type_and_oversized_body(app):
    client = app.test_client()
    body = json.dumps({"events": [event()]})
    assert_problem(client.post("/v1/telemetry", data=body, content_type="text/plain"), 415,
                   "unsupported_media_type")
    huge = json.dumps({"events": [event(kind="crash", latency_ms=None, correct=None,
                                        error="z" * 999)] * 10}) + " " * (1000 * 8192)
    assert_problem(client.post("/v1/telemetry", data=huge, content_type="application/json"),
                   413, "telemetry_batch_too_large")
    assert app.extensions["modeldrop"].store.count_telemetry() == 0


def test_sdk_sender_against_the_real_endpoint(tmp_path, db_app):
    """The SDK's outbox flushes into the real server over HTTP; an event the server refuses is
    dropped and counted, not retried forever; a resend after a lost response changes nothing."""
    import requests

    from client_sdk._telemetry import Telemetry
    from client_sdk._types import ClientConfig

    store = db_app.extensions["modeldrop"].store
    with serve_app(db_app) as url:
        outbox = Telemetry(tmp_path / "outbox.sqlite", f"{url}/v1/telemetry", requests.Session(),
                           ClientConfig(telemetry_batch_size=10_000, telemetry_max_batch=20))
        common = {"install_id": INSTALL, "platform": "android", "device_model": "pixel7",
                  "model": "digits", "version": 4, "variant": "tflite-fp32"}
        for i in range(45):
            outbox.record("inference", common | {"latency_ms": 1.0 + i})
        outbox.record("inference", common | {"latency_ms": -5.0})  # refused by the server
        recorded = outbox.pending_events()
        result = outbox.flush()
        # the SDK reads "rejected" from the 200: the bad event is dropped, not retried
        assert (result.sent, result.dropped, result.pending, result.error) == (45, 1, 0, None)
        assert store.count_telemetry() == 45
        # the device re-sends everything (its response was lost): the server already has it
        again = requests.post(f"{url}/v1/telemetry", json={"events": recorded}, timeout=10)
        assert again.status_code == 200
        assert again.json() == {"accepted": 0, "duplicates": 45, "rejected": [
            {"index": 45, "field": "latency_ms", "error": "must be > 0 and at most 3.6e+06"}]}
        assert store.count_telemetry() == 45
