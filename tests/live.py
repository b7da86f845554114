"""A real HTTP server on 127.0.0.1 for tests that need one (CLI, SDK end-to-end).

``live_server`` serves the test's ``app`` with werkzeug's threaded ``make_server`` on a
free loopback port and shuts it down after the test. Use it from a test module with
``pytest_plugins`` in tests/conftest.py, so any test can ask for ``live_server``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from registry.services import Services

__all__ = ["LiveServer", "cli", "live_server", "serve_app"]


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    services: Services
    app: Flask

    @property
    def admin_token(self) -> str:
        return (Path(self.services.settings.data_dir) / "admin-token").read_text().strip()


@contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve ``app`` on a free loopback port for the life of the block; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def live_server(app):
    with serve_app(app) as base_url:
        yield LiveServer(base_url, app.extensions["modeldrop"], app)


@pytest.fixture
def cli(live_server):
    """``cli(*args, token=None, ok=True)``: the ``modeldrop`` command against the live server
    (admin token unless another is given); asserts exit 0 unless ``ok=False``."""
    from click.testing import CliRunner

    from registry.cli import main

    runner = CliRunner()

    def run(*args, token=None, ok=True):
        env = {"MODELDROP_URL": live_server.base_url,
               "MODELDROP_TOKEN": token or live_server.admin_token}
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    run.server = live_server
    return run
