"""Rate limits on every write route (issue 13): per token and per client IP, 429 problem+json
with Retry-After, shared through Redis between web processes; the SDK honours Retry-After,
bounded."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import uuid
from contextlib import contextmanager

import pytest

from registry.ratelimit import EXEMPT_ENDPOINTS, READ_METHODS
from tests.helpers import ApiClient, assert_problem, base_settings
from tests.makers import make_ready_version, telemetry_event

REDIS_URL = "redis://127.0.0.1:6379/13"  # this issue's own Redis database


def _app(tmp_path, **overrides):
    from registry.app import create_app

    return create_app(base_settings(tmp_path, **overrides))


def _patch(client, token, ip="127.0.0.1", n=0):
    return client.patch("/v1/models/m", json={"description": f"d{n}"},
                        headers={"Authorization": f"Bearer {token}"},
                        environ_base={"REMOTE_ADDR": ip})


def _assert_429(resp, scope):
    body = assert_problem(resp, 429, "rate_limited")
    wait = int(resp.headers["Retry-After"])
    assert 1 <= wait <= 60
    assert body["retry_after"] == wait and body["scope"] == scope
    return body


def test_a_token_over_its_limit_gets_429_with_retry_after(tmp_path):
    app = _app(tmp_path, write_requests_per_token=5, write_requests_per_ip=1000)
    services = app.extensions["modeldrop"]
    make_ready_version(services, "m")
    one, two = (services.store.create_token("publisher", n).token for n in ("a", "b"))
    c = app.test_client()
    assert [_patch(c, one, n=i).status_code for i in range(5)] == [200] * 5
    _assert_429(_patch(c, one), "token")
    assert services.store.get_model("m").description == "d4"  # the refused write did nothing
    assert _patch(c, two).status_code == 200  # another token from the same IP
    # Reads are not limited.
    for _ in range(20):
        assert c.get("/v1/models/m", headers={"Authorization": f"Bearer {one}"}).status_code == 200
    # Nor is the token limit a way round auth: a revoked or made-up token is counted too.
    fake = "mdt_" + "x" * 43
    assert [_patch(c, fake).status_code for _ in range(5)] == [401] * 5
    _assert_429(_patch(c, fake), "token")


def test_a_client_ip_over_its_limit_gets_429_whatever_the_token(tmp_path):
    app = _app(tmp_path, write_requests_per_token=1000, write_requests_per_ip=4)
    services = app.extensions["modeldrop"]
    make_ready_version(services, "m")
    c = app.test_client()
    tokens = [services.store.create_token("publisher", f"t{i}").token for i in range(5)]
    assert [_patch(c, t, ip="10.0.0.1").status_code for t in tokens[:4]] == [200] * 4
    _assert_429(_patch(c, tokens[4], ip="10.0.0.1"), "client_ip")
    _assert_429(c.post("/v1/tokens", json={"role": "reader"}, environ_base={"REMOTE_ADDR": "10.0.0.1"}),
                "client_ip")  # no token at all: still counted by IP
    assert _patch(c, tokens[4], ip="10.0.0.2").status_code == 200


def _fill(rule) -> str:
    values = {"name": "m", "number": "1", "channel": "prod", "token_id": "999", "sha256": "0" * 64,
              "job_id": "j"}
    return re.sub(r"<(?:[a-z0-9]+:)?([a-z_]+)>", lambda m: values.get(m.group(1), "x"), rule.rule)


def test_every_write_route_of_the_url_map_is_limited(tmp_path):
    """A route added later is limited without anyone deciding so: the limit is on the method."""
    app = _app(tmp_path, write_requests_per_token=1000, write_requests_per_ip=1)
    c = app.test_client()
    checked = []
    for i, rule in enumerate(app.url_map.iter_rules()):
        for method in sorted(rule.methods - READ_METHODS):
            if rule.endpoint in EXEMPT_ENDPOINTS or rule.endpoint == "static":
                continue
            ip = f"10.1.{i // 250}.{i % 250}"
            url = _fill(rule)
            first = c.open(url, method=method, environ_base={"REMOTE_ADDR": ip})
            assert first.status_code != 429, (method, url)
            second = c.open(url, method=method, environ_base={"REMOTE_ADDR": ip})
            assert second.status_code == 429, (method, url, second.status_code)
            assert second.headers["Retry-After"].isdigit()
            checked.append((method, rule.rule))
            ip = None
    assert len(checked) >= 15, checked


def test_telemetry_keeps_its_event_budget_not_the_request_limit(tmp_path):
    app = _app(tmp_path, write_requests_per_ip=1)
    c = app.test_client()
    for _ in range(3):
        resp = c.post("/v1/telemetry", json={"events": [telemetry_event(id=str(uuid.uuid4()))]})
        assert resp.status_code != 429


def test_redis_counts_every_web_process_together(tmp_path):
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not running")
    a = _app(tmp_path / "a", write_requests_per_token=4, rate_limit_storage_url=REDIS_URL)
    # The second "web process" shares the database, as the scale mode does.
    b = _app(tmp_path / "b", write_requests_per_token=4, rate_limit_storage_url=REDIS_URL,
             database_url=a.extensions["modeldrop"].settings.sqlalchemy_url)
    services = a.extensions["modeldrop"]
    make_ready_version(services, "m")
    token = services.store.create_token("publisher", "shared").token
    ca, cb = a.test_client(), b.test_client()
    assert [_patch(ca, token).status_code, _patch(cb, token).status_code,
            _patch(ca, token).status_code, _patch(cb, token).status_code] == [200] * 4
    _assert_429(_patch(ca, token), "token")
    _assert_429(_patch(cb, token), "token")
    keys = redis.Redis.from_url(REDIS_URL).keys("*write-token*")
    assert keys and not any(token.encode() in k for k in keys)  # hashed, never the token itself


# -- the SDK honours Retry-After, bounded --------------------------------------------------------

@contextmanager
def _origin_429(retry_after: str, times: int):
    """A loopback server answering ``times`` telemetry posts with 429 + Retry-After, then 202."""
    posts: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(time.monotonic())
            if len(posts) <= times:
                body = json.dumps({"code": "rate_limited", "status": 429, "detail": "slow down",
                                   "retry_after": int(retry_after)}).encode()
                self.send_response(429)
                self.send_header("Retry-After", retry_after)
                self.send_header("Content-Type", "application/problem+json")
            else:
                body = b'{"accepted": 1, "rejected": []}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/telemetry", posts
    finally:
        server.shutdown()
        server.server_close()


def _telemetry(tmp_path, endpoint, **config):
    from client_sdk._http import make_session
    from client_sdk._telemetry import Telemetry
    from client_sdk._types import ClientConfig

    cfg = ClientConfig(**config)
    return Telemetry(tmp_path / "outbox.db", endpoint, make_session(cfg), cfg)


def test_sdk_waits_a_short_retry_after_then_sends(tmp_path):
    with _origin_429("1", times=1) as (endpoint, posts):
        t = _telemetry(tmp_path, endpoint, retry_backoff=0)
        t.record("inference", {"install_id": "install-0001"})
        result = t.flush()
        t.close()
    assert result.error is None and result.sent == 1
    assert len(posts) == 2 and posts[1] - posts[0] >= 0.9  # it waited the second it was told


def test_sdk_does_not_wait_out_a_long_retry_after_inside_the_call(tmp_path):
    from client_sdk._http import RETRY_AFTER_CAP
    from client_sdk.errors import RateLimitedError

    with _origin_429("3600", times=10) as (endpoint, posts):
        t = _telemetry(tmp_path, endpoint)
        t.record("inference", {"install_id": "install-0001"})
        started = time.monotonic()
        result = t.flush()
        took = time.monotonic() - started
        t.close()
    assert took < RETRY_AFTER_CAP and len(posts) == 1
    assert isinstance(result.error, RateLimitedError) and result.error.code == "rate_limited"
    assert result.error.retry_after == 3600 and result.error.retryable
    assert result.pending == 1  # kept for later
    assert t._next_attempt - time.monotonic() > 3000


def test_sdk_gets_rate_limited_with_retry_after_from_the_real_server(tmp_path):
    from client_sdk.errors import RateLimitedError
    from tests.live import serve_app

    app = _app(tmp_path, telemetry_events_per_ip=2)
    with serve_app(app) as base:
        t = _telemetry(tmp_path, f"{base}/v1/telemetry", http_retries=0)
        for _ in range(3):
            t.record("inference", telemetry_event())
        result = t.flush()
        t.close()
    assert isinstance(result.error, RateLimitedError), result
    assert 1 <= result.error.retry_after <= 60 and result.pending == 3


def test_api_client_sees_429_as_problem(tmp_path):
    app = _app(tmp_path, write_requests_per_token=1)
    services = app.extensions["modeldrop"]
    make_ready_version(services, "m")
    api = ApiClient(app.test_client(), services.store.create_token("publisher", "p").token)
    assert api.patch("/v1/models/m", json={"description": "x"}).status_code == 200
    _assert_429(api.patch("/v1/models/m", json={"description": "y"}), "token")
