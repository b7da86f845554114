"""Run inside the sandbox by the trusted worker's probe: report which layers hold.

``python -m registry.convert.boot <limits> registry.convert.probe <path>...`` sends one
progress message: the uid, whether no-new-privs is set, its namespaces (the worker
compares them with its own), its network interfaces, and which of the given paths (the
data dir, the keys, service sockets) it can see into.
"""

from __future__ import annotations

import os
import socket
import sys

from registry.convert.boot import progress

NAMESPACES = ("net", "mnt", "pid", "ipc", "uts", "user")


def namespaces() -> dict[str, str]:
    return {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}


def _sees_into(path: str) -> bool:
    """True if any file (not a directory) under path is visible. Where a hidden path was,
    the sandbox leaves an empty tmpfs holding at most the mount points it bound back, and
    those are checked by their own paths."""
    if not os.path.isdir(path):
        return os.path.lexists(path)
    for root, dirs, files in os.walk(path):
        if files or any(os.path.islink(os.path.join(root, d)) for d in dirs):
            return True
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
    return False


def main(paths: list[str]) -> None:
    status = open("/proc/self/status").read()
    no_new_privs = any(line.split() == ["NoNewPrivs:", "1"] for line in status.splitlines())
    progress({"probe": {
        "uid": os.getuid(),
        "no_new_privs": no_new_privs,
        "namespaces": namespaces(),
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "visible": [p for p in paths if _sees_into(p)],
        "pid": os.getpid(),
    }})


if __name__ == "__main__":
    main(sys.argv[1:])
