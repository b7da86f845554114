"""Signed TUF metadata bytes live in the database, so every web process and worker
(and every machine in the scale mode) serves and extends the same repository."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from registry.store._base import StoreBase
from registry.tables import TufMetadataRow, utcnow

_ADVISORY_KEY = 0x4D4F444C  # "MODL": the TUF publishing lock id in PostgreSQL


class TufMetadataStoreMixin(StoreBase):
    lock_dir: Path | None = None

    def get_tuf_metadata(self, name: str) -> bytes | None:
        with self.session() as s:
            row = s.get(TufMetadataRow, name)
            return bytes(row.data) if row is not None else None

    def put_tuf_metadata(self, name: str, data: bytes) -> None:
        with self.session() as s:
            row = s.get(TufMetadataRow, name) or TufMetadataRow(name=name, data=data)
            row.data, row.updated_at = data, utcnow()
            s.add(row)

    @contextmanager
    def tuf_lock(self) -> Iterator[None]:
        """Serialise TUF read-modify-write across processes (and machines on PostgreSQL)."""
        if self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
                    conn.commit()
            return
        lock_dir = self.lock_dir or Path(".")
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / "tuf.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
