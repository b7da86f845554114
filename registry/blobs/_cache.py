"""A bounded read-through copy of S3 blobs on the web node's local disk.

Blobs are immutable and named by their SHA-256, so a local copy never goes stale: the first
whole-blob download streams from the bucket and writes a copy in the same pass; later
downloads are served from the local file (``sendfile``), at local-disk speed, without a
request to S3. The copy is published only after its bytes hashed to the name, so a corrupted
or short object is never cached, and the client of that first download never receives the
last chunk of a blob that failed its digest (its download ends short, not "complete").

Layout under ``root``: ``ab/<sha256>`` (published copies, read-only) and ``.fill/<sha256>``
(a copy being written). A fill holds an exclusive ``flock`` on its ``.fill`` file, so of
several threads or processes downloading the same uncached blob at once, one writes the copy
and the others stream from S3 as if there were no cache; a process that dies mid-fill drops
its lock with it, and the next fill of that blob starts the file again (or any fill removes
it once it is ten minutes old). Publishing is ``os.replace``, so
a reader sees no copy or the whole copy.

Size: before a fill, the least recently used copies (by mtime, refreshed at most once a
minute on a hit) are removed until the published copies plus the new blob fit in
``max_bytes``; a blob larger than ``max_bytes`` is never cached. Fills in flight at the same
moment are not counted against each other, so the disk holds at most ``max_bytes`` plus the
blobs being filled. Evicting a copy another request is sending is safe: an open file stays
readable after ``unlink``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from registry.errors import StorageError

from ._base import check_sha256

_TOUCH_AFTER = 60  # seconds: a hit refreshes the copy's mtime (its LRU age) at most this often
_STALE_FILL = 600  # seconds without a write before an unlocked .fill file is a dead fill's


class BlobCache:
    """Content-addressed local copies of remote blobs, at most ``max_bytes`` of them."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._fill_dir = self.root / ".fill"

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def _path_for(self, sha256: str) -> Path:
        sha256 = check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def path(self, sha256: str) -> Path | None:
        """The published copy of ``sha256``, or None; a hit counts as a use (LRU)."""
        path = self._path_for(sha256)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot stat the cached copy of {sha256}") from e
        if time.time() - st.st_mtime > _TOUCH_AFTER:
            try:
                os.utime(path)
            except FileNotFoundError:  # evicted meanwhile
                return None
            except OSError:  # a read-only cache still serves
                pass
        return path

    def size(self, sha256: str) -> int | None:
        """The cached copy's length, or None if there is none (no LRU touch)."""
        try:
            return os.stat(self._path_for(sha256)).st_size
        except FileNotFoundError:
            return None

    def discard(self, sha256: str) -> None:
        """Remove the copy of ``sha256`` (the blob was deleted from the bucket)."""
        try:
            self._path_for(sha256).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot remove the cached copy of {sha256}") from e

    def usage(self) -> int:
        """Bytes of published copies."""
        return sum(size for _, _, size in self._entries())

    def _entries(self) -> list[tuple[float, Path, int]]:
        entries = []
        try:
            fan_outs = list(os.scandir(self.root))
        except FileNotFoundError:
            return entries
        for fan_out in fan_outs:
            if len(fan_out.name) != 2 or not fan_out.is_dir(follow_symlinks=False):
                continue
            try:
                children = list(os.scandir(fan_out.path))
            except FileNotFoundError:
                continue
            for entry in children:
                if len(entry.name) != 64:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # evicted by another process meanwhile
                    continue
                entries.append((st.st_mtime, Path(entry.path), st.st_size))
        return entries

    def evict(self, reserve: int = 0) -> list[Path]:
        """Remove least recently used copies until they and ``reserve`` bytes fit the cap.

        Also removes what fills killed mid-way (SIGKILL, a power loss) left in ``.fill``:
        files no one holds the lock of and no one wrote to for ``_STALE_FILL`` seconds.
        """
        removed = self._sweep_fills()
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries) + reserve
        for _, path, size in entries:
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
            except FileNotFoundError:  # another process evicted it first
                pass
            except OSError:
                continue
            total -= size
            removed.append(path)
        return removed

    def _sweep_fills(self) -> list[Path]:
        removed = []
        try:
            entries = list(os.scandir(self._fill_dir))
        except FileNotFoundError:
            return removed
        cutoff = time.time() - _STALE_FILL
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live filler holds it
                if os.fstat(fd).st_ino == os.stat(entry.path).st_ino:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:
                pass
            finally:
                os.close(fd)
        return removed

    def fill(self, sha256: str, size: int, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` (the whole blob, ``size`` bytes) through, keeping a verified copy.

        The last chunk is held back until the bytes' SHA-256 and length are checked, so a
        consumer never sees a complete body that is not the blob; the copy is published
        when the consumer asks for more after the last chunk (the end of the iteration). If another fill of the
        same blob is running (here or in another process), or the blob is larger than the
        cap, the chunks pass through without a copy but are verified the same way.

        Raises:
            StorageError: from the iterator, when the bytes are not the blob (nothing is
                cached, the last chunk is not yielded).
        """
        sha256 = check_sha256(sha256)
        fd = self._lock_fill(sha256) if 0 < size <= self.max_bytes else None
        if fd is None:
            yield from _verified(sha256, size, chunks)
            return
        fill_path = self._fill_dir / sha256
        published = False
        try:
            self.evict(reserve=size)
            os.ftruncate(fd, 0)
            out = os.fdopen(os.dup(fd), "wb", buffering=0)
            with out:
                # Each chunk is written as it arrives; the last reaches the consumer only once
                # the whole is verified. The copy is made durable and published after it, off
                # the client's clock (a server asks for the next chunk after sending this one;
                # one that stops early closes us instead).
                yield from _verified(sha256, size, _written(chunks, out))
                os.fsync(out.fileno())  # a copy published after a crash must be whole
            os.chmod(fill_path, 0o444)
            final = self._path_for(sha256)
            final.parent.mkdir(exist_ok=True)
            os.replace(fill_path, final)  # still holding the lock: see _lock_fill
            published = True
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise StorageError(f"the blob cache cannot hold {sha256}") from e
            raise StorageError(f"cannot write the cached copy of {sha256}") from e
        finally:
            if not published:
                fill_path.unlink(missing_ok=True)
            os.close(fd)  # releases the lock

    def _lock_fill(self, sha256: str) -> int | None:
        """An fd of ``.fill/<sha256>`` holding its exclusive lock, or None if it is taken.

        The lock is on the file, so after waiting the file may no longer be the one at the
        path (its filler published or removed it): the inode check makes sure a lock is only
        ever on the file that is at ``.fill/<sha256>`` now, so a published copy is never
        truncated by a late filler.
        """
        if self.path(sha256) is not None:
            return None  # filled meanwhile
        try:
            self._fill_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._fill_dir / sha256, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            return None  # a cache that cannot be written is no cache, not an outage
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self._fill_dir / sha256).st_ino:
                raise FileNotFoundError
        except OSError:  # BlockingIOError (another filler) or FileNotFoundError (moved)
            os.close(fd)
            return None
        return fd


def _written(chunks: Iterator[bytes], out: IO[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        out.write(chunk)
        yield chunk


def _verified(sha256: str, size: int, chunks: Iterator[bytes]) -> Iterator[bytes]:
    hasher = hashlib.sha256()
    received = 0
    pending = None
    for chunk in chunks:
        hasher.update(chunk)
        received += len(chunk)
        if pending is not None:
            yield pending
        pending = chunk
    _check(sha256, size, received, hasher)
    if pending is not None:
        yield pending


def _check(sha256: str, size: int, received: int, hasher: hashlib._Hash) -> None:
    if received != size:
        raise StorageError(f"blob {sha256}: received {received} of {size} bytes")
    if not hmac.compare_digest(hasher.hexdigest(), sha256):
        raise StorageError(f"stored blob {sha256} does not match its digest")
