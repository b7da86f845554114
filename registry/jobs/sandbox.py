"""Launching the untrusted converter process: the trusted side of the sandbox.

An uploaded model is untrusted code, so the worker never loads it. It prepares a job
directory, starts ``registry.convert.boot`` in a sandbox and only reads back files:

- **bubblewrap** (``bwrap``): new mount, PID, network, IPC and UTS namespaces; the host
  file system read-only; fresh ``/tmp``, ``/run``, ``/dev`` and ``/proc``; empty tmpfs over
  the data dir, the keys dir and ``$HOME`` (the interpreter is bound back read-only if it
  lives there); only the job's input (read-only) and work directory (read-write) bound in.
- **a separate uid** when the worker runs as root (``setpriv``: ``MODELDROP_SANDBOX_UID``,
  no groups, no capabilities, no-new-privs); otherwise an unprivileged user namespace.
- **limits** set by ``registry.convert.boot`` before anything is loaded: CPU time, address
  space, file size, processes, open files, no core dumps; a wall-clock deadline here.
- **a scrubbed environment**: no ``MODELDROP_*``, no database or broker URL, no S3 keys.

When bubblewrap cannot run (not installed, user namespaces disabled) the status is
``degraded``: limits, the scrubbed environment and a fresh session still hold, and the
server says so at start and in ``/healthz``. ``MODELDROP_CONVERT_SANDBOX=required`` makes
conversions fail instead. docs/security.md lists what each layer stops.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from registry.config import Settings

log = logging.getLogger("modeldrop.sandbox")

SANDBOX_MODES = ("auto", "required")
PROBE_TIMEOUT = 60.0  # seconds; the probe starts one small Python process
MAX_MESSAGE_BYTES = 4096  # a longer progress line from the sandbox is dropped
MAX_MESSAGES = 100_000  # messages read from one run; the rest are drained and ignored
STDERR_TAIL_BYTES = 16 << 10  # bytes of the converter's stderr kept for the server log
WATCH_SECONDS = 1.0  # how often the work directory's size is checked
MAX_WORK_ENTRIES = 200_000  # a work directory with more files than this is over its cap

# Paths on the host that hold sockets or scratch files of other services.
_FRESH_TMPFS = ("/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm")


class SandboxUnavailableError(RuntimeError):
    """MODELDROP_CONVERT_SANDBOX=required and bubblewrap cannot run here."""


@dataclass(frozen=True)
class SandboxStatus:
    """What the probe found: ``full`` when every layer holds, else ``degraded``."""

    state: str  # "full" | "degraded"
    layers: tuple[str, ...]
    reason: str | None = None

    def as_dict(self) -> dict:
        return {"state": self.state, "layers": list(self.layers), "reason": self.reason}


@dataclass(frozen=True)
class JobDirs:
    """A job's directories. ``input`` is read-only inside the sandbox, ``work`` read-write;
    ``root`` itself and ``accepted`` (validated copies) are never visible to it."""

    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def accepted(self) -> Path:
        return self.root / "accepted"

    @property
    def log_file(self) -> Path:
        return self.root / "converter.log"


@dataclass
class RunOutcome:
    returncode: int | None
    timed_out: bool = False
    over_disk: bool = False
    stderr_tail: str = ""


def _project_root() -> Path:
    import registry

    return Path(registry.__file__).resolve().parent.parent


def _needed_paths() -> list[Path]:
    """What the converter's interpreter must see: the venv, the base Python, the project."""
    import site

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent,
             _project_root()}
    for p in [*site.getsitepackages(), site.getusersitepackages()]:
        if p:
            paths.add(Path(p))
    return sorted({p.resolve() for p in paths if p.exists()})


