"""Content-addressed artifact storage: one small interface, a local and an S3 backend.

Blobs are named by the SHA-256 of their bytes and never change. Uploads are streamed
with a hard size limit and hashed in the same pass; configuration picks the backend
(:func:`blob_store_from_settings`). See ``docs/storage.md``.
"""

from ._base import BlobInfo, BlobStore, check_sha256
from ._factory import blob_store_from_settings
from ._local import LocalBlobStore
from ._s3 import S3BlobStore

__all__ = [
    "BlobInfo",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "blob_store_from_settings",
    "check_sha256",
]
