"""The README's First steps run verbatim against a real `modeldrop serve`, so they cannot drift.

The block is taken from README.md as it is and run line by line in one bash process, in a
directory that looks like the checkout after README command 1 (a ``.venv`` and a
``modeldrop-data`` the server writes to). The only change is the port: a free one instead of
8080. PATH holds no virtualenv, so the block itself must put ``modeldrop`` on it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


def first_steps_block(readme: str, index: int = 0) -> str:
    """The first (or ``index``-th) ```bash block under the "First steps" heading."""
    section = readme.split("## First steps", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) > index, "README.md: no such ```bash block under ## First steps"
    return blocks[index]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODELDROP_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    return env


@pytest.fixture
def served(tmp_path):
    """README command 1's server, on a free port, in a fresh checkout-like directory."""
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(VENV)
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(VENV / "bin" / "modeldrop"), "serve", "--data-dir",
                             "./modeldrop-data", "--port", str(port)],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT, env=_clean_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("modeldrop serve did not become healthy")
        yield work, port, tmp_path / "serve.log"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_block(block: str, work: Path, port: int) -> str:
    assert "127.0.0.1:8080" in block
    lines = [line for line in block.replace("127.0.0.1:8080", f"127.0.0.1:{port}").splitlines()
             if line.strip()]
    # One shell, so exports and activation carry over; each README line must succeed.
    script = "set -e\ntrap 'echo \"README line failed: $BASH_COMMAND\" >&2' ERR\n" + "\n".join(
        f"echo '+ {line.split('#')[0].strip()}'\n{line}" for line in lines) + "\n"
    result = subprocess.run(["/bin/bash", "-c", script], cwd=work, env=_clean_env(),
                            capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    return out


def test_pytorch_first_steps_run_verbatim(served):
    """README command 1's server converts PyTorch uploads too: the PyTorch block, verbatim."""
    work, port, _ = served
    out = _run_block(first_steps_block((REPO / "README.md").read_text(), 1), work, port)
    assert "conversion done; version status ready" in out, out
    assert "digits-torch/production release 1: version 1" in out, out
    assert re.search(r"device runs digits-torch v1 \(tflite-[a-z0-9-]+\), release counter 1", out), out
    accuracy = float(re.search(r"accuracy (\d\.\d+) on \d+ eval samples", out).group(1))
    assert accuracy > 0.7, out


def test_first_steps_run_verbatim(served):
    work, port, serve_log = served
    out = _run_block(first_steps_block((REPO / "README.md").read_text()), work, port)
    assert "conversion done; version status ready" in out, out
    assert "digits/production release 1: version 1" in out, out
    assert re.search(r"device runs digits v1 \(tflite-[a-z0-9-]+\), release counter 1", out), out
    assert "trusting the server's root on first use" in out, out
    assert "XNNPACK" not in out, out  # LiteRT's native banner is held back by device fetch
    accuracy = float(re.search(r"accuracy (\d\.\d+) on \d+ eval samples", out).group(1))
    assert accuracy > 0.7, out

    # The server's first lines are for the newcomer: URL, data dir, token, dashboard; no
    # library noise after them.
    logged = serve_log.read_text().splitlines()
    assert logged[0] == f"ModelDrop on http://127.0.0.1:{port}", logged[:6]
    assert logged[1].split() == ["data", "dir", str((work / "modeldrop-data").resolve())]
    assert "admin-token" in logged[2] and "dashboard/" in logged[3], logged[:6]
    assert not [line for line in logged if "alembic" in line.lower()], logged
