"""schemathesis against the live server's /openapi.json (issue 13): every check, bounded
examples, a fixed seed (tests/schemathesis.toml), once with a publisher and once with an
admin token, over real HTTP. Zero server errors and zero schema violations, or the test fails
with schemathesis's own report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import base_settings
from tests.makers import make_ready_version

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    from registry.app import create_app
    from registry.delivery import releases
    from tests.live import serve_app

    tmp = tmp_path_factory.mktemp("fuzz")
    # No rate limits: the fuzzer sends a few thousand requests from one IP.
    app = create_app(base_settings(tmp, write_requests_per_ip=0, write_requests_per_token=0,
                                   telemetry_events_per_ip=0, telemetry_events_per_install=0))
    services = app.extensions["modeldrop"]
    admin = (Path(services.settings.data_dir) / "admin-token").read_text().strip()
    publisher = services.store.create_token("publisher", "fuzz").token  # id 2
    throwaway = services.store.create_token("reader", "throwaway")  # id 3: the revocation target
    assert throwaway.id == 3
    make_ready_version(services, "m")
    releases.promote(services, "m", 1, channel="production", actor="tests")
    with serve_app(app) as url:
        yield url, {"publisher": publisher, "admin": admin}
    services.store.engine.dispose()


def _run(url: str, token: str, report: Path) -> tuple[int, str]:
    st = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [str(st), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
         "--phases", "examples,coverage,fuzzing", "--no-color", "--workers", "1",
         "-H", f"Authorization: Bearer {token}", "--report", "junit", "--report-junit-path",
         str(report)],
        capture_output=True, text=True, timeout=600, cwd=report.parent)  # its cache lands there
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("role", ["publisher", "admin"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(fuzz_server, role, tmp_path):
    url, tokens = fuzz_server
    rc, out = _run(url, tokens[role], tmp_path / "junit.xml")
    assert rc == 0, out[-20000:]
    cases = re.search(r"(\d+) generated", out)
    print(f"schemathesis ({role}):", re.search(r"\d+ generated[^\n]*", out).group(0))
    assert cases and int(cases.group(1)) > 800, out[-3000:]
    assert "No issues found" in out or " 0 failures" in out or "passed" in out, out[-3000:]
