"""Early rejection (issue 13): an upload whose role, model name or declared size is wrong is
answered from the URL and headers, and the server then refuses the rest of the body instead
of reading it (werkzeug's server used to drain up to 10 GB before closing). Real sockets on
loopback: headers and a first part of a big body are sent, the answer read, and the test counts
how much more the server would take."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.helpers import base_settings

DECLARED = 200 << 20  # bytes the request says it will send
CHUNK = 64 << 10


@pytest.fixture
def server(tmp_path):
    from registry.app import create_app
    from tests.live import serve_app

    app = create_app(base_settings(tmp_path, max_upload_bytes=100 << 20))
    services = app.extensions["modeldrop"]
    tokens = {role: services.store.create_token(role, role).token for role in ("reader", "publisher")}
    with serve_app(app) as url:
        yield url, tokens, services
    services.store.engine.dispose()


def _push(url: str, path: str, token: str | None, declared: int = DECLARED, filename: str = "m.keras"):
    """Send headers and then body bytes until the server stops taking them; returns (status
    line, bytes sent, seconds)."""
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=b0undary\r\n"
            f"Content-Length: {declared}\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "") + "\r\n")
    s.sendall(head.encode())
    first = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="'
             + filename.encode() + b'"\r\n\r\n')
    s.sendall(first)
    sent, started = len(first), time.monotonic()
    try:
        while sent < declared:
            sent += s.send(b"\0" * CHUNK)
    except OSError:
        pass  # the server closed its side: what we wanted
    took = time.monotonic() - started
    try:
        status = s.recv(4096).split(b"\r\n", 1)[0].decode()
    finally:
        s.close()
    return status, sent, took


@pytest.mark.parametrize(("path", "who", "status"), [
    ("/v1/models/ok/versions", None, "401"),
    ("/v1/models/ok/versions", "reader", "403"),
    ("/v1/models/Not-A-Name!/versions", "publisher", "400"),
])
def test_role_and_name_are_refused_without_taking_the_upload(server, path, who, status):
    url, tokens, services = server
    line, sent, took = _push(url, path, tokens.get(who))
    assert line.split()[1] == status, line
    # The kernel's socket buffers take a few MB; the 200 MB body is not read.
    assert sent < 16 << 20, f"the server took {sent >> 20} MiB of a refused upload"
    assert took < 5
    assert list(services.blobs.staging_dir.glob("upload-*")) == []


def test_a_declared_size_over_the_limit_is_413_without_taking_the_upload(server):
    url, tokens, _ = server
    line, sent, _ = _push(url, "/v1/models/ok/versions", tokens["publisher"], declared=3 << 30)
    assert line.split()[1] == "413", line
    assert sent < 16 << 20


def test_requests_sees_the_refusal_while_it_is_still_sending(server):
    """What the CLI (requests) gets: the 401 problem, not a broken pipe, long before 200 MB."""
    url, _, _ = server

    def body():
        for _ in range(DECLARED // CHUNK):
            yield b"\0" * CHUNK

    started = time.monotonic()
    resp = requests.post(f"{url}/v1/models/ok/versions", data=body(), timeout=30,
                         headers={"Content-Type": "multipart/form-data; boundary=x",
                                  "Content-Length": str(DECLARED)})
    assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"
    assert time.monotonic() - started < 10


def test_an_accepted_upload_is_still_read_whole(server):
    url, tokens, _ = server
    resp = requests.post(f"{url}/v1/models/ok/versions", timeout=60,
                         headers={"Authorization": f"Bearer {tokens['publisher']}"},
                         files={"file": ("m.keras", b"\1" * (8 << 20))})
    assert resp.status_code == 201, resp.text
    assert resp.json()["source"]["size"] == 8 << 20


def test_an_onnx_upload_is_refused_from_its_part_header_without_taking_the_body(server):
    """The file name in the part's header is enough to refuse ONNX (docs/conversion.md): the
    answer comes before the body is read, and nothing is spooled."""
    url, tokens, services = server
    # 90 MB: under the upload limit, so only the part header can refuse it early.
    line, sent, _ = _push(url, "/v1/models/ok/versions", tokens["publisher"], declared=90 << 20,
                          filename="model.onnx")
    assert line.split()[1] == "400", line
    assert sent < 16 << 20, f"the server took {sent >> 20} MiB of a refused upload"
    assert list(services.blobs.staging_dir.glob("upload-*")) == []
