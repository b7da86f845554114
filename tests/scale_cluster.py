"""The scale mode's real parts for tests: a private PostgreSQL cluster, a RabbitMQ vhost, and
the web, worker and beat processes started with the commands docs/deployment.md gives (each a
``tests.procs.Proc``).

Plain context managers and a small ``Cluster`` record, not fixtures, so a test module decides
the scopes. Everything listens on 127.0.0.1 and lives under a temporary directory; nothing
touches the shared PostgreSQL server or another engineer's broker queues (a vhost of its own on
RabbitMQ, a Redis database number of its own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

# Re-exported for the scale tests: the process helpers live in tests/procs.py.
from tests.procs import Proc, cmdline, descendants, free_port, wait_for

__all__ = ["REDIS_DB", "Cluster", "Proc", "broker", "cmdline", "descendants", "free_port", "postgres_available",
           "private_postgres", "wait_for"]

BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
REDIS_DB = 11  # this test's own Redis database number


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists() and os.geteuid() == 0 and shutil.which("runuser") is not None


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, so it can be stopped and started at will."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/modeldrop"

    def _ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data),
                        "-l", str(self.data / "server.log"), "-w", "-t", "60", *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    base = Path(tempfile.mkdtemp(prefix="modeldrop-pg-"))
    data = base / "data"
    shutil.chown(base, "postgres", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
                    "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pg = PrivatePostgres(data, free_port())
    pg.start()
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "createdb"), "-h", "127.0.0.1",
                        "-p", str(pg.port), "-U", "postgres", "modeldrop"], check=True)
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data),
                            "-m", "immediate", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def broker(kind: str) -> Iterator[str]:
    """A broker URL nobody else uses: a fresh RabbitMQ vhost, or this test's Redis db."""
    if kind == "redis":
        yield f"redis://127.0.0.1:6379/{REDIS_DB}"
        return
    vhost = f"modeldrop-scale-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "add_vhost", vhost], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Cluster:
    """Settings shared by every process of one scale deployment, and its processes."""

    root: Path
    env: dict
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, api: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}"

    def _env(self, name: str, **extra: str) -> dict:
        data = self.root / name
        data.mkdir(parents=True, exist_ok=True)
        return {**self.env, "MODELDROP_DATA_DIR": str(data), **extra}

    # The commands of docs/deployment.md, "Scale mode".
    def start_api(self, name: str, web_workers: int = 2) -> Proc:
        port = self.ports.setdefault(name, free_port())
        env = self._env(name, MODELDROP_BIND=f"127.0.0.1:{port}", MODELDROP_WEB_WORKERS=str(web_workers))
        proc = Proc(name, [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "registry.wsgi:app"],
                    env, self.root / f"{name}.log").start()
        self.procs[name] = proc
        wait_for(lambda: self._answers(name, proc), 90, f"{name} to answer", proc=proc)
        return proc

    def _answers(self, name: str, proc: Proc) -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{name} exited:\n{proc.tail()}")
        try:
            resp = requests.get(self.url(name) + "/healthz", timeout=5)
        except requests.RequestException:
            return False
        # It answers: 200, or 503 "no_workers" while no Celery worker is up yet (the workers
        # start after the web processes; docs/deployment.md, "Supervised workers").
        return resp.status_code == 200 or (resp.status_code == 503 and
                                           resp.headers.get("Content-Type", "").startswith("application/json")
                                           and resp.json().get("status") == "no_workers")

    def start_worker(self, name: str) -> Proc:
        argv = [str(BIN / "celery"), "-A", "registry.jobs.celery_app", "worker",
                "-Q", "modeldrop,convert-tf,convert-torch", "--concurrency", "1", "-n", f"{name}@%h",
                "--loglevel", "INFO"]
        proc = Proc(name, argv, self._env(name), self.root / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def start_beat(self) -> Proc:
        argv = [str(BIN / "celery"), "-A", "registry.jobs.celery_app", "beat", "--loglevel", "INFO",
                "-s", str(self.root / "beat" / "celerybeat-schedule")]
        proc = Proc("beat", argv, self._env("beat"), self.root / "beat.log").start()
        self.procs["beat"] = proc
        return proc

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to every process group at once, SIGKILL to what is left after ``grace``."""
        procs = [p for p in self.procs.values() if p.popen is not None]
        for proc in procs:
            proc.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            proc.kill(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)

    def logs(self) -> str:
        return "\n".join(f"--- {n} ---\n{p.tail(2500)}" for n, p in self.procs.items())
