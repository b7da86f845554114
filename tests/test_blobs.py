"""Blob storage through its public interface, against both backends.

The S3 backend runs against a real SeaweedFS started for this module. What a backend
holds is checked independently of the store under test (directory walk, a separate
boto3 client), so "nothing left behind" means nothing, not "nothing the store admits to".
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import random
import threading
import tracemalloc
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from registry.blobs import (
    BlobInfo,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_store_from_settings,
)
from registry.config import Settings
from registry.errors import (
    ArtifactNotFoundError,
    EmptyFileError,
    InvalidRangeError,
    StorageError,
    UploadIncompleteError,
    UploadTooLargeError,
)
from tests.seaweed import ACCESS_KEY, SECRET_KEY

MiB = 1 << 20
DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable mod 256
DATA_SHA = hashlib.sha256(DATA).hexdigest()
INVALID_DIGESTS = [
    "../x",
    "../../etc/passwd",
    "",
    "A" * 64,  # uppercase
    "a" * 63,
    "a" * 65,
    "a" * 64 + "\n",
    "g" * 64,
    "a" * 31 + "/" + "a" * 32,
    "/" + "a" * 63,
]


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture
def s3_endpoint(seaweedfs):
    """The session's SeaweedFS (tests/conftest.py); each test uses its own bucket."""
    return seaweedfs


