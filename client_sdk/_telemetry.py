"""Telemetry: events written to an on-disk outbox first, sent in batches later.

Devices are offline, asleep or killed at any moment, so recording an event is only an
INSERT into a small SQLite file in the state directory (never a network call on the
app's path). Sending takes the oldest events in batches of at most 1,000, POSTs them to
``/v1/telemetry`` through a session whose urllib3 ``Retry`` backs off on 5xx/429 and
connection errors, and deletes them only after a 2xx. Every event carries a uuid, so a
batch re-sent after a lost response is de-duplicated by the server.

A batch the server refuses as invalid (400/413/422) is split in halves until the bad
event is isolated and dropped, so one malformed event cannot block the outbox forever.
The outbox is capped; beyond the cap the oldest events are dropped.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

from ._http import read_body, request, response_error
from ._types import ClientConfig
from .errors import LocalStorageError, ModelDropError

__all__ = ["EVENT_KINDS", "FlushResult", "Telemetry", "utc_now_rfc3339"]

logger = logging.getLogger(__name__)

EVENT_KINDS = frozenset({"download_started", "download_finished", "download_failed",
                         "install_ok", "install_failed", "inference", "crash"})
_SPLIT_STATUSES = frozenset({400, 413, 422})
_MAX_BACKOFF = 3600.0  # seconds


def utc_now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FlushResult:
    """What one :meth:`ModelClient.flush_telemetry` achieved."""

    sent: int
    dropped: int
    pending: int
    error: ModelDropError | None = None


class Telemetry:
    """The outbox plus its sender."""

    def __init__(self, db_path: Path, endpoint: str, session: requests.Session,
                 config: ClientConfig) -> None:
        self._db_path = db_path
        self._endpoint = endpoint
        self._session = session
        self._config = config
        self._db_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._failures = 0
        self._next_attempt = 0.0  # time.monotonic() before which auto-sends are skipped
        self._thread: threading.Thread | None = None
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # One connection for the client's lifetime, used under _db_lock from any thread:
        # recording an event is then a single INSERT, cheap enough for per-frame use.
        self._db = sqlite3.connect(db_path, timeout=10, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable enough for telemetry
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY "
                       "AUTOINCREMENT, id TEXT NOT NULL UNIQUE, body TEXT NOT NULL)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """The shared connection inside a transaction (commit on success)."""
        with self._db:
            yield self._db

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    # -- recording -----------------------------------------------------------------

    def record(self, kind: str, fields: dict[str, Any]) -> str | None:
        """Store one event; returns its id, or None if it could not be stored.

        Never raises: losing a telemetry event must not fail the caller.
        """
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown telemetry kind {kind!r}")
        event = {"id": str(uuid.uuid4()), "kind": kind, "ts": utc_now_rfc3339()}
        event.update({k: v for k, v in fields.items() if v is not None})
        try:
            with self._db_lock, self._connect() as db:
                db.execute("INSERT OR IGNORE INTO outbox (id, body) VALUES (?, ?)",
                           (event["id"], json.dumps(event, sort_keys=True)))
                count = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                excess = count - self._config.telemetry_max_outbox
                if excess > 0:
                    db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox "
                               "ORDER BY seq LIMIT ?)", (excess,))
                    logger.warning("telemetry outbox full: dropped %d oldest events", excess)
        except sqlite3.Error as e:
            logger.warning("could not store telemetry event: %s", e)
            return None
        if count >= self._config.telemetry_batch_size:
            self.flush_in_background()
        return event["id"]

    def pending(self) -> int:
        with self._db_lock, self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def pending_events(self) -> list[dict[str, Any]]:
        """Every stored event, oldest first (for diagnostics and tests)."""
        with self._db_lock, self._connect() as db:
            rows = db.execute("SELECT body FROM outbox ORDER BY seq").fetchall()
        return [json.loads(body) for (body,) in rows]

    # -- sending -------------------------------------------------------------------

    def flush_in_background(self) -> None:
        """Start a sender thread unless one runs or the last failure asks to wait."""
        if time.monotonic() < self._next_attempt:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self.flush, name="modeldrop-telemetry",
                                        daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def sending(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self) -> FlushResult:
        """Send everything in the outbox now, oldest first; never raises."""
        sent = dropped = 0
        error: ModelDropError | None = None
        with self._send_lock:
            while True:
                try:
                    rows = self._oldest(self._config.telemetry_max_batch)
                except sqlite3.Error as e:
                    error = LocalStorageError(f"telemetry outbox: {e}")
                    break
                if not rows:
                    break
                try:
                    ok, bad = self._send(rows)
                except ModelDropError as e:
                    error = e
                    break
                except sqlite3.Error as e:  # outbox unreadable (closed, disk trouble)
                    error = LocalStorageError(f"telemetry outbox: {e}")
                    break
                sent += ok
                dropped += bad
            if error is None:
                self._failures, self._next_attempt = 0, 0.0
            else:
                self._failures += 1
                wait = min(self._config.telemetry_min_interval * 2 ** (self._failures - 1),
                           _MAX_BACKOFF)
                if getattr(error, "retry_after", None):  # the server said how long (429)
                    wait = max(wait, min(error.retry_after, _MAX_BACKOFF))
                self._next_attempt = time.monotonic() + wait
                logger.info("telemetry send failed (%s); next automatic try in %.0f s",
                            error, wait)
        try:
            pending = self.pending()
        except sqlite3.Error:
            pending = -1  # unknown: the outbox cannot be read
        return FlushResult(sent=sent, dropped=dropped, pending=pending, error=error)

    def _rejected_count(self, response: requests.Response) -> int:
        """Events the server dropped as invalid (``{"rejected": [...]}`` in a 2xx answer).

        They are gone either way — re-sending the same bytes cannot fix them — but they
        are logged and counted so a port that writes bad events notices.
        """
        try:
            answer = json.loads(read_body(response, self._config, 1 << 20, "telemetry"))
        except (ModelDropError, ValueError):
            return 0
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if not isinstance(rejected, list) or not rejected:
            return 0
        logger.warning("server dropped %d telemetry event(s); first: %s", len(rejected),
                       rejected[0])
        return len(rejected)

    def _oldest(self, limit: int) -> list[tuple[int, str]]:
        with self._db_lock, self._connect() as db:
            return db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?",
                              (limit,)).fetchall()

    def _delete(self, rows: list[tuple[int, str]]) -> None:
        with self._db_lock, self._connect() as db:
            db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in rows])

    def _send(self, rows: list[tuple[int, str]]) -> tuple[int, int]:
        """POST ``rows``; returns (accepted, dropped). Raises on retryable failure."""
        body = '{"events":[' + ",".join(b for _, b in rows) + "]}"
        response = request(self._session, "POST", self._endpoint, self._config,
                           data=body.encode("utf-8"),
                           headers={"Content-Type": "application/json"})
        if 200 <= response.status_code < 300:
            rejected = self._rejected_count(response)
            self._delete(rows)
            return len(rows) - rejected, rejected
        status = response.status_code
        err = response_error(response, self._config, "telemetry")
        if status not in _SPLIT_STATUSES:
            raise err
        if len(rows) == 1:
            logger.warning("server rejected telemetry event (%s); dropping it", err)
            self._delete(rows)
            return 0, 1
        half = len(rows) // 2
        first, second = self._send(rows[:half]), self._send(rows[half:])
        return first[0] + second[0], first[1] + second[1]
