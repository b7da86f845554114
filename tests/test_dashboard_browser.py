"""The dashboard in a real Chromium, through its UI only: sign-in, what a reader sees, every
release-manager action with its confirmation page, jobs and Retry, sign-out, and forged or
cross-site form posts being refused.

The servers are real (werkzeug on loopback, as in tests/live.py); no cookie is set by hand.
Data the actions act on (ready versions, a first release, a failed conversion) is made with
the store, as the other tests do; every decision under test is taken by clicking. Each test
checks the result both on the page and through the HTTP API. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from registry.delivery import releases
from tests.browser import launch, serve_html, sign_in
from tests.makers import DEFAULT_VARIANTS, make_ready_version

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
VERBS = ("Promote", "Set rollout", "Pause", "Resume", "Roll back", "Start experiment",
         "Stop experiment", "Retry", "Set coverage")


@pytest.fixture(scope="module")
def browser():
    with launch() as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


def _api(server, token: str, path: str) -> dict:
    resp = requests.get(server.base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _two_versions_first_released(services):
    first = make_ready_version(services, "digits")
    second = make_ready_version(services, "digits")
    releases.promote(services, "digits", first.version, channel="production", actor="tests",
                     reason="first release")
    return first, second


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_reader_reads_variants_sees_no_buttons_and_a_forged_post_is_refused(page, live_server, services):
    _, second = _two_versions_first_released(services)
    reader = services.store.create_token("reader", "auditor").token
    sign_in(page, live_server.base_url, reader)
    assert page.get_by_role("banner").get_by_text("auditor").is_visible()
    page.get_by_role("link", name="digits", exact=True).click()
    page.get_by_role("heading", name="digits", exact=True).wait_for()
    page.get_by_role("link", name=f"v{second.version}", exact=True).first.click()
    variants = page.get_by_role("table").nth(1)
    for name in DEFAULT_VARIANTS:
        assert variants.get_by_role("cell", name=name, exact=True).is_visible()
    _shot(page, "reader-version")
    page.get_by_role("link", name="digits").first.click()
    page.get_by_role("heading", name="Channels").wait_for()
    for verb in VERBS:
        assert page.get_by_role("button", name=verb, exact=True).count() == 0, verb
    # The confirmation page is refused too, and a hand-made POST with the reader's own
    # session and anti-forgery token (taken from the sign-out form) gets 403 and changes nothing.
    refused = page.goto(live_server.base_url + f"/dashboard/models/digits/promote?version={second.version}"
                        "&channel=production&rollout_percent=10")
    assert refused.status == 403 and "needs the 'publisher' role" in page.content()
    page.go_back()
    csrf = page.locator("header input[name=csrf]").get_attribute("value")
    forged = page.request.post(live_server.base_url + "/dashboard/models/digits/promote",
                               form={"version": str(second.version), "channel": "production",
                                     "rollout_percent": "100", "csrf": csrf},
                               headers={"Origin": live_server.base_url})
    assert forged.status == 403
    current = [r for r in services.store.list_releases("digits") if r.current]
    assert [r.version for r in current] == [1]


def test_publisher_promotes_sets_rollout_pauses_and_rolls_back(page, live_server, services):
    _, second = _two_versions_first_released(services)
    publisher = services.store.create_token("publisher", "release-manager").token
    sign_in(page, live_server.base_url, publisher)
    page.get_by_role("link", name="digits", exact=True).click()

    promote = page.get_by_role("group", name="Promote a version")
    promote.get_by_label("Version").fill(str(second.version))
    promote.get_by_label("Channel").fill("production")
    promote.get_by_label("Rollout %").fill("10")
    promote.get_by_role("button", name="Promote").click()
    page.get_by_role("heading", name=f"Promote v{second.version} of digits to production at 10%?").wait_for()
    _shot(page, "confirm-promote")
    page.get_by_label("Reason").fill("canary for the new model")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Promoted").wait_for()
    row = page.get_by_role("row").filter(has_text="canary for the new model")
    assert row.count() == 1 and f"v{second.version}" in row.inner_text() and "10%" in row.inner_text()
    [now] = _api(live_server, publisher, "/v1/models/digits/releases?channel=production")["items"][:1]
    assert (now["version"], now["rollout_percent"], now["reason"]) == (second.version, 10, "canary for the new model")
    assert now["created_by"].endswith("(release-manager)")
    _shot(page, "model")

    page.get_by_label("Rollout % for production").fill("25")
    page.get_by_role("button", name="Set rollout").click()
    page.get_by_role("heading", name="Set the production rollout of digits to 25%?").wait_for()
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Rollout changed").wait_for()
    assert _api(live_server, publisher, "/v1/models/digits/releases?channel=production")["items"][0][
        "rollout_percent"] == 25

    page.get_by_role("button", name="Pause", exact=True).click()
    page.get_by_role("heading", name=re.compile("^Pause the production rollout of digits")).wait_for()
    page.get_by_label("Reason").fill("crash reports")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Paused").wait_for()
    assert page.get_by_role("button", name="Resume", exact=True).is_visible()
    paused = _api(live_server, publisher, "/v1/models/digits/releases?channel=production")["items"][0]
    assert paused["paused"] and paused["paused_reason"] == "crash reports"

    page.get_by_role("button", name="Roll back").click()
    page.get_by_role("heading", name=re.compile("^Roll back production of digits to the previous version")).wait_for()
    page.get_by_label("Reason").fill("back to the known good one")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Rolled back").wait_for()
    back = _api(live_server, publisher, "/v1/models/digits/releases?channel=production")["items"][0]
    assert (back["version"], back["kind"], back["rollout_percent"]) == (1, "rollback", 100)
    channels = page.get_by_role("table").first
    assert "v1" in channels.inner_text() and "active" in channels.inner_text()
    audit = services.store.audit_log(actor="release-manager", limit=20)
    reasons = " ".join(str(a.details) for a in audit)
    for reason in ("canary for the new model", "crash reports", "back to the known good one"):
        assert reason in reasons, reason


def test_start_and_stop_an_experiment_with_a_winner(page, live_server, services):
    first, second = _two_versions_first_released(services)
    publisher = services.store.create_token("publisher", "release-manager").token
    sign_in(page, live_server.base_url, publisher)
    page.get_by_role("link", name="digits", exact=True).click()
    start = page.get_by_role("group", name=re.compile("^Start an experiment"))
    start.get_by_label("Name").fill("v2-vs-v1")
    start.get_by_label("Control").fill(str(first.version))
    start.get_by_label("Treatment").fill(str(second.version))
    start.get_by_label("Coverage %").fill("50")
    start.get_by_role("button", name="Start experiment").click()
    page.get_by_role("heading", name="Start experiment v2-vs-v1 on digits/production: control v1 versus "
                                      "treatment v2, half each, at 50% coverage?").wait_for()
    page.get_by_label("Reason").fill("is the smaller model as good?")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Experiment started").wait_for()
    assert page.get_by_text("overrides this channel's release").is_visible()
    assert _api(live_server, publisher, "/v1/experiments/v2-vs-v1")["status"] == "running"

    page.get_by_role("link", name="v2-vs-v1").first.click()
    page.get_by_label("Winner").select_option("treatment")
    _shot(page, "experiment")
    page.get_by_role("button", name="Stop experiment").click()
    page.get_by_role("heading", name="Stop experiment v2-vs-v1 and release arm treatment to 100% of "
                                      "its devices?").wait_for()
    page.get_by_label("Reason").fill("treatment is as accurate and smaller")
    page.get_by_role("button", name="Confirm").click()
    page.get_by_role("status").get_by_text("Experiment stopped").wait_for()
    state = page.get_by_role("region", name="Experiment state")
    assert "stopped" in state.inner_text() and "winner: treatment" in state.inner_text()
    assert page.get_by_role("button", name="Stop experiment").count() == 0
    stopped = _api(live_server, publisher, "/v1/experiments/v2-vs-v1")
    assert (stopped["status"], stopped["winner"]) == ("stopped", "treatment")
    winner = _api(live_server, publisher, "/v1/models/digits/releases?channel=production")["items"][0]
    assert (winner["version"], winner["kind"]) == (second.version, "winner")
    audit = {a.action: a for a in services.store.audit_log(actor="release-manager", limit=20)}
    assert audit["experiment.stop"].details == {"winner": "treatment",
                                                "reason": "treatment is as accurate and smaller"}
    assert audit["experiment.reason"].details == {"reason": "is the smaller model as good?"}
    assert audit["experiment.create"].details["coverage_bp"] == 5000


def test_sign_out_and_cross_site_posts_are_refused(page, live_server, services):
    _, second = _two_versions_first_released(services)
    publisher = services.store.create_token("publisher", "release-manager").token
    base = live_server.base_url
    # A page on another origin (same host, other port: same-site, so even a SameSite=Strict
    # cookie goes along) posts a promote form and a sign-in form to the dashboard.
    attack = f"""<!DOCTYPE html><html><body>
