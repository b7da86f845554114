"""Where signed TUF metadata bytes live.

The repository never keeps metadata in memory between calls: several server processes
publish into the same store, so every operation re-reads the chain from it. The seam is
two methods so the integrator can back it with the database (one row per file name);
:class:`DirMetadataStore` is the plain-directory version used by tests and as a fallback.

Bytes are stored and served exactly as signed. Re-serialising parsed metadata would be
allowed by TUF for signatures but not for the hashes that snapshot and timestamp pin.
"""

from __future__ import annotations

import os
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from registry._fsync import fsync_dir

from .errors import InvalidMetadataNameError

__all__ = ["DirMetadataStore", "MetadataStore", "is_metadata_name"]

# The only names a TUF client asks for with consistent snapshots (plus the unversioned
# convenience copies this repository also keeps).
_NAME = re.compile(r"(?:[1-9][0-9]{0,18}\.)?(?:root|targets|snapshot|timestamp)\.json")


def is_metadata_name(name: str) -> bool:
    """True if ``name`` is ``[<version>.]<role>.json`` for a top-level TUF role."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


class MetadataStore(ABC):
    """Key-value storage for signed metadata files, keyed by file name.

    ``put`` must replace an existing value atomically: readers see the old or the new
    bytes, never a mix. Names are validated by the repository before they get here.
    """

    @abstractmethod
    def get(self, name: str) -> bytes | None:
        """Return the stored bytes for ``name`` (e.g. ``"3.snapshot.json"``) or None."""

    @abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing any previous value."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The puts inside the block become visible together or not at all, where the
        backing store can do that (the database can; a directory cannot, and writes through)."""
        yield


class DirMetadataStore(MetadataStore):
    """Metadata files in one local directory (tests, embedded single-host mode).

    Writes go to a temporary file that is fsynced and renamed over the target, then the
    directory is fsynced, so a crash leaves either the old file or the new one.
    """

    def __init__(self, directory: Path | str):
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirMetadataStore({str(self._dir)!r})"

    @property
    def directory(self) -> Path:
        return self._dir

    def _path(self, name: str) -> Path:
        # Defence in depth: the name becomes a file path, so never trust the caller.
        if not is_metadata_name(name):
            raise InvalidMetadataNameError(f"not a TUF metadata file name: {name!r}")
        return self._dir / name

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = self._dir / f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # public metadata
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self._dir)
