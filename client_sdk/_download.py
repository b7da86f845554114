"""Resumable, verified downloads into the staging directory.

A download is identified by the sha256 it must produce, so a partial file can be resumed
by any later process, from any mirror, as long as the bytes keep hashing right:

    staging/<sha256>.part       the bytes received so far (append-only)
    staging/<sha256>.part.json  what they must become (sha256, length) and the ETag/URL
                                they came from, written *before* the first byte

On resume the existing partial is re-hashed (never trusted), then requested with
``Range: bytes=<size>-`` and ``If-Range: <etag>`` so that a changed file comes back whole
instead of being spliced. The body is capped at the verified length, hashed as it is
written, and the whole attempt runs under one deadline. A partial that does not hash
right at the end is deleted — it is never handed to the installer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from ._http import body_chunks, request, response_error
from ._store import atomic_write_json, fsync_file, read_json
from ._types import ClientConfig, ProgressCallback
from .errors import (
    ArtifactTooLargeError,
    DownloadIncompleteError,
    HashMismatchError,
    LocalStorageError,
    ModelDropError,
    ProtocolError,
    RemoteError,
    TransientError,
)

__all__ = ["DownloadRequest", "Downloader"]

logger = logging.getLogger(__name__)

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_CONDITION_CHECK_EVERY = 1.0  # seconds


@dataclass(frozen=True)
class DownloadRequest:
    """Verified expectations for one file: where to get it, what it must hash to."""

    sha256: str
    length: int
    urls: tuple[str, ...]
    label: str  # for messages: the TUF target path


class Downloader:
    """Downloads into ``staging_dir`` with resume, deadline, byte cap and hashing."""

    def __init__(self, staging_dir: Path, session: requests.Session,
                 config: ClientConfig) -> None:
        self._dir = staging_dir
        self._session = session
        self._config = config

    def part_path(self, sha256: str) -> Path:
        return self._dir / f"{sha256}.part"

    def discard(self, sha256: str) -> None:
        """Forget a partial or finished staging file."""
        for path in (self.part_path(sha256), self._meta_path(sha256)):
            path.unlink(missing_ok=True)

    def fetch(self, req: DownloadRequest, *, deadline: float,
              on_progress: ProgressCallback | None = None,
              check_conditions: Callable[[], None] | None = None) -> Path:
        """Return the path of a staging file that hashes to ``req.sha256``.

        A resumed partial that turns out corrupt is discarded and the file is fetched
        once more from the start, within the same deadline.

        Raises:
            HashMismatchError: freshly downloaded bytes do not match (partial deleted).
            ArtifactTooLargeError: the server sent more than ``req.length`` bytes.
            DeadlineExceededError, NetworkError, ServerError, DownloadIncompleteError,
            ProtocolError, RemoteError: the partial is kept for a later resume.
            ConditionsNotMetError: raised by ``check_conditions``; partial kept.
            LocalStorageError: the staging directory is not writable.
        """
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            try:
                return self._fetch_once(req, deadline, on_progress, check_conditions)
            except HashMismatchError as e:
                if not e.extra.get("resumed"):
                    raise
                logger.warning("resumed partial for %s was corrupt; downloading again",
                               req.label)
                return self._fetch_once(req, deadline, on_progress, check_conditions)
        except OSError as e:
            raise LocalStorageError(f"staging {req.label}: {e}") from e

    # -- internals -----------------------------------------------------------------

    def _meta_path(self, sha256: str) -> Path:
        return self._dir / f"{sha256}.part.json"

    def _load_partial(self, req: DownloadRequest) -> tuple[dict, int, hashlib._Hash]:
        """Return (sidecar, offset, hasher-over-existing-bytes), resetting if unusable."""
        part, meta_path = self.part_path(req.sha256), self._meta_path(req.sha256)
        meta = read_json(meta_path)
        hasher = hashlib.sha256()
        usable = (isinstance(meta, dict) and meta.get("sha256") == req.sha256
                  and meta.get("length") == req.length)
        if not usable:
            # No sidecar means the partial's origin is unknown: never resume from it.
            part.unlink(missing_ok=True)
            meta = {"sha256": req.sha256, "length": req.length, "etag": None, "url": None}
            atomic_write_json(meta_path, meta)
            return meta, 0, hasher
        size = part.stat().st_size if part.exists() else 0
        if size > req.length:
            part.unlink()
            return meta, 0, hasher
        if size:
            with part.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    hasher.update(block)
        return meta, size, hasher

    def _fetch_once(self, req: DownloadRequest, deadline: float,
                    on_progress: ProgressCallback | None,
                    check_conditions: Callable[[], None] | None) -> Path:
        meta, offset, hasher = self._load_partial(req)
        resumed = offset > 0
        part = self.part_path(req.sha256)
        _notify(on_progress, offset, req.length)
        if offset < req.length:
            last_error: ModelDropError | None = None
            for url in req.urls:
                try:
                    offset, hasher = self._transfer(req, url, meta, offset, hasher, deadline,
                                                    on_progress, check_conditions)
                    last_error = None
                    break
                except ArtifactTooLargeError:
                    self.discard(req.sha256)  # a server that overruns is not resumed from
                    raise
                except (TransientError, RemoteError) as e:  # try the next mirror
                    if e.code in ("download_deadline_exceeded", "conditions_not_met"):
                        raise
                    logger.info("download of %s from %s failed: %s", req.label, url, e)
                    last_error = e
                    meta, offset, hasher = self._load_partial(req)
            if last_error is not None:
                raise last_error
        if not hmac.compare_digest(hasher.hexdigest(), req.sha256):
            self.discard(req.sha256)
            raise HashMismatchError(
                f"{req.label}: downloaded bytes do not hash to the verified sha256",
                resumed=resumed)
        return part

    def _transfer(self, req: DownloadRequest, url: str, meta: dict, offset: int,
                  hasher: hashlib._Hash, deadline: float,
                  on_progress: ProgressCallback | None,
                  check_conditions: Callable[[], None] | None) -> tuple[int, hashlib._Hash]:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("etag"):
                headers["If-Range"] = meta["etag"]
        response = request(self._session, "GET", url, self._config, headers=headers)
        status = response.status_code
        if status == 416 and offset:
            response.close()  # our partial does not fit the server's file: start over
            self.discard(req.sha256)
            meta, offset, hasher = self._load_partial(req)
            return self._transfer(req, url, meta, offset, hasher, deadline, on_progress,
                                  check_conditions)
        if status not in (200, 206):
            raise response_error(response, self._config, f"download {req.label}")
        if status == 206:
            start, total = _content_range(response)
            if start != offset or total not in (None, req.length):
                response.close()
                raise ProtocolError(f"{req.label}: Content-Range does not continue at {offset}")
        elif offset:
            offset, hasher = 0, hashlib.sha256()  # the server sent the whole file again
        announced = response.headers.get("Content-Length")
        if announced is not None and announced.isdigit() and int(announced) != req.length - offset:
            response.close()  # e.g. an HTML error page sent as 200: never write it
            if int(announced) > req.length - offset:
                raise ArtifactTooLargeError(
                    f"{req.label}: server announced {announced} bytes, expected "
                    f"{req.length - offset}")
            raise ProtocolError(f"{req.label}: server announced {announced} bytes, expected "
                                f"{req.length - offset}", status=status)
        etag = response.headers.get("ETag")
        meta = {**meta, "url": url, "etag": etag if etag and not etag.startswith("W/") else None}
        atomic_write_json(self._meta_path(req.sha256), meta)
        mode = "ab" if offset else "wb"
        next_check = time.monotonic() + _CONDITION_CHECK_EVERY
        # Unbuffered: every received chunk reaches the OS at once, so a process killed
        # a moment later still leaves it on disk for the next resume.
        with open(self.part_path(req.sha256), mode, buffering=0) as f:
            chunks = body_chunks(response, deadline=deadline, max_bytes=req.length - offset,
                                 read_timeout=self._config.read_timeout,
                                 chunk_bytes=self._config.chunk_bytes,
                                 what=f"download {req.label}")
            try:
                for chunk in chunks:
                    _write_all(f, chunk)
                    hasher.update(chunk)
                    offset += len(chunk)
                    _notify(on_progress, offset, req.length)
                    if check_conditions is not None and time.monotonic() >= next_check:
                        check_conditions()
                        next_check = time.monotonic() + _CONDITION_CHECK_EVERY
            finally:
                chunks.close()
                fsync_file(f)
        if offset < req.length:
            raise DownloadIncompleteError(f"{req.label}: got {offset} of {req.length} bytes")
        return offset, hasher


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = f.write(view)
        view = view[written:]


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _notify(on_progress: ProgressCallback | None, done: int, total: int) -> None:
    if on_progress is None:
        return
    try:
        on_progress(done, total)
    except Exception:  # an app callback must not break the update
        logger.exception("on_progress callback failed")


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def discard_stale(staging_dir: Path, keep: set[str], max_age_seconds: float) -> None:
    """Remove partials not touched for ``max_age_seconds`` (abandoned offers)."""
    if not staging_dir.is_dir():
        return
    now = time.time()
    for path in staging_dir.iterdir():
        sha = path.name.split(".", 1)[0]
        try:
            if sha not in keep and now - path.stat().st_mtime > max_age_seconds:
                path.unlink()
        except OSError:
            pass

