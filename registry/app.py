"""The application factory: the only place that wires settings, storage, signing and jobs.

Nothing runs at import time. ``build_services`` is shared by the web app and the workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from flask import Flask

from registry.config import Settings

log = logging.getLogger("modeldrop")


@dataclass
class Services:
    settings: Settings
    store: Any  # registry.store.Store
    blobs: Any  # registry.blobs.BlobStore
    signing: Any  # registry.signing.ImageRepository
    jobs: Any  # registry.jobs.JobQueue
    staging_dir: Path = field(default_factory=Path)
    work_dir: Path = field(default_factory=Path)

    def target_spec(self, path: str, sha256: str, size: int, **custom: Any):  # noqa: ANN201
        from registry.signing import TargetSpec

        return TargetSpec(path=path, length=size, sha256=sha256, custom=custom)


def build_services(settings: Settings, *, start_workers: bool = False) -> Services:
    """Open the database (migrating it), blob storage, keys and the job queue."""
    from registry import db
    from registry.blobs import blob_store_from_settings
    from registry.jobs import job_queue_from_settings
    from registry.store import Store

    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # keys, admin token, database: the converter's uid must not read them
    engine = db.make_engine(settings.sqlalchemy_url)
    db.upgrade(engine)
    store = Store(engine, lock_dir=data_dir)
    blobs = blob_store_from_settings(settings)
    signing = _image_repository(settings, store)
    jobs = job_queue_from_settings(settings)
    staging = data_dir / "staging"
    work = data_dir / "work"
    for d in (staging, work):
        d.mkdir(parents=True, exist_ok=True)
    services = Services(settings=settings, store=store, blobs=blobs, signing=signing, jobs=jobs,
                        staging_dir=staging, work_dir=work)
    from registry.versions import unlist_sources

    for path in unlist_sources(services):  # sources are confidential (docs/security.md)
        log.warning("removed source %s from TUF targets", path)
    # Uploads a crash left half-written on this machine (each web machine stages its own).
    for path in blobs.sweep_staging(settings.staging_max_age):
        log.warning("removed abandoned upload %s", path.name)
    if start_workers:
        jobs.start()
    return services


def _image_repository(settings: Settings, store):  # noqa: ANN001, ANN202
    from registry.signing import ExpiryPolicy, ImageRepository, KeyStore, MetadataStore

    class _DatabaseMetadata(MetadataStore):
        """Signed metadata bytes in the database, shared by every process."""

        def get(self, name: str) -> Optional[bytes]:
            return store.get_tuf_metadata(name)

        def put(self, name: str, data: bytes) -> None:
            store.put_tuf_metadata(name, data)

    expiry = ExpiryPolicy(timestamp=settings.timestamp_expiry, snapshot=settings.snapshot_expiry,
                          targets=settings.targets_expiry, root=settings.root_expiry)
    repo = ImageRepository(KeyStore(settings.resolved_keys_dir), _DatabaseMetadata(),
                           lock=store.tuf_lock, expiry=expiry)
    repo.bootstrap()  # takes the lock itself
    return repo


def ensure_admin_token(services: Services) -> Optional[Path]:
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


def create_app(config: Settings | Mapping[str, Any] | None = None, *,
               start_workers: bool = False) -> Flask:
    """Build the web application. ``config`` overrides the environment (tests pass a dict)."""
    settings = config if isinstance(config, Settings) else Settings.load(config)
    services = build_services(settings, start_workers=start_workers)
    ensure_admin_token(services)
    from registry.jobs.sandbox import Sandbox

    Sandbox(settings).announce()  # one line: is the converter sandbox full or degraded?

    from registry.api import register_api
    from registry.uploads import UploadRequest

    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + settings.max_eval_bytes + \
        settings.max_metadata_bytes + (1 << 20)
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_metadata_bytes
    app.config["TESTING"] = settings.testing
    app.extensions["modeldrop"] = services
    register_api(app)
    from registry.web import register_web

    register_web(app)
    return app
