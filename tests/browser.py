"""A real Chromium for dashboard tests: Playwright's Python package driving Debian's chromium.

Playwright's own browser download cannot work on these machines, so ``launch`` points it at
``/usr/bin/chromium`` (installed by scripts/install-chromium.sh). ``sign_in`` goes through the
sign-in form as a person would; ``serve_html`` serves a page from another origin (for
cross-site form posts).
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

CHROMIUM = os.environ.get("MODELDROP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_or_skip() -> str:
    """The chromium binary; a test fails on CI without it (scripts/test.sh installs it)."""
    if shutil.which(CHROMIUM) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (scripts/install-chromium.sh installs it)")
        pytest.skip(f"{CHROMIUM} is missing (run scripts/install-chromium.sh)")
    return CHROMIUM


@contextmanager
def launch() -> Iterator:
    """A headless Chromium browser (playwright ``Browser``) for the life of the block."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, base_url: str, token: str) -> None:
    """Open the dashboard, get sent to the sign-in form, paste the token, press Sign in."""
    page.goto(base_url + "/dashboard/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Signed in as").wait_for()


@contextmanager
def serve_html(html: str) -> Iterator[str]:
    """Serve ``html`` at ``/`` on another loopback port (another origin); yields its URL."""
    body = html.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
