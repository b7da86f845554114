"""HTTP plumbing: one retrying session, bodies read under a hard deadline and byte cap.

Per-read timeouts are not enough on a device: a server (or a captive portal, or an
attacker) that trickles one byte every few seconds never trips them. Every body here is
read with ``read1`` (returns as soon as *some* bytes arrive) while the socket timeout is
shrunk to the time left, so the overall deadline holds to within one read.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from ._types import ClientConfig
from .errors import (
    ArtifactTooLargeError,
    DeadlineExceededError,
    DownloadIncompleteError,
    ModelDropError,
    NetworkError,
    ProtocolError,
    RateLimitedError,
    RemoteError,
    ServerError,
    error_from_problem,
)

__all__ = ["body_chunks", "make_session", "read_body", "request", "response_error"]

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The longest ``Retry-After`` the SDK waits inside one call, seconds. A server that asks for
#: longer gets no retry now: the call returns the 429/503 (``RateLimitedError.retry_after``
#: says how long), and the app's next cycle (telemetry's next flush) waits that long.
RETRY_AFTER_CAP = 30.0


class _BoundedRetry(Retry):
    """urllib3's retry, honouring ``Retry-After`` only up to :data:`RETRY_AFTER_CAP` (urllib3
    alone sleeps whatever the server says, an hour or a year, inside the call)."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        if response is not None and self.respect_retry_after_header:
            wait = self.get_retry_after(response)
            if wait is not None and wait > RETRY_AFTER_CAP:
                raise MaxRetryError(_pool, url, ResponseError(
                    f"Retry-After {wait:g} s is longer than {RETRY_AFTER_CAP:g} s"))
        return super().increment(method, url, response=response, error=error, _pool=_pool,
                                 _stacktrace=_stacktrace)


def retry_after(response: requests.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        return max(0.0, float(Retry().parse_retry_after(raw)))
    except (urllib3.exceptions.InvalidHeader, ValueError, OverflowError):
        return None


def make_session(config: ClientConfig) -> requests.Session:
    """A session whose adapters retry connect errors, 5xx and 429 with backoff.

    POST is retried too: the only POST is telemetry, made idempotent by event ids.
    """
    retry = _BoundedRetry(
        total=config.http_retries,
        connect=config.http_retries,
        read=config.http_retries,
        status=config.http_retries,
        backoff_factor=config.retry_backoff,
        backoff_max=30,
        status_forcelist=_RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "POST"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # the final response is mapped to an SDK error by us
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = config.user_agent
    return session


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn requests/urllib3 exceptions into SDK errors (``raise ... from``)."""
    try:
        yield
    except ModelDropError:
        raise
    except (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout) as e:
        raise NetworkError(f"{what}: timed out") from e
    except (requests.ConnectionError, urllib3.exceptions.HTTPError, ConnectionError) as e:
        raise NetworkError(f"{what}: connection failed ({type(e).__name__})") from e
    except requests.RequestException as e:
        raise NetworkError(f"{what}: {type(e).__name__}: {e}") from e


def request(session: requests.Session, method: str, url: str, config: ClientConfig,
            **kwargs: Any) -> requests.Response:
    """Send a request with the configured timeouts; the body is always streamed."""
    kwargs.setdefault("timeout", (config.connect_timeout, config.read_timeout))
    with translate_errors(f"{method} {url}"):
        return session.request(method, url, stream=True, **kwargs)


def _set_socket_timeout(response: requests.Response, seconds: float) -> None:
    conn = getattr(response.raw, "connection", None)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.settimeout(max(seconds, 0.01))
        except OSError:
            pass


def body_chunks(response: requests.Response, *, deadline: float, max_bytes: int,
                read_timeout: float, chunk_bytes: int,
                what: str = "download") -> Iterator[bytes]:
    """Yield the body in chunks, enforcing ``deadline`` (time.monotonic) and ``max_bytes``.

    Raises:
        DeadlineExceededError: the deadline passed before the body ended.
        ArtifactTooLargeError: the body is longer than ``max_bytes`` (nothing past the cap
            is yielded).
        DownloadIncompleteError: the body ended before its announced Content-Length.
        NetworkError: the connection failed or stayed silent for ``read_timeout``.
    """
    announced = response.headers.get("Content-Length")
    encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
    expected = int(announced) if announced and announced.isdigit() and not encoded else None
    if expected is not None and expected > max_bytes:
        response.close()
        raise ArtifactTooLargeError(
            f"{what}: server announced {expected} bytes, at most {max_bytes} expected")
    received = 0
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceededError(f"{what}: overall deadline passed after "
                                            f"{received} bytes")
            _set_socket_timeout(response, min(read_timeout, remaining))
            try:
                # at most one byte past the cap is ever requested: enough to detect it
                data = response.raw.read1(min(chunk_bytes, max_bytes - received + 1),
                                          decode_content=True)
            except (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError) as e:
                if time.monotonic() >= deadline:
                    raise DeadlineExceededError(
                        f"{what}: overall deadline passed after {received} bytes") from e
                raise NetworkError(f"{what}: no data for {read_timeout:g} s") from e
            except urllib3.exceptions.ProtocolError as e:
                raise DownloadIncompleteError(
                    f"{what}: connection broke after {received} bytes") from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise NetworkError(f"{what}: connection failed after {received} bytes "
                                   f"({type(e).__name__})") from e
            if not data:
                break
            received += len(data)
            if received > max_bytes:
                raise ArtifactTooLargeError(
                    f"{what}: server sent more than the expected {max_bytes} bytes")
            yield data
    finally:
        response.close()
    if expected is not None and received < expected:
        raise DownloadIncompleteError(f"{what}: got {received} of {expected} bytes")


def read_body(response: requests.Response, config: ClientConfig, max_bytes: int,
              what: str) -> bytes:
    """A small body (manifest, problem, TUF metadata) under the metadata deadline."""
    deadline = time.monotonic() + config.metadata_deadline.total_seconds()
    return b"".join(body_chunks(response, deadline=deadline, max_bytes=max_bytes,
                                read_timeout=config.read_timeout,
                                chunk_bytes=config.chunk_bytes, what=what))


def response_error(response: requests.Response, config: ClientConfig,
                   what: str) -> ModelDropError:
    """The SDK error for a non-success response; reads (a capped part of) the body.

    problem+json is rebuilt by its ``code``; anything else becomes a ServerError (5xx),
    a RemoteError (4xx) or a ProtocolError.
    """
    status = response.status_code
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    try:
        body = read_body(response, config, 64 << 10, what)
    except ModelDropError:
        body = b""
    if ctype in ("application/problem+json", "application/json"):
        try:
            problem = json.loads(body)
        except ValueError:
            problem = None
        if isinstance(problem, dict) and isinstance(problem.get("code"), str):
            err = error_from_problem(problem, status)
            if isinstance(err, RateLimitedError) and retry_after(response) is not None:
                err.retry_after = retry_after(response)
            return err
    if status >= 500:
        return ServerError(f"{what}: HTTP {status} ({ctype or 'no content type'})",
                           status=status)
    if status == 429:
        return RateLimitedError(f"{what}: HTTP 429", status=status,
                                retry_after=retry_after(response))
    if status >= 400:
        err = RemoteError(f"{what}: HTTP {status}", status=status, code="remote_error")
        err.retryable = status in (408, 429)
        return err
    return ProtocolError(f"{what}: unexpected HTTP {status}", status=status)
