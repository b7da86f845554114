"""Shared start/wait helpers of the benchmarks: free ports, waiting for an HTTP answer, and a
gunicorn started exactly as docs/deployment.md says, in its own process group.

Each bench script used to carry its own copy of these; they import them from here
(``from bench._common import ...``; the scripts put the checkout on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))

__all__ = ["GUNICORN", "RESULTS", "ROOT", "free_port", "gunicorn", "stop_group", "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, *, proc: subprocess.Popen | None = None, timeout: float = 60.0,
              log: str = "its log") -> None:
    """Wait until ``url`` answers 200; raise if ``proc`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"{url} did not answer; see {log}")
        time.sleep(0.3)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_gunicorn(env: dict, log: IO[bytes], command: list[str] | None = None,
                   cwd: Path = ROOT) -> subprocess.Popen:
    """``gunicorn -c deploy/gunicorn.conf.py registry.wsgi:app`` (or ``command``) with ``env``.
    gunicorn puts ``cwd`` first on ``sys.path``: the code of that checkout is what runs."""
    command = command or [GUNICORN, "-c", str(cwd / "deploy" / "gunicorn.conf.py"), "registry.wsgi:app"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=cwd)


@contextlib.contextmanager
def gunicorn(data_dir: Path, **settings: str) -> Iterator[str]:
    """The ModelDrop web process on a free port until the block ends; yields its base URL.
    ``settings`` are extra environment variables (``MODELDROP_DATABASE_URL=...``)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MODELDROP_DATA_DIR=str(data_dir), MODELDROP_BIND=f"127.0.0.1:{port}",
               PYTHONPATH=str(ROOT), **settings)
    base = f"http://127.0.0.1:{port}"
    with open(data_dir / "gunicorn.log", "wb") as log:
        proc = start_gunicorn(env, log)
        try:
            wait_http(f"{base}/healthz", proc=proc, log=log.name)
            yield base
        finally:
            stop_group(proc)
