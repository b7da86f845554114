"""Blobs as files in a local directory: the embedded/dev backend.

It needs no service and lets the web server hand files to ``send_file``/X-Sendfile, but
it only works when every process that reads or writes blobs runs on the same machine
(or shares one POSIX file system). Several web and worker processes on that machine are
fine; several machines need :class:`~registry.blobs.S3BlobStore`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from registry._fsync import fsync_dir, fsync_path
from registry.errors import ArtifactNotFoundError, StorageError

from ._base import BlobStore, check_sha256, iter_file_range


class LocalBlobStore(BlobStore):
    """Content-addressed files under ``root``, laid out as ``root/ab/cd/<sha256>``.

    The two-level fan-out keeps directories small (65,536 leaves). Uploads are staged in
    ``root/.staging`` -- the same file system, so the final ``os.replace`` is atomic -- and
    made durable before and after the rename (fsync of the file, then of its directory),
    so a crash leaves either no blob or the whole blob, never a torn one.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._staging_dir = self.root / ".staging"

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    def _path_for(self, sha256: str) -> Path:
        sha256 = check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self._path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path_for(sha256).stat().st_size
        except FileNotFoundError as e:
            raise ArtifactNotFoundError(f"artifact {sha256} not found") from e
        except OSError as e:
            raise StorageError(f"cannot stat blob {sha256}") from e

    def iter_sha256(self) -> Iterator[str]:
        for path in sorted(self.root.glob("??/??/*")):
            if path.is_file() and len(path.name) == 64 and path.parent.parent.name == path.name[:2]:
                yield path.name

    def delete(self, sha256: str) -> None:
        try:
            self._path_for(sha256).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot delete blob {sha256}") from e

    def local_path(self, sha256: str) -> Path:
        """The blob's file, for ``send_file``/X-Sendfile.

        Raises:
            ArtifactNotFoundError: the blob is not stored.
        """
        path = self._path_for(sha256)
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact {sha256} not found")
        return path

    def presigned_url(self, sha256: str, expires: int) -> None:
        """Always None: local blobs are served by the application (or X-Sendfile)."""
        check_sha256(sha256)
        return None

    def _commit(self, temp_path: Path, sha256: str, size: int) -> None:
        target = self._path_for(sha256)
        try:
            # Artifacts are read by whoever serves them (nginx for X-Accel-Redirect), not
            # only by this user; mkstemp's 0600 would lock them out.
            os.chmod(temp_path, 0o644)
            fsync_path(temp_path)
            self._make_dirs(sha256)
            # Same bytes from a concurrent upload may already be there: replacing a file
            # with an identical one is harmless, and readers never see a partial file.
            os.replace(temp_path, target)
            fsync_dir(target.parent)
        except OSError as e:
            raise StorageError(f"cannot store blob {sha256}") from e

    def _make_dirs(self, sha256: str) -> None:
        """Create ``root/ab/cd`` durably (root exists: the staging dir is inside it)."""
        fan_out = self.root / sha256[:2]
        for directory in (fan_out, fan_out / sha256[2:4]):
            if directory.is_dir():
                continue
            try:
                directory.mkdir()
            except FileExistsError:  # another process made it first
                continue
            fsync_dir(directory.parent)

    def _iter_range(self, sha256: str, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        try:
            f = self._path_for(sha256).open("rb")
        except FileNotFoundError as e:  # deleted since open_range checked its size
            raise ArtifactNotFoundError(f"artifact {sha256} not found") from e
        yield from iter_file_range(f, start, end, chunk_size, f"blob {sha256} is shorter than expected")
