"""Telemetry: wire-format events, on-disk outbox, batches, retries, idempotent resends."""

from __future__ import annotations

import re
import uuid

import pytest

from client_sdk import LocalModel
from tests.sdk_origin import Fault, fast_config, make_client

MODEL, CHANNEL = "digits", "production"
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_COMMON = {"id", "kind", "install_id", "ts", "model", "version", "variant", "platform",
           "device_model"}


@pytest.fixture
def installed(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 4, "tflite-int8-dynamic", tflite_models["v1"],
                   experiment="digits-v4-vs-v3", arm="treatment")
    client = make_client(origin, tmp_path)
    model = client.get_model(MODEL, CHANNEL)
    client.wait_for_background(5)  # the post-install telemetry send
    yield client, model
    client.close()


def test_update_events_follow_the_wire_format(installed, origin):
    client, model = installed
    client.flush_telemetry()
    events = sorted(origin.telemetry_events.values(), key=lambda e: e["ts"])
    kinds = [e["kind"] for e in events]
    assert sorted(kinds) == sorted(["download_started", "download_finished", "install_ok"])
    for event in events:
        assert _COMMON <= event.keys(), event
        uuid.UUID(event["id"])
        assert _TS.fullmatch(event["ts"])
        assert event["install_id"] == client.install_id
        assert (event["model"], event["version"], event["variant"], event["experiment"],
                event["arm"]) == (MODEL, 4, "tflite-int8-dynamic", "digits-v4-vs-v3",
                                  "treatment")
        assert (event["platform"], event["device_model"]) == ("android", "pixel7")
    finished = next(e for e in events if e["kind"] == "download_finished")
    assert finished["bytes"] == model.size and finished["seconds"] >= 0


def test_failed_download_is_reported_with_its_code(installed, origin, tflite_models):
    client, _ = installed
    origin.release(MODEL, CHANNEL, 5, "tflite-int8-dynamic", tflite_models["v2"])
    origin.faults["artifact"] = Fault("corrupt")
    client.get_model(MODEL, CHANNEL)
    failed = [e for e in client.pending_telemetry() if e["kind"] == "download_failed"]
    assert failed and failed[-1]["error"] == "hash_mismatch" and failed[-1]["version"] == 5
    assert "seconds" in failed[-1]


def test_inference_and_crash_events(installed):
    client, model = installed
    client.flush_telemetry()
    client.report_inference(model, latency_ms=4.1, correct=True)
    client.report_inference(model, latency_ms=3)
    client.report_crash(model, error="SIGSEGV in delegate")
    events = client.pending_telemetry()
    assert [e["kind"] for e in events] == ["inference", "inference", "crash"]
    assert events[0]["latency_ms"] == 4.1 and events[0]["correct"] is True
    assert events[1]["latency_ms"] == 3.0 and "correct" not in events[1]
    assert events[2]["error"] == "SIGSEGV in delegate"


def test_events_survive_a_restart_until_sent(installed, origin, tmp_path):
    client, model = installed
    client.flush_telemetry()
    origin.faults["telemetry"] = Fault("status", 503)
    for _ in range(3):
        client.report_inference(model, latency_ms=1.0)
    result = client.flush_telemetry()
    assert result.sent == 0 and result.pending == 3 and result.error.code == "server_error"
    ids = [e["id"] for e in client.pending_telemetry()]
    client.close()
    del origin.faults["telemetry"]
    reopened = make_client(origin, tmp_path)
    assert [e["id"] for e in reopened.pending_telemetry()] == ids
    result = reopened.flush_telemetry()
    assert (result.sent, result.pending, result.error) == (3, 0, None)
    assert set(ids) <= origin.telemetry_events.keys()


def test_transient_failures_are_retried_with_backoff_by_urllib3(installed, origin):
    client, model = installed
    client.flush_telemetry()
    posts_before = len(origin.requests_to("/v1/telemetry"))
    origin.faults["telemetry"] = Fault("status", 503, times=1)
    client.report_inference(model, latency_ms=2.0)
    result = client.flush_telemetry()
    assert (result.sent, result.pending) == (1, 0)
    assert len(origin.requests_to("/v1/telemetry")) == posts_before + 2  # 503, then 202


