"""`modeldrop mirror export|sync`: a static copy of everything a device needs, off the API.

The mirror is laid out under the API's own URL paths, so any static HTTP server, object
store bucket or CDN in front of it answers an SDK in ``resolve="local"`` mode exactly as the
server would: ``tuf/metadata/`` (every root version, the current timestamp, snapshot and
targets under their versioned names), ``tuf/targets/<dir>/<sha256>.<name>`` for every TUF
target (artifacts, deltas, rulesets), ``v1/artifacts/<sha256>`` for artifacts and deltas,
and ``v1/rulesets/<model>/<channel>``. Everything is read over the public HTTP API (no
token needed) and every file is checked against the signed targets metadata before it is
written.

Order, so a device reading the mirror while it is updated never sees metadata that names
files not there yet: content-addressed files first (never rewritten: a name that exists is
skipped), then the rulesets' stable paths, then root, targets and snapshot (versioned
names, so never rewritten either), and ``timestamp.json`` last of all. ``sync`` is the same
walk, to a directory or ``s3://bucket/prefix``; only what is missing or changed moves.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import click
import requests

__all__ = ["DirSink", "S3Sink", "mirror_walk", "register"]

_CHUNK = 1 << 20


class Sink(ABC):
    """Where the mirror goes; paths are relative POSIX paths such as ``tuf/metadata/1.root.json``."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def read(self, path: str) -> bytes | None: ...

    @abstractmethod
    def put(self, path: str, source: IO[bytes], length: int) -> None: ...


