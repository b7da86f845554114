"""Blobs as objects in an S3-compatible bucket: the backend for several machines.

Works against AWS S3, SeaweedFS and MinIO. Devices can download straight from the bucket
(or a CDN in front of it) with presigned URLs, so artifact bytes need not pass through
the web processes.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from registry.errors import ArtifactNotFoundError, StorageError

from ._base import BlobStore, check_sha256, iter_file_range
from ._cache import BlobCache

KEY_PREFIX = "blobs/"
MAX_PRESIGN_EXPIRY = 7 * 24 * 3600  # seconds; the SigV4 maximum
# A blob's bytes never change under its name, so whoever fetches it straight from the
# bucket (a device with a presigned URL, a CDN) may cache it for good.
IMMUTABLE = "public, max-age=31536000, immutable"

# S3 bucket naming rules (lowercase letters, digits, dots, hyphens; 3-63 characters).
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "NotFound", "404"}
_BUCKET_TAKEN_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}

# Multipart above 64 MiB in 16 MiB parts: a 2 GiB upload is 128 parts (S3 allows
# 10,000), and a failed part is retried alone. Two parts at a time: botocore reads each
# part in 1 MiB pieces to sign and checksum it, so every extra thread adds transient
# buffers; on loopback SeaweedFS, 64 MiB took the same ~0.8 s with two threads as with
# four, and the peak Python allocation fell from 4.5-7 MiB to ~4 MiB.
_TRANSFER = TransferConfig(
    multipart_threshold=64 << 20,
    multipart_chunksize=16 << 20,
    max_concurrency=2,
    use_threads=True,
)

# Guards client creation. A lock held by another thread at fork time would stay locked
# forever in the child, so each child starts with a fresh one.
_client_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    global _client_lock
    _client_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


class S3BlobStore(BlobStore):
    """Content-addressed objects ``blobs/<sha256>`` in one bucket, path-style addressing.

    Uploads are staged in a local directory first (hashing and size limits need the whole
    stream before anything is committed), then sent with ``upload_file`` -- multipart for
    big files. An S3 object write is atomic, so readers see no object or the whole one;
    two processes uploading the same blob write identical bytes.

    The bucket is created on first use if it is missing, not in the constructor, so
    building an app does no network I/O. Each process gets its own boto3 client: a client
    is thread-safe, but its connection pool must not be shared across ``fork``.
    """

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        staging_dir: Path | None = None,
        cache_dir: Path | None = None,
        cache_bytes: int = 0,
    ) -> None:
        """
        Args:
            endpoint_url: e.g. ``http://127.0.0.1:8333`` for SeaweedFS; None or "" for AWS.
            bucket: bucket name (S3 rules: 3-63 lowercase letters, digits, dots, hyphens).
            region: signing region; also the bucket's location when it is created.
            access_key, secret_key: credentials; None or "" uses boto3's default chain
                (environment, shared config, instance role).
            staging_dir: local directory for uploads in progress; defaults to
                ``<tempdir>/modeldrop-staging``. Needs room for the largest upload.
            cache_dir, cache_bytes: a read-through copy of downloaded blobs on local disk
                (:class:`~registry.blobs._cache.BlobCache`), at most ``cache_bytes``; off
                unless both are given.

        Raises:
            ValueError: the bucket name breaks S3's rules.
        """
        if not _BUCKET_RE.fullmatch(bucket or "") or ".." in bucket:
            raise ValueError(
                f"invalid S3 bucket name {bucket!r}: use 3-63 lowercase letters, digits, dots or hyphens"
            )
        self.endpoint_url = endpoint_url or None
        self.bucket = bucket
        self.region = region or "us-east-1"
        self._access_key = access_key or None
        self._secret_key = secret_key or None
        self._staging_dir = (
            Path(staging_dir) if staging_dir else Path(tempfile.gettempdir()) / "modeldrop-staging"
        )
        self.cache = BlobCache(Path(cache_dir), cache_bytes) if cache_dir and cache_bytes > 0 \
            else None
        self._client_obj: Any = None
        self._client_pid: int | None = None
        self._warm_client: tuple[Any, int] | None = None  # built by warm(), bucket unchecked

    def __repr__(self) -> str:
        return f"S3BlobStore(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r})"

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    # -- client --------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        pid = os.getpid()
        client = self._client_obj
        if client is not None and self._client_pid == pid:
            return client
        # Building a client costs ~0.1 s of CPU; without the lock, every thread of a
        # fresh process would build its own.
        with _client_lock:
            if self._client_obj is None or self._client_pid != pid:
                warm, self._warm_client = self._warm_client, None
                client = warm[0] if warm is not None and warm[1] == pid else self._make_client()
                self._ensure_bucket(client)
                self._client_obj, self._client_pid = client, pid
            return self._client_obj

    def warm(self) -> None:
        """Build this process's client now, without any network I/O.

        botocore loads the S3 service model when the first client is built (~0.3 s of CPU
        here), so a web worker that builds it on its first download or redirect makes that
        request pay for it; ``registry.wsgi`` calls this as each gunicorn worker starts.
        The bucket is still checked on first use.
        """
        pid = os.getpid()
        with _client_lock:
            if self._client_obj is not None and self._client_pid == pid:
                return
            if self._warm_client is None or self._warm_client[1] != pid:
                try:
                    self._warm_client = (self._make_client(), pid)
                except StorageError:  # a bad configuration fails the first request, not boot
                    return

    def _make_client(self) -> Any:
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,  # seconds
            read_timeout=60,  # seconds
        )
        # A session per client: boto3's default session is not thread-safe.
        session = boto3.session.Session()
        with _storage_errors("connect"):
            return session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key,
                config=config,
            )

    def _ensure_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if _error_code(e) not in _MISSING_BUCKET_CODES:
                raise StorageError(f"S3 bucket check failed ({_error_code(e)})") from e
        except BotoCoreError as e:
            raise StorageError("S3 is unreachable") from e
        kwargs: dict[str, Any] = {}
        if self.region != "us-east-1":  # AWS rejects an explicit us-east-1 constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(Bucket=self.bucket, **kwargs)
        except ClientError as e:
            # Another process created it between our check and our create.
            if _error_code(e) not in _BUCKET_TAKEN_CODES:
                raise StorageError(f"cannot create S3 bucket ({_error_code(e)})") from e
        except BotoCoreError as e:
            raise StorageError("S3 is unreachable") from e

    def _key(self, sha256: str) -> str:
        return KEY_PREFIX + check_sha256(sha256)

    # -- hooks ---------------------------------------------------------------------

    def exists(self, sha256: str) -> bool:
        key = self._key(sha256)
        try:
            with _storage_errors("HeadObject", sha256):
                self._client.head_object(Bucket=self.bucket, Key=key)
        except ArtifactNotFoundError:
            return False
        return True

    def size(self, sha256: str) -> int:
        key = self._key(sha256)
        if self.cache is not None:
            cached = self.cache.size(sha256)
            if cached is not None:  # immutable: the local copy's length is the blob's
                return cached
        with _storage_errors("HeadObject", sha256):
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def iter_sha256(self) -> Iterator[str]:
        with _storage_errors("ListObjectsV2"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=KEY_PREFIX)
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(KEY_PREFIX):]
                    if len(name) == 64:
                        yield name

    def delete(self, sha256: str) -> None:
        key = self._key(sha256)
        with _storage_errors("DeleteObject"):
            self._client.delete_object(Bucket=self.bucket, Key=key)
        if self.cache is not None:  # this node's copy; other nodes' copies are unreachable
            self.cache.discard(sha256)  # (the API only serves blobs the store records)

    def local_path(self, sha256: str) -> Path | None:
        """The blob's verified copy in the local cache, or None (no cache, or not yet cached)."""
        check_sha256(sha256)
        return self.cache.path(sha256) if self.cache is not None else None

    def presigned_url(self, sha256: str, expires: int) -> str:
        """A presigned GET URL for the blob, valid ``expires`` seconds (at most 7 days).

        Signing is local: the blob's existence is not checked.

        Raises:
            ValueError: ``expires`` is not between 1 second and 7 days.
        """
        key = self._key(sha256)
        if not 1 <= expires <= MAX_PRESIGN_EXPIRY:
            raise ValueError(f"expires must be 1..{MAX_PRESIGN_EXPIRY} seconds, got {expires}")
        with _storage_errors("presign"):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=int(expires)
            )

    def _commit(self, temp_path: Path, sha256: str, size: int) -> None:
        key = self._key(sha256)
        with _storage_errors("upload"):
            self._client.upload_file(
                str(temp_path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": "application/octet-stream", "CacheControl": IMMUTABLE},
                Config=_TRANSFER,
            )

    def _iter_range(self, sha256: str, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        key = self._key(sha256)
        if self.cache is not None:
            cached = self.cache.path(sha256)
            if cached is not None:
                try:
                    f = cached.open("rb")
                except FileNotFoundError:  # evicted since: read the bucket
                    pass
                else:
                    return iter_file_range(f, start, end, chunk_size,
                                           f"the cached copy of {sha256} is shorter than expected")
        return self._iter_object(key, sha256, start, end, chunk_size)

    def _iter_object(self, key: str, sha256: str, start: int, end: int,
                     chunk_size: int) -> Iterator[bytes]:
        wanted = end - start + 1
        with _storage_errors("GetObject", sha256):
            response = self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}"
            )
        body = response["Body"]
        try:
            # A server that ignores Range would send the whole object as if it were the slice.
            if int(response.get("ContentLength", -1)) != wanted:
                raise StorageError(f"S3 returned the wrong range for blob {sha256}")
            chunks = _storage_errors_in(body.iter_chunks(chunk_size))
            total = _range_total(response.get("ContentRange"))
            if self.cache is not None and start == 0 and total == wanted:
                chunks = self.cache.fill(sha256, wanted, chunks)  # the whole blob: keep a copy
            yield from chunks
        finally:
            body.close()


def _storage_errors_in(chunks: Iterator[bytes]) -> Iterator[bytes]:
    with _storage_errors("GetObject"):
        yield from chunks


def _range_total(content_range: str | None) -> int | None:
    """The complete length from ``bytes 0-99/1234``; None if absent or ``*``."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))


@contextmanager
def _storage_errors(operation: str, sha256: str | None = None) -> Iterator[None]:
    """Translate botocore/boto3 errors at the boundary.

    A missing object becomes :class:`ArtifactNotFoundError` when ``sha256`` says what was
    looked up; everything else is :class:`StorageError`, which names the operation and
    S3's error code but not endpoints or credentials.
    """
    try:
        yield
    except ClientError as e:
        code = _error_code(e)
        if sha256 is not None and code in _MISSING_CODES:
            raise ArtifactNotFoundError(f"artifact {sha256} not found") from e
        raise StorageError(f"S3 {operation} failed ({code})") from e
    except (BotoCoreError, Boto3Error) as e:
        raise StorageError(f"S3 {operation} failed ({type(e).__name__})") from e
