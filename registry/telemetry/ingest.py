"""Validation of telemetry batches (``POST /v1/telemetry``): pure, no I/O.

Devices have no API tokens, so this endpoint is public and everything in the body is
untrusted. The rule is **partial acceptance**:

* a body that is not ``{"events": [...]}`` with at most ``max_events`` entries is refused as a
  whole (400/413) and nothing is stored — the client has a bug or is not a ModelDrop client;
* otherwise every event is checked on its own: good events are stored, bad ones are reported
  by index (``{"index", "field", "error"}``) and dropped. One malformed event from one old
  app build must not cost the other 999 events of the batch, and a device cannot fix an event
  it already recorded, so a re-send would fail the same way forever.

Validation is strict so that whatever reaches the database can never fail the batch's single
INSERT on either SQLite or PostgreSQL: strings are length-limited, free of control characters
and NUL (PostgreSQL rejects ``\\x00`` in text) and encodable as UTF-8 (a lone surrogate from
``"\\ud800"`` in JSON would make the driver raise), integers fit a 32-bit column, floats are
finite. Unknown fields are rejected rather than ignored: the field names are the contract
(docs/wire-format.md), and a misspelt ``latency`` silently stored as an inference without
latency would be worse than a visible rejection.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from registry.delivery.bucketing import validate_install_id
from registry.delivery.errors import InvalidInstallIdError
from registry.delivery.targeting import PLATFORMS
from registry.errors import ValidationError
from registry.schemas import NAME_RE
from registry.telemetry.errors import TelemetryBatchTooLargeError

__all__ = [
    "COLUMNS",
    "EVENT_KINDS",
    "MAX_LATENCY_MS",
    "Rejection",
    "ValidatedBatch",
    "parse_rfc3339",
    "validate_batch",
    "validate_event",
]

EVENT_KINDS = frozenset({"download_started", "download_finished", "download_failed",
                         "install_ok", "install_failed", "inference", "crash"})
_DOWNLOADS = frozenset({"download_started", "download_finished", "download_failed"})
_FAILURES = frozenset({"download_failed", "install_failed", "crash"})

#: Fields every event may carry, and the extra fields allowed per kind.
_COMMON = frozenset({"id", "kind", "install_id", "ts", "model", "version", "variant",
                     "experiment", "arm", "device_model", "platform",
                     # sent by devices that decide locally (resolve="local"): the decision's
                     # channel and release counter, which the service checks, not stores
                     "channel", "release_counter"})
_CHANNEL = re.compile(r"[a-z0-9-]{1,32}")
_KIND_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(
        ({"bytes", "seconds"} if kind in _DOWNLOADS else set())
        | ({"error"} if kind in _FAILURES else set())
        | ({"latency_ms", "correct"} if kind == "inference" else set()))
    for kind in EVENT_KINDS
}

#: Columns of ``telemetry_events`` written per event (all present in every row, so a batch
#: is one multi-row INSERT with a fixed column list).
COLUMNS = ("event_id", "kind", "install_id", "ts", "model", "version", "variant", "experiment",
           "arm", "device_model", "platform", "latency_ms", "correct", "bytes", "seconds",
           "error", "received_at", "unserved")

MAX_LATENCY_MS = 3_600_000.0  # one hour: anything slower is a clock bug, not an inference
_MAX_INT32 = 2**31 - 1  # version is a 32-bit INTEGER column on PostgreSQL
_MAX_INT64 = 2**63 - 1  # bytes is BIGINT (migration 0002)
_MAX_LABEL = 128  # characters of a device model (the manifest query allows as many)
_MAX_ERROR = 1000  # characters of a failure description (the SDK sends codes, crashes <= 500)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})")
_VARIANT = NAME_RE  # catalogue names such as "tflite-int8-dynamic" fit the model-name rule
_ARM = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # registry.delivery.experiments.ARM_NAME_RE


@dataclass(frozen=True)
class Rejection:
    """One event that was not stored: its position in the batch, the field and why."""

    index: int
    field: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "error": self.error}


@dataclass
class ValidatedBatch:
    """The rows to insert (first occurrence of each event id) and what was refused.

    ``repeats`` counts events whose id appeared earlier in the same batch: they are
    duplicates by definition and are never sent to the database.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    # local decisions the events report (resolve="local"), checked by the service
    decisions: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    repeats: int = 0