def test_resent_batches_are_idempotent_by_event_id(installed, origin):
    client, model = installed
    client.flush_telemetry()
    client.report_inference(model, latency_ms=2.0)
    (event,) = client.pending_telemetry()
    # the server stored the batch but the answer was lost: the same ids come again
    origin.telemetry_events[event["id"]] = event
    origin.faults["telemetry"] = Fault("status", 502, times=2)  # outlasts one retry
    assert client.flush_telemetry().pending == 1
    assert client.flush_telemetry().sent == 1
    assert list(origin.telemetry_events).count(event["id"]) == 1


def test_batches_hold_at_most_1000_events(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path)
    model = client.get_model(MODEL, CHANNEL)
    client.wait_for_background(5)
    client.flush_telemetry()
    origin.telemetry_posts.clear()
    for i in range(2500):
        client.report_inference(model, latency_ms=float(i + 1))
    result = client.flush_telemetry()
    assert result.sent == 2500 and origin.telemetry_posts == [1000, 1000, 500]
    latencies = [e["latency_ms"] for e in origin.telemetry_events.values()
                 if e["kind"] == "inference"]
    assert latencies == [float(i + 1) for i in range(2500)]  # oldest first, none lost


def test_a_rejected_event_is_isolated_and_dropped(installed, origin):
    client, model = installed
    client.flush_telemetry()
    for i in range(7):
        client.report_inference(model, latency_ms=float(i + 1))
    # an event the server will never accept (e.g. written by an older, buggy SDK)
    client._telemetry.record("crash", {"poison": True, "model": MODEL})
    client.report_inference(model, latency_ms=7.0)
    result = client.flush_telemetry()
    assert (result.sent, result.dropped, result.pending) == (8, 1, 0)


def test_events_the_server_drops_one_by_one_are_counted(installed, origin):
    client, model = installed
    client.flush_telemetry()
    client.report_inference(model, latency_ms=0)  # the server requires a positive latency
    client.report_inference(model, latency_ms=1.5)
    result = client.flush_telemetry()
    assert (result.sent, result.dropped, result.pending) == (1, 1, 0)


def test_outbox_is_capped(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path, config=fast_config(telemetry_max_outbox=50))
    model = client.get_model(MODEL, CHANNEL)
    client.wait_for_background(5)
    client.flush_telemetry()
    for i in range(80):
        client.report_inference(model, latency_ms=float(i + 1))
    events = client.pending_telemetry()
    assert len(events) == 50 and events[0]["latency_ms"] == 31.0  # oldest dropped


def test_a_full_batch_is_sent_in_the_background(origin, tmp_path, tflite_models):
    origin.release(MODEL, CHANNEL, 1, "tflite-fp32", tflite_models["v1"])
    client = make_client(origin, tmp_path, config=fast_config(telemetry_batch_size=5))
    model = client.get_model(MODEL, CHANNEL)
    client.wait_for_background(5)
    client.flush_telemetry()
    for i in range(5):
        client.report_inference(model, latency_ms=float(i + 1))
    client.wait_for_background(10)
    assert client.pending_telemetry() == []
    assert sum(e["kind"] == "inference" for e in origin.telemetry_events.values()) == 5


def test_reporting_never_raises_while_offline(tmp_path, origin):
    client = make_client(origin, tmp_path)
    offline = type(client)("http://127.0.0.1:9", tmp_path / "cache",
                           trusted_root=origin.trusted_root(), device=client.device,
                           config=fast_config(telemetry_batch_size=1))
    model = LocalModel(name=MODEL, channel=CHANNEL, path=tmp_path / "x", version=1,
                       variant="v", format="tflite", sha256="0" * 64, size=1,
                       release_counter=1)
    for _ in range(3):
        offline.report_inference(model, latency_ms=1.0)  # each triggers a (failing) send
    offline.wait_for_background(10)
    result = offline.flush_telemetry()
    assert result.error is not None and result.error.code == "network_error"
    assert result.pending == 3

