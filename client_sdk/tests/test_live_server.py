"""The SDK alone against a real ModelDrop server.

Run by tests/test_sdk_dist.py from a virtualenv that holds only the modeldrop-sdk wheel
(and pytest), against a real server it started with a released model:
``MODELDROP_SDK_TEST_URL`` is the server, ``MODELDROP_SDK_TEST_MODEL`` a model released on
``production`` with a Core ML variant (the Core ML check needs no extra package).
Without those variables (the ordinary test run) these tests skip: the main suite has its
own end-to-end tests with the server in-process.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import pytest
import requests

import client_sdk
from client_sdk import ClientConfig, DeviceInfo, ModelClient, errors

URL = os.environ.get("MODELDROP_SDK_TEST_URL")
MODEL = os.environ.get("MODELDROP_SDK_TEST_MODEL", "")
pytestmark = pytest.mark.skipif(not URL, reason="needs a server: run by tests/test_sdk_dist.py")

IPHONE = DeviceInfo(platform="ios", os_version="17.4", device_model="iPhone15,2",
                    app_version="2.3.0", region="de")


@pytest.fixture
def client(tmp_path):
    root = requests.get(f"{URL}/tuf/metadata/1.root.json", timeout=10)
    root.raise_for_status()
    config = ClientConfig(download_deadline=timedelta(seconds=30), http_retries=1,
                          retry_backoff=0.01)
    with ModelClient(URL, tmp_path / "cache", trusted_root=root.content, device=IPHONE,
                     config=config) as c:
        yield c


def test_this_is_the_installed_sdk():
    expected = os.environ.get("MODELDROP_SDK_EXPECT_PREFIX")
    if expected:
        assert client_sdk.__file__.startswith(expected), client_sdk.__file__


def test_verified_download_install_and_telemetry(client):
    model = client.get_model(MODEL, "production")
    assert model.format == "coreml" and model.version >= 1
    assert hashlib.sha256(model.path.read_bytes()).hexdigest() == model.sha256

    again = client.check_for_update(MODEL, "production")
    assert not again.update_available

    client.report_inference(model, 12.5)
    result = client.flush_telemetry()
    assert result.error is None and result.dropped == 0 and not client.pending_telemetry()


def test_unknown_model_and_bad_names(client):
    with pytest.raises(errors.ModelDropError) as excinfo:
        client.get_model("no-such-model", "production")
    assert excinfo.value.code in ("model_not_found", "no_model_available")
    with pytest.raises(errors.InvalidNameError):
        client.get_model("Digits", "production")  # uppercase: refused before any request
