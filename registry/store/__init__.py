"""Persistence: the only package that queries the database.

Rows never leave it; callers get the API schemas from ``registry.schemas``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from registry.store._auth import AuthStore, hash_token
from registry.store._catalog import CatalogStore
from registry.store._dashboard import DashboardStore, WebSession
from registry.store._delivery import DeliveryStore
from registry.store._fsck import FsckStore
from registry.store._jobs import JobStore
from registry.store._served import ServedStore
from registry.store._telemetry import TelemetryStore
from registry.store._tuf import TufMetadataStoreMixin

__all__ = ["Store", "WebSession", "hash_token"]


class Store(CatalogStore, AuthStore, JobStore, TufMetadataStoreMixin, TelemetryStore,
            DeliveryStore, ServedStore, DashboardStore, FsckStore):
    """The one store: each part needs only ``StoreBase`` (sessions, ``_model``/``_version``,
    the delivery cache), so the order of the bases does not matter."""

    def __init__(self, engine: Engine, lock_dir: Path | None = None) -> None:
        super().__init__(engine)
        self.lock_dir = lock_dir
