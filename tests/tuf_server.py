"""A loopback HTTP server that serves a TUF repository to a real python-tuf client.

Shared by the signing tests and the SDK tests: it knows nothing about ModelDrop beyond
"metadata comes from a callable, target files from a directory laid out the way
consistent snapshots name them" (``<dir>/<sha256>.<name>``). Tests simulate attacks by
putting bytes into ``overrides``, which are served instead of the repository's own.

Missing files get a plain-text 404: python-tuf's root walk stops only on 403/404.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from tuf.ngclient import Updater

__all__ = ["TufServer", "store_target_file"]


def store_target_file(targets_dir: Path, path: str, data: bytes) -> str:
    """Write ``data`` where a consistent-snapshot client fetches target ``path``; return sha256."""
    digest = hashlib.sha256(data).hexdigest()
    directory, _, name = path.rpartition("/")
    dest = Path(targets_dir, directory, f"{digest}.{name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return digest


class TufServer:
    """Serve ``/metadata/<name>`` from ``metadata(name)`` and ``/targets/<path>`` from a dir.

    Use as a context manager; the port is chosen by the OS.
    """

    def __init__(self, metadata: Callable[[str], bytes | None], targets_dir: Path):
        self.metadata = metadata
        self.targets_dir = Path(targets_dir)
        self.overrides: dict[str, bytes] = {}  # metadata name -> bytes served instead
        self.requests: list[str] = []  # request paths, in order
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> TufServer:
        handler = type("_Handler", (_Handler,), {"tuf_server": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="tuf-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> TufServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- URLs and clients -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata/"

    @property
    def targets_url(self) -> str:
        return f"{self.base_url}/targets/"

    def updater(self, client_dir: Path, bootstrap: bytes) -> Updater:
        """A fresh ``Updater`` (one per refresh cycle) keeping its state in ``client_dir``."""
        metadata_dir, download_dir = Path(client_dir, "metadata"), Path(client_dir, "downloads")
        metadata_dir.mkdir(parents=True, exist_ok=True)
        download_dir.mkdir(parents=True, exist_ok=True)
        return Updater(
            str(metadata_dir),
            self.metadata_url,
            str(download_dir),
            self.targets_url,
            bootstrap=bootstrap,
        )

    # -- serving ----------------------------------------------------------------------

    def _metadata_body(self, name: str) -> bytes | None:
        if "/" in name or not name:
            return None
        if name in self.overrides:
            return self.overrides[name]
        return self.metadata(name)

    def _target_body(self, rel: str) -> bytes | None:
        root = self.targets_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path.read_bytes()


class _Handler(BaseHTTPRequestHandler):
    tuf_server: TufServer

    def do_GET(self) -> None:
        server = self.tuf_server
        server.requests.append(self.path)
        path, body = unquote(self.path.split("?", 1)[0]), None
        if path.startswith("/metadata/"):
            body = server._metadata_body(path[len("/metadata/") :])
        elif path.startswith("/targets/"):
            body = server._target_body(path[len("/targets/") :])
        if body is None:
            self._send(404, b"not found\n", "text/plain")
        else:
            self._send(200, body, "application/octet-stream")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean
