"""The composition root: the only place that wires settings, storage, signing and jobs.

The web app (``registry.app``), gunicorn's master (``deploy/gunicorn.conf.py``), the
in-process and Celery workers (``registry.jobs``) and the CLI's ``serve``/``worker`` all
build their ``Services`` here, so no package has to import the web app to get them.
Nothing runs at import time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import db
from registry.blobs import BlobStore, blob_store_from_settings
from registry.config import Settings
from registry.jobs import JobQueue, job_queue_from_settings
from registry.signing import ExpiryPolicy, ImageRepository, KeyStore, MetadataStore, TargetSpec
from registry.store import Store

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["Services", "build_services", "current_services", "ensure_admin_token", "services_of"]

log = logging.getLogger("modeldrop")


@dataclass
class Services:
    """Everything a request, a job or a maintenance round needs, built once per process."""

    settings: Settings
    store: Store
    blobs: BlobStore
    signing: ImageRepository
    jobs: JobQueue
    work_dir: Path = field(default_factory=Path)  # job directories, one per conversion

    def target_spec(self, path: str, sha256: str, size: int, **custom: Any) -> TargetSpec:
        return TargetSpec(path=path, length=size, sha256=sha256, custom=custom)


class DatabaseMetadata(MetadataStore):
    """Signed TUF metadata bytes in the database, so every process and machine shares them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, name: str) -> bytes | None:
        return self.store.get_tuf_metadata(name)

    def put(self, name: str, data: bytes) -> None:
        self.store.put_tuf_metadata(name, data)

    def transaction(self):
        return self.store.atomic()


def build_services(settings: Settings, *, start_workers: bool = False) -> Services:
    """Open the database (migrating it), blob storage, keys and the job queue."""
    from registry.upload_service import unlist_sources

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # keys, admin token, database: the converter's uid must not read them
    engine = db.make_engine(settings.sqlalchemy_url)
    db.upgrade(engine)
    store = Store(engine, lock_dir=data_dir)
    blobs = blob_store_from_settings(settings)
    work = data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    services = Services(settings=settings, store=store, blobs=blobs,
                        signing=_image_repository(settings, store),
                        jobs=job_queue_from_settings(settings, store.job_route), work_dir=work)
    for path in unlist_sources(services):  # sources are confidential (docs/security.md)
        log.warning("removed source %s from TUF targets", path)
    # Uploads a crash left half-written on this machine (each web machine stages its own).
    for path in blobs.sweep_staging(settings.staging_max_age):
        log.warning("removed abandoned upload %s", path.name)
    if start_workers:
        services.jobs.start()
    return services


def _image_repository(settings: Settings, store: Store) -> ImageRepository:
    expiry = ExpiryPolicy(timestamp=settings.timestamp_expiry, snapshot=settings.snapshot_expiry,
                          targets=settings.targets_expiry, root=settings.root_expiry)
    repo = ImageRepository(KeyStore(settings.resolved_keys_dir), DatabaseMetadata(store),
                           lock=store.tuf_lock, expiry=expiry)
    repo.bootstrap()  # takes the lock itself
    return repo


def ensure_admin_token(services: Services) -> Path | None:
    """First start: create an admin token and write it to <data-dir>/admin-token (0600)."""
    if not services.settings.bootstrap_admin_token or services.store.has_tokens():
        return None
    token = services.store.create_token("admin", name="bootstrap-admin", created_by="system")
    path = Path(services.settings.data_dir) / "admin-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token.token + "\n")
    os.chmod(path, 0o600)
    log.warning("created an admin API token in %s (mode 0600)", path)
    return path


EXTENSION = "modeldrop"  # the key of a Flask app's ``extensions`` that holds its Services


def services_of(app: Flask) -> Services:
    """The services ``registry.app.create_app`` built for ``app``."""
    return app.extensions[EXTENSION]


def current_services() -> Services:
    """The services of the Flask app handling the current request."""
    from flask import current_app

    return services_of(current_app)
