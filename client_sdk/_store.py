"""Small durable files: atomic JSON, locks, the install id and the release counters.

Everything the SDK persists is written as "temp file, fsync, rename, fsync directory", so
a process killed at any instant leaves either the old or the new content — never half.

The release counters live in the *state* directory, outside the download cache: an OS
(or a user) clearing caches must not reset what protects against replayed manifests.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:  # POSIX; on other systems the in-process lock still serialises threads
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from ._manifest import check_counter
from .errors import ReleaseRollbackError

__all__ = [
    "ReleaseCounters",
    "RejectedArtifacts",
    "atomic_write_json",
    "file_lock",
    "fsync_dir",
    "fsync_file",
    "load_or_create_install_id",
    "read_json",
]

logger = logging.getLogger(__name__)

INSTALL_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{7,63}")


def fsync_file(f: IO[bytes]) -> None:
    f.flush()
    os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            fsync_file(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, sort_keys=True, indent=1).encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", path, e)
        return None


class _PathLock:
    """An RLock plus one flock held while any thread of this process is inside.

    flock belongs to an open file description, so a re-entrant acquire must not open the
    file again (a second flock from the same process would block on the first).
    """

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.handle: IO[bytes] | None = None


_PATH_LOCKS: dict[str, _PathLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across threads and processes (flock on ``path``), re-entrant.

    The OS drops a flock when its process dies, so a killed download never leaves a
    stale lock behind.
    """
    key = str(path.absolute())
    with _PATH_LOCKS_GUARD:
        lock = _PATH_LOCKS.setdefault(key, _PathLock())
    with lock.rlock:
        if lock.depth == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.handle = open(path, "a+b")
            if fcntl is not None:
                fcntl.flock(lock.handle.fileno(), fcntl.LOCK_EX)
        lock.depth += 1
        try:
            yield
        finally:
            lock.depth -= 1
            if lock.depth == 0 and lock.handle is not None:
                if fcntl is not None:
                    fcntl.flock(lock.handle.fileno(), fcntl.LOCK_UN)
                lock.handle.close()
                lock.handle = None


def load_or_create_install_id(cache_dir: Path, state_dir: Path) -> str:
    """A lowercase uuid4 generated once per installation.

    It is kept in ``cache_dir/install_id`` and mirrored in ``state_dir``: if the OS clears
    the cache, the device keeps its id (and so its experiment arms and its binding to
    manifests) instead of silently becoming a new device. Lowercase ASCII only, because
    bucketing hashes the id's UTF-8 bytes, and case mapping outside ASCII differs between
    platforms' string libraries (the Turkish dotted and dotless i, for one).
    """
    paths = (state_dir / "install_id", cache_dir / "install_id")
    with file_lock(state_dir / ".install_id.lock"):
        found = ""
        for path in paths:
            try:
                candidate = path.read_text("ascii").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if INSTALL_ID_RE.fullmatch(candidate):
                found = candidate
                break
        install_id = found or str(uuid.uuid4())
        for path in paths:
            try:
                current = path.read_text("ascii").strip()
            except (OSError, UnicodeDecodeError):
                current = ""
            if current != install_id:
                atomic_write_bytes(path, install_id.encode("ascii"))
        return install_id


class ReleaseCounters:
    """Highest release counter seen per (model, channel), never allowed to go down."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "release_counters.json"
        self._lock_path = state_dir / ".release_counters.lock"

    def highest(self, model: str, channel: str) -> int | None:
        data = read_json(self._path)
        value = data.get(f"{model}/{channel}") if isinstance(data, dict) else None
        return value if isinstance(value, int) else None

    def check(self, model: str, channel: str, counter: int, floor: int | None = None) -> None:
        """Raise if ``counter`` is below the highest seen (or below ``floor``, the counter
        of the installed model, which backs the state file up if it was lost).

        Raises:
            ReleaseRollbackError: the manifest is older than one already accepted.
        """
        seen = max(x for x in (self.highest(model, channel), floor, -1) if x is not None)
        try:
            check_counter(counter, seen)
        except ReleaseRollbackError as e:
            raise ReleaseRollbackError(f"{model}/{channel}: {e.detail}") from None

    def record(self, model: str, channel: str, counter: int) -> None:
        with file_lock(self._lock_path):
            data = read_json(self._path)
            data = data if isinstance(data, dict) else {}
            key = f"{model}/{channel}"
            if not isinstance(data.get(key), int) or data[key] < counter:
                data[key] = counter
                atomic_write_json(self._path, data)


class RejectedArtifacts:
    """Artifacts that failed their load check with this app version.

    Remembering them stops a device from downloading the same broken model every cycle;
    keying by app version lets an app upgrade (a newer runtime) try again.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "rejected_artifacts.json"
        self._lock_path = state_dir / ".rejected_artifacts.lock"

    def is_rejected(self, sha256: str, app_version: str) -> tuple[str, str] | None:
        """(code, detail) of the failure this app version recorded for ``sha256``."""
        data = read_json(self._path)
        entry = data.get(sha256) if isinstance(data, dict) else None
        if isinstance(entry, dict) and entry.get("app_version") == app_version:
            return (str(entry.get("code") or "model_load_failed"),
                    str(entry.get("detail") or "failed its load check"))
        return None

    def add(self, sha256: str, app_version: str, detail: str,
            code: str = "model_load_failed") -> None:
        with file_lock(self._lock_path):
            data = read_json(self._path)
            data = data if isinstance(data, dict) else {}
            data[sha256] = {"app_version": app_version, "code": code, "detail": detail[:500]}
            atomic_write_json(self._path, data)
