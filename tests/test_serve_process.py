"""`modeldrop serve` owns its conversion workers: stopping or killing it never leaves orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended since the listing: it has no children
            continue
        found.update(int(c) for c in text)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli", "serve", "--data-dir",
                             str(tmp_path / "data"), "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    workers = set()
    for _ in range(100):  # the spawned worker (plus multiprocessing's resource tracker)
        workers = _children(proc.pid)
        if workers:
            break
        time.sleep(0.1)
    assert workers, "serve started no worker process"
    return proc, workers


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_with_the_server(tmp_path, sig):
    proc, workers = _start(tmp_path)
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        left = _wait_gone(workers, 20)
        assert not left, f"worker processes outlived the server: {left}"
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
