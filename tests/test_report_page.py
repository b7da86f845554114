"""The HTML experiment report rendered by a real browser (Debian's headless Chromium).

The page is fetched from a real server with the bearer token (as the API serves it) and
handed to Chromium as a file: it is self-contained (inline CSS and SVG, no scripts, nothing to
fetch), so a file:// URL renders exactly what a browser would, and Chromium needs no custom
header or cookie. Screenshots land in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests

from bench import simulate_experiment as sim

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)
WIDTH, HEIGHT = 1280, 2400


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run the browser test")
        pytest.skip("chromium is not installed")
    return CHROMIUM


def screenshot(browser: str, html_file: Path, png: Path, profile: Path) -> None:
    png.unlink(missing_ok=True)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
           f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars", html_file.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def assert_rendered(png: Path) -> None:
    from PIL import Image

    assert png.exists(), f"{png} was not written"
    assert png.stat().st_size > 50_000, "a rendered report with charts is tens of KB at least"
    with Image.open(png) as img:
        assert img.size == (WIDTH, HEIGHT)
        pixels = np.asarray(img.convert("RGB").resize((WIDTH // 4, HEIGHT // 4)), dtype=int)
    dark = pixels.sum(axis=2) < 600  # not white or near-white
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert dark.mean() > 0.02, f"only {dark.mean():.1%} of the page is not white: nothing rendered?"
    assert colours > 200, f"{colours} colours: no charts or badges rendered?"
    # the top of the page (title, banners, tables) must not be blank
    assert dark[: len(dark) // 8].mean() > 0.02


def test_report_page_renders_in_chromium(app, live_server, reader_token, chromium, tmp_path):
    services = app.extensions["modeldrop"]
    api = sim.InProcess(app)
    admin = services.store.create_token("admin", "sim").token
    scenario = sim.Scenario(devices=1200, seed=3, guardrails=("load_failure_rate < 0.1",))
    sim.setup_experiment(services, api, admin, scenario)
    sim.run_devices(api, scenario)

    auth = {"Authorization": f"Bearer {reader_token}"}
    page = requests.get(f"{live_server.base_url}/v1/experiments/{sim.EXPERIMENT}/report.html",
                        headers=auth, timeout=60)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    # nothing to fetch (namespace URIs in the SVG metadata are names, not requests)
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((?!#)|@import|<script|<link""",
                         page.text, re.I)
    dashboard = requests.get(f"{live_server.base_url}/dashboard/experiments/{sim.EXPERIMENT}",
                             headers=auth, timeout=60)
    assert dashboard.status_code == 200

    ARTIFACTS.mkdir(exist_ok=True)
    for name, html in (("report", page.text), ("dashboard-report", dashboard.text)):
        source = tmp_path / f"{name}.html"
        source.write_text(html, encoding="utf-8")
        png = ARTIFACTS / f"{name}.png"
        screenshot(chromium, source, png, tmp_path / f"profile-{name}")
        assert_rendered(png)
