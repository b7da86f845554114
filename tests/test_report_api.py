"""Experiment reports from stored telemetry on SQLite and PostgreSQL, checked against the
simulated devices' own events; the JSON and HTML routes, the CLI and the dashboard."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from bench import simulate_experiment as sim
from tests.helpers import assert_problem, base_settings

SCENARIO = sim.Scenario(devices=400, seed=5, install_failure=(0.05, 0.15),
                        guardrails=("load_failure_rate < 0.5",))


def run(app, scenario=SCENARIO):
    """Set up the experiment through the API and drive the devices; returns their events."""
    services = app.extensions["modeldrop"]
    api = sim.InProcess(app)
    token = services.store.create_token("admin", "sim").token
    sim.setup_experiment(services, api, token, scenario)
    devices: dict = {}
    sim.run_devices(api, scenario, keep=devices, batch=300)
    return devices


def expected_funnel(devices) -> dict[str, Counter]:
    """The report's per-arm counts, recomputed from what each device sent."""
    out: dict[str, Counter] = defaultdict(Counter)
    for d in devices.values():
        events = d["events"]
        kinds = Counter(e["kind"] for e in events)
        last = {k: max((e["ts"] for e in events if e["kind"] == k), default=None)
                for k in ("download_finished", "download_failed")}
        c = out[d["arm"]]
        c["assigned"] += 1
        c["downloaded"] += kinds["download_finished"] > 0
        c["download_failed"] += last["download_failed"] is not None and (
            last["download_finished"] is None or last["download_failed"] > last["download_finished"])
        c["installed"] += kinds["install_ok"] > 0
        c["install_failed"] += kinds["install_failed"] > 0
        c["crashed"] += kinds["crash"] > 0
        c["active"] += kinds["inference"] > 0
        c["latency_devices"] += kinds["inference"] > 0
        c["rated_devices"] += any("correct" in e for e in events)
    return out


@pytest.fixture
def db_app(tmp_path, db_url):
    from registry.app import create_app

    app = create_app(base_settings(tmp_path, database_url=db_url))
    yield app
    app.extensions["modeldrop"].store.engine.dispose()