<form method="post" action="{base}/dashboard/models/digits/promote">
<input type="hidden" name="version" value="{second.version}"><input type="hidden" name="channel" value="production">
<input type="hidden" name="rollout_percent" value="100"><input type="hidden" name="csrf" value="guessed">
<button type="submit">Claim your prize</button></form>
<form method="post" action="{base}/dashboard/login">
<input type="hidden" name="token" value="{publisher}"><input type="hidden" name="next" value="/dashboard/">
<button type="submit">Sign me in</button></form>
</body></html>"""
    sign_in(page, base, publisher)
    session_cookie = {c["name"]: c for c in page.context.cookies()}["modeldrop_session"]
    assert session_cookie["httpOnly"] and session_cookie["sameSite"] == "Strict"
    assert session_cookie["value"] != publisher
    with serve_html(attack) as evil:
        page.goto(evil)
        with page.expect_response(f"{base}/dashboard/models/digits/promote") as answer:
            page.get_by_role("button", name="Claim your prize").click()
        assert answer.value.status == 403
        assert "did not come from this server's own page" in page.content()
        assert [r.version for r in services.store.list_releases("digits") if r.current] == [1]
        page.goto(evil)
        with page.expect_response(f"{base}/dashboard/login") as answer:
            page.get_by_role("button", name="Sign me in").click()
        assert answer.value.status == 403

    page.goto(base + "/dashboard/")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    assert page.url.startswith(base + "/dashboard/login")
    page.goto(base + "/dashboard/models/digits")
    assert page.url.startswith(base + "/dashboard/login") and page.get_by_label("API token").is_visible()
    # the old cookie is worthless now: the session row is gone
    replay = requests.get(base + "/dashboard/", cookies={"modeldrop_session": session_cookie["value"]},
                          allow_redirects=False, timeout=10)
    assert replay.status_code == 302
    _shot(page, "sign-in")
    assert requests.get(base + "/", allow_redirects=False, timeout=10).headers["Location"] == "/dashboard/"


@pytest.mark.slow
def test_retry_a_failed_conversion_and_watch_it_finish(page, tmp_path):
    """A conversion whose worker was lost three times (as ``requeue_stale_jobs`` leaves it) is
    retried from the jobs page; the page refreshes itself until the real sandboxed conversion
    is done."""
    from registry.app import create_app
    from tests.helpers import base_settings
    from tests.live import LiveServer, serve_app
    from tests.makers_keras import make_digits_model

    model, eval_npz = make_digits_model(tmp_path / "model")
    app = create_app(base_settings(tmp_path, worker_processes=1), start_workers=True)
    services = app.extensions["modeldrop"]
    try:
        source = services.blobs.put_bytes(model.read_bytes())
        evalset = services.blobs.put_bytes(eval_npz.read_bytes())
        version, _ = services.store.create_version(
            "digits", sha256=source.sha256, size=source.size, source_format="keras",
            filename=model.name, metadata={"variants": ["tflite-fp32"]}, eval_sha256=evalset.sha256,
            actor="tests")
        version_id = services.store.version_id("digits", version.version)
        lost = "worker lost 3 times; giving up"
        services.store.finish_job(services.store.create_job(version_id), "failed", {}, lost)
        services.store.set_version_status(version_id, "failed", lost)
        publisher = services.store.create_token("publisher", "release-manager").token
        with serve_app(app) as base:
            server = LiveServer(base, services, app)
            sign_in(page, base, publisher)
            page.get_by_role("link", name="Jobs").click()
            failed = page.get_by_role("row").filter(has_text="digits v1")
            assert "failed" in failed.inner_text() and lost in failed.inner_text()
            failed.get_by_role("button", name="Retry").click()
            page.get_by_role("heading", name="Retry the conversion of digits v1?").wait_for()
            page.get_by_label("Reason").fill("the worker machine was replaced")
            page.get_by_role("button", name="Confirm").click()
            page.get_by_role("status").get_by_text("Conversion queued again").wait_for()
            assert page.url.startswith(base + "/dashboard/jobs")
            newest = page.get_by_role("row").filter(has_text="digits v1").first
            newest.get_by_text("done", exact=True).wait_for(timeout=240_000)  # the page refreshes itself
            assert "variant 1 of 1" in newest.inner_text()
            _shot(page, "jobs")
            after = _api(server, publisher, f"/v1/models/digits/versions/{version.version}")
            assert after["status"] == "ready" and after["variants"][0]["name"] == "tflite-fp32"
            [retry] = services.store.audit_log(action="version.retry")
            assert retry.actor.endswith("(release-manager)")
            assert retry.details["reason"] == "the worker machine was replaced"
    finally:
        services.jobs.stop()
        services.store.engine.dispose()


def test_a_reader_sees_one_line_per_output_and_the_signature(page, live_server, services):
    from tests.test_dashboard_pages import TWO_OUTPUT_FIDELITY, TWO_OUTPUT_SIGNATURE

    version = make_ready_version(services, "detector", variants={
        "tflite-fp32": {"format": "tflite", "size": 3000}})
    v = version.variants[0]
    services.store.record_variant(
        services.store.version_id("detector", version.version), name=v.name, format=v.format,
        sha256=v.sha256, size=v.size, target_path=v.target_path, fidelity=TWO_OUTPUT_FIDELITY,
        reference_latency_ms=None, servable=True, reason=None, error=None,
        signature=TWO_OUTPUT_SIGNATURE)
    reader = services.store.create_token("reader", "viewer").token
    sign_in(page, live_server.base_url, reader)
    page.get_by_role("link", name="detector", exact=True).click()
    page.get_by_role("link", name=f"v{version.version}", exact=True).first.click()
    page.get_by_role("heading", name="Signature").wait_for()
    variants = page.get_by_role("table").nth(1)
    boxes = variants.get_by_role("row").filter(has=page.get_by_role("cell", name="boxes", exact=True))
    scores = variants.get_by_role("row").filter(has=page.get_by_role("cell", name="scores", exact=True))
    assert boxes.get_by_role("cell", name="regression", exact=True).is_visible()
    assert boxes.get_by_role("cell", name="0.0123", exact=True).is_visible()
    assert scores.get_by_role("cell", name="classification", exact=True).is_visible()
    assert scores.get_by_role("cell", name="0.9876", exact=True).is_visible()
    # One variant cell spans both output lines.
    assert variants.get_by_role("cell", name="tflite-fp32", exact=True).count() == 1
    signature = page.locator("table#signature")
    tokens = signature.get_by_role("row").filter(has=page.get_by_role("cell", name="tokens"))
    assert "narrowed from int64" in tokens.inner_text()
    assert signature.get_by_role("cell", name="[?, 8, 8, 1]", exact=True).is_visible()
    _shot(page, "version-signature")
    served = _api(live_server, reader, f"/v1/models/detector/versions/{version.version}")
    assert served["variants"][0]["signature"]["inputs"][1]["narrowed_from"] == "int64"
