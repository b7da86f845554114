"""Dashboard pages for models and versions: the variant table and per-device latency, readable
in a browser (a headless Chromium screenshot lands in test-artifacts/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.makers import make_ready_version

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _seed(app, services, admin_token):
    version = make_ready_version(services, "digits")
    services.store.update_metadata("digits", version.version,
                                   {"latency_ms": {"pixel7": 6.0}, "accuracy": {"top1": 0.97}},
                                   "tests")
    client = app.test_client()
    resp = client.post("/v1/models/digits/releases", headers=_bearer(admin_token),
                       json={"version": version.version, "channel": "production",
                             "reason": "first <b>release</b>"})
    assert resp.status_code == 201, resp.get_json()
    variant = version.variants[0].name
    events = [{"id": str(uuid.uuid4()), "kind": "inference", "install_id": f"device-{i:04d}",
               "ts": "2026-11-27T14:00:00Z", "model": "digits", "version": version.version,
               "variant": variant, "device_model": "pixel7", "platform": "android",
               "latency_ms": 4.0 + i % 5} for i in range(40)]
    resp = client.post("/v1/telemetry", json={"events": events})
    assert resp.get_json()["accepted"] == 40
    return version


def test_model_and_version_pages(app, services, admin_token):
    version = _seed(app, services, admin_token)
    client = app.test_client()
    index = client.get("/dashboard/", headers=_bearer(admin_token)).get_data(as_text=True)
    assert "/dashboard/models/digits" in index
    page = client.get("/dashboard/models/digits", headers=_bearer(admin_token))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Releases" in html and "production" in html
    assert "first &lt;b&gt;release&lt;/b&gt;" in html  # user text is escaped
    page = client.get(f"/dashboard/models/digits/versions/{version.version}",
                      headers=_bearer(admin_token))
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    for v in version.variants:
        assert v.name in html
    assert "pixel7" in html and "Latency on devices" in html
    assert "6.0" in html  # the uploaded figure next to the measured ones
    missing = client.get("/dashboard/models/digits/versions/99", headers=_bearer(admin_token))
    assert missing.status_code == 404 and "Version not found" in missing.get_data(as_text=True)


def test_pages_need_a_reader_token(app):
    resp = app.test_client().get("/dashboard/models/digits")
    assert resp.status_code == 302 and "/dashboard/login" in resp.headers["Location"]


def test_version_page_in_chromium(app, services, admin_token, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/services.sh installs it)")
        pytest.skip("chromium is not installed")
    version = _seed(app, services, admin_token)
    html = app.test_client().get(f"/dashboard/models/digits/versions/{version.version}",
                                 headers=_bearer(admin_token)).get_data(as_text=True)
    page = tmp_path / "version.html"
    page.write_text(html)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-version.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1280,900", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 900)
        colours = img.convert("L").resize((64, 45)).getcolors(4096)
    assert colours is not None and len(colours) > 8  # text and tables, not a blank page
