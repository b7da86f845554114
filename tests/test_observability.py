"""Request ids, the JSON request log and /metrics, through the app's real routes."""

from __future__ import annotations

import json
import logging

from tests.helpers import assert_problem
from tests.makers import make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7", "app_version": "3.2.0"}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _log_lines():
    handler = _Lines()
    logging.getLogger("modeldrop.request").addHandler(handler)
    return handler


def test_request_id_is_kept_or_made_and_echoed_in_problems_and_logs(app, admin_token):
    client = app.test_client()
    handler = _log_lines()
    try:
        resp = client.get("/healthz", headers={"X-Request-Id": "lb-1234.abc"})
        assert resp.headers["X-Request-Id"] == "lb-1234.abc"
        # An id that could forge log lines or carry a secret is replaced, not echoed.
        hostile = 'x", "status": 200, "token": "' + "A" * 200
        resp = client.get("/v1/models", headers={"X-Request-Id": hostile,
                                                 "Authorization": f"Bearer {admin_token}"})
        made = resp.headers["X-Request-Id"]
        assert made != hostile and len(made) == 32
        problem = client.get("/v1/models/nope", headers={"Authorization": f"Bearer {admin_token}",
                                                         "X-Request-Id": "req-42"})
        body = assert_problem(problem, 404, "model_not_found")
        assert body["request_id"] == "req-42" == problem.headers["X-Request-Id"]
        unauth = client.get("/v1/models", headers={"Authorization": "Bearer not-a-token"})
        assert unauth.get_json()["request_id"] == unauth.headers["X-Request-Id"]
    finally:
        logging.getLogger("modeldrop.request").removeHandler(handler)
    entries = [json.loads(line) for line in handler.lines]
    assert [e["request_id"] for e in entries] == ["lb-1234.abc", made, "req-42",
                                                 unauth.headers["X-Request-Id"]]
    assert entries[2]["route"] == "/v1/models/<name>" and entries[2]["status"] == 404
    assert all(admin_token not in line and "not-a-token" not in line for line in handler.lines)


def test_metrics_count_requests_manifests_telemetry_and_jobs(app, services, api, anon_api, reader_token):
    make_ready_version(services, "digits")
    assert api.post("/v1/models/digits/releases", json={"version": 1, "channel": "production"}).status_code == 201
    query = {"model": "digits", "channel": "production", "install_id": "device-0001-abcd", **ANDROID}
    for _ in range(3):
        assert anon_api.get("/v1/manifest", query_string=query).status_code == 200
    assert anon_api.get("/v1/manifest", query_string={**query, "channel": "nothing-here"}).status_code == 204
    events = {"events": [{"install_id": "device-0001-abcd", "model": "digits", "version": 1,
                          "variant": "tflite-int8-dynamic", "kind": "load", "ok": True,
                          "ts": "2026-12-02T10:00:00Z", "event_id": "e-1"}, {"bogus": 1}]}
    accepted = anon_api.post("/v1/telemetry", json=events).get_json()

    assert anon_api.get("/metrics").status_code == 401  # a reader token, like any read route
    resp = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {reader_token}"})
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    text = resp.get_data(as_text=True)
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    decisions = "modeldrop_manifest_decisions_total"
    assert samples[decisions + '{arm="",channel="production",decision="offer",model="digits"}'] >= 3
    assert samples[decisions + '{arm="",channel="",decision="nothing",model="digits"}'] >= 1
    assert not any("nothing-here" in k for k in samples)  # no label a client can vary at will
    assert samples['modeldrop_http_requests_total{method="GET",route="/v1/manifest",status="200"}'] >= 3
    assert samples['modeldrop_http_request_duration_seconds_count{method="GET",route="/v1/manifest"}'] >= 4
    assert samples['modeldrop_telemetry_events_total{outcome="rejected"}'] >= len(accepted["rejected"]) >= 1
    # A delta job was queued by the promote (nothing runs it here): queue depth from the database.
    assert samples['modeldrop_jobs{kind="deltas",state="queued"}'] == 1
    assert samples['modeldrop_job_queue_depth{kind="deltas"}'] == 1
    assert samples["modeldrop_job_oldest_queued_seconds"] >= 0
    assert samples['modeldrop_guardrail_halts{what="release"}'] == 0


def test_the_log_line_is_what_json_dumps_writes_for_any_path(app):
    """The line is assembled without a dict; it must stay the JSON of one: escapes, unicode
    and number forms as json.dumps writes them, for a hostile path too."""
    client = app.test_client()
    handler = _log_lines()
    try:
        for path in ['/nope/"quoted"\\back', "/caf\u00e9/\u20ac/\U0001f600", "/a%0Ab", "/healthz"]:
            client.get(path)
    finally:
        logging.getLogger("modeldrop.request").removeHandler(handler)
    assert len(handler.lines) == 4
    for line in handler.lines:
        entry = json.loads(line)
        assert list(entry) == ["ts", "request_id", "method", "route", "path", "status",
                               "duration_ms", "bytes", "remote_addr"]
        assert json.dumps(entry, separators=(",", ":")) == line
    assert json.loads(handler.lines[0])["path"] == '/nope/"quoted"\\back'
    assert json.loads(handler.lines[2])["path"] == "/a\nb"
