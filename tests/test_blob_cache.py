"""The S3 backend's read-through cache on local disk, against a real SeaweedFS.

What the bucket holds is looked at (and tampered with) through a boto3 client of the test's
own; what the cache holds is looked at as files. "Served from the cache" is shown by deleting
the object from the bucket behind the store's back and reading it again.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import threading
import uuid

import pytest
import requests

from registry.blobs import S3BlobStore, blob_store_from_settings
from registry.blobs._s3 import KEY_PREFIX
from registry.config import Settings
from registry.errors import StorageError
from tests.helpers import base_settings
from tests.makers import make_ready_version
from tests.procs import wait_for
from tests.test_blobs import raw_s3_client

KiB = 1 << 10
CHUNK = 64 * KiB


def blob(seed: int, size: int = 300 * KiB) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).hexdigest()


@pytest.fixture
def bucket():
    return "md-" + uuid.uuid4().hex[:10]


def make_store(endpoint, bucket, tmp_path, cache_bytes=1 << 20) -> S3BlobStore:
    return S3BlobStore(endpoint, bucket, access_key="any", secret_key="any",
                       staging_dir=tmp_path / "staging", cache_dir=tmp_path / "cache",
                       cache_bytes=cache_bytes)


@pytest.fixture
def store(seaweedfs, bucket, tmp_path) -> S3BlobStore:
    return make_store(seaweedfs, bucket, tmp_path)


@pytest.fixture
def raw(seaweedfs):
    return raw_s3_client(seaweedfs)


def cached_files(tmp_path) -> list[str]:
    root = tmp_path / "cache"
    return sorted(p.name for p in root.glob("??/*")) if root.is_dir() else []


def fill_files(tmp_path) -> list[str]:
    root = tmp_path / "cache" / ".fill"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def published(store, sha):
    """The cached copy, waiting for it: an HTTP client has the whole body before the server
    has made the copy durable and renamed it (the fill finishes after its last chunk)."""
    return wait_for(lambda: store.local_path(sha), 30, "the cached copy", step=0.02)


def read_all(store, sha, start=0, end=None) -> bytes:
    return b"".join(store.open_range(sha, start, end, chunk_size=CHUNK))


def test_first_whole_read_fills_the_cache_and_later_reads_skip_the_bucket(store, raw, bucket,
                                                                          tmp_path):
    data, sha = blob(1)
    store.put_bytes(data)
    assert store.local_path(sha) is None and cached_files(tmp_path) == []

    assert read_all(store, sha, 1000, 2000) == data[1000:2001]  # a slice fills nothing
    assert cached_files(tmp_path) == []
    assert read_all(store, sha) == data
    assert cached_files(tmp_path) == [sha] and fill_files(tmp_path) == []
    path = store.local_path(sha)
    assert path.read_bytes() == data and oct(path.stat().st_mode & 0o777) == "0o444"

    raw.delete_object(Bucket=bucket, Key=KEY_PREFIX + sha)  # behind the store's back
    assert store.size(sha) == len(data)
    assert read_all(store, sha) == data
    assert read_all(store, sha, 5, 70_000) == data[5:70_001]
    assert store.read_bytes(sha) == data
    store.delete(sha)
    assert cached_files(tmp_path) == [] and store.local_path(sha) is None


@pytest.mark.parametrize("tamper", ["corrupt", "short"])
def test_a_bad_object_is_never_cached_nor_delivered_whole(store, raw, bucket, tmp_path, tamper):
    data, sha = blob(2)
    store.put_bytes(data)
    bad = bytes(len(data)) if tamper == "corrupt" else data[:-1]
    raw.put_object(Bucket=bucket, Key=KEY_PREFIX + sha, Body=bad)

    received = []
    with pytest.raises(StorageError):
        for chunk in store.open_range(sha, chunk_size=CHUNK):
            received.append(chunk)
    # the last chunk was held back: the consumer never had all the bytes
    assert sum(map(len, received)) < len(bad)
    assert cached_files(tmp_path) == [] and fill_files(tmp_path) == []
    with pytest.raises(StorageError):  # and the next read checks again
        store.read_bytes(sha)
    assert cached_files(tmp_path) == []


def test_a_consumer_that_stops_after_the_last_chunk_leaves_nothing(store, tmp_path):
    data, sha = blob(14)
    store.put_bytes(data)
    chunks = store.open_range(sha, chunk_size=CHUNK)
    got = b""
    while len(got) < len(data):
        got += next(chunks)
    assert got == data
    chunks.close()  # the copy is published only when the iteration ends
    assert cached_files(tmp_path) == [] and fill_files(tmp_path) == []


def test_a_download_abandoned_midway_leaves_nothing(store, tmp_path):
    data, sha = blob(3)
    store.put_bytes(data)
    chunks = store.open_range(sha, chunk_size=CHUNK)
    next(chunks)
    next(chunks)
    chunks.close()
    assert cached_files(tmp_path) == [] and fill_files(tmp_path) == []
    assert read_all(store, sha) == data and cached_files(tmp_path) == [sha]


def test_a_second_fill_while_one_runs_streams_without_a_copy(store, tmp_path):
    data, sha = blob(4)
    store.put_bytes(data)
    first = store.open_range(sha, chunk_size=CHUNK)
    head = next(first)  # the first fill holds the lock now
    assert read_all(store, sha) == data  # the second streams, verified, uncached
    assert cached_files(tmp_path) == []
    assert head + b"".join(first) == data
    assert cached_files(tmp_path) == [sha] and fill_files(tmp_path) == []


def test_concurrent_threads_fill_once(store, tmp_path):
    data, sha = blob(5, 2 << 20)
    store = make_store(store.endpoint_url, store.bucket, tmp_path, cache_bytes=8 << 20)
    store.put_bytes(data)
    start = threading.Barrier(6)
    results = []

    def download():
        start.wait()
        results.append(read_all(store, sha))

    threads = [threading.Thread(target=download) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [data] * 6
    assert cached_files(tmp_path) == [sha] and fill_files(tmp_path) == []


def _download_in_child(store, sha, start, queue):
    start.wait()
    queue.put(hashlib.sha256(b"".join(store.open_range(sha, chunk_size=CHUNK))).hexdigest())


def test_concurrent_processes_fill_once(seaweedfs, bucket, tmp_path):
    data, sha = blob(6, 2 << 20)
    store = make_store(seaweedfs, bucket, tmp_path, cache_bytes=8 << 20)
    store.put_bytes(data)
    context = multiprocessing.get_context("fork")
    start, queue = context.Barrier(4), context.Queue()
    children = [context.Process(target=_download_in_child, args=(store, sha, start, queue))
                for _ in range(4)]
    for child in children:
        child.start()
    try:
        digests = [queue.get(timeout=60) for _ in children]
        for child in children:
            child.join(30)
        assert [child.exitcode for child in children] == [0] * 4
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
    assert digests == [sha] * 4
    assert cached_files(tmp_path) == [sha] and fill_files(tmp_path) == []
    assert (tmp_path / "cache" / sha[:2] / sha).read_bytes() == data


def test_least_recently_used_copies_are_evicted_under_the_cap(seaweedfs, bucket, tmp_path):
    size = 300 * KiB
    store = make_store(seaweedfs, bucket, tmp_path, cache_bytes=int(2.5 * size))
    (a, sha_a), (b, sha_b), (c, sha_c) = blob(7, size), blob(8, size), blob(9, size)
    for data in (a, b, c):
        store.put_bytes(data)
    assert read_all(store, sha_a) == a and read_all(store, sha_b) == b
    # a was used after b: b is the least recently used copy now
    os.utime(store.local_path(sha_b), (1_000_000, 1_000_000))
    os.utime(store.local_path(sha_a), (2_000_000, 2_000_000))
    assert store.local_path(sha_a) is not None  # a hit refreshes an old copy's age
    assert read_all(store, sha_c) == c
    assert cached_files(tmp_path) == sorted([sha_a, sha_c])
    assert store.cache.usage() == 2 * size <= store.cache.max_bytes

    big, sha_big = blob(10, 800 * KiB)  # larger than the cap: streamed, never cached
    store.put_bytes(big)
    assert read_all(store, sha_big) == big
    assert cached_files(tmp_path) == sorted([sha_a, sha_c])


def test_settings_turn_the_cache_on(seaweedfs, tmp_path):
    env = {"MODELDROP_BLOB_BACKEND": "s3", "MODELDROP_S3_ENDPOINT_URL": seaweedfs,
           "MODELDROP_S3_CACHE_BYTES": str(1 << 30)}
    store = blob_store_from_settings(Settings.load({"data_dir": tmp_path}, environ=env))
    assert store.cache.root == tmp_path / "s3-cache" and store.cache.max_bytes == 1 << 30
    env["MODELDROP_S3_CACHE_DIR"] = str(tmp_path / "elsewhere")
    store = blob_store_from_settings(Settings.load({"data_dir": tmp_path}, environ=env))
    assert store.cache.root == tmp_path / "elsewhere"
    del env["MODELDROP_S3_CACHE_BYTES"]
    assert blob_store_from_settings(Settings.load({"data_dir": tmp_path}, environ=env)).cache \
        is None


# -- through the artifact route --------------------------------------------------------


@pytest.fixture
def settings(tmp_path, seaweedfs, bucket):
    return base_settings(tmp_path, blob_backend="s3", s3_endpoint_url=seaweedfs,
                         s3_bucket=bucket, s3_access_key="any", s3_secret_key="any",
                         s3_cache_bytes=64 << 20)


def test_artifact_route_fills_then_serves_the_local_copy(live_server, raw, bucket, tmp_path):
    services = live_server.services
    data, _ = blob(11, 3 << 20)
    version = make_ready_version(services, "digits",
                                 variants={"tflite-fp32": {"format": "tflite", "data": data}})
    sha = version.variants[0].sha256
    headers = {"Authorization": f"Bearer {live_server.admin_token}"}
    url = f"{live_server.base_url}/v1/artifacts/{sha}"
    part = requests.get(url, headers={**headers, "Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:200]
    assert services.blobs.local_path(sha) is None  # a slice does not fill
    whole = requests.get(url, headers=headers, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert published(services.blobs, sha) is not None

    raw.delete_object(Bucket=bucket, Key=KEY_PREFIX + sha)  # only the local copy is left
    again = requests.get(url, headers=headers, timeout=30)
    assert again.status_code == 200 and again.content == data
    assert again.headers["ETag"] == f'"{sha}"' and int(again.headers["Content-Length"]) == len(data)
    tail = requests.get(url, headers={**headers, "Range": "bytes=1000000-"}, timeout=30)
    assert tail.status_code == 206 and tail.content == data[1000000:]
    assert tail.headers["Content-Range"] == f"bytes 1000000-{len(data) - 1}/{len(data)}"
    middle = requests.get(url, headers={**headers, "Range": "bytes=10-20"}, timeout=30)
    assert middle.status_code == 206 and middle.content == data[10:21]
    head = requests.head(url, headers=headers, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert requests.get(url, headers={**headers, "Range": f"bytes={len(data)}-"},
                        timeout=30).status_code == 416


def test_artifact_route_never_completes_a_corrupted_download(live_server, raw, bucket):
    services = live_server.services
    data, _ = blob(12, 3 << 20)  # several of the route's 1 MiB chunks: the response starts
    version = make_ready_version(services, "digits",
                                 variants={"tflite-fp32": {"format": "tflite", "data": data}})
    sha = version.variants[0].sha256
    raw.put_object(Bucket=bucket, Key=KEY_PREFIX + sha, Body=bytes(len(data)))
    url = f"{live_server.base_url}/v1/artifacts/{sha}"
    received = b""
    with pytest.raises(requests.exceptions.RequestException):
        with requests.get(url, stream=True, timeout=30,
                          headers={"Authorization": f"Bearer {live_server.admin_token}"}) as r:
            assert r.status_code == 200
            for chunk in r.iter_content(CHUNK):
                received += chunk
    assert len(received) < len(data)
    assert services.blobs.local_path(sha) is None


def test_warm_builds_the_client_without_touching_the_network(seaweedfs, bucket, tmp_path):
    unreachable = S3BlobStore("http://127.0.0.1:9", bucket, access_key="any", secret_key="any",
                              staging_dir=tmp_path / "staging")
    unreachable.warm()  # nothing listens there: only a client is built
    assert unreachable._warm_client is not None and unreachable._client_obj is None
    with pytest.raises(StorageError):
        unreachable.exists("0" * 64)  # first use checks the bucket and fails cleanly
    store = S3BlobStore(seaweedfs, bucket, access_key="any", secret_key="any",
                        staging_dir=tmp_path / "staging")
    store.warm()
    data, sha = blob(13, 1000)
    assert store.put_bytes(data).sha256 == sha and store.read_bytes(sha) == data


def test_gunicorn_workers_fill_one_copy_and_send_it(seaweedfs, bucket, tmp_path_factory):
    """Three sync workers of a real gunicorn, six concurrent first downloads of one blob."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.scale_cluster import BIN, Proc, free_port

    root = tmp_path_factory.mktemp("cache-gunicorn")
    env = {"MODELDROP_DATA_DIR": str(root / "data"), "MODELDROP_BLOB_BACKEND": "s3",
           "MODELDROP_S3_ENDPOINT_URL": seaweedfs, "MODELDROP_S3_BUCKET": bucket,
           "MODELDROP_S3_ACCESS_KEY": "any", "MODELDROP_S3_SECRET_KEY": "any",
           "MODELDROP_S3_CACHE_BYTES": str(64 << 20), "MODELDROP_S3_CACHE_DIR": str(root / "c")}
    settings = Settings.load({}, environ=env)
    from registry.services import build_services

    services = build_services(settings)
    data, _ = blob(15, 4 << 20)
    version = make_ready_version(services, "digits",
                                 variants={"tflite-fp32": {"format": "tflite", "data": data}})
    sha = version.variants[0].sha256
    token = services.store.create_token("reader", "tests").token
    services.store.engine.dispose()
    port = free_port()
    web = Proc("web", [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "registry.wsgi:app"],
               {**os.environ, **env, "MODELDROP_BIND": f"127.0.0.1:{port}",
                "MODELDROP_WEB_WORKERS": "3", "MODELDROP_WEB_WORKER_CLASS": "sync"},
               root / "web.log").start()
    url = f"http://127.0.0.1:{port}/v1/artifacts/{sha}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 90, "gunicorn", proc=web)
        with ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(lambda _: requests.get(url, headers=headers, timeout=60).content,
                                   range(6)))
        assert bodies == [data] * 6
        copy = root / "c" / sha[:2] / sha
        wait_for(copy.is_file, 30, "the cached copy")
        assert copy.read_bytes() == data
        assert sorted(p.name for p in (root / "c").glob("??/*")) == [sha]
        assert list((root / "c" / ".fill").iterdir()) == []
        # from the copy now (sendfile), resumable from any offset
        tail = requests.get(url, headers={**headers, "Range": "bytes=4000000-"}, timeout=60)
        assert tail.status_code == 206 and tail.content == data[4000000:]
        assert requests.get(url, headers=headers, timeout=60).content == data
    finally:
        web.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code in (200, 503)
    except requests.RequestException:
        return False


def test_what_a_killed_fill_left_is_swept_but_a_running_fill_is_not(store, tmp_path):
    import fcntl

    fill_dir = tmp_path / "cache" / ".fill"
    fill_dir.mkdir(parents=True)
    dead, running = fill_dir / ("d" * 64), fill_dir / ("e" * 64)
    for path in (dead, running):
        path.write_bytes(b"half a blob")
        os.utime(path, (1_000_000, 1_000_000))  # nobody wrote to them for long
    with open(running, "rb+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # its filler is alive (another open file)
        data, sha = blob(16)
        store.put_bytes(data)
        assert read_all(store, sha) == data  # a fill sweeps before it writes
        assert not dead.exists() and running.exists()
    assert cached_files(tmp_path) == [sha]
