"""Retry of a failed conversion: the route, the CLI, and a re-push of a failed version's bytes
pointing at it. (The browser test, tests/test_dashboard_browser.py, retries a real failed
conversion from the jobs page and watches it finish.)"""

from __future__ import annotations

import hashlib
import io
import json

from tests.helpers import assert_problem, npz_bytes


def _failed_version(services, data: bytes = b"k" * 5000) -> tuple[int, str]:
    """A version whose conversion failed (no worker runs in these tests: the job is failed by
    hand, as the worker would)."""
    blob = services.blobs.put_bytes(data)
    version, _ = services.store.create_version(
        "digits", sha256=blob.sha256, size=blob.size, source_format="keras", filename="model.keras",
        metadata={"framework": "keras", "description": "old"}, eval_sha256=None, actor="tests")
    version_id = services.store.version_id("digits", version.version)
    job = services.store.create_job(version_id)
    services.store.finish_job(job, "failed", {}, "evaluation set x has shape (5, 3), expected (N, 8, 8, 1)")
    services.store.set_version_status(version_id, "failed", "evaluation set x has shape (5, 3)")
    return version.version, job


def test_retry_route_queues_a_new_job_with_the_new_eval_set_and_metadata(app, services, publisher_token,
                                                                        reader_token):
    number, old_job = _failed_version(services)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {publisher_token}"}
    eval_bytes = npz_bytes(3)
    resp = client.post(f"/v1/models/digits/versions/{number}/retry", headers=auth,
                       data={"eval": (io.BytesIO(eval_bytes), "eval.npz"),
                             "metadata": json.dumps({"description": "fixed"}), "reason": "fixed x"},
                       content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "uploaded" and body["error"] is None
    assert body["job"] != old_job and resp.headers["Location"].endswith(f"/v1/jobs/{body['job']}")
    assert body["source"]["eval_sha256"] == hashlib.sha256(eval_bytes).hexdigest()
    assert body["metadata"]["description"] == "fixed" and body["metadata"]["framework"] == "keras"
    assert services.store.get_job(body["job"]).state == "queued"
    [row] = services.store.audit_log(action="version.retry")
    assert row.actor.endswith("(tests)") and row.target == f"model:digits/version:{number}"
    assert row.details["reason"] == "fixed x"
    assert row.details["previous_error"].startswith("evaluation set x has shape (5, 3)")
    # the job is pending and the version no longer failed: nothing to retry
    again = client.post(f"/v1/models/digits/versions/{number}/retry", headers=auth)
    assert_problem(again, 409, "version_not_failed")
    assert len(services.store.audit_log(action="version.retry")) == 1
    reader = client.post(f"/v1/models/digits/versions/{number}/retry",
                         headers={"Authorization": f"Bearer {reader_token}"})
    assert_problem(reader, 403, "forbidden")
    assert_problem(client.post("/v1/models/digits/versions/99/retry", headers=auth), 404, "version_not_found")
    bad = client.post(f"/v1/models/digits/versions/{number}/retry", headers=auth,
                      data={"metadata": "{not json"}, content_type="multipart/form-data")
    assert_problem(bad, 400, "invalid_metadata")


def test_repushing_a_failed_versions_bytes_points_at_retry(app, services, publisher_token):
    data = b"f" * 5000
    number, _ = _failed_version(services, data)
    resp = app.test_client().post(
        "/v1/models/digits/versions", headers={"Authorization": f"Bearer {publisher_token}"},
        data={"file": (io.BytesIO(data), "model.keras"), "eval": (io.BytesIO(npz_bytes(4)), "eval.npz")},
        content_type="multipart/form-data")
    problem = assert_problem(resp, 409, "version_failed")
    assert f"modeldrop retry digits {number}" in problem["detail"]
    assert problem["version"] == number
    assert services.store.get_version("digits", number).source["eval_sha256"] is None  # not applied


def test_cli_retry(cli, tmp_path):
    services = cli.server.services
    number, _ = _failed_version(services)
    fixed = tmp_path / "eval.npz"
    fixed.write_bytes(npz_bytes(5))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"description": "retried"}))
    out = cli("retry", "digits", str(number), "--eval", str(fixed), "--metadata", str(meta),
              "--reason", "new eval set").output
    assert out.startswith(f"digits version {number}: conversion queued again (job ")
    version = services.store.get_version("digits", number)
    assert version.status == "uploaded" and version.metadata["description"] == "retried"
    assert version.source["eval_sha256"] == hashlib.sha256(npz_bytes(5)).hexdigest()
    again = cli("retry", "digits", str(number), ok=False)
    assert again.exit_code == 1 and "[version_not_failed]" in again.output