def test_report_matches_the_devices_own_events(db_app):
    devices = run(db_app)
    services = db_app.extensions["modeldrop"]
    token = services.store.create_token("reader", "r").token
    resp = db_app.test_client().get(f"/v1/experiments/{sim.EXPERIMENT}/report",
                                    headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.get_json()
    report = resp.get_json()
    assert report["experiment"] == sim.EXPERIMENT and report["control"] == "control"
    assert report["units"] == len(devices) == SCENARIO.devices
    assert services.store.experiment_assignments(sim.EXPERIMENT) == {
        i: d["arm"] for i, d in devices.items()}
    expected = expected_funnel(devices)
    for arm in ("control", "treatment"):
        got = report["arms"][arm]
        assert {k: got[k] for k in expected[arm]} == dict(expected[arm]), arm
        assert got["assigned"] >= got["downloaded"] >= got["installed"] >= got["active"]

    # accuracy: sum of correct over sum of rated, per arm
    acc = {m["arm"]: m for m in report["metrics"] if m["metric"] == "accuracy"}["treatment"]
    rated = [e for d in devices.values() if d["arm"] == "treatment" for e in d["events"]
             if "correct" in e]
    assert acc["value"] == pytest.approx(sum(e["correct"] for e in rated) / len(rated))
    # latency: geometric mean over devices of each device's geometric mean
    lat = next(m for m in report["metrics"] if m["metric"] == "latency_geomean_ratio")
    logs = [np.mean(np.log([e["latency_ms"] for e in d["events"] if e["kind"] == "inference"]))
            for d in devices.values()
            if d["arm"] == "treatment" and any(e["kind"] == "inference" for e in d["events"])]
    assert lat["value"] == pytest.approx(math.exp(np.mean(logs)), rel=1e-9)
    # the configured guardrail marks the install failure metric (uncorrected)
    inst = next(m for m in report["metrics"] if m["metric"] == "install_failure_rate")
    assert inst["guardrail"] and inst["p_value_adjusted"] == inst["p_value"]
    assert report["source"]["status"] == "running"
    assert report["source"]["unassigned_installs_with_telemetry"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report["source"]["generated_at"])
    assert report["daily_assigned"]["arms"]["control"] == [expected["control"]["assigned"]]


def test_latency_sample_is_capped_per_device_and_reproducible(db_app):
    devices = run(db_app, sim.Scenario(devices=60, seed=2, inferences=20))
    store = db_app.extensions["modeldrop"].store
    exp, units, source = store.experiment_units(sim.EXPERIMENT, latency_cap=3)
    assert exp.arms == ["control", "treatment"] and exp.weights == [50, 50]
    assert source["latency_cap_per_device"] == 3
    for unit in units:
        inferences = sorted((e["id"], e["latency_ms"]) for e in devices[unit.install_id]["events"]
                            if e["kind"] == "inference")
        # the first three by event id: a pseudo-random sample, the same on every read
        assert sorted(unit.latencies_ms) == sorted(ms for _, ms in inferences[:3])
    again = store.experiment_units(sim.EXPERIMENT, latency_cap=3)[1]
    assert [u.latencies_ms for u in again] == [u.latencies_ms for u in units]


def test_telemetry_without_assignment_is_reported_not_counted(app, api):
    run(app, sim.Scenario(devices=30, seed=3))
    stray = {"id": "2f1c3a4b-5d6e-4f70-8a9b-0c1d2e3f4a5b", "kind": "install_ok",
             "install_id": "not-assigned-device", "ts": "2026-11-27T14:00:00Z",
             "model": sim.MODEL, "version": 2, "experiment": sim.EXPERIMENT, "arm": "treatment"}
    assert app.test_client().post("/v1/telemetry", json={"events": [stray]}).status_code == 200
    report = api.get(f"/v1/experiments/{sim.EXPERIMENT}/report").get_json()
    assert report["units"] == 30
    assert report["source"]["unassigned_installs_with_telemetry"] == 1
    assert any(h["code"] == "telemetry_without_assignment" for h in report["health"])


def test_report_routes_need_a_reader_and_a_real_experiment(app, api, anon_api):
    run(app, sim.Scenario(devices=20, seed=4))
    for suffix in ("report", "report.html"):
        assert_problem(anon_api.get(f"/v1/experiments/{sim.EXPERIMENT}/{suffix}"), 401,
                       "unauthenticated")
        assert_problem(api.get(f"/v1/experiments/nope/{suffix}"), 404, "experiment_not_found")
        assert_problem(api.get(f"/v1/experiments/Bad%20Name/{suffix}"), 400, "invalid_name")
    page = api.get(f"/v1/experiments/{sim.EXPERIMENT}/report.html")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    text = page.get_data(as_text=True)
    assert f"Experiment report: {sim.EXPERIMENT}" in text
    for section in ("summary", "health", "arms", "metrics", "latency", "charts"):
        assert f'id="{section}"' in text
    assert text.count("<svg") == 3 and "<script" not in text


def test_cli_experiment_report(app, live_server, reader_token, tmp_path):
    from registry.cli import main

    run(app, sim.Scenario(devices=120, seed=6))
    runner = CliRunner()
    base = ["--url", live_server.base_url, "--token", reader_token, "experiment", "report",
            sim.EXPERIMENT]
    result = runner.invoke(main, base + ["--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Experiment {sim.EXPERIMENT}: 120 units" in out
    for header in ("ARM", "ASSIGNED", "METRIC", "LIFT [95% CI]", "P (HOLM)", "p50 ms [95% CI]"):
        assert header in out
    for metric in ("download_failure_rate", "install_failure_rate", "crash_rate",
                   "latency_geomean_ratio", "accuracy"):
        assert re.search(rf"^{metric}\s+treatment\s", out, re.M), metric
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    as_json = runner.invoke(main, base + ["--json"])
    assert as_json.exit_code == 0 and '"experiment": "digits-v2-vs-v1"' in as_json.output
    missing = runner.invoke(main, base[:-1] + ["nope"])
    assert missing.exit_code != 0 and "[experiment_not_found]" in missing.output


def _csrf(http, url):
    """The anti-forgery field of the form on the page at ``url`` (fetched with ``http``)."""
    return re.search(r'name="csrf" value="([^"]+)"', http.get(url, timeout=30).text).group(1)


def test_dashboard_login_cookie_page_and_logout(app, live_server, reader_token, admin_token):
    run(app, sim.Scenario(devices=40, seed=7))
    base = live_server.base_url
    page = f"/dashboard/experiments/{sim.EXPERIMENT}"
    http = requests.Session()
    first = http.get(base + page, allow_redirects=False, timeout=10)
    assert first.status_code == 302 and "/dashboard/login?next=" in first.headers["Location"]
    csrf = _csrf(http, base + "/dashboard/login")
    bad = http.post(base + "/dashboard/login", data={"token": "mdt_wrong", "next": page, "csrf": csrf},
                    allow_redirects=False, timeout=10)
    assert bad.status_code == 401 and "unknown, revoked" in bad.text
    forged = http.post(base + "/dashboard/login", data={"token": reader_token, "next": page, "csrf": csrf},
                       headers={"Origin": "http://evil.example"}, allow_redirects=False, timeout=10)
    assert forged.status_code == 403 and not forged.cookies
    no_csrf = requests.post(base + "/dashboard/login", data={"token": reader_token, "next": page},
                            allow_redirects=False, timeout=10)
    assert no_csrf.status_code == 403 and "modeldrop_session" not in no_csrf.headers.get("Set-Cookie", "")
    ok = http.post(base + "/dashboard/login", data={"token": reader_token, "next": page, "csrf": csrf},
                   allow_redirects=False, timeout=10)
    assert ok.status_code == 303 and ok.headers["Location"] == page
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/dashboard" in cookie
    assert reader_token not in cookie  # the cookie holds a session id, not the token
    shown = http.get(base + page, timeout=30)
    assert shown.status_code == 200 and "All experiments" in shown.text
    assert f"Experiment report: {sim.EXPERIMENT}" in shown.text and "running" in shown.text
    index = http.get(base + "/dashboard/", timeout=10)
    assert index.status_code == 200 and f">{sim.EXPERIMENT}</a>" in index.text
    http.post(base + "/dashboard/logout", data={"csrf": _csrf(http, base + "/dashboard/")}, timeout=10)
    assert http.get(base + page, allow_redirects=False, timeout=10).status_code == 302
    # scripts use the bearer header instead of the cookie
    bearer = requests.get(base + page, headers={"Authorization": f"Bearer {admin_token}"},
                          timeout=30)
    assert bearer.status_code == 200
    # no open redirect after sign-in
    away = http.post(base + "/dashboard/login",
                     data={"token": reader_token, "next": "https://evil.example/x",
                           "csrf": _csrf(http, base + "/dashboard/login")},
                     allow_redirects=False, timeout=10)
    assert away.headers["Location"] == "/dashboard/"
    missing = requests.get(base + "/dashboard/experiments/nope",
                           headers={"Authorization": f"Bearer {reader_token}"}, timeout=10)
    assert missing.status_code == 404 and "does not exist" in missing.text
