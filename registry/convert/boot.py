"""First code to run inside the converter sandbox, before any uploaded byte is read.

``python -m registry.convert.boot <limits-json> <module> [args...]`` sets the process
limits (they cannot be raised again, so nothing loaded later can lift them), sets
``PR_SET_NO_NEW_PRIVS``, moves stdout out of the way so that only this process's
progress messages reach the trusted worker on it, then runs ``<module>`` as ``__main__``.

Standard library only: it runs before the converter imports anything heavy, and the
trusted worker's probe runs it with the ``probe`` module to learn which layers hold.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import runpy
import sys

PR_SET_NO_NEW_PRIVS = 38

# limit name in the JSON document -> resource constant
_LIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "file_bytes": resource.RLIMIT_FSIZE,
    "processes": resource.RLIMIT_NPROC,
    "open_files": resource.RLIMIT_NOFILE,
    "core_bytes": resource.RLIMIT_CORE,
}

_progress = None


def apply_limits(limits: dict[str, int]) -> None:
    """Set soft and hard limits to the same value: a hard limit only ever goes down."""
    for name, value in limits.items():
        which = _LIMITS[name]
        _, hard = resource.getrlimit(which)
        value = int(value)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def no_new_privs() -> bool:
    """No setuid binary or file capability can raise this process's privileges again."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


def progress(message: dict) -> None:
    """One JSON line to the trusted worker (the original stdout)."""
    if _progress is not None:
        _progress.write(json.dumps(message, separators=(",", ":")) + "\n")
        _progress.flush()


def main(argv: list[str]) -> None:
    global _progress
    limits = json.loads(argv[0])
    apply_limits(limits)
    no_new_privs()
    # Only progress() writes to the worker's pipe; prints from libraries go to stderr.
    _progress = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    module, args = argv[1], argv[2:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Imported as registry.convert.boot by the module it runs, so share one _progress.
    from registry.convert import boot as _shared

    _shared.main(sys.argv[1:])
