"""The blob store interface: public behaviour once, storage hooks per backend.

Everything that touches untrusted bytes (limits, hashing, clean-up after a failed
upload, digest checks on the way out) lives here, so a backend only has to know how
to move a finished file into place and how to read a byte range back.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.errors import (
    ArtifactNotFoundError,
    EmptyFileError,
    InvalidRangeError,
    StorageError,
    UploadIncompleteError,
    UploadTooLargeError,
)

DEFAULT_CHUNK_SIZE = 1 << 20  # bytes

# fullmatch, not match + "$": "$" also matches before a trailing newline.
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BlobInfo:
    """What a stored blob is: its lowercase hex SHA-256 and its length in bytes."""

    sha256: str
    size: int


def check_sha256(sha256: object) -> str:
    """Return ``sha256`` if it is 64 lowercase hex characters.

    Every digest a caller passes in becomes part of a file path or an S3 key, so it is
    checked before it gets there. A string that is not a digest cannot name a blob, which
    is why the error is "not found" (404 at the HTTP layer) rather than a ``ValueError``.

    Raises:
        ArtifactNotFoundError: ``sha256`` is not a lowercase hex SHA-256 digest.
    """
    if isinstance(sha256, str) and _SHA256_RE.fullmatch(sha256):
        return sha256
    shown = repr(sha256)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise ArtifactNotFoundError(f"not a sha256 digest: {shown}")


class BlobStore(ABC):
    """Content-addressed, immutable artifact storage.

    A blob's name is the SHA-256 of its bytes, so storing the same bytes twice is a no-op
    and a stored blob never changes. Every method that takes a digest raises
    :class:`ArtifactNotFoundError` when it is not 64 lowercase hex characters (see
    :func:`check_sha256`), before anything reaches the file system or S3.

    Instances are safe to share between threads, and several processes may put the same
    blob concurrently: uploads are staged under unique temporary names and committed with
    an atomic replace (local) or a single object write (S3), so readers see either no
    blob or the whole blob.
    """

    # -- hooks a backend implements ------------------------------------------------

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """Local directory for uploads in progress (same file system as the blobs, if local)."""

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""

    @abstractmethod
    def size(self, sha256: str) -> int:
        """Length of the stored blob in bytes.

        Raises:
            ArtifactNotFoundError: the blob is not stored.
        """

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob; removing a blob that is not there is not an error.

        Blobs are shared by content, so only a caller that knows no version, variant or
        TUF target still refers to the digest may delete it.
        """

    @abstractmethod
    def local_path(self, sha256: str) -> Path | None:
        """The blob's file on this machine, for ``send_file``/``X-Sendfile``; None if remote."""

    @abstractmethod
    def presigned_url(self, sha256: str, expires: int) -> str | None:
        """A time-limited GET URL that bypasses the server; None if the backend has none.

        Args:
            expires: lifetime of the URL in seconds.
        """

    @abstractmethod
    def _commit(self, temp_path: Path, sha256: str, size: int) -> None:
        """Make the fully written, verified file at ``temp_path`` the blob ``sha256``.

        May move ``temp_path`` away; the caller removes it afterwards if it is still there.
        Must be safe when another process commits the same blob at the same time.
        """

    @abstractmethod
    def _iter_range(self, sha256: str, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        """Yield bytes ``start..end`` (inclusive, already validated) in chunks of at most ``chunk_size``."""

    # -- public behaviour ----------------------------------------------------------

    def warm(self) -> None:
        """Prepare per-process state (an S3 client) before the first request; no network I/O."""
        return None  # a local store has none

    def iter_sha256(self) -> Iterator[str]:
        """Every stored blob's sha256 (the store's own listing; for ``modeldrop fsck``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its blobs")

    def sweep_staging(self, older_than: float) -> list[Path]:
        """Remove upload files nobody has written to for ``older_than`` seconds.

        A crash or power loss can leave a half-written upload in the staging directory; an
        upload in progress keeps touching its file, so age since the last write is a safe test.
        Returns the removed paths.
        """
        cutoff = time.time() - older_than
        removed = []
        if not self.staging_dir.is_dir():
            return removed
        for path in self.staging_dir.glob("upload-*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # finished or removed meanwhile
                continue
        return removed

    def put_stream(
        self,
        stream: BinaryIO,
        *,
        max_bytes: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        expected_size: int | None = None,
    ) -> BlobInfo:
        """Store what ``stream`` yields, hashing it in the same pass.

        The bytes go to a temporary file in :attr:`staging_dir`, ``chunk_size`` at a time,
        so memory does not grow with the upload. Nothing is stored unless the whole upload
        is valid; on any error the temporary file is removed and the exception propagates.

        Args:
            stream: binary file-like object; only ``read(n)`` is used.
            max_bytes: hard limit on the blob's length. At most ``max_bytes + 1`` bytes
                are read.
            chunk_size: bytes per ``read`` call.
            expected_size: the declared length (e.g. ``Content-Length``). When given,
                exactly this many bytes are read and nothing after them, as with an HTTP
                body; fewer means the sender stopped early.

        Returns:
            The blob's digest and size. Putting bytes that are already stored returns the
            same info and changes nothing.

        Raises:
            UploadTooLargeError: more than ``max_bytes`` (checked against
                ``expected_size`` before reading anything).
            EmptyFileError: the stream is empty.
            UploadIncompleteError: fewer than ``expected_size`` bytes arrived, or reading
                the stream raised ``OSError`` (a dropped connection).
            StorageError: the staging file or the backend could not be written.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if expected_size is not None:
            if expected_size < 0:
                raise ValueError("expected_size must not be negative")
            if expected_size > max_bytes:
                raise UploadTooLargeError(
                    f"upload of {expected_size} bytes exceeds the limit of {max_bytes} bytes",
                    limit=max_bytes,
                )
            if expected_size == 0:
                raise EmptyFileError("the upload is empty")

        temp_path = self._new_staging_file()
        try:
            info = self._stage(stream, temp_path, max_bytes, chunk_size, expected_size)
            self._commit_if_new(temp_path, info)
            return info
        finally:
            temp_path.unlink(missing_ok=True)

    def adopt_file(self, path: Path, sha256: str, size: int) -> BlobInfo:
        """Store a file the caller already wrote into :attr:`staging_dir` and hashed.

        For uploads whose bytes arrive through another writer (Werkzeug's multipart parser
        writes file parts into a hashing spool), so they are not read a second time. The
        caller vouches for ``sha256``, having hashed the bytes as it wrote them; the size
        is checked. A file in the staging directory is consumed: it is moved into place
        or removed, whatever the outcome.

        Raises:
            ArtifactNotFoundError: ``sha256`` is not a digest (see :func:`check_sha256`).
            EmptyFileError: the file is empty.
            ValueError: ``path`` is not directly in :attr:`staging_dir` (a local commit must
                be a same-file-system rename), or ``size`` is not the file's size.
            StorageError: the backend could not be written.
        """
        path = Path(path)
        if path.parent.resolve() != self.staging_dir.resolve():  # never delete files elsewhere
            raise ValueError(f"{path} is not in the staging directory {self.staging_dir}")
        try:
            sha256 = check_sha256(sha256)
            actual = path.stat().st_size
            if actual != size:
                raise ValueError(f"{path.name} has {actual} bytes, not {size}")
            if size == 0:
                raise EmptyFileError("the upload is empty")
            info = BlobInfo(sha256=sha256, size=size)
            self._commit_if_new(path, info)
            return info
        finally:
            path.unlink(missing_ok=True)

    def put_file(self, path: Path) -> BlobInfo:
        """Store a local file (e.g. a converted variant); the file itself is left alone.

        Raises:
            EmptyFileError: the file is empty.
            UploadIncompleteError: the file shrank while it was being read.
            StorageError: the backend could not be written.
        """
        path = Path(path)
        with path.open("rb") as f:
            length = os.fstat(f.fileno()).st_size
            if length == 0:
                raise EmptyFileError(f"{path.name} is empty")
            return self.put_stream(f, max_bytes=length, expected_size=length)

    def put_bytes(self, data: bytes) -> BlobInfo:
        """Store a small in-memory blob (metadata documents, keys, test data).

        Raises:
            EmptyFileError: ``data`` is empty.
        """
        if not data:
            raise EmptyFileError("the blob is empty")
        return self.put_stream(io.BytesIO(data), max_bytes=len(data), expected_size=len(data))

    def open_range(
        self,
        sha256: str,
        start: int = 0,
        end: int | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[bytes]:
        """Stream bytes ``start..end`` of a blob, both inclusive as in an HTTP ``Range``.

        The blob and the range are checked now, so an HTTP handler can answer 404 or 416
        before it starts a response; the bytes are read lazily as the iterator is consumed.
        An ``end`` past the last byte means "to the end" (RFC 9110 §14.1.2).

        Raises:
            ArtifactNotFoundError: the blob is not stored.
            InvalidRangeError: ``start`` is negative or not before the end of the blob, or
                ``end < start``. The blob's length is in ``extra["size"]``.
            StorageError: from the iterator, if the backend fails while streaming.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        length = self.size(check_sha256(sha256))
        last = length - 1 if end is None else min(end, length - 1)
        if start < 0 or start >= length or (end is not None and end < start):
            raise InvalidRangeError(
                f"range {start}-{'' if end is None else end} is outside the blob's {length} bytes",
                size=length,
            )
        return self._iter_range(sha256, start, last, chunk_size)

    def read_bytes(self, sha256: str) -> bytes:
        """The whole blob in memory, digest verified. For small blobs only.

        Raises:
            ArtifactNotFoundError: the blob is not stored.
            StorageError: the stored bytes do not match their digest.
        """
        hasher = hashlib.sha256()
        parts = []
        for chunk in self.open_range(sha256):
            hasher.update(chunk)
            parts.append(chunk)
        _verify(hasher, sha256)
        return b"".join(parts)

    def copy_to(self, sha256: str, dest: Path) -> None:
        """Write the blob to the local file ``dest``, digest verified, atomically.

        Workers need real paths (converters, patch tools). ``dest`` appears complete or not
        at all: the bytes go to a temporary file next to it that replaces it at the end.

        Raises:
            ArtifactNotFoundError: the blob is not stored.
            StorageError: the stored bytes do not match their digest, or the backend failed.
        """
        chunks = self.open_range(sha256)  # validates before anything is created
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        temp_path = Path(name)
        try:
            hasher = hashlib.sha256()
            with open(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
            _verify(hasher, sha256)
            os.replace(temp_path, dest)
        finally:
            temp_path.unlink(missing_ok=True)

    # -- internals -----------------------------------------------------------------

    def _commit_if_new(self, temp_path: Path, info: BlobInfo) -> None:
        # A concurrent put may commit between this check and ours; both write the same
        # bytes, so the check only saves work and never decides correctness.
        if not self.exists(info.sha256):
            self._commit(temp_path, info.sha256, info.size)

    def _new_staging_file(self) -> Path:
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.staging_dir, prefix="upload-", suffix=".part")
        except OSError as e:
            raise StorageError("cannot create a staging file for the upload") from e
        os.close(fd)
        return Path(name)

    def _stage(
        self,
        stream: BinaryIO,
        temp_path: Path,
        max_bytes: int,
        chunk_size: int,
        expected_size: int | None,
    ) -> BlobInfo:
        # Without a declared size, read one byte past the limit to tell "exactly at the
        # limit" from "over it". With one, never read past it: for a raw socket the next
        # bytes belong to the next request, and asking for them would block.
        limit = max_bytes + 1 if expected_size is None else expected_size
        hasher = hashlib.sha256()
        received = 0
        try:
            with temp_path.open("wb") as out:
                while received < limit:
                    want = min(chunk_size, limit - received)
                    chunk = _read(stream, want)
                    if not chunk:
                        break
                    if len(chunk) > want:  # a stream that ignores n must not slip past the limit
                        chunk = chunk[:want]
                    received += len(chunk)
                    if received > max_bytes:
                        raise UploadTooLargeError(
                            f"upload exceeds the limit of {max_bytes} bytes", limit=max_bytes
                        )
                    hasher.update(chunk)
                    out.write(chunk)
        except OSError as e:
            raise StorageError("cannot write the upload to the staging directory") from e
        if received == 0:
            raise EmptyFileError("the upload is empty")
        if expected_size is not None and received < expected_size:
            raise UploadIncompleteError(
                f"received {received} of {expected_size} bytes",
                received=received,
                expected=expected_size,
            )
        return BlobInfo(sha256=hasher.hexdigest(), size=received)


def _read(stream: BinaryIO, n: int) -> bytes:
    """One ``read`` from an untrusted stream; a dropped connection is an incomplete upload."""
    try:
        chunk = stream.read(n)
    except OSError as e:
        raise UploadIncompleteError("the upload stream broke off before its end") from e
    if chunk is None:  # a non-blocking stream with nothing ready: treat as the end
        return b""
    if isinstance(chunk, str):
        raise TypeError("put_stream needs a binary stream, got text")
    return chunk


def _verify(hasher: hashlib._Hash, sha256: str) -> None:
    if not hmac.compare_digest(hasher.hexdigest(), sha256):
        raise StorageError(f"stored blob {sha256} does not match its digest")


def iter_file_range(f, start: int, end: int, chunk_size: int, short: str) -> Iterator[bytes]:
    """Bytes ``start``..``end`` (inclusive) of the open binary file ``f``, which this closes;
    a file that ends early raises ``StorageError(short)``."""
    from registry.errors import StorageError

    with f:
        f.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            data = f.read(min(chunk_size, remaining))
            if not data:
                raise StorageError(short)
            remaining -= len(data)
            yield data