def _mount_point_dirs(dest: Path, tmpfs_roots: list[Path], made: set[Path]) -> list[str]:
    """``--dir`` options (mode 0755) for dest's parents that lie inside a fresh tmpfs, so
    that the converter's uid can reach a path bound back into it."""
    roots = [r for r in tmpfs_roots if _is_within(dest, r) and r != dest]
    if not roots:
        return []
    root = max(roots, key=lambda r: len(r.parts))
    out: list[str] = []
    for parent in reversed(dest.parents):
        if _is_within(parent, root) and parent != root and parent not in made:
            made.add(parent)
            out += ["--perms", "0755", "--dir", str(parent)]
    return out


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


class Sandbox:
    """Starts sandboxed converter processes for one set of settings."""

    _status_cache: dict[tuple, SandboxStatus] = {}
    _status_lock = threading.Lock()

    def __init__(self, settings: Settings) -> None:
        if settings.convert_sandbox not in SANDBOX_MODES:
            raise ValueError(f"MODELDROP_CONVERT_SANDBOX must be one of {', '.join(SANDBOX_MODES)}, "
                             f"not {settings.convert_sandbox!r}")
        self.settings = settings
        self.as_root = os.geteuid() == 0

    # -- what the sandbox hides ------------------------------------------------------

    def hidden_paths(self) -> list[Path]:
        """Host paths replaced by an empty tmpfs: every secret the server keeps on disk."""
        paths = [Path(self.settings.data_dir), self.settings.resolved_keys_dir]
        home = os.environ.get("HOME")
        if home and Path(home).resolve() != Path("/"):
            paths.append(Path(home))
        if self.as_root:
            paths.append(Path("/root"))
        return sorted({p.resolve() for p in paths if p.exists()}, key=lambda p: len(p.parts))

    def limits(self, file_bytes: int) -> dict[str, int]:
        s = self.settings
        return {"cpu_seconds": s.convert_cpu_seconds, "memory_bytes": s.convert_memory_bytes,
                "file_bytes": int(file_bytes), "processes": s.convert_max_processes,
                "open_files": 4096, "core_bytes": 0}

    def environment(self, dirs: JobDirs) -> dict[str, str]:
        """The whole environment of the converter: nothing inherited from the worker."""
        tmp = dirs.work / "tmp"
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(dirs.work), "TMPDIR": str(tmp),
                "LANG": "C.UTF-8", "PYTHONPATH": str(_project_root()), "PYTHONNOUSERSITE": "1",
                "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "MPLCONFIGDIR": str(tmp), "KERAS_HOME": str(tmp / "keras")}

    def _bwrap_args(self, dirs: JobDirs | None) -> list[str]:
        args = [self.settings.bwrap_path, "--die-with-parent", "--new-session",
                "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--hostname", "modeldrop-converter"]
        if not self.as_root:
            args.append("--unshare-user")
        args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for p in _FRESH_TMPFS:
            if p == "/dev/shm" or (os.path.isdir(p) and not os.path.islink(p)):
                # sticky and world-writable, as on the host (multiprocessing needs /dev/shm)
                args += ["--perms", "1777" if p != "/run" else "0755", "--tmpfs", p]
        hidden = self.hidden_paths()
        for p in hidden:
            args += ["--tmpfs", str(p)]
        # The interpreter and the project may live under $HOME (pyenv, a checkout) or /tmp
        # (a CI clone); bind them back read-only, but never anything inside the data or
        # keys directory.
        secret = [Path(self.settings.data_dir).resolve(), self.settings.resolved_keys_dir.resolve()]
        tmpfs_roots = [Path(p) for p in _FRESH_TMPFS] + hidden
        made: set[Path] = set()
        for p in _needed_paths():
            if any(_is_within(p, r) for r in tmpfs_roots) and not any(_is_within(p, s) for s in secret):
                args += _mount_point_dirs(p, tmpfs_roots, made) + ["--ro-bind", str(p), str(p)]
        # Something bound back may contain the data dir (a checkout holding ./modeldrop-data).
        for s in secret:
            if s.exists():
                args += ["--tmpfs", str(s)]
        made.clear()
        if dirs is not None:
            inp, work = dirs.input.resolve(), dirs.work.resolve()
            args += _mount_point_dirs(inp, tmpfs_roots, made) + ["--ro-bind", str(inp), str(inp)]
            args += _mount_point_dirs(work, tmpfs_roots, made) + ["--bind", str(work), str(work),
                                                                  "--chdir", str(work)]
        args.append("--")
        if self.as_root:
            args += ["setpriv", f"--reuid={self.settings.sandbox_uid}", f"--regid={self.settings.sandbox_gid}",
                     "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        return args

    def command(self, dirs: JobDirs | None, module: str, args: list[str], *, file_bytes: int,
                bwrap: bool = True) -> list[str]:
        prefix = self._bwrap_args(dirs) if bwrap else []
        return [*prefix, sys.executable, "-m", "registry.convert.boot",
                json.dumps(self.limits(file_bytes)), module, *args]

    # -- status ----------------------------------------------------------------------

    def status(self) -> SandboxStatus:
        """Probe once per process and configuration; later calls reuse the answer."""
        # Not keyed by the data dir: whether the layers hold does not depend on which
        # directory they hide, and a process (or a test session) probes only once.
        key = (self.settings.bwrap_path, self.as_root, self.settings.sandbox_uid, self.settings.sandbox_gid)
        with self._status_lock:
            if key not in self._status_cache:
                self._status_cache[key] = self._probe()
            return self._status_cache[key]

    def _probe(self) -> SandboxStatus:
        fallback = ("rlimits", "scrubbed-environment", "no-new-privs", "new-session", "deadline")
        if shutil.which(self.settings.bwrap_path) is None:
            return SandboxStatus("degraded", fallback, f"bubblewrap ({self.settings.bwrap_path}) is not installed")
        if self.as_root and shutil.which("setpriv") is None:
            return SandboxStatus("degraded", fallback, "setpriv (util-linux) is not installed")
        import tempfile

        hidden = [str(p) for p in self.hidden_paths()] + [p for p in ("/run/postgresql",) if os.path.exists(p)]
        with tempfile.TemporaryDirectory(prefix="modeldrop-probe-") as tmp:
            dirs = JobDirs(Path(tmp))
            self.prepare(dirs)
            messages: list[dict] = []
            cmd = self.command(dirs, "registry.convert.probe", hidden, file_bytes=1 << 20)
            outcome = self._execute(cmd, dirs, timeout=PROBE_TIMEOUT, on_message=messages.append)
        probe = next((m["probe"] for m in messages if isinstance(m.get("probe"), dict)), None)
        if outcome.returncode != 0 or probe is None:
            last = outcome.stderr_tail.strip().splitlines()[-1:] or ["no output"]
            return SandboxStatus("degraded", fallback, f"bubblewrap failed to start the converter: {last[0][:200]}")
        problems = []
        from registry.convert.probe import NAMESPACES, namespaces

        ours, theirs = namespaces(), probe.get("namespaces") or {}
        shared = [ns for ns in NAMESPACES if ns != "user" and theirs.get(ns) == ours[ns]]
        if shared:
            problems.append(f"the converter shares the worker's {', '.join(shared)} namespace(s)")
        if set(probe.get("interfaces") or []) - {"lo"}:
            problems.append("the converter has a network interface")
        if probe.get("visible"):
            problems.append(f"the converter can see {len(probe['visible'])} hidden path(s)")
        if not probe.get("no_new_privs"):
            problems.append("no-new-privs is not set")
        if self.as_root and probe.get("uid") == 0:
            problems.append("the converter runs as root")
        if problems:
            return SandboxStatus("degraded", fallback, "; ".join(problems))
        layers = ("bubblewrap-namespaces", "read-only-host", "hidden-data-dir", "no-network",
                  "separate-uid" if self.as_root else "user-namespace", *fallback)
        return SandboxStatus("full", layers)

    def announce(self) -> SandboxStatus:
        """The one line a server or worker prints at start about its converter sandbox."""
        status = self.status()
        if status.state == "full":
            log.info("converter sandbox: full (%s)", ", ".join(status.layers))
        elif self.settings.convert_sandbox == "required":
            log.error("converter sandbox: UNAVAILABLE (%s); MODELDROP_CONVERT_SANDBOX=required, so "
                      "conversions will fail until it is fixed", status.reason)
        else:
            log.warning("converter sandbox: DEGRADED (%s); uploaded models run with limits but without "
                        "namespaces; install bubblewrap (see docs/security.md)", status.reason)
        return status

    # -- running ---------------------------------------------------------------------

    def prepare(self, dirs: JobDirs) -> None:
        """Create the job's directories with the owners the sandbox needs."""
        dirs.root.mkdir(parents=True, exist_ok=True)
        os.chmod(dirs.root, 0o700)
        dirs.input.mkdir(exist_ok=True)
        os.chmod(dirs.input, 0o755)
        dirs.work.mkdir(exist_ok=True)
        (dirs.work / "tmp").mkdir(exist_ok=True)
        dirs.accepted.mkdir(exist_ok=True)
        os.chmod(dirs.accepted, 0o700)
        if self.as_root:
            for p in (dirs.work, dirs.work / "tmp"):
                os.chown(p, self.settings.sandbox_uid, self.settings.sandbox_gid)
                os.chmod(p, 0o700)

    def run(self, dirs: JobDirs, module: str, args: list[str], *, file_bytes: int, timeout: float,
            on_message: Callable[[dict], None], work_cap_bytes: int | None = None) -> RunOutcome:
        """Run ``module`` in the sandbox until it exits, the deadline passes or its work
        directory outgrows ``work_cap_bytes``; progress messages go to ``on_message``."""
        status = self.status()
        if status.state != "full" and self.settings.convert_sandbox == "required":
            raise SandboxUnavailableError(f"the converter sandbox is unavailable: {status.reason}")
        cmd = self.command(dirs, module, args, file_bytes=file_bytes, bwrap=status.state == "full")
        return self._execute(cmd, dirs, timeout=timeout, on_message=on_message, work_cap_bytes=work_cap_bytes)

    def _execute(self, cmd: list[str], dirs: JobDirs, *, timeout: float, on_message: Callable[[dict], None],
                 work_cap_bytes: int | None = None) -> RunOutcome:
        with open(dirs.log_file, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    env=self.environment(dirs), cwd=str(dirs.work), close_fds=True,
                                    start_new_session=True)
            reader = threading.Thread(target=_read_messages, args=(proc.stdout, on_message), daemon=True)
            reader.start()
            outcome = RunOutcome(returncode=None)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    outcome.returncode = proc.wait(timeout=WATCH_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() > deadline:
                    outcome.timed_out = True
                elif work_cap_bytes is not None and _tree_bytes(dirs.work, work_cap_bytes) > work_cap_bytes:
                    outcome.over_disk = True
                if outcome.timed_out or outcome.over_disk:
                    _kill(proc)
                    outcome.returncode = proc.wait()
                    break
            _kill(proc)  # anything left in the degraded mode's process group
            reader.join(timeout=5)
        outcome.stderr_tail = _tail(dirs.log_file)
        return outcome


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_messages(stream, on_message: Callable[[dict], None]) -> None:
    count = 0
    with stream:
        while True:
            line = stream.readline(MAX_MESSAGE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_MESSAGE_BYTES or not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                    line = stream.readline(MAX_MESSAGE_BYTES + 1)
                continue
            count += 1
            if count > MAX_MESSAGES:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                try:
                    on_message(message)
                except Exception:
                    log.exception("progress message from the converter rejected")


def _tree_bytes(root: Path, cap: int) -> int:
    """Bytes allocated under root (hard links and symlinks not followed); stops past cap."""
    total, entries = 0, 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    entries += 1
                    if entries > MAX_WORK_ENTRIES:
                        return cap + 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
        if total > cap:
            return total
    return total


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - STDERR_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
