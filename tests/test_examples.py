"""examples/quickstart.py runs end to end against a real server with real conversion workers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import base_settings

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.fixture
def app(tmp_path):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, worker_processes=1, convert_max_parallel=1),
                     start_workers=True)
    yield app
    app.extensions["modeldrop"].jobs.stop()


def test_quickstart_example(live_server, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLE)
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    quickstart.main(["--url", live_server.base_url, "--token", live_server.admin_token,
                     "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert "promoted: v1 to production (release counter 1)" in out, out
    assert "promoted: v2 to production (release counter 2)" in out, out
    assert "device runs v1 (tflite-int8-dynamic), release counter 1" in out \
        or "device runs v1 (tflite-fp32), release counter 1" in out, out
    assert "device updated to v2, release counter 2" in out, out
    assert "server rolled back to v1 as release 3; device now runs v1 under release counter 3" in out
    accuracy = float(out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.8