class DirSink(Sink):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, path: str) -> Path:
        target = (self.root / path).resolve()
        if self.root not in target.parents:
            raise click.ClickException(f"refusing to write outside the mirror: {path!r}")
        return target

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def read(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except OSError:
            return None

    def put(self, path: str, source: IO[bytes], length: int) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)  # atomic: a reader sees the old file or the new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class S3Sink(Sink):
    """A bucket prefix; objects are readable by whoever the bucket policy lets read."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url or None)
        try:
            self.s3.head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - any failure here: try to make it, else report
            self.s3.create_bucket(Bucket=bucket)

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def exists(self, path: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._key(path))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read(self, path: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        except ClientError:
            return None

    def put(self, path: str, source: IO[bytes], length: int) -> None:
        kind = "application/json" if path.endswith(".json") or path.startswith(
            "v1/rulesets/") else "application/octet-stream"
        # boto3 closes the file object it uploads: give it its own copy
        with tempfile.TemporaryFile() as own:
            while chunk := source.read(_CHUNK):
                own.write(chunk)
            own.seek(0)
            self.s3.upload_fileobj(own, self.bucket, self._key(path),
                                   ExtraArgs={"ContentType": kind})


def _get(session: requests.Session, url: str, *, allow_404: bool = False) -> bytes | None:
    resp = session.get(url, timeout=60)
    if allow_404 and resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise click.ClickException(f"GET {url}: HTTP {resp.status_code}")
    return resp.content


def _fetch_verified(session: requests.Session, url: str, length: int,
                    sha256: str) -> IO[bytes]:
    """Download ``url`` into a temporary file, requiring the signed length and sha256."""
    out = tempfile.TemporaryFile()
    digest, size = hashlib.sha256(), 0
    with session.get(url, stream=True, timeout=60) as resp:
        if resp.status_code != 200:
            raise click.ClickException(f"GET {url}: HTTP {resp.status_code}")
        for chunk in resp.iter_content(_CHUNK):
            size += len(chunk)
            if size > length:
                raise click.ClickException(f"{url}: longer than the {length} bytes TUF lists")
            digest.update(chunk)
            out.write(chunk)
    if size != length or digest.hexdigest() != sha256:
        raise click.ClickException(f"{url}: bytes differ from the TUF targets entry")
    out.seek(0)
    return out


def mirror_walk(base_url: str, sink: Sink, model: str | None = None) -> dict[str, int]:
    """Copy (or bring up to date) the mirror in ``sink``; returns counts of what moved."""
    base = base_url.rstrip("/")
    session = requests.Session()
    stats = {"written": 0, "skipped": 0, "metadata": 0}

    def put_bytes(path: str, data: bytes) -> None:
        import io

        sink.put(path, io.BytesIO(data), len(data))

    timestamp = _get(session, f"{base}/tuf/metadata/timestamp.json")
    snap_version = json.loads(timestamp)["signed"]["meta"]["snapshot.json"]["version"]
    snapshot = _get(session, f"{base}/tuf/metadata/{snap_version}.snapshot.json")
    targets_version = json.loads(snapshot)["signed"]["meta"]["targets.json"]["version"]
    targets = _get(session, f"{base}/tuf/metadata/{targets_version}.targets.json")
    listed: dict[str, Any] = json.loads(targets)["signed"]["targets"]

    rulesets: list[tuple[str, bytes]] = []
    for path, info in sorted(listed.items()):
        custom = info.get("custom") or {}
        if model is not None and custom.get("model") != model:
            continue
        sha256, length = info["hashes"]["sha256"], int(info["length"])
        directory, _, name = path.rpartition("/")
        consistent = f"tuf/targets/{directory}/{sha256}.{name}" if directory \
            else f"tuf/targets/{sha256}.{name}"
        copies = [consistent]
        if custom.get("kind") in ("variant", "delta"):
            copies.append(f"v1/artifacts/{sha256}")
        missing = [c for c in copies if not sink.exists(c)]
        stats["skipped"] += len(copies) - len(missing)
        if missing:
            with _fetch_verified(session, f"{base}/{consistent}", length, sha256) as data:
                for copy in missing:
                    data.seek(0)
                    sink.put(copy, data, length)
                    stats["written"] += 1
        if custom.get("kind") == "ruleset":
            with _fetch_verified(session, f"{base}/{consistent}", length, sha256) as data:
                rulesets.append((f"v1/rulesets/{custom['model']}/{custom['channel']}",
                                 data.read()))

    # The rulesets' stable paths: an SDK that reads one before the new timestamp is up
    # falls back to the content-addressed name the metadata it trusts lists.
    for path, data in rulesets:
        if sink.read(path) != data:
            put_bytes(path, data)
            stats["written"] += 1
    version = 1
    while True:
        name = f"tuf/metadata/{version}.root.json"
        if not sink.exists(name):
            data = _get(session, f"{base}/{name}", allow_404=True)
            if data is None:
                break
            put_bytes(name, data)
            stats["metadata"] += 1
        version += 1
    for name, data in ((f"tuf/metadata/{targets_version}.targets.json", targets),
                       (f"tuf/metadata/{snap_version}.snapshot.json", snapshot)):
        if not sink.exists(name):
            put_bytes(name, data)
            stats["metadata"] += 1
    if sink.read("tuf/metadata/timestamp.json") != timestamp:
        put_bytes("tuf/metadata/timestamp.json", timestamp)  # last of all
        stats["metadata"] += 1
    return stats


def _sink(destination: str, endpoint_url: str | None) -> Sink:
    if destination.startswith("s3://"):
        parts = urlsplit(destination)
        if not parts.netloc:
            raise click.BadParameter("s3:// needs a bucket: s3://bucket/prefix")
        return S3Sink(parts.netloc, parts.path, endpoint_url)
    return DirSink(Path(destination))


def register(main: click.Group) -> None:
    main.add_command(mirror)


@click.group()
def mirror() -> None:
    """A static mirror of TUF metadata, rulesets and artifacts (serve it from any CDN)."""


@mirror.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model's artifacts and rulesets.")
@click.pass_context
def export(ctx: click.Context, directory: Path, model: str | None) -> None:
    """Write everything a device needs into DIRECTORY, under the API's URL paths."""
    url = (ctx.find_root().obj or {}).get("url") or "http://127.0.0.1:8080"
    stats = mirror_walk(url, DirSink(directory), model)
    click.echo(f"mirror {directory}: {stats['written']} files written, {stats['skipped']} "
               f"already there, {stats['metadata']} metadata files")


@mirror.command("sync")
@click.argument("destination")
@click.option("--model", default=None, help="Only this model's artifacts and rulesets.")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
              help="S3 endpoint for s3:// destinations (env AWS_ENDPOINT_URL).")
@click.pass_context
def sync(ctx: click.Context, destination: str, model: str | None,
         endpoint_url: str | None) -> None:
    """Bring DESTINATION (a directory or s3://bucket/prefix) up to date, incrementally."""
    url = (ctx.find_root().obj or {}).get("url") or "http://127.0.0.1:8080"
    stats = mirror_walk(url, _sink(destination, endpoint_url), model)
    click.echo(f"mirror {destination}: {stats['written']} files written, {stats['skipped']} "
               f"already there, {stats['metadata']} metadata files")
