"""Dashboard pages through Flask's test client: one header on every page, not-found pages that
link to their parent, latency in µs/ms, sessions that end with sign-out or a revoked token.
(The real-browser tests are in tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import re

import pytest

from registry.delivery import experiments, releases
from registry.web._format import duration_ms
from tests.makers import make_ready_version


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("ms", "shown"), [
    (0.0045, "4.5 µs"), (0.25, "250 µs"), (0.0000031, "3.1 ns"), (1.0, "1.00 ms"), (7.123, "7.12 ms"),
    (12.34, "12.3 ms"), (1234.6, "1,235 ms"), (0, "0 ms"), (None, "-"), (float("nan"), "-"), (True, "-")])
def test_latency_reads_in_us_or_ms_with_three_significant_digits(ms, shown):
    assert duration_ms(ms) == shown


def test_version_page_shows_a_sub_millisecond_latency_in_microseconds(app, services, admin_token):
    version = make_ready_version(services, "digits")
    variant = version.variants[0]
    vid = services.store.version_id("digits", version.version)
    services.store.record_variant(vid, name=variant.name, format=variant.format, sha256=variant.sha256,
                                  size=variant.size, target_path=variant.target_path, fidelity=variant.fidelity,
                                  reference_latency_ms={"p50": 0.0045, "p90": 0.0061}, servable=True,
                                  reason=None, error=None)
    html = app.test_client().get(f"/dashboard/models/digits/versions/{version.version}",
                                 headers=_bearer(admin_token)).get_data(as_text=True)
    assert "4.5 µs / 6.1 µs" in html and "0.00 /" not in html


def _seed_everything(services):
    first = make_ready_version(services, "digits")
    second = make_ready_version(services, "digits")
    releases.promote(services, "digits", first.version, channel="production", actor="tests")
    experiments.create_experiment(services, "ab", model="digits", channel="production", actor="tests",
                                  arms=[{"name": "control", "version": first.version},
                                        {"name": "treatment", "version": second.version}])
    return first, second


def test_every_page_has_one_header_with_the_navigation(app, services, admin_token):
    _, second = _seed_everything(services)
    reader = services.store.create_token("reader", "ann").token
    pages = ["/dashboard/", "/dashboard/experiments", "/dashboard/models/digits",
             f"/dashboard/models/digits/versions/{second.version}", "/dashboard/experiments/ab",
             "/dashboard/jobs", "/dashboard/models/nope", "/dashboard/audit"]
    client = app.test_client()
    for token, is_admin in ((reader, False), (admin_token, True)):
        for path in pages:
            resp = client.get(path, headers=_bearer(token))
            html = resp.get_data(as_text=True)
            assert html.count('<header class="site"') == 1, path
            assert html.count("<body>") == 1 and html.count("<html") == 1, path
            header = html[html.index('<header class="site"'):html.index("</header>")]
            for link in ("/dashboard/experiments", "/dashboard/jobs"):
                assert f'href="{link}"' in header, (path, link)
            assert ('href="/dashboard/audit"' in header) is is_admin, path
            assert "Signed in as" in header and ("ann" in header) is not is_admin
            assert resp.headers["Referrer-Policy"] == "same-origin"
    assert client.get("/dashboard/audit", headers=_bearer(reader)).status_code == 403
    audit = client.get("/dashboard/audit", headers=_bearer(admin_token)).get_data(as_text=True)
    assert "experiment.create" in audit
    model = client.get("/dashboard/models/digits", headers=_bearer(reader)).get_data(as_text=True)
    assert "overrides this channel" in model and 'href="/dashboard/experiments/ab"' in model


@pytest.mark.parametrize(("path", "status", "parent"), [
    ("/dashboard/models/nope", 404, "/dashboard/"),
    ("/dashboard/models/Bad%20Name", 400, "/dashboard/"),
    ("/dashboard/models/nope/versions/1", 404, "/dashboard/"),
    ("/dashboard/models/digits/versions/99", 404, "/dashboard/models/digits"),
    ("/dashboard/experiments/nope", 404, "/dashboard/experiments"),
    ("/dashboard/models/digits?before=x", 400, "/dashboard/"),
])
def test_not_found_pages_link_to_their_parent(app, services, admin_token, path, status, parent):
    make_ready_version(services, "digits")
    resp = app.test_client().get(path, headers=_bearer(admin_token))
    html = resp.get_data(as_text=True)
    assert resp.status_code == status, html
    main = html[html.index("<main>"):]
    assert re.search(rf'<a href="{re.escape(parent)}">&larr; ', main), main


def _sign_in(client, token):
    form = client.get("/dashboard/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    return client.post("/dashboard/login", data={"token": token, "next": "/dashboard/", "csrf": csrf})


def test_a_session_ends_with_sign_out_or_a_revoked_token(app, services):
    token = services.store.create_token("publisher", "pat")
    client = app.test_client()
    assert _sign_in(client, token.token).status_code == 303
    page = client.get("/dashboard/").get_data(as_text=True)
    assert "pat" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    # sign-out without the session's anti-forgery token is refused and keeps the session
    assert client.post("/dashboard/logout").status_code == 403
    assert client.get("/dashboard/").status_code == 200
    assert client.post("/dashboard/logout", data={"csrf": csrf}).status_code == 303
    assert client.get("/dashboard/").status_code == 302
    assert _sign_in(client, token.token).status_code == 303
    assert client.get("/dashboard/").status_code == 200
    services.store.revoke_token(token.id, "tests")
    assert client.get("/dashboard/").status_code == 302
    assert [a.action for a in services.store.audit_log(action="session.create")] == ["session.create"] * 2


def test_an_action_posted_without_the_anti_forgery_token_changes_nothing(app, services):
    _seed_everything(services)
    token = services.store.create_token("publisher", "pat").token
    client = app.test_client()
    _sign_in(client, token)
    resp = client.post("/dashboard/experiments/ab/stop", data={"winner": "treatment"})
    assert resp.status_code == 403
    assert services.store.get_experiment("ab").status == "running"
    other_origin = client.post("/dashboard/experiments/ab/pause",
                               data={"csrf": "x"}, headers={"Origin": "http://127.0.0.1:1"})
    assert other_origin.status_code == 403
    # a refused change is shown on the confirmation page with the service's error
    page = client.get("/dashboard/").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    bad = client.post("/dashboard/models/digits/promote",
                      data={"version": "99", "channel": "production", "rollout_percent": "10", "csrf": csrf})
    assert bad.status_code == 404 and "Nothing was changed" in bad.get_data(as_text=True)


def test_experiment_coverage_pause_and_resume_through_the_confirmation_pages(app, services):
    _seed_everything(services)
    token = services.store.create_token("publisher", "pat").token
    client = app.test_client()
    _sign_in(client, token)
    ask = client.get("/dashboard/experiments/ab/coverage?coverage_percent=30").get_data(as_text=True)
    assert "Change the coverage of experiment ab to 30%?" in ask and ">Confirm</button>" in ask
    csrf = re.search(r'name="csrf" value="([^"]+)"', ask).group(1)
    done = client.post("/dashboard/experiments/ab/coverage",
                       data={"coverage_percent": "30", "reason": "widen slowly", "csrf": csrf})
    assert done.status_code == 303 and done.headers["Location"] == "/dashboard/experiments/ab?done=coverage"
    assert services.store.get_experiment("ab").coverage_percent == 30
    for action, status in (("pause", "paused"), ("resume", "running")):
        resp = client.post(f"/dashboard/experiments/ab/{action}", data={"csrf": csrf, "reason": action})
        assert resp.status_code == 303, resp.get_data(as_text=True)
        assert services.store.get_experiment("ab").status == status
    changes = [a for a in services.store.audit_log(actor="pat") if a.target == "experiment:ab"]
    assert [a.details.get("reason") for a in changes] == ["resume", "pause", "widen slowly"]
    bad = client.get("/dashboard/experiments/ab/coverage?coverage_percent=150")
    assert bad.status_code == 400 and ">Confirm</button>" not in bad.get_data(as_text=True)
    assert client.get("/dashboard/experiments/ab/explode").status_code == 404


TWO_OUTPUT_FIDELITY = {
    "top1_agreement": None, "max_abs_error": 0.012, "mean_abs_error": 0.004, "relative_rmse": 0.0123,
    "outputs": {"boxes": {"task": "regression", "max_abs_error": 0.012, "mean_abs_error": 0.004,
                          "relative_rmse": 0.0123},
                "scores": {"task": "classification", "top1_agreement": 0.9876, "accuracy": 0.91,
                           "source_accuracy": 0.92, "accuracy_drop": 1.0}}}
TWO_OUTPUT_SIGNATURE = {
    "inputs": [{"name": "image", "dtype": "float32", "shape": [None, 8, 8, 1]},
               {"name": "tokens", "dtype": "int32", "shape": [None, 12], "narrowed_from": "int64"}],
    "outputs": [{"name": "boxes", "dtype": "float32", "shape": [None, 4]},
                {"name": "scores", "dtype": "float32", "shape": [None, 3]}]}


def test_version_page_shows_one_line_per_output_and_the_signature(app, services, admin_token):
    version = make_ready_version(services, "detector", variants={
        "tflite-fp32": {"format": "tflite", "size": 3000, "signature": TWO_OUTPUT_SIGNATURE},
        "tflite-fp16": {"format": "tflite", "size": 2000}})
    vid = services.store.version_id("detector", version.version)
    services.store.record_variant(
        vid, name="tflite-fp32", format="tflite", sha256=version.variants[0].sha256, size=3000,
        target_path=version.variants[0].target_path, fidelity=TWO_OUTPUT_FIDELITY,
        reference_latency_ms=None, servable=True, reason=None, error=None,
        signature=TWO_OUTPUT_SIGNATURE)
    html = app.test_client().get(f"/dashboard/models/detector/versions/{version.version}",
                                 headers=_bearer(admin_token)).get_data(as_text=True)
    rows = re.findall(r'<tr class="variant-output" data-variant="([^"]+)" data-output="([^"]+)">'
                      r'(.*?)</tr>', html, re.S)
    assert [(v, o) for v, o, _ in rows] == [("tflite-fp32", "boxes"), ("tflite-fp32", "scores"),
                                            ("tflite-fp16", "-")]
    boxes, scores = rows[0][2], rows[1][2]
    assert "regression" in boxes and "0.0123" in boxes and 'rowspan="2"' in boxes
    assert "classification" in scores and "0.9876" in scores and "0.9100" in scores
    tensors = re.findall(r'<tr class="tensor" data-kind="(\w+)" data-name="([^"]+)">(.*?)</tr>',
                         html, re.S)
    assert [(k, n) for k, n, _ in tensors] == [("input", "image"), ("input", "tokens"),
                                              ("output", "boxes"), ("output", "scores")]
    assert "[?, 8, 8, 1]" in tensors[0][2]
    assert "narrowed from int64" in tensors[1][2]
    assert "tflite-fp32" in tensors[0][2]  # only that variant has it: the block names it
