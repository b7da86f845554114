"""Pick the blob backend from settings; the only place that knows both backends' settings."""

from __future__ import annotations

from pathlib import Path

from registry.config import Settings

from ._base import BlobStore
from ._local import LocalBlobStore
from ._s3 import S3BlobStore


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """Build the configured blob store.

    ``blob_backend="local"`` (the default) keeps blobs in ``<data_dir>/blobs``;
    ``"s3"`` uses the ``s3_*`` settings, stages uploads in ``<data_dir>/staging`` and, with
    ``s3_cache_bytes`` > 0, keeps a read-through copy of downloads in ``s3_cache_dir``
    (default ``<data_dir>/s3-cache``).

    Raises:
        ValueError: ``blob_backend`` is neither ``local`` nor ``s3``.
    """
    backend = settings.blob_backend.strip().lower()
    data_dir = Path(settings.data_dir)
    if backend == "local":
        return LocalBlobStore(data_dir / "blobs")
    if backend == "s3":
        return S3BlobStore(
            endpoint_url=settings.s3_endpoint_url or None,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            staging_dir=data_dir / "staging",
            cache_dir=Path(settings.s3_cache_dir) if settings.s3_cache_dir
            else data_dir / "s3-cache",
            cache_bytes=settings.s3_cache_bytes,
        )
    raise ValueError(f"unknown blob_backend {settings.blob_backend!r}: expected 'local' or 's3'")
