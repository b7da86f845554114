"""`modeldrop serve` owns its conversion workers: stopping or killing it never leaves orphans."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.procs import Proc, alive, children, free_port, wait_for, wait_gone, wait_http


def _start(tmp_path: Path) -> tuple[Proc, set[int]]:
    port = free_port()
    proc = Proc("serve", [sys.executable, "-m", "registry.cli", "serve", "--data-dir",
                          str(tmp_path / "data"), "--port", str(port), "--workers", "1"],
                dict(os.environ), tmp_path / "serve.log").start()
    wait_http(f"http://127.0.0.1:{port}/healthz", 30, proc=proc)
    # the spawned worker (plus multiprocessing's resource tracker)
    workers = wait_for(lambda: children(proc.pid), 10, "serve to start a worker process", step=0.1, proc=proc)
    return proc, workers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_with_the_server(tmp_path, sig):
    proc, workers = _start(tmp_path)
    try:
        os.kill(proc.pid, sig)  # the server alone, not its process group
        proc.popen.wait(timeout=30)
        left = wait_gone(workers, 20)
        assert not left, f"worker processes outlived the server: {left}\n{proc.tail()}"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stop()
