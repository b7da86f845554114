"""Processes a test starts for real (``modeldrop serve``, ``modeldrop worker``, gunicorn,
Celery): one set of start, wait and stop helpers for every test that needs them.

* ``free_port()``: a free TCP port on 127.0.0.1.
* ``Proc``: a command started in a session of its own (so its whole process group can be
  signalled without touching pytest's) with stdout and stderr in a log file; ``stop()`` sends
  SIGTERM to the group, then SIGKILL to whatever is left after the grace period; ``tail()``
  is the end of the log, for error messages.
* ``wait_for(check, seconds, what, proc=...)``: call ``check`` until it returns something
  true; fail after ``seconds``, or at once if ``proc`` exits, with the end of its log.
* ``wait_http(url, ...)``: ``wait_for`` an HTTP 200 (or another status).
* ``descendants``, ``children``, ``alive``, ``wait_gone``, ``cmdline``: what /proc says.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["Proc", "alive", "children", "cmdline", "descendants", "free_port", "wait_for", "wait_gone",
           "wait_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """One started process, the leader of its own session and process group."""

    name: str
    argv: list[str]
    env: dict
    log: Path
    grace: float = 5.0  # seconds ``stop()`` waits after SIGTERM, unless told otherwise
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group (a machine dying takes every process with it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM to the group, SIGKILL to what is left after ``grace`` seconds."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=self.grace if grace is None else grace)
        self.kill(signal.SIGKILL)  # the leader may be gone while others of its group are not
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Proc:
        return self if self.popen is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(check: Callable[[], Any], seconds: float, what: str, step: float = 0.2, *,
             proc: Proc | None = None) -> Any:
    """Call ``check`` until it returns something true and return that; raise after
    ``seconds``, or as soon as ``proc`` has exited, with the end of its log."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited ({proc.poll()}) while waiting for {what}:\n"
                                 f"{proc.tail()}")
        if time.monotonic() >= deadline:
            log = f":\n--- {proc.name} log ---\n{proc.tail()}" if proc is not None else ""
            raise AssertionError(f"timed out after {seconds} s waiting for {what}{log}")
        time.sleep(step)


def wait_http(url: str, seconds: float = 60, *, proc: Proc | None = None, status: int = 200,
              what: str | None = None) -> requests.Response:
    """Wait until ``url`` answers ``status``; returns the response."""

    def answered() -> requests.Response | None:
        try:
            resp = requests.get(url, timeout=5)
        except requests.RequestException:
            return None
        return resp if resp.status_code == status else None

    return wait_for(answered, seconds, what or f"{url} to answer {status}", proc=proc)


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` (empty once it is gone)."""
    found = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:  # the thread ended since the listing: it has no children
            continue
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``."""
    found, todo = set(), [pid]
    while todo:
        kids = children(todo.pop()) - found
        todo.extend(kids)
        found |= kids
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Wait until none of ``pids`` is alive; returns those still alive after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""
