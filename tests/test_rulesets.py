"""The signed ruleset: built from the channel's state, a TUF target re-published on every
change, served at GET /v1/rulesets/<model>/<channel> with a strong ETag, 304 and public
cache headers (docs/wire-format.md, "Rulesets")."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from client_sdk.rules import parse_ruleset
from registry.delivery.rulesets import build_ruleset, publish_ruleset, refresh_rulesets
from tests.helpers import assert_problem
from tests.makers import make_ready_version

URL = "/v1/rulesets/digits/production"
TARGET = "rulesets/digits/production.json"


@pytest.fixture
def digits(services):
    return [make_ready_version(services, "digits") for _ in range(3)]


def promote(api, version, **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": "production", **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def published(services) -> tuple[dict, dict]:
    info = services.signing.target_info(TARGET)
    assert info is not None
    data = services.blobs.read_bytes(info["hashes"]["sha256"])
    return json.loads(data), info


def test_route_serves_the_tuf_target_bytes_with_a_strong_etag(digits, api, anon_api, services):
    assert_problem(anon_api.get(URL), 404, "ruleset_not_found")
    promote(api, 1, targeting={"platforms": ["android"]})
    resp = anon_api.get(URL)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = resp.get_data()
    sha = hashlib.sha256(body).hexdigest()
    _, info = published(services)
    assert info["hashes"]["sha256"] == sha and info["length"] == len(body)
    assert info["custom"] == {"kind": "ruleset", "model": "digits", "channel": "production",
                              "release_counter": 1}
    assert resp.headers["ETag"] == f'"{sha}"'  # strong: no W/
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    again = anon_api.get(URL, headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304 and again.get_data() == b""
    assert again.headers["ETag"] == f'"{sha}"'
    assert anon_api.get(URL, headers={"If-None-Match": f'W/"{sha}"'}).status_code == 200
    # canonical: sorted keys, no whitespace, ASCII
    doc = json.loads(body)
    assert body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")
    parsed = parse_ruleset(body, "digits", "production")
    assert parsed.release_counter == 1
    assert doc["releases"][0]["targeting"] == {"platforms": ["android"]}
    # the TUF target route serves the same bytes under the consistent-snapshot name
    tuf = anon_api.get(f"/tuf/targets/rulesets/digits/{sha}.production.json")
    assert tuf.status_code == 200 and tuf.get_data() == body
    assert_problem(anon_api.get("/v1/rulesets/Digits/production"), 400, "invalid_name")
    assert_problem(anon_api.get("/v1/rulesets/digits/staging"), 404, "ruleset_not_found")


def test_document_holds_everything_the_decision_reads(digits, api, services):
    promote(api, 1)
    promote(api, 2, rollout_percent=25, variant="tflite-int8-dynamic",
            targeting={"regions": ["de"], "app_version": ">=3"})
    doc = build_ruleset(services, "digits", "production",
                        now=datetime(2026, 1, 1, tzinfo=UTC))
    assert doc["schema"] == 1 and doc["kind"] == "modeldrop-ruleset"
    assert doc["release_counter"] == 2
    assert (doc["issued_at"], doc["expires_at"]) == ("2026-01-01T00:00:00Z",
                                                     "2026-01-08T00:00:00Z")
    new, old = doc["releases"]
    assert (new["counter"], new["version"], new["rollout_bp"], new["variant"]) == \
        (2, 2, 2500, "tflite-int8-dynamic")
    assert new["targeting"] == {"regions": ["DE"], "app_version": ">=3"}
    assert new["paused"] is False and len(new["rollout_seed"]) == 16
    assert new["rollout_seed"] != old["rollout_seed"]
    assert [v["version"] for v in doc["versions"]] == [1, 2]
    by_name = {v["name"]: v for v in doc["versions"][1]["variants"]}
    stored = {v.name: v for v in digits[1].variants}
    for name, entry in by_name.items():
        assert (entry["sha256"], entry["size"], entry["target"]) == \
            (stored[name].sha256, stored[name].size, stored[name].target_path)
        assert entry["fidelity"] == pytest.approx(0.99)
    assert doc["experiment"] is None


def test_every_change_republishes(digits, api, services):
    from registry.delivery.guardrail_check import check_guardrails

    promote(api, 1)
    seen = [published(services)[1]["hashes"]["sha256"]]

    def changed(check):
        doc, info = published(services)
        assert info["hashes"]["sha256"] != seen[-1]
        seen.append(info["hashes"]["sha256"])
        check(doc)

    promote(api, 2, rollout_percent=10, guardrails=["crash_rate <= 0.01"])
    changed(lambda d: d["release_counter"] == 2 or pytest.fail("no new release"))
    assert api.patch("/v1/models/digits/channels/production",
                     json={"rollout_percent": 30}).status_code == 200
    changed(lambda d: d["releases"][0]["rollout_bp"] == 3000 or pytest.fail("rollout"))

    def halted(services_, kind, obj):
        return {"crash_rate": (0.5, 1000)} if kind == "release" and obj.counter == 2 else {}
    assert len(check_guardrails(services, halted)) == 1
    changed(lambda d: d["releases"][0]["paused"] is True or pytest.fail("halt"))
    assert api.patch("/v1/models/digits/channels/production",
                     json={"paused": False}).status_code == 200
    changed(lambda d: d["releases"][0]["paused"] is False or pytest.fail("resume"))
    resp = api.post("/v1/experiments", json={
        "name": "exp", "model": "digits", "channel": "production", "coverage_percent": 40,
        "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 3}]})
    assert resp.status_code == 201, resp.get_json()
    changed(lambda d: d["experiment"]["coverage_bp"] == 4000 or pytest.fail("experiment"))
    assert [v["version"] for v in published(services)[0]["versions"]] == [1, 2, 3]
    assert api.patch("/v1/experiments/exp", json={"paused": True}).status_code == 200
    changed(lambda d: d["experiment"]["status"] == "paused" or pytest.fail("pause"))
    assert api.post("/v1/experiments/exp/stop").status_code == 200
    changed(lambda d: d["experiment"] is None or pytest.fail("stop"))
    assert api.post("/v1/models/digits/channels/production/rollback").status_code == 201
    changed(lambda d: (d["release_counter"], d["releases"][0]["version"]) == (3, 1)
            or pytest.fail("rollback"))
    # Nothing changed: nothing re-published, until half the lifetime is gone.
    assert publish_ruleset(services, "digits", "production") is None
    assert refresh_rulesets(services) == []
    later = datetime.now(UTC) + timedelta(days=4)
    assert refresh_rulesets(services, now=later) == [TARGET]
    doc, _ = published(services)
    assert doc["expires_at"] > (later + timedelta(days=6)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_failed_publication_never_fails_the_change(digits, api, services, monkeypatch):
    promote(api, 1)

    def broken(*args, **kwargs):
        raise RuntimeError("signing down")
    monkeypatch.setattr(services.signing, "add_targets", broken)
    promote(api, 1, rollout_percent=50)  # the publish step of the variants is a no-op here
    monkeypatch.undo()
    assert published(services)[0]["release_counter"] == 1  # stale ...
    assert refresh_rulesets(services) == [TARGET]  # ... until maintenance repairs it
    assert published(services)[0]["release_counter"] == 2
