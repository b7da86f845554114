"""Uploads to a real server process: flat memory for 300 MB, nothing left by a hang-up."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from registry.api_client import RegistryClient
from tests.procs import Proc, free_port, wait_http

UPLOAD_BYTES = 300 * 1024 * 1024
MAX_GROWTH_BYTES = 50 * 1024 * 1024


def _rss_fields(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture
def server_process(tmp_path):
    port = free_port()
    env = dict(os.environ, MODELDROP_MAX_UPLOAD_BYTES=str(400 << 20))
    with Proc("serve", [sys.executable, "-m", "registry.cli", "serve", "--data-dir", str(tmp_path / "data"),
                        "--port", str(port), "--workers", "0"], env, tmp_path / "serve.log", grace=10) as proc:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", 30, proc=proc)
        yield proc, base, (tmp_path / "data" / "admin-token").read_text().strip(), tmp_path / "data"


def test_300mb_upload_memory_growth(tmp_path, server_process):
    proc, base, token, _ = server_process
    big = tmp_path / "big.keras"
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(UPLOAD_BYTES >> 20):
            f.write(block[:-4] + i.to_bytes(4, "big"))
    client = RegistryClient(base, token)
    client.get("/v1/models")  # warm up the request path before measuring
    before = _rss_fields(proc.pid)["VmRSS"]
    sent = []
    result = client.upload("big", big, None, None, sent.append)
    after = _rss_fields(proc.pid)
    assert result["source"]["size"] == UPLOAD_BYTES
    assert sum(sent) == UPLOAD_BYTES
    growth = after["VmHWM"] - before
    print(f"server RSS before {before >> 20} MiB, peak {after['VmHWM'] >> 20} MiB, "
          f"growth {growth / 2**20:.1f} MiB for a {UPLOAD_BYTES >> 20} MiB upload")
    assert growth < MAX_GROWTH_BYTES


def test_client_hang_up_mid_upload_leaves_nothing(server_process):
    proc, base, token, data_dir = server_process
    port = int(base.rsplit(":", 1)[1])
    boundary = "hangup-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.keras\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    declared = 10 << 20
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall((f"POST /v1/models/hangup/versions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {token}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {declared}\r\n\r\n").encode() + head)
        sock.sendall(os.urandom(1 << 20))
        for _ in range(50):  # the upload is being spooled while the client is connected
            if [p for p in (data_dir / "blobs").rglob("upload-*") if p.is_file()]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the server never started spooling the upload")
    client = RegistryClient(base, token)
    for _ in range(50):  # the server notices the hang-up and cleans up
        staged = [p for p in (data_dir / "blobs").rglob("*") if p.is_file()] \
            if (data_dir / "blobs").exists() else []
        if not staged:
            break
        time.sleep(0.1)
    assert staged == []
    assert client.get("/v1/models")["items"] == []
