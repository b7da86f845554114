"""A loopback ModelDrop origin for SDK tests: real TUF repository, real signed manifests.

It stands in for the server where a test needs to forge, withhold or delay what the server
sends (the end-to-end tests use the real app), and signs with the server's own
``registry.signing`` code, so what the SDK verifies is what the server produces. It speaks
the wire format of docs/wire-format.md:

* ``GET /v1/manifest``            signed per request for the asking install id; ETag/304; 204
* ``GET /tuf/metadata/<name>``    from the :class:`ImageRepository` (or ``metadata_overrides``)
* ``GET /tuf/targets/<dir>/<sha256>.<name>`` and ``GET /v1/artifacts/<sha256>``
                                  with ETag, Range, If-Range, 416
* ``POST /v1/telemetry``          de-duplicates event ids, records them

Faults are injected per route group (``manifest``, ``metadata``, ``artifact``,
``telemetry``) with :class:`Fault`: error statuses, HTML pages, trickling, connection
resets, extra bytes, changed bytes, pauses (for killing a client mid-download).
Everything listens on 127.0.0.1 only and stops with the context manager.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from registry.signing import DirMetadataStore, ImageRepository, KeyStore, TargetSpec

__all__ = ["Fault", "Release", "SdkOrigin", "rfc3339"]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    """One misbehaviour of a route group. ``times`` limits how often it fires (None: always).

    kind:
      ``status``     answer ``status`` with ``body``/``content_type``
      ``html``       answer 200 with an HTML page (a captive portal, a proxy error page)
      ``trickle``    send ``chunk`` bytes every ``interval`` seconds
      ``reset``      send the body up to absolute byte ``after``, then drop the connection
      ``extra``      send the body followed by ``extra`` more bytes (Content-Length says so)
      ``corrupt``    flip one byte in the middle (same length)
      ``pause``      stop at absolute byte ``after`` for ``seconds`` (sets ``reached``)
      ``no_range``   ignore Range and always send the whole file
    ``omit_length`` drops Content-Length (the body then ends when the connection closes).
    """

    kind: str
    status: int = 500
    body: bytes = b"internal error"
    content_type: str = "text/plain"
    chunk: int = 1
    interval: float = 0.2
    after: int = 0
    extra: int = 4096
    seconds: float = 10.0
    times: int | None = None
    skip: int = 0  # requests that pass unharmed before the fault starts firing
    omit_length: bool = False
    reached: threading.Event = field(default_factory=threading.Event)


@dataclass
class Release:
    """What the director answers for (model, channel)."""

    model: str
    channel: str
    counter: int
    version: int
    variant: str
    format: str
    target: str
    length: int
    sha256: str
    experiment: str | None = None
    arm: str | None = None
    delta: dict[str, Any] | None = None  # wire-format delta; offered when the base matches


class SdkOrigin:
    """The origin; use as a context manager. ``base_url`` once started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.keys = KeyStore(self.workdir / "keys")
        self.repo = ImageRepository(self.keys, DirMetadataStore(self.workdir / "metadata"))
        self.repo.bootstrap()
        self.blobs: dict[str, bytes] = {}
        self.releases: dict[tuple[str, str], Release] = {}
        self.faults: dict[str, Fault] = {}
        self.metadata_overrides: dict[str, bytes] = {}
        #: applied to the unsigned manifest document before signing
        self.manifest_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        #: applied to the signed document (to tamper after signing)
        self.manifest_post: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        #: served verbatim instead of a fresh manifest (replays)
        self.manifest_raw: bytes | None = None
        self.served_manifests: list[bytes] = []
        self.requests: list[dict[str, Any]] = []
        self.artifact_bytes_sent = 0
        self.telemetry_events: dict[str, dict[str, Any]] = {}
        self.telemetry_posts: list[int] = []  # batch sizes as received
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> SdkOrigin:
        handler = type("_Handler", (_Handler,), {"origin": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def trusted_root(self) -> bytes:
        return self.repo.trusted_root()

    # -- publishing ------------------------------------------------------------------

    def publish(self, model: str, version: int, variant: str, data: bytes, *,
                fmt: str = "tflite", ext: str = "tflite", kind: str = "variant",
                path: str | None = None, custom: dict[str, Any] | None = None) -> str:
        """Store ``data`` and list it as a TUF target; returns the target path."""
        path = path or f"{model}/{version}/{variant}.{ext}"
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        meta = {"model": model, "version": version, "variant": variant, "format": fmt,
                "kind": kind}
        meta.update(custom or {})
        self.repo.add_targets([TargetSpec(path, len(data), sha, meta)])
        return path

    def release(self, model: str, channel: str, version: int, variant: str, data: bytes, *,
                fmt: str = "tflite", counter: int | None = None, publish: bool = True,
                target: str | None = None, **extra: Any) -> Release:
        """Make (model, channel) answer with this artifact (published unless told not)."""
        if publish:
            target = self.publish(model, version, variant, data, fmt=fmt,
                                  ext="mlpackage.zip" if fmt == "coreml" else "tflite")
        assert target is not None
        old = self.releases.get((model, channel))
        if counter is None:
            counter = old.counter + 1 if old else 1
        rel = Release(model, channel, counter, version, variant, fmt, target, len(data),
                      hashlib.sha256(data).hexdigest(), **extra)
        self.releases[(model, channel)] = rel
        return rel

    def publish_delta(self, model: str, version: int, variant: str, base: bytes,
                      new: bytes, patch: bytes) -> dict[str, Any]:
        """Publish a bsdiff4 patch target; returns the wire-format ``delta`` object."""
        base_sha = hashlib.sha256(base).hexdigest()
        path = f"{model}/{version}/{variant}.from-{base_sha[:16]}.bsdiff"
        self.publish(model, version, variant, patch, kind="delta", path=path, fmt="bsdiff4")
        sha = hashlib.sha256(patch).hexdigest()
        return {"target": path, "url": f"/v1/artifacts/{sha}", "length": len(patch),
                "sha256": sha, "base_sha256": base_sha, "algorithm": "bsdiff4"}

    # -- manifests -------------------------------------------------------------------

    def manifest_document(self, rel: Release, install_id: str,
                          installed_sha256: str = "") -> dict[str, Any]:
        now = datetime.now(UTC)
        delta = None
        if rel.delta and rel.delta.get("base_sha256") == installed_sha256:
            delta = copy.deepcopy(rel.delta)
        return {
            "schema": 1, "model": rel.model, "channel": rel.channel,
            "release_counter": rel.counter, "version": rel.version, "variant": rel.variant,
            "format": rel.format,
            "artifact": {"target": rel.target, "length": rel.length, "sha256": rel.sha256,
                         "urls": [f"{self.base_url}/v1/artifacts/{rel.sha256}"]},
            "experiment": rel.experiment, "arm": rel.arm, "install_id": install_id,
            "issued_at": rfc3339(now), "expires_at": rfc3339(now + timedelta(days=1)),
            "delta": delta,
        }

    def sign(self, document: dict[str, Any]) -> dict[str, Any]:
        return self.repo.sign_manifest(document)

    # -- metadata crafting (attacks) -------------------------------------------------

    def current_metadata(self, role: str) -> Metadata:
        """The newest stored metadata of ``role`` (as the repository serves it)."""
        if role == "timestamp":
            return Metadata.from_bytes(self.repo.get_metadata("timestamp.json"))
        ts = self.current_metadata("timestamp").signed
        if role == "snapshot":
            return Metadata.from_bytes(
                self.repo.get_metadata(f"{ts.snapshot_meta.version}.snapshot.json"))
        raise ValueError(role)

    def resign(self, md: Metadata, role: str, signer: CryptoSigner | None = None) -> bytes:
        """Sign ``md`` (already mutated) with the role's real key, or ``signer``."""
        md.signatures.clear()
        md.sign(signer or self.keys.signer(role))
        return md.to_bytes()

    # -- bookkeeping -----------------------------------------------------------------

    def take_fault(self, group: str) -> Fault | None:
        with self._lock:
            fault = self.faults.get(group)
            if fault is None:
                return None
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[group]
            return fault

    def requests_to(self, prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(prefix)]


class _QuietServer(ThreadingHTTPServer):
    """Clients that vanish mid-request (killed processes, fault tests) are expected."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys as _sys

        if not isinstance(_sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    origin: SdkOrigin
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    # -- routing -----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.origin.requests.append({"method": method, "path": path,
                                     "query": parse_qs(url.query),
                                     "headers": dict(self.headers.items())})
        try:
            if method == "GET" and path == "/v1/manifest":
                self._manifest(parse_qs(url.query))
            elif method == "GET" and path.startswith("/tuf/metadata/"):
                self._metadata(path[len("/tuf/metadata/"):])
            elif method == "GET" and path.startswith("/tuf/targets/"):
                self._tuf_target(path[len("/tuf/targets/"):])
            elif method == "GET" and path.startswith("/v1/artifacts/"):
                self._artifact(path[len("/v1/artifacts/"):])
            elif method == "POST" and path == "/v1/telemetry":
                self._telemetry()
            else:
                self._problem(404, "not_found", f"no route {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- responses ---------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None, fault: Fault | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if fault is not None and fault.kind in ("trickle", "pause", "reset"):
            self._stream(body, 0, fault, count=False)
        else:
            self.wfile.write(body)

    def _problem(self, status: int, code: str, detail: str) -> None:
        body = json.dumps({"type": f"https://modeldrop.dev/problems/{code}", "title": code,
                           "status": status, "detail": detail, "code": code}).encode()
        self._send(status, body, "application/problem+json")

    def _apply_simple_fault(self, fault: Fault | None) -> bool:
        """Handle faults that replace the whole response; True if one was sent."""
        if fault is None:
            return False
        if fault.kind == "status":
            self._send(fault.status, fault.body, fault.content_type)
            return True
        if fault.kind == "html":
            self._send(200, b"<!doctype html><html><body><h1>Sign in to Wi-Fi</h1>"
                       b"</body></html>", "text/html; charset=utf-8")
            return True
        return False

    # -- manifest ----------------------------------------------------------------------

    def _manifest(self, query: dict[str, list[str]]) -> None:
        origin = self.origin
        fault = origin.take_fault("manifest")
        if self._apply_simple_fault(fault):
            return
        q = {k: v[0] for k, v in query.items()}
        install_id = q.get("install_id", "")
        if not install_id:
            self._problem(400, "validation_error", "install_id is required")
            return
        if origin.manifest_raw is not None:
            origin.served_manifests.append(origin.manifest_raw)
            self._send(200, origin.manifest_raw, "application/json")
            return
        rel = origin.releases.get((q.get("model", ""), q.get("channel", "")))
        if rel is None:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        installed = q.get("installed_sha256", "")
        delta_base = installed if rel.delta and rel.delta.get("base_sha256") == installed else ""
        identity = json.dumps([rel.counter, rel.sha256, rel.arm, install_id, delta_base])
        etag = '"m-' + hashlib.sha256(identity.encode()).hexdigest()[:32] + '"'
        if self.headers.get("If-None-Match") == etag and origin.manifest_transform is None:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        doc = origin.manifest_document(rel, install_id, installed)
        if origin.manifest_transform is not None:
            doc = origin.manifest_transform(doc)
        signed = origin.sign(doc)
        if origin.manifest_post is not None:
            signed = origin.manifest_post(signed)
        body = json.dumps(signed).encode()
        origin.served_manifests.append(body)
        self._send(200, body, "application/json", {"ETag": etag}, fault)

    # -- TUF metadata and targets --------------------------------------------------------

    def _metadata(self, name: str) -> None:
        origin = self.origin
        fault = origin.take_fault("metadata")
        if self._apply_simple_fault(fault):
            return
        body = origin.metadata_overrides.get(name) or origin.repo.get_metadata(name)
        if body is None:
            self._send(404, b"not found\n", "text/plain")
        else:
            self._send(200, body, "application/json", fault=fault)

    def _tuf_target(self, rel: str) -> None:
        directory, _, fname = rel.rpartition("/")
        sha = fname.split(".", 1)[0]
        self._artifact(sha)

    def _artifact(self, sha: str) -> None:
        origin = self.origin
        fault = origin.take_fault("artifact")
        if self._apply_simple_fault(fault):
            return
        data = origin.blobs.get(sha)
        if data is None:
            self._problem(404, "artifact_not_found", f"no artifact {sha}")
            return
        if fault is not None and fault.kind == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        etag = f'"{sha}"'
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        use_range = (range_header and (if_range is None or if_range == etag)
                     and not (fault is not None and fault.kind == "no_range"))
        if use_range:
            try:
                start = int(range_header.split("=", 1)[1].split("-", 1)[0])
            except (IndexError, ValueError):
                start = 0
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        if fault is not None and fault.kind == "extra":
            body = body + b"\0" * fault.extra
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if fault is not None and fault.omit_length:
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self._stream(body, start, fault)

    def _stream(self, body: bytes, start: int, fault: Fault | None, count: bool = True) -> None:
        """Write ``body`` (which starts at absolute offset ``start``) as ``fault`` says.

        ``count`` adds the bytes to ``artifact_bytes_sent`` (artifacts only).
        """
        origin = self.origin

        def write(data: bytes) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            if count:
                origin.artifact_bytes_sent += len(data)

        if fault is None or fault.kind in ("corrupt", "extra", "no_range"):
            write(body)
            return
        if fault.kind == "trickle":
            for i in range(0, len(body), fault.chunk):
                if origin._stopping.is_set():
                    break
                write(body[i:i + fault.chunk])
                time.sleep(fault.interval)
            self.close_connection = True
            return
        if fault.kind == "reset":
            write(body[:max(fault.after - start, 0)])
            self.close_connection = True
            return
        if fault.kind == "pause":
            write(body[:max(fault.after - start, 0)])
            fault.reached.set()
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline and not origin._stopping.is_set():
                time.sleep(0.02)
            self.close_connection = True
            return
        raise AssertionError(f"unknown fault {fault.kind}")

    # -- telemetry -------------------------------------------------------------------------

    def _telemetry(self) -> None:
        origin = self.origin
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if self._apply_simple_fault(origin.take_fault("telemetry")):
            return
        try:
            events = json.loads(raw)["events"]
            assert isinstance(events, list)
        except (ValueError, KeyError, AssertionError):
            self._problem(400, "validation_error", "body must be {\"events\": [...]}")
            return
        if len(events) > 1000:
            self._problem(413, "validation_error", "at most 1000 events per request")
            return
        for event in events:
            if not isinstance(event, dict) or not event.get("id") or event.get("poison"):
                self._problem(400, "validation_error", "invalid event")
                return
        origin.telemetry_posts.append(len(events))
        new, rejected = 0, []
        for index, event in enumerate(events):
            latency = event.get("latency_ms")
            if event.get("kind") == "inference" and not (
                    isinstance(latency, (int, float)) and latency > 0):
                # like the server: one invalid event is dropped, the batch is kept
                rejected.append({"index": index, "field": "latency_ms",
                                 "error": "must be a positive number"})
            elif event["id"] not in origin.telemetry_events:
                origin.telemetry_events[event["id"]] = event
                new += 1
        self._send(200, json.dumps({"accepted": new, "rejected": rejected,
                                    "duplicates": len(events) - new - len(rejected)}).encode(),
                   "application/json")


# -- shared test helpers (the SDK test modules import these, fixtures included) ----------

import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402
from io import BytesIO  # noqa: E402

import pytest  # noqa: E402

from client_sdk import ClientConfig, DeviceInfo, ModelClient  # noqa: E402

DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")

# Built in a child process so TensorFlow never loads into the test process (the SDK
# itself only needs ai_edge_litert). v2 is v1 with one bias changed: a small delta.
_BUILD_MODELS = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path
import keras, tensorflow as tf
out = Path(sys.argv[1])
def build(n_in, hidden, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(4, activation="softmax")])
v1, v2, big = build(16, 32, 1), build(16, 32, 1), build(64, 1024, 2)
w = v2.get_weights(); w[-1] = w[-1] + 0.5; v2.set_weights(w)
for name, m in (("v1", v1), ("v2", v2), ("big", big)):
    (out / f"{name}.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
"""


@pytest.fixture(scope="session")
def tflite_models(tmp_path_factory) -> dict[str, bytes]:
    """Real TFLite models: ``v1``, ``v2`` (~4 KB, same graph) and ``big`` (~280 KB)."""
    # Several test modules import this fixture, and pytest scopes an imported session
    # fixture per module: build once per session into the shared base temp dir.
    out = tmp_path_factory.getbasetemp() / "sdk-tflite-models"
    if not (out / "done").exists():
        out.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-c", _BUILD_MODELS, str(out)], check=True,
                       capture_output=True, timeout=300)
        (out / "done").touch()
    return {p.stem: p.read_bytes() for p in out.glob("*.tflite")}


@pytest.fixture
def origin(tmp_path):
    with SdkOrigin(tmp_path / "origin") as server:
        yield server


def fast_config(**overrides: Any) -> ClientConfig:
    """Short deadlines and quick retries so fault tests finish in seconds."""
    values: dict[str, Any] = dict(download_deadline=timedelta(seconds=20),
                                  metadata_deadline=timedelta(seconds=5),
                                  connect_timeout=2.0, read_timeout=3.0, http_retries=1,
                                  retry_backoff=0.01, telemetry_batch_size=10_000)
    values.update(overrides)
    return ClientConfig(**values)


def make_client(origin: SdkOrigin, root: Path, *, config: ClientConfig | None = None,
                **kwargs: Any) -> ModelClient:
    """A client with its cache in ``root/cache`` (state beside it in ``root/cache.state``)."""
    kwargs.setdefault("device", DEVICE)
    return ModelClient(origin.base_url, root / "cache", trusted_root=origin.trusted_root(),
                       config=config or fast_config(), **kwargs)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def active_sha(client: ModelClient, name: str = "digits",
               channel: str = "production") -> str | None:
    """sha256 of the bytes actually on disk for the active model (re-hashed)."""
    model = client.get_local_model(name, channel)
    return sha256_hex(model.path.read_bytes()) if model else None


def make_mlpackage_zip(*, valid: bool = True) -> bytes:
    """A zipped ``.mlpackage`` as the server ships Core ML (structure only)."""
    buf = BytesIO()
    root_id = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    manifest = {"fileFormatVersion": "1.0.0", "rootModelIdentifier": root_id,
                "itemInfoEntries": {root_id: {
                    "author": "com.apple.CoreML", "description": "CoreML Model Specification",
                    "name": "model.mlmodel", "path": "com.apple.CoreML/model.mlmodel"}}}
    # specificationVersion=8 (field 1, varint), description (field 2, 3 bytes)
    spec = b"\x08\x08\x12\x03abc" if valid else b"\x08\x08\x12\x7fabc"
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("digits.mlpackage/Manifest.json", json.dumps(manifest))
        zf.writestr("digits.mlpackage/Data/com.apple.CoreML/model.mlmodel", spec)
    return buf.getvalue()