def raw_s3_client(endpoint_url: str):
    """A client of our own, to look at the bucket without going through the store."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


@dataclass
class Backend:
    name: str
    store: BlobStore
    stored: Callable[[], list[str]]  # names of everything the backend holds
    corrupt: Callable[[str, bytes], None]  # overwrite a blob's bytes behind the store's back

    def staged(self) -> list[Path]:
        d = self.store.staging_dir
        return sorted(d.iterdir()) if d.exists() else []

    def assert_nothing_left(self) -> None:
        assert self.staged() == []
        assert self.stored() == []


def local_backend(root: Path) -> Backend:
    store = LocalBlobStore(root)

    def stored() -> list[str]:
        if not root.exists():
            return []
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and ".staging" not in p.relative_to(root).parts
        )

    def corrupt(sha256: str, data: bytes) -> None:
        store.local_path(sha256).write_bytes(data)

    return Backend("local", store, stored, corrupt)


def s3_backend(endpoint_url: str, staging_dir: Path) -> Backend:
    bucket = "blobs-" + uuid.uuid4().hex[:12]
    store = S3BlobStore(
        endpoint_url, bucket, "us-east-1", ACCESS_KEY, SECRET_KEY, staging_dir=staging_dir
    )
    raw = raw_s3_client(endpoint_url)

    def stored() -> list[str]:
        try:
            listing = raw.list_objects_v2(Bucket=bucket)
        except raw.exceptions.NoSuchBucket:
            return []
        return sorted(obj["Key"] for obj in listing.get("Contents", []))

    def corrupt(sha256: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket, Key=f"blobs/{sha256}", Body=data)

    return Backend("s3", store, stored, corrupt)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path / "blobs")
    return s3_backend(request.getfixturevalue("s3_endpoint"), tmp_path / "staging")


@pytest.fixture
def store(backend) -> BlobStore:
    return backend.store


# -- streams ------------------------------------------------------------------------


class ScriptedStream:
    """A client body: hands out ``data`` in reads, then optionally fails like a hang-up."""

    def __init__(self, data: bytes, *, fail_after: int | None = None,
                 error: BaseException | None = None) -> None:
        self._data = io.BytesIO(data)
        self._fail_after = fail_after
        self._error = error or ConnectionResetError("client went away")
        self.read_sizes: list[int] = []

    def read(self, n: int = -1) -> bytes:
        self.read_sizes.append(n)
        if self._fail_after is not None and self._data.tell() >= self._fail_after:
            raise self._error
        return self._data.read(n)


class GeneratedStream:
    """``total`` pseudo-random bytes produced on demand, hashed as they are handed out."""

    def __init__(self, total: int, seed: int = 7) -> None:
        self._left = total
        self._random = random.Random(seed)
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        chunk = self._random.randbytes(n)
        self._left -= n
        self.sha256.update(chunk)
        return chunk


class UnreadableStream:
    def read(self, n: int = -1) -> bytes:  # pragma: no cover - must not be called
        raise AssertionError("the stream was read")


# -- put / get ----------------------------------------------------------------------


def test_put_bytes_round_trip(backend, store):
    info = store.put_bytes(DATA)

    assert info == BlobInfo(sha256=DATA_SHA, size=len(DATA))
    assert store.exists(DATA_SHA)
    assert store.size(DATA_SHA) == len(DATA)
    assert store.read_bytes(DATA_SHA) == DATA
    assert b"".join(store.open_range(DATA_SHA)) == DATA
    assert backend.staged() == []
    assert len(backend.stored()) == 1


def test_put_stream_reads_in_chunks_and_hashes_in_the_same_pass(backend, store):
    stream = ScriptedStream(DATA)

    info = store.put_stream(stream, max_bytes=1 * MiB, chunk_size=1000)

    assert info == BlobInfo(DATA_SHA, len(DATA))
    assert max(stream.read_sizes) <= 1000
    assert store.read_bytes(DATA_SHA) == DATA


def test_identical_reput_is_idempotent(backend, store):
    first = store.put_bytes(DATA)
    second = store.put_stream(io.BytesIO(DATA), max_bytes=len(DATA))

    assert first == second
    assert len(backend.stored()) == 1
    assert backend.staged() == []
    assert store.read_bytes(DATA_SHA) == DATA


def test_put_file_leaves_the_source_alone(backend, store, tmp_path):
    source = tmp_path / "model.tflite"
    source.write_bytes(DATA)

    info = store.put_file(source)

    assert info == BlobInfo(DATA_SHA, len(DATA))
    assert source.read_bytes() == DATA
    assert store.read_bytes(DATA_SHA) == DATA


def test_put_file_refuses_an_empty_file(backend, store, tmp_path):
    source = tmp_path / "empty.bin"
    source.touch()

    with pytest.raises(EmptyFileError):
        store.put_file(source)
    backend.assert_nothing_left()


def test_exactly_max_bytes_is_accepted(backend, store):
    info = store.put_stream(io.BytesIO(DATA), max_bytes=len(DATA), chunk_size=4096)
    assert info.size == len(DATA)


# -- ranges -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, DATA),
        (0, 0, DATA[:1]),
        (100, None, DATA[100:]),  # resume from an offset
        (5000, 5099, DATA[5000:5100]),  # middle
        (len(DATA) - 10, len(DATA) - 1, DATA[-10:]),  # tail
        (len(DATA) - 1, None, DATA[-1:]),  # last byte
        (10, 10**9, DATA[10:]),  # end past the blob means "to the end"
    ],
)
def test_open_range(backend, store, start, end, expected):
    store.put_bytes(DATA)
    chunks = list(store.open_range(DATA_SHA, start, end, chunk_size=1000))
    assert b"".join(chunks) == expected
    assert all(0 < len(c) <= 1000 for c in chunks)


@pytest.mark.parametrize(
    ("start", "end"), [(len(DATA), None), (len(DATA) + 5, None), (20, 10), (-1, None)]
)
def test_unsatisfiable_range_is_refused_before_streaming(backend, store, start, end):
    store.put_bytes(DATA)
    with pytest.raises(InvalidRangeError) as caught:
        store.open_range(DATA_SHA, start, end)  # not iterated: the check is eager
    assert caught.value.code == "range_not_satisfiable"
    assert caught.value.status == 416
    assert caught.value.extra["size"] == len(DATA)


def test_missing_blob_is_refused_before_streaming(backend, store):
    with pytest.raises(ArtifactNotFoundError):
        store.open_range(DATA_SHA)


def test_abandoning_a_range_stream_releases_it(backend, store):
    store.put_bytes(DATA)
    stream = store.open_range(DATA_SHA, chunk_size=100)
    assert next(stream) == DATA[:100]
    stream.close()
    assert store.read_bytes(DATA_SHA) == DATA


# -- refusals leave nothing behind ----------------------------------------------------


def test_too_large_upload_is_refused_and_removed(backend, store):
    stream = ScriptedStream(DATA)

    with pytest.raises(UploadTooLargeError) as caught:
        store.put_stream(stream, max_bytes=len(DATA) - 1, chunk_size=1024)

    assert caught.value.code == "upload_too_large"
    assert caught.value.status == 413
    assert caught.value.extra == {"limit": len(DATA) - 1}
    assert sum(stream.read_sizes) <= len(DATA)  # never asked for more than limit + 1
    backend.assert_nothing_left()


def test_declared_size_over_the_limit_is_refused_before_reading(backend, store):
    with pytest.raises(UploadTooLargeError):
        store.put_stream(UnreadableStream(), max_bytes=100, expected_size=101)
    backend.assert_nothing_left()


def test_empty_upload_is_refused(backend, store):
    with pytest.raises(EmptyFileError) as caught:
        store.put_stream(io.BytesIO(b""), max_bytes=100)
    assert caught.value.code == "empty_file"
    with pytest.raises(EmptyFileError):
        store.put_bytes(b"")
    with pytest.raises(EmptyFileError):
        store.put_stream(UnreadableStream(), max_bytes=100, expected_size=0)
    backend.assert_nothing_left()


def test_stream_shorter_than_declared_is_incomplete(backend, store):
    with pytest.raises(UploadIncompleteError) as caught:
        store.put_stream(io.BytesIO(DATA), max_bytes=1 * MiB, expected_size=len(DATA) + 1)
    assert caught.value.code == "upload_incomplete"
    assert caught.value.extra == {"received": len(DATA), "expected": len(DATA) + 1}
    backend.assert_nothing_left()


def test_nothing_after_the_declared_size_is_read(backend, store):
    body = io.BytesIO(DATA + b"next request")

    info = store.put_stream(body, max_bytes=1 * MiB, expected_size=len(DATA))

    assert info == BlobInfo(DATA_SHA, len(DATA))
    assert body.tell() == len(DATA)


def test_client_hang_up_midway_is_incomplete_and_removed(backend, store):
    stream = ScriptedStream(DATA, fail_after=4096)

    with pytest.raises(UploadIncompleteError) as caught:
        store.put_stream(stream, max_bytes=1 * MiB, chunk_size=1024, expected_size=len(DATA))

    assert isinstance(caught.value.__cause__, ConnectionResetError)
    backend.assert_nothing_left()


def test_other_stream_errors_propagate_and_leave_nothing(backend, store):
    stream = ScriptedStream(DATA, fail_after=2048, error=RuntimeError("parser bug"))

    with pytest.raises(RuntimeError, match="parser bug"):
        store.put_stream(stream, max_bytes=1 * MiB, chunk_size=1024)
    backend.assert_nothing_left()


# -- digests are validated before they reach a path or a key ------------------------


@pytest.mark.parametrize("bad", INVALID_DIGESTS)
def test_invalid_digest_is_rejected_everywhere(backend, store, tmp_path, bad):
    store.put_bytes(DATA)
    dest = tmp_path / "out" / "copy.bin"
    calls = [
        lambda: store.exists(bad),
        lambda: store.size(bad),
        lambda: store.delete(bad),
        lambda: store.open_range(bad),
        lambda: store.read_bytes(bad),
        lambda: store.copy_to(bad, dest),
        lambda: store.local_path(bad),
        lambda: store.presigned_url(bad, 60),
    ]
    for call in calls:
        with pytest.raises(ArtifactNotFoundError):
            call()
    assert not dest.parent.exists()
    assert store.read_bytes(DATA_SHA) == DATA


# -- exists / size / delete / copy ---------------------------------------------------


def test_exists_size_delete(backend, store):
    assert not store.exists(DATA_SHA)
    with pytest.raises(ArtifactNotFoundError) as caught:
        store.size(DATA_SHA)
    assert caught.value.code == "artifact_not_found"

    store.put_bytes(DATA)
    assert store.exists(DATA_SHA)
    assert store.size(DATA_SHA) == len(DATA)

    store.delete(DATA_SHA)
    assert not store.exists(DATA_SHA)
    with pytest.raises(ArtifactNotFoundError):
        store.read_bytes(DATA_SHA)
    store.delete(DATA_SHA)  # deleting what is gone is fine
    assert backend.stored() == []


def test_copy_to_writes_a_complete_file(backend, store, tmp_path):
    store.put_bytes(DATA)
    dest = tmp_path / "work" / "job-1" / "source.keras"

    store.copy_to(DATA_SHA, dest)
    assert dest.read_bytes() == DATA

    dest.write_bytes(b"stale")
    store.copy_to(DATA_SHA, dest)  # replaces an existing file
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["source.keras"]


def test_copy_to_missing_blob_creates_nothing(backend, store, tmp_path):
    dest = tmp_path / "work" / "x.bin"
    with pytest.raises(ArtifactNotFoundError):
        store.copy_to(DATA_SHA, dest)
    assert not dest.parent.exists()


def test_corrupted_blob_is_detected_on_whole_reads(backend, store, tmp_path):
    store.put_bytes(DATA)
    backend.corrupt(DATA_SHA, bytes(len(DATA)))
    dest = tmp_path / "copy.bin"

    with pytest.raises(StorageError):
        store.read_bytes(DATA_SHA)
    with pytest.raises(StorageError):
        store.copy_to(DATA_SHA, dest)
    assert list(tmp_path.glob("*copy.bin*")) == []


# -- adopting a file the caller already staged and hashed ---------------------------


def staged_file(store: BlobStore, data: bytes) -> Path:
    store.staging_dir.mkdir(parents=True, exist_ok=True)
    path = store.staging_dir / f"upload-{uuid.uuid4().hex}"
    path.write_bytes(data)
    return path


def test_adopt_file_commits_and_consumes_the_staged_file(backend, store):
    info = store.adopt_file(staged_file(store, DATA), DATA_SHA, len(DATA))
    again = store.adopt_file(staged_file(store, DATA), DATA_SHA, len(DATA))

    assert info == again == BlobInfo(DATA_SHA, len(DATA))
    assert store.read_bytes(DATA_SHA) == DATA
    assert backend.staged() == []
    assert len(backend.stored()) == 1


def test_adopt_file_checks_the_size(backend, store):
    with pytest.raises(ValueError):
        store.adopt_file(staged_file(store, DATA), DATA_SHA, len(DATA) + 1)
    with pytest.raises(EmptyFileError):
        store.adopt_file(staged_file(store, b""), DATA_SHA, 0)
    backend.assert_nothing_left()


def test_adopt_file_never_touches_files_outside_staging(backend, store, tmp_path):
    elsewhere = tmp_path / "precious.bin"
    elsewhere.write_bytes(DATA)

    with pytest.raises(ValueError):
        store.adopt_file(elsewhere, DATA_SHA, len(DATA))
    assert elsewhere.read_bytes() == DATA
    assert backend.stored() == []


# -- concurrency ----------------------------------------------------------------------


def test_concurrent_threads_putting_the_same_blob(backend, store):
    start = threading.Barrier(8)
    results: list[BlobInfo] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            start.wait()
            results.append(store.put_stream(io.BytesIO(DATA), max_bytes=1 * MiB, chunk_size=512))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert results == [BlobInfo(DATA_SHA, len(DATA))] * 8
    assert len(backend.stored()) == 1
    assert backend.staged() == []
    assert store.read_bytes(DATA_SHA) == DATA


def _put_in_child(store: BlobStore, data: bytes, start) -> None:
    start.wait()
    info = store.put_bytes(data)
    os._exit(0 if info.sha256 == hashlib.sha256(data).hexdigest() else 3)


def test_concurrent_processes_putting_the_same_blob(backend, store):
    # Use the store before forking: each child must not reuse the parent's connections.
    other = store.put_bytes(b"used before fork")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(4)
    children = [context.Process(target=_put_in_child, args=(store, DATA, start)) for _ in range(4)]
    for child in children:
        child.start()
    try:
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0, 0, 0, 0]
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()

    assert store.read_bytes(DATA_SHA) == DATA
    assert store.read_bytes(other.sha256) == b"used before fork"
    assert len(backend.stored()) == 2
    assert backend.staged() == []


# -- memory stays flat ----------------------------------------------------------------


def test_64_mib_streamed_put_and_read_keep_memory_flat(backend, store):
    total = 64 * MiB
    stream = GeneratedStream(total)
    # Measure the upload, not the one-time cost of a backend's client (boto3 loads
    # ~10 MiB of service model on first use).
    store.exists(DATA_SHA)

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        info = store.put_stream(stream, max_bytes=total, chunk_size=1 * MiB, expected_size=total)
        put_peak = tracemalloc.get_traced_memory()[1] - baseline

        tracemalloc.reset_peak()
        baseline = tracemalloc.get_traced_memory()[0]
        reread = hashlib.sha256()
        for chunk in store.open_range(info.sha256):
            reread.update(chunk)
        read_peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()

    assert info == BlobInfo(stream.sha256.hexdigest(), total)
    assert reread.hexdigest() == info.sha256
    assert put_peak < 8 * MiB, f"put peaked at {put_peak / MiB:.1f} MiB"
    assert read_peak < 8 * MiB, f"read peaked at {read_peak / MiB:.1f} MiB"
    assert backend.staged() == []


# -- backend specifics ----------------------------------------------------------------


def test_local_layout_and_local_path(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes(DATA)

    path = store.local_path(DATA_SHA)
    assert path == tmp_path / "blobs" / DATA_SHA[:2] / DATA_SHA[2:4] / DATA_SHA
    assert path.read_bytes() == DATA
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a fronting web server
    assert store.staging_dir == tmp_path / "blobs" / ".staging"
    assert store.presigned_url(DATA_SHA, 60) is None
    with pytest.raises(ArtifactNotFoundError):
        store.local_path(hashlib.sha256(b"other").hexdigest())


@pytest.mark.s3
def test_s3_presigned_url_downloads_over_http(s3_endpoint, tmp_path):
    backend = s3_backend(s3_endpoint, tmp_path / "staging")
    store = backend.store
    store.put_bytes(DATA)

    url = store.presigned_url(DATA_SHA, expires=300)
    assert store.local_path(DATA_SHA) is None
    assert url.startswith(s3_endpoint + "/")

    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == DATA
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    ranged = urllib.request.Request(url, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged, timeout=10) as response:
        assert response.status == 206
        assert response.read() == DATA[100:200]

    with pytest.raises(ValueError):
        store.presigned_url(DATA_SHA, expires=0)


@pytest.mark.s3
def test_s3_objects_are_keyed_by_digest(s3_endpoint, tmp_path):
    backend = s3_backend(s3_endpoint, tmp_path / "staging")
    backend.store.put_bytes(DATA)
    assert backend.stored() == [f"blobs/{DATA_SHA}"]


def test_s3_unreachable_is_a_storage_error_and_leaves_nothing(tmp_path):
    with __import__("socket").socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = S3BlobStore(f"http://127.0.0.1:{port}", "unreachable", access_key="a",
                        secret_key="b", staging_dir=tmp_path / "staging")

    with pytest.raises(StorageError) as caught:
        store.exists(DATA_SHA)
    assert caught.value.code == "storage_error"
    assert caught.value.status == 503
    with pytest.raises(StorageError):
        store.put_bytes(DATA)
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.parametrize("name", ["ab", "Upper", "under_score", "-leading", "a..b", "x" * 64])
def test_s3_bucket_name_is_checked_up_front(name):
    with pytest.raises(ValueError):
        S3BlobStore("http://127.0.0.1:1", name)


# -- configuration ------------------------------------------------------------------


def test_settings_pick_the_local_backend_by_default(tmp_path):
    settings = Settings.load({"data_dir": tmp_path / "data"}, environ={})
    store = blob_store_from_settings(settings)

    assert isinstance(store, LocalBlobStore)
    assert store.put_bytes(DATA).sha256 == DATA_SHA
    assert store.local_path(DATA_SHA).is_relative_to(tmp_path / "data" / "blobs")


@pytest.mark.s3
def test_settings_pick_s3_from_the_environment(s3_endpoint, tmp_path):
    environ = {
        "MODELDROP_DATA_DIR": str(tmp_path / "data"),
        "MODELDROP_BLOB_BACKEND": "s3",
        "MODELDROP_S3_ENDPOINT_URL": s3_endpoint,
        "MODELDROP_S3_BUCKET": "env-" + uuid.uuid4().hex[:12],
        "MODELDROP_S3_ACCESS_KEY": ACCESS_KEY,
        "MODELDROP_S3_SECRET_KEY": SECRET_KEY,
    }
    store = blob_store_from_settings(Settings.load(environ=environ))

    assert isinstance(store, S3BlobStore)
    assert store.staging_dir == tmp_path / "data" / "staging"
    assert store.put_bytes(DATA).sha256 == DATA_SHA
    assert store.read_bytes(DATA_SHA) == DATA


def test_unknown_backend_is_a_configuration_error(tmp_path):
    settings = Settings.load({"data_dir": tmp_path, "blob_backend": "ftp"}, environ={})
    with pytest.raises(ValueError, match="blob_backend"):
        blob_store_from_settings(settings)


def test_sweep_staging_removes_only_abandoned_uploads(tmp_path):
    """A crash leaves upload files behind; start-up and maintenance sweep them by age."""
    import os
    import time

    from registry.blobs import LocalBlobStore

    store = LocalBlobStore(tmp_path / "blobs")
    store.staging_dir.mkdir(parents=True, exist_ok=True)
    old = store.staging_dir / "upload-crashed.part"
    old.write_bytes(b"half an upload")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    fresh = store.staging_dir / "upload-in-progress"
    fresh.write_bytes(b"still arriving")
    other = store.staging_dir / "notes.txt"
    other.write_bytes(b"not ours")
    os.utime(other, (hour_ago, hour_ago))
    assert store.sweep_staging(older_than=600) == [old]
    assert not old.exists() and fresh.exists() and other.exists()
    assert store.sweep_staging(older_than=600) == []


def test_app_start_sweeps_abandoned_uploads(tmp_path):
    import os
    import time

    from registry.app import create_app
    from tests.helpers import base_settings

    settings = base_settings(tmp_path)
    staging = settings.data_dir / "blobs" / ".staging"
    staging.mkdir(parents=True)
    left = staging / "upload-left-by-a-crash"
    left.write_bytes(b"x" * 100)
    day_ago = time.time() - 86400
    os.utime(left, (day_ago, day_ago))
    app = create_app(settings)
    assert app.extensions["modeldrop"].blobs.staging_dir == staging
    assert not left.exists()
