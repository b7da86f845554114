"""Telemetry validation (pure): what a batch may contain, event by event, and what is refused whole."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from registry.errors import ValidationError
from registry.telemetry.errors import TelemetryBatchTooLargeError
from registry.telemetry.ingest import COLUMNS, parse_rfc3339, validate_batch
from tests.makers import EVENT_INSTALL_ID as INSTALL
from tests.makers import telemetry_event as event

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)



def one(e):
    batch = validate_batch({"events": [e]}, 1000, received_at=NOW)
    return batch.rows[0] if batch.rows else batch.rejected[0]


def test_wire_format_example_becomes_a_row():
    from registry.store._telemetry import _INSERT_COLUMNS

    e = event()
    row = one(e)
    assert set(row) == set(COLUMNS) == set(_INSERT_COLUMNS)  # every column of the table
    assert row["event_id"] == e["id"] and row["kind"] == "inference"
    assert row["ts"] == datetime(2026, 11, 27, 14, 0, tzinfo=UTC)
    assert (row["model"], row["version"], row["variant"]) == ("digits", 4, "tflite-int8-dynamic")
    assert (row["experiment"], row["arm"]) == ("digits-v4-vs-v3", "treatment")
    assert (row["latency_ms"], row["correct"], row["bytes"], row["error"]) == (4.1, True, None, None)
    assert row["received_at"] == NOW


@pytest.mark.parametrize("kind,extra", [
    ("download_started", {"bytes": 48213}),
    ("download_finished", {"bytes": 48213, "seconds": 1.25}),
    ("download_failed", {"error": "hash_mismatch", "seconds": 0.5}),
    ("install_ok", {}),
    ("install_failed", {"error": "model_load_failed"}),
    ("crash", {"error": "SIGSEGV in TfLiteInterpreterInvoke"}),
    ("crash", {"error": "Traceback (most recent call last):\n\tFile \"app.py\"\r\n"}),
])
def test_every_kind_with_its_own_fields(kind, extra):
    row = one(event(kind=kind, latency_ms=None, correct=None, **extra))
    assert row["kind"] == kind
    for key, value in extra.items():
        assert row[key] == value


def test_optional_fields_may_be_absent_or_null():
    minimal = {"id": str(uuid.uuid4()), "kind": "install_failed", "install_id": INSTALL,
               "ts": "2026-11-27T14:00:00Z", "model": "digits"}
    assert one(minimal)["version"] is None
    assert one({**minimal, "id": str(uuid.uuid4()), "version": None, "variant": None,
                "experiment": None, "arm": None, "latency_ms": None})["kind"] == "install_failed"


@pytest.mark.parametrize("fields,field,message", [
    ({"kind": "inferences"}, "kind", "must be one of"),
    ({"kind": None}, "kind", "must be one of"),
    ({"id": None}, "id", "UUID"),
    ({"id": "not-a-uuid"}, "id", "UUID"),
    ({"id": "{" + "12345678-1234-5678-1234-567812345678" + "}"}, "id", "36-character"),
    ({"id": 12345}, "id", "UUID"),
    ({"install_id": "ABCDEF12-0000"}, "install_id", "lowercase"),
    ({"install_id": "short"}, "install_id", "lowercase"),
    ({"install_id": None}, "install_id", "lowercase"),
    ({"install_id": "ab\u00e9cdefgh"}, "install_id", "lowercase"),
    ({"ts": "2026-11-27T14:00:00"}, "ts", "time zone"),
    ({"ts": "2026-11-27"}, "ts", "RFC 3339"),
    ({"ts": "20261127T140000Z"}, "ts", "RFC 3339"),
    ({"ts": "2026-02-30T14:00:00Z"}, "ts", "not a valid date"),
    ({"ts": "2026-11-27T14:00:00+25:00"}, "ts", "not a valid date"),
    ({"ts": 1764252000}, "ts", "RFC 3339"),
    ({"ts": None}, "ts", "RFC 3339"),
    ({"model": None}, "model", "required"),
    ({"model": "Digits"}, "model", "must match"),
    ({"model": "a" * 65}, "model", "1 to 64"),
    ({"version": 0}, "version", "between 1"),
    ({"version": "4"}, "version", "integer"),
    ({"version": True}, "version", "integer"),
    ({"version": 4.0}, "version", "integer"),
    ({"version": 2**31}, "version", "between 1"),
    ({"variant": "../x"}, "variant", "must match"),
    ({"experiment": None}, "experiment", "come together"),
    ({"arm": None}, "arm", "come together"),
    ({"arm": "treat\nment"}, "arm", "must match"),
    ({"arm": "Treatment"}, "arm", "must match"),
    ({"arm": "a" * 33}, "arm", "1 to 32"),
    ({"device_model": "pixel\x007"}, "device_model", "control characters"),
    ({"device_model": "pixel\ud8007"}, "device_model", "lone surrogates"),
    ({"device_model": ""}, "device_model", "1 to 128"),
    ({"device_model": "x" * 129}, "device_model", "1 to 128"),
    ({"device_model": 7}, "device_model", "string"),
    ({"platform": "windows"}, "platform", "one of"),
    ({"latency_ms": None}, "latency_ms", "required for inference"),
    ({"latency_ms": 0}, "latency_ms", "> 0"),
    ({"latency_ms": -3.0}, "latency_ms", "> 0"),
    ({"latency_ms": float("nan")}, "latency_ms", "finite"),
    ({"latency_ms": float("inf")}, "latency_ms", "finite"),
    ({"latency_ms": "4.1"}, "latency_ms", "number"),
    ({"latency_ms": True}, "latency_ms", "number"),
    ({"latency_ms": 1e9}, "latency_ms", "at most"),
    ({"correct": 1}, "correct", "true, false"),
    ({"correct": "yes"}, "correct", "true, false"),
    ({"bytes": 10}, "bytes", "not a field of 'inference'"),
    ({"error": "x"}, "error", "not a field of 'inference'"),
    ({"latency": 4.1}, "latency", "unknown field"),
])
def test_bad_event_is_rejected_naming_the_field(fields, field, message):
    rejection = one(event(**fields))
    assert rejection.field == field, rejection
    assert message in rejection.error, rejection
    assert rejection.index == 0


@pytest.mark.parametrize("fields,field", [
    ({"kind": "download_finished", "bytes": -1}, "bytes"),
    ({"kind": "download_finished", "bytes": 2**63}, "bytes"),
    ({"kind": "download_finished", "seconds": -0.1}, "seconds"),
    ({"kind": "download_failed", "error": "e" * 1001}, "error"),
    ({"kind": "crash", "error": "nul\x00byte"}, "error"),
    ({"kind": "install_ok", "latency_ms": 3.0}, "latency_ms"),
])
def test_kind_specific_fields_are_checked(fields, field):
    e = event(**{"latency_ms": None, "correct": None, **fields})
    assert one(e).field == field


def test_non_object_events_are_rejected_by_index():
    batch = validate_batch({"events": [event(), "x", None, [1], event()]}, 1000, received_at=NOW)
    assert len(batch.rows) == 2
    assert [(r.index, r.field) for r in batch.rejected] == [(1, "event"), (2, "event"), (3, "event")]


def test_good_events_survive_bad_neighbours_and_indexes_are_positions():
    events = [event(), event(latency_ms=-1), event(), event(kind="nope"), event()]
    batch = validate_batch({"events": events}, 1000, received_at=NOW)
    assert [r["event_id"] for r in batch.rows] == [events[i]["id"] for i in (0, 2, 4)]
    assert [r.to_dict() for r in batch.rejected] == [
        {"index": 1, "field": "latency_ms", "error": batch.rejected[0].error},
        {"index": 3, "field": "kind", "error": batch.rejected[1].error}]


def test_uuid_is_normalised_to_lowercase_and_repeats_in_a_batch_count_once():
    e = event()
    upper = {**e, "id": e["id"].upper()}
    batch = validate_batch({"events": [e, upper, e]}, 1000, received_at=NOW)
    assert len(batch.rows) == 1 and batch.repeats == 2
    assert batch.rows[0]["event_id"] == e["id"]


@pytest.mark.parametrize("body", [None, [], "x", {}, {"events": {}}, {"events": "x"},
                                  {"events": [], "extra": 1}])
def test_malformed_body_is_refused_whole(body):
    with pytest.raises(ValidationError):
        validate_batch(body, 1000)


def test_batch_limit_is_inclusive():
    assert len(validate_batch({"events": [event() for _ in range(5)]}, 5).rows) == 5
    with pytest.raises(TelemetryBatchTooLargeError) as info:
        validate_batch({"events": [event() for _ in range(6)]}, 5)
    assert info.value.status == 413 and info.value.extra["limit"] == 5


def test_empty_batch_is_fine():
    batch = validate_batch({"events": []}, 1000)
    assert batch.rows == [] and batch.rejected == [] and batch.repeats == 0


@pytest.mark.parametrize("text,expected", [
    ("2026-11-27T14:00:00Z", datetime(2026, 11, 27, 14, 0, tzinfo=UTC)),
    ("2026-11-27t14:00:00z", datetime(2026, 11, 27, 14, 0, tzinfo=UTC)),
    ("2026-11-27T15:30:00+01:30", datetime(2026, 11, 27, 14, 0, tzinfo=UTC)),
    ("2026-11-27T09:00:00-05:00", datetime(2026, 11, 27, 14, 0, tzinfo=UTC)),
    ("2026-11-27T14:00:00.123456789Z", datetime(2026, 11, 27, 14, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-27T14:00:00.5Z", datetime(2026, 11, 27, 14, 0, 0, 500000, tzinfo=UTC)),
])
def test_rfc3339_forms_are_read_as_utc(text, expected):
    parsed = parse_rfc3339(text)
    assert parsed == expected and parsed.utcoffset().total_seconds() == 0


def test_events_the_sdk_records_are_all_valid(tmp_path):
    """Contract: whatever client_sdk writes to its outbox passes server validation."""
    import requests

    from client_sdk._telemetry import Telemetry
    from client_sdk._types import ClientConfig

    config = ClientConfig(telemetry_batch_size=10_000)
    outbox = Telemetry(tmp_path / "t.sqlite", "http://127.0.0.1:9/v1/telemetry",
                       requests.Session(), config)
    common = {"install_id": INSTALL, "platform": "ios", "device_model": "iPhone15,2",
              "model": "digits", "version": 3, "variant": "coreml-fp16",
              "experiment": "digits-v4-vs-v3", "arm": "control"}
    outbox.record("download_started", common | {"bytes": 1000})
    outbox.record("download_finished", common | {"bytes": 1000, "seconds": 0.25})
    outbox.record("download_failed", common | {"error": "hash_mismatch", "seconds": 0.1})
    outbox.record("install_ok", common)
    outbox.record("install_failed", common | {"error": "model_load_failed"})
    outbox.record("install_failed", {"install_id": INSTALL, "platform": "ios",
                                     "device_model": None, "model": "digits",
                                     "error": "model_load_failed"})
    outbox.record("inference", common | {"latency_ms": 3.5, "correct": None})
    outbox.record("inference", common | {"latency_ms": 3.5, "correct": False})
    outbox.record("crash", common | {"error": "x" * 500})
    batch = validate_batch({"events": outbox.pending_events()}, 1000)
    assert batch.rejected == [] and len(batch.rows) == 9


def test_arm_rule_is_the_delivery_rule():
    from registry.delivery.experiments import ARM_NAME_RE
    from registry.telemetry.ingest import _ARM

    assert _ARM.pattern == ARM_NAME_RE.pattern
