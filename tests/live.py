"""A real HTTP server on 127.0.0.1 for tests that need one (CLI, SDK end-to-end).

``live_server`` serves the test's ``app`` with werkzeug's threaded ``make_server`` on a
free loopback port and shuts it down after the test. Use it from a test module with
``from tests.live import live_server  # noqa: F401``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

__all__ = ["LiveServer", "live_server"]


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    services: Any  # registry.app.Services
    app: Any  # flask.Flask

    @property
    def admin_token(self) -> str:
        return (Path(self.services.settings.data_dir) / "admin-token").read_text().strip()


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}",
                         app.extensions["modeldrop"], app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
