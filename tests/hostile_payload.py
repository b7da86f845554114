"""What a fully compromised converter would try, run inside the real sandbox by test_sandbox.

``python -m registry.convert.boot <limits> tests.hostile_payload <action> <json-args>``.
Each action reports what it managed to do as one progress message, so the test can
assert on it and also look at the host afterwards. A model that escaped TensorFlow's
own checks would run with exactly these rights.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from registry.convert.boot import progress


def _try_read(paths: list[str]) -> dict[str, str]:
    got = {}
    for p in paths:
        try:
            with open(p, "rb") as fh:
                got[p] = fh.read(4096).decode("utf-8", "replace")
        except OSError as e:
            got[p] = f"ERR {e.errno}"
    return got


def read(args: dict) -> None:
    paths = list(args["paths"])
    # Every other process's environment and memory map, as far as /proc shows them.
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            paths.append(f"/proc/{pid}/environ")
    progress({"read": _try_read(paths), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
              "env": sorted(os.environ)})


def write(args: dict) -> None:
    wrote = []
    for p in args["paths"]:
        try:
            with open(p, "w") as fh:
                fh.write(args["marker"])
            wrote.append(p)
        except OSError:
            pass
    progress({"wrote": wrote})


def connect(args: dict) -> None:
    reached = []
    for host, port in args["tcp"]:
        try:
            with socket.create_connection((host, port), timeout=2):
                reached.append(f"{host}:{port}")
        except OSError as e:
            if isinstance(e, ConnectionRefusedError):
                continue  # the sandbox's own empty loopback
    for path in args["unix"]:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            reached.append(path)
        except OSError:
            pass
        finally:
            s.close()
    progress({"reached": reached})


def fork_bomb(args: dict) -> None:
    children = 0
    try:
        for _ in range(args["attempts"]):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as e:
        progress({"forked": children, "stopped_by": e.errno})
        return
    progress({"forked": children, "stopped_by": None})


def allocate(args: dict) -> None:
    try:
        block = bytearray(args["bytes"])
        block[-1] = 1
        progress({"allocated": len(block)})
    except MemoryError:
        progress({"allocated": 0, "memory_error": True})


def sleep(args: dict) -> None:
    progress({"sleeping": True})
    time.sleep(args["seconds"])
    progress({"woke": True})


def fill_disk(args: dict) -> None:
    chunk = b"\0" * (1 << 20)
    written = 0
    try:
        with open(os.path.join(args["dir"], "filler.bin"), "wb") as fh:
            for _ in range(args["megabytes"]):
                fh.write(chunk)
                fh.flush()
                written += 1
                time.sleep(args.get("pause", 0))
    except OSError as e:
        progress({"written_mb": written, "error": e.errno})
        return
    progress({"written_mb": written})


def forge_result(args: dict) -> None:
    """Leave a result that points the worker at files outside the work directory."""
    work = args["work"]
    variants = os.path.join(work, "out", "variants")
    os.makedirs(variants, exist_ok=True)
    entries = []
    for name, how in args["variants"].items():
        path = os.path.join(variants, f"{name}.tflite")
        if how == "symlink":
            os.symlink(args["target"], path)
        elif how == "fifo":
            os.mkfifo(path)
        elif how == "hardlink":
            try:
                os.link(args["target"], path)
            except OSError:
                with open(path, "wb") as fh:
                    fh.write(b"x" * 10)
        elif how == "liar":
            with open(path, "wb") as fh:
                fh.write(b"honest bytes")
        else:  # an honest file
            with open(path, "wb") as fh:
                fh.write(how.encode())
        entries.append({"name": name, "format": "tflite", "file": f"out/variants/{name}.tflite",
                        "size": args.get("size", 12), "sha256": args["sha256"], "fidelity": args.get("fidelity", {}),
                        "reference_latency_ms": None, "servable": True, "reason": None, "error": None})
    with open(os.path.join(work, "result.json"), "w") as fh:
        json.dump({"error": None, "variants": entries}, fh)
    progress({"forged": len(entries)})


def limits(args: dict) -> None:
    import resource

    names = {"RLIMIT_AS": resource.RLIMIT_AS, "RLIMIT_CPU": resource.RLIMIT_CPU,
             "RLIMIT_FSIZE": resource.RLIMIT_FSIZE, "RLIMIT_NPROC": resource.RLIMIT_NPROC,
             "RLIMIT_CORE": resource.RLIMIT_CORE}
    status = open("/proc/self/status").read()
    progress({"limits": {k: list(resource.getrlimit(v)) for k, v in names.items()},
              "uid": os.getuid(), "no_new_privs": "NoNewPrivs:\t1" in status,
              "cap_eff": next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff"))})


if __name__ == "__main__":
    globals()[sys.argv[1]](json.loads(sys.argv[2]))