class _Bad(Exception):
    def __init__(self, field_name: str, error: str) -> None:
        super().__init__(error)
        self.field, self.error = field_name, error


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 timestamp with an explicit offset (``Z`` or ``±hh:mm``), as UTC.

    Stricter than ``datetime.fromisoformat``: a date alone, a missing offset (a naive local
    time means nothing once it left the device) or the ISO basic format are refused.
    Fractions beyond microseconds are truncated.

    Raises:
        ValueError: with a message for people.
    """
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 string such as 2026-11-27T14:00:00Z")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise ValueError("must be RFC 3339 with a time zone, e.g. 2026-11-27T14:00:00Z")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    try:
        if offset in ("Z", "z"):
            tz = UTC
        else:
            sign = 1 if offset[0] == "+" else -1
            hh, mm = int(offset[1:3]), int(offset[4:6])
            if hh > 23 or mm > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        ts = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                      micro, tzinfo=tz)
        return ts.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"is not a valid date and time ({e})") from None


def _text(event: dict, name: str, *, pattern: re.Pattern | None = None, max_len: int,
          required: bool = False, multiline: bool = False) -> str | None:
    value = event.get(name)
    if value is None:
        if required:
            raise _Bad(name, "is required")
        return None
    if not isinstance(value, str):
        raise _Bad(name, "must be a string")
    if not value or len(value) > max_len:
        raise _Bad(name, f"must be 1 to {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(name, "must be valid Unicode (no lone surrogates)") from None
    if pattern is not None:
        if pattern.fullmatch(value) is None:
            raise _Bad(name, f"must match {pattern.pattern}")
    elif not (value.isprintable() or multiline and all(
            c.isprintable() or c in "\n\r\t" for c in value)):
        raise _Bad(name, "must not contain control characters"
                   + (" other than newlines and tabs" if multiline else ""))
    return value


def _int(event: dict, name: str, *, lo: int, hi: int = _MAX_INT32) -> int | None:
    value = event.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(name, "must be an integer")
    if not lo <= value <= hi:
        raise _Bad(name, f"must be between {lo} and {hi}")
    return value


def _float(event: dict, name: str, *, positive: bool, hi: float) -> float | None:
    value = event.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(name, "must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise _Bad(name, "must be a finite number")
    if (value <= 0 if positive else value < 0) or value > hi:
        raise _Bad(name, f"must be {'>' if positive else '>='} 0 and at most {hi:g}")
    return value


def _event_id(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("id", "is required: a UUID string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise _Bad("id", "must be a UUID such as 0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c") from None
    if len(value) != 36:  # uuid.UUID also takes braces, "urn:uuid:" and bare hex
        raise _Bad("id", "must be a UUID in its 36-character hyphenated form")
    return str(parsed)  # lowercase: the same UUID in another case is the same event


def validate_event(event: object, received_at: datetime) -> dict[str, Any]:
    """Check one event and return its ``telemetry_events`` row values.

    Raises:
        _Bad: (internal) the first problem found, naming the field.
    """
    if not isinstance(event, dict):
        raise _Bad("event", "must be a JSON object")
    event_id = _event_id(event.get("id"))
    kind = event.get("kind")
    if kind not in EVENT_KINDS:
        raise _Bad("kind", f"must be one of {', '.join(sorted(EVENT_KINDS))}")
    # A null field is an absent field (ports may serialise optionals as null).
    unknown = sorted({k for k, v in event.items() if v is not None} - _COMMON - _KIND_FIELDS[kind])
    if unknown:
        name = unknown[0]
        allowed_somewhere = any(name in f for f in _KIND_FIELDS.values())
        raise _Bad(name, f"is not a field of {kind!r} events" if allowed_somewhere
                   else "unknown field (see docs/wire-format.md)")
    try:
        install_id = validate_install_id(event.get("install_id"))
    except InvalidInstallIdError as e:
        raise _Bad("install_id", e.detail) from None
    try:
        ts = parse_rfc3339(event.get("ts"))
    except ValueError as e:
        raise _Bad("ts", str(e)) from None
    model = _text(event, "model", pattern=NAME_RE, max_len=64, required=True)
    experiment = _text(event, "experiment", pattern=NAME_RE, max_len=64)
    arm = _text(event, "arm", pattern=_ARM, max_len=32)
    if (experiment is None) != (arm is None):
        raise _Bad("arm" if arm is None else "experiment",
                   "experiment and arm come together (both from the manifest) or not at all")
    platform = event.get("platform")
    if platform is not None and platform not in PLATFORMS:
        raise _Bad("platform", f"must be one of {', '.join(PLATFORMS)}")
    correct = event.get("correct")
    if correct is not None and not isinstance(correct, bool):
        raise _Bad("correct", "must be true, false or absent")
    latency = _float(event, "latency_ms", positive=True, hi=MAX_LATENCY_MS)
    if kind == "inference" and latency is None:
        raise _Bad("latency_ms", "is required for inference events")
    return {
        "event_id": event_id, "kind": kind, "install_id": install_id, "ts": ts, "model": model,
        "version": _int(event, "version", lo=1),
        "variant": _text(event, "variant", pattern=_VARIANT, max_len=64),
        "experiment": experiment, "arm": arm,
        "device_model": _text(event, "device_model", max_len=_MAX_LABEL),
        "platform": platform, "latency_ms": latency, "correct": correct,
        "bytes": _int(event, "bytes", lo=0, hi=_MAX_INT64),
        "seconds": _float(event, "seconds", positive=False, hi=86400.0 * 30),
        "error": _text(event, "error", max_len=_MAX_ERROR, multiline=True), "received_at": received_at,
        "unserved": False,  # decided by the service, which can ask the store
    }


def local_decision(event: dict[str, Any], row: dict[str, Any]) -> dict[str, Any] | None:
    """The decision a locally-resolving device says it made (``channel`` and
    ``release_counter`` with the row's model, version, variant, arm), or None; not stored,
    the service recomputes it.

    Raises:
        _Bad: a malformed channel or counter.
    """
    channel = _text(event, "channel", pattern=_CHANNEL, max_len=32)
    counter = _int(event, "release_counter", lo=1)
    if channel is None and counter is None:
        return None
    if channel is None or counter is None:
        raise _Bad("channel" if channel is None else "release_counter",
                   "channel and release_counter come together (a local decision) or not at all")
    return {"model": row["model"], "channel": channel, "release_counter": counter,
            "version": row["version"], "variant": row["variant"],
            "experiment": row["experiment"], "arm": row["arm"],
            "install_id": row["install_id"], "platform": row["platform"]}


def validate_batch(body: object, max_events: int,
                   received_at: datetime | None = None) -> ValidatedBatch:
    """Split a request body into rows to store and per-event rejections.

    Args:
        body: The parsed JSON body.
        max_events: Most events accepted in one request (``settings.max_telemetry_batch``).
        received_at: Server time stamped on every row (defaults to now, UTC).

    Raises:
        ValidationError: the body is not ``{"events": [...]}`` (nothing is stored).
        TelemetryBatchTooLargeError: more than ``max_events`` events (nothing is stored).
    """
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ValidationError('the body must be a JSON object {"events": [...]}', field="events")
    extra = sorted(set(body) - {"events"})
    if extra:
        raise ValidationError(f"unknown top-level field {extra[0]!r}; send only \"events\"",
                              field=extra[0])
    events = body["events"]
    if len(events) > max_events:
        raise TelemetryBatchTooLargeError(
            f"{len(events)} events in one request; send at most {max_events} per batch",
            limit=max_events)
    received_at = received_at or datetime.now(UTC)
    out = ValidatedBatch()
    seen: set[str] = set()
    for index, event in enumerate(events):
        try:
            row = validate_event(event, received_at)
            decision = local_decision(event, row)
        except _Bad as bad:
            out.rejected.append(Rejection(index, bad.field, bad.error))
            continue
        if row["event_id"] in seen:
            out.repeats += 1
            continue
        seen.add(row["event_id"])
        out.rows.append(row)
        if decision is not None:
            out.decisions.append(decision)
    return out
