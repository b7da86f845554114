"""Releases, rollouts, rollbacks, experiments and guardrail halts over the HTTP API."""

from __future__ import annotations

import pytest

from tests.helpers import assert_problem
from tests.makers import make_ready_version


@pytest.fixture
def digits(services):
    """digits versions 1..3, all ready with servable variants."""
    return [make_ready_version(services, "digits") for _ in range(3)]


def promote(api, version, channel="production", **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": channel, **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def history(api, channel=None):
    resp = api.get("/v1/models/digits/releases", query_string={"channel": channel} if channel
                   else None)
    assert resp.status_code == 200
    return resp.get_json()["items"]


# -- releases -------------------------------------------------------------------------------

def test_promote_creates_release_with_growing_counter_and_history(digits, api, services):
    first = promote(api, 1, reason="initial launch")
    assert first["counter"] == 1 and first["version"] == 1 and first["rollout_percent"] == 100
    assert first["state"] == "active" and first["kind"] == "promote"
    second = promote(api, 2, rollout_percent=10, reason="staged",
                     targeting={"platforms": ["android"], "regions": ["de"]},
                     guardrails=["load_failure_rate < 0.02"])
    assert second["counter"] == 2 and second["rollout_bp"] == 1000
    assert second["targeting"] == {"platforms": ["android"], "regions": ["DE"]}
    assert second["guardrails"] == [{"expression": "load_failure_rate < 0.02",
                                     "min_samples": 100}]
    assert second["rollout_seed"] != first["rollout_seed"]
    beta = promote(api, 3, channel="beta")
    assert beta["counter"] == 1  # counters are per (model, channel)
    items = history(api, "production")
    assert [(r["counter"], r["version"], r["current"]) for r in items] == [(2, 2, True),
                                                                          (1, 1, False)]
    assert items[0]["reason"] == "staged" and items[0]["created_by"].startswith("token:")
    assert items[0]["created_at"]
    assert {r["channel"] for r in history(api)} == {"production", "beta"}
    actions = [a.action for a in services.store.audit_log(limit=20)]
    assert actions.count("release.promote") == 3


def test_promote_needs_publisher(digits, app, reader_token, anon_api):
    from tests.helpers import ApiClient

    reader = ApiClient(app.test_client(), reader_token)
    assert_problem(reader.post("/v1/models/digits/releases",
                               json={"version": 1, "channel": "production"}), 403, "forbidden")
    assert_problem(anon_api.post("/v1/models/digits/releases",
                                 json={"version": 1, "channel": "production"}), 401,
                   "unauthenticated")
    assert reader.get("/v1/models/digits/releases").status_code == 200


@pytest.mark.parametrize("body, status, code", [
    ({"version": 9, "channel": "production"}, 404, "version_not_found"),
    ({"version": 1, "channel": "Production"}, 400, "invalid_channel"),
    ({"version": 1}, 400, "validation_error"),
    ({"version": "1", "channel": "production"}, 400, "validation_error"),
    ({"version": 1, "channel": "production", "rollout_percent": 150}, 400, "validation_error"),
    ({"version": 1, "channel": "production", "rollout_percent": 12.345}, 400,
     "validation_error"),
    ({"version": 1, "channel": "production", "variant": "tflite-nope"}, 409,
     "version_not_servable"),
    ({"version": 1, "channel": "production", "targeting": {"platform": ["ios"]}}, 400,
     "invalid_targeting"),
    ({"version": 1, "channel": "production", "guardrails": ["crash_rate > 0.01"]}, 400,
     "invalid_guardrail"),
    ({"version": 1, "channel": "production", "rollout": 10}, 400, "validation_error"),
])
def test_bad_promotions_are_rejected_and_change_nothing(digits, api, body, status, code):
    assert_problem(api.post("/v1/models/digits/releases", json=body), status, code)
    assert history(api) == []


def test_only_ready_versions_with_servable_variants_are_released(services, api):
    assert api.upload("digits", b"not converted yet").status_code == 201
    body = assert_problem(api.post("/v1/models/digits/releases",
                                   json={"version": 1, "channel": "production"}),
                          409, "version_not_servable")
    assert "uploaded" in body["detail"]
    make_ready_version(services, "digits", variants={
        "tflite-fp32": {"format": "tflite", "servable": False}})
    assert_problem(api.post("/v1/models/digits/releases",
                            json={"version": 2, "channel": "production"}),
                   409, "version_not_servable")


def test_rollout_widen_pause_resume_is_audited(digits, api, services):
    promote(api, 1)
    promote(api, 2, rollout_percent=5)
    url = "/v1/models/digits/channels/production"
    widened = api.patch(url, json={"rollout_percent": 25, "reason": "metrics fine"}).get_json()
    assert widened["rollout_bp"] == 2500 and widened["counter"] == 2
    paused = api.patch(url, json={"paused": True, "reason": "investigating"}).get_json()
    assert paused["state"] == "paused" and paused["paused"] is True
    body = assert_problem(api.patch(url, json={"rollout_percent": 50}), 409, "release_paused")
    assert "resume" in body["detail"]
    narrowed = api.patch(url, json={"rollout_percent": 10}).get_json()  # allowed while paused
    assert narrowed["rollout_bp"] == 1000 and narrowed["paused"] is True
    resumed = api.patch(url, json={"paused": False}).get_json()
    assert resumed["state"] == "active"
    assert api.patch(url, json={"rollout_percent": 50}).get_json()["rollout_bp"] == 5000
    actions = [a.action for a in services.store.audit_log(limit=20)
               if a.action.startswith("release.")]  # not the background delta.create
    assert actions[:5] == ["release.rollout", "release.resume", "release.rollout",
                           "release.pause", "release.rollout"]
    pause_entry = services.store.audit_log(limit=10, action="release.pause")[0]
    assert pause_entry.details["reason"] == "investigating"
    assert pause_entry.details["from"]["paused"] is False
    assert_problem(api.patch(url, json={}), 400, "validation_error")
    assert_problem(api.patch(url, json={"paused": "yes"}), 400, "validation_error")
    assert_problem(api.patch("/v1/models/digits/channels/beta", json={"paused": True}),
                   404, "release_not_found")


def test_rollback_publishes_a_higher_counter_pointing_at_the_old_version(digits, api, services):
    promote(api, 1, variant="tflite-fp32")
    promote(api, 2)
    promote(api, 2, rollout_percent=50)  # same version again: not a rollback target
    promote(api, 3, targeting={"platforms": ["android"]})
    resp = api.post("/v1/models/digits/channels/production/rollback",
                    json={"reason": "v3 crashes on load"})
    assert resp.status_code == 201, resp.get_json()
    back = resp.get_json()
    assert (back["counter"], back["version"], back["kind"]) == (5, 2, "rollback")
    assert back["rollout_percent"] == 100 and back["targeting"] == {"platforms": ["android"]}
    assert back["reason"] == "v3 crashes on load"
    # --to: the latest earlier release of that version, with its pinned variant
    to_one = api.post("/v1/models/digits/channels/production/rollback",
                      json={"to_version": 1}).get_json()
    assert (to_one["counter"], to_one["version"], to_one["variant"]) == (6, 1, "tflite-fp32")
    entry = services.store.audit_log(limit=1, action="release.rollback")[0]
    assert entry.details["from_counter"] == 5 and entry.details["restores_counter"] == 1
    for to_version in (1, 9):  # the current version; never released on the channel
        assert_problem(api.post("/v1/models/digits/channels/production/rollback",
                                json={"to_version": to_version}), 409, "nothing_to_roll_back")
    assert [r["counter"] for r in history(api)] == [6, 5, 4, 3, 2, 1]


def test_rollback_without_an_earlier_version_is_409(digits, api):
    assert_problem(api.post("/v1/models/digits/channels/production/rollback"), 404,
                   "release_not_found")
    promote(api, 1)
    promote(api, 1, rollout_percent=50)
    assert_problem(api.post("/v1/models/digits/channels/production/rollback"), 409,
                   "nothing_to_roll_back")


# -- experiments ----------------------------------------------------------------------------

def create_experiment(api, name="digits-v2-vs-v1", **body):
    payload = {"name": name, "model": "digits", "channel": "production",
               "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2}],
               **body}
    resp = api.post("/v1/experiments", json=payload)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def test_experiment_definition_is_public_enough_to_recompute(digits, api):
    promote(api, 1)
    created = create_experiment(api, weights=[5000, 3000, 2000], coverage_percent=50,
                                seed="3f9a1c0e5b7d2a64", guardrails=["crash_rate <= 0.01"],
                                arms=[{"name": "control", "version": 1},
                                      {"name": "treatment", "version": 2},
                                      {"name": "int8", "version": 2,
                                       "variant": "tflite-int8-dynamic"}],
                                targeting={"platforms": ["android"]})
    got = api.get("/v1/experiments/digits-v2-vs-v1").get_json()
    assert got == created
    assert got["seed"] == "3f9a1c0e5b7d2a64" and got["hash_version"] == 2
    assert got["coverage_bp"] == 5000 and got["status"] == "running"
    assert [(a["name"], a["version"], a["variant"], a["weight"], a["range"])
            for a in got["arms"]] == [("control", 1, None, 5000, [0, 2500]),
                                      ("treatment", 2, None, 3000, [5000, 6500]),
                                      ("int8", 2, "tflite-int8-dynamic", 2000, [8000, 9000])]
    assert got["targeting"] == {"platforms": ["android"]}
    assert got["counter_at_start"] == 1
    # a default seed is random
    api.post("/v1/experiments/digits-v2-vs-v1/stop")
    other = create_experiment(api, name="second")
    assert len(other["seed"]) == 16 and other["seed"] != got["seed"]
    listed = api.get("/v1/experiments", query_string={"model": "digits"}).get_json()["items"]
    assert [e["name"] for e in listed] == ["second", "digits-v2-vs-v1"]
    running = api.get("/v1/experiments", query_string={"status": "running"}).get_json()["items"]
    assert [e["name"] for e in running] == ["second"]


@pytest.mark.parametrize("change, status, code", [
    ({"arms": [{"name": "control", "version": 1}]}, 400, "invalid_experiment"),
    ({"arms": [{"name": "a", "version": 1}, {"name": "a", "version": 2}]}, 400,
     "invalid_experiment"),
    ({"arms": [{"name": "A", "version": 1}, {"name": "b", "version": 2}]}, 400,
     "invalid_experiment"),
    ({"arms": [{"name": "a", "version": 1}, {"name": "b", "version": 7}]}, 404,
     "version_not_found"),
    ({"arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2, "variant": "nope"}]},
     409, "version_not_servable"),
    ({"weights": [50]}, 400, "invalid_experiment"),
    ({"weights": [0, 0]}, 400, "invalid_bucketing"),
    ({"coverage_percent": 101}, 400, "validation_error"),
    ({"seed": "with space"}, 400, "invalid_experiment"),
    ({"targeting": {"regions": ["Germany"]}}, 400, "invalid_targeting"),
    ({"guardrails": ["p99_latency < 2"]}, 400, "invalid_guardrail"),
    ({"name": "Bad Name"}, 400, "invalid_name"),
    ({"channel": "beta"}, 404, "release_not_found"),
])
def test_bad_experiments_are_rejected(digits, api, change, status, code):
    promote(api, 1)
    body = {"name": "exp", "model": "digits", "channel": "production",
            "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2}]}
    body.update(change)
    assert_problem(api.post("/v1/experiments", json=body), status, code)
    assert api.get("/v1/experiments").get_json()["items"] == []


def test_one_active_experiment_per_channel_and_unique_names(digits, api):
    promote(api, 1)
    create_experiment(api)
    assert_problem(api.post("/v1/experiments", json={
        "name": "digits-v2-vs-v1", "model": "digits", "channel": "production",
        "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}), 409,
        "experiment_conflict")
    assert_problem(api.post("/v1/experiments", json={
        "name": "another", "model": "digits", "channel": "production",
        "arms": [{"name": "a", "version": 1}, {"name": "b", "version": 2}]}), 409,
        "experiment_conflict")
    assert_problem(api.get("/v1/experiments/missing"), 404, "experiment_not_found")


def test_stop_with_winner_releases_the_arm(digits, api, services):
    promote(api, 1)
    create_experiment(api, arms=[{"name": "control", "version": 1},
                                 {"name": "int8", "version": 2,
                                  "variant": "tflite-int8-dynamic"}],
                      targeting={"platforms": ["android"]})
    assert_problem(api.post("/v1/experiments/digits-v2-vs-v1/stop", json={"winner": "nope"}),
                   400, "unknown_arm")
    assert api.get("/v1/experiments/digits-v2-vs-v1").get_json()["status"] == "running"
    resp = api.post("/v1/experiments/digits-v2-vs-v1/stop",
                    json={"winner": "int8", "reason": "smaller, same accuracy"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["experiment"]["status"] == "stopped" and body["experiment"]["winner"] == "int8"
    assert body["experiment"]["stopped_at"]
    release = body["release"]
    assert (release["counter"], release["version"], release["variant"], release["kind"]) == \
        (2, 2, "tflite-int8-dynamic", "winner")
    assert release["rollout_percent"] == 100 and release["targeting"] == {"platforms": ["android"]}
    assert "digits-v2-vs-v1" in release["reason"]
    assert_problem(api.post("/v1/experiments/digits-v2-vs-v1/stop"), 409, "experiment_conflict")
    assert services.store.audit_log(limit=1, action="experiment.stop")[0].details == \
        {"winner": "int8", "reason": "smaller, same accuracy"}
    assert services.store.audit_log(limit=1, action="release.winner")[0].details["arm"] == "int8"


def test_stop_without_winner_publishes_nothing(digits, api):
    promote(api, 1)
    create_experiment(api)
    body = api.post("/v1/experiments/digits-v2-vs-v1/stop").get_json()
    assert body["release"] is None and body["experiment"]["winner"] is None
    assert len(history(api)) == 1


def test_experiment_update_coverage_and_pause(digits, api):
    promote(api, 1)
    create_experiment(api, coverage_percent=20)
    url = "/v1/experiments/digits-v2-vs-v1"
    raised = api.patch(url, json={"coverage_percent": 60}).get_json()
    assert raised["coverage_bp"] == 6000
    assert [a["range"] for a in raised["arms"]] == [[0, 3000], [5000, 8000]]
    assert api.patch(url, json={"paused": True}).get_json()["status"] == "paused"
    assert api.patch(url, json={"paused": False}).get_json()["status"] == "running"
    assert_problem(api.patch(url, json={}), 400, "invalid_experiment")
    api.post(f"{url}/stop")
    assert_problem(api.patch(url, json={"paused": False}), 409, "experiment_conflict")


# -- guardrails -----------------------------------------------------------------------------

def recorded(values):
    """A metrics provider returning recorded values: {(kind, key): {metric: (v, n)}}."""
    def provider(services, kind, obj):
        key = obj.counter if kind == "release" else obj.arm
        return values.get((kind, key), {})
    return provider


def test_guardrail_breach_halts_the_release_and_is_audited(digits, api, services):
    from registry.delivery.guardrail_check import check_guardrails

    promote(api, 1, guardrails=["crash_rate <= 0.01"])
    promote(api, 2, rollout_percent=20, guardrails=[
        "load_failure_rate < 0.02", {"expression": "crash_rate <= 0.01", "min_samples": 500}])
    metrics = {("release", 2): {"load_failure_rate": (0.01, 400), "crash_rate": (0.3, 20)},
               ("release", 1): {"crash_rate": (0.001, 5000)}}
    assert check_guardrails(services, recorded(metrics)) == []  # healthy or too little data
    metrics[("release", 2)]["load_failure_rate"] = (0.05, 400)
    halts = check_guardrails(services, recorded(metrics))
    assert [(h.kind, h.target) for h in halts] == [("release", "digits/production#2")]
    current = history(api)[0]
    assert current["state"] == "halted" and current["paused"] is True
    assert "load_failure_rate = 0.05 over 400 samples" in current["halted_reason"]
    entry = services.store.audit_log(limit=1, action="release.halt")[0]
    assert entry.actor == "system:guardrails" and entry.details["counter"] == 2
    assert entry.details["breaches"][0]["metric"] == "load_failure_rate"
    assert check_guardrails(services, recorded(metrics)) == []  # halted once, not again
    # widening a halted release needs an explicit resume, which clears the reason
    url = "/v1/models/digits/channels/production"
    assert_problem(api.patch(url, json={"rollout_percent": 50}), 409, "release_paused")
    resumed = api.patch(url, json={"paused": False}).get_json()
    assert resumed["state"] == "active" and resumed["halted_reason"] is None


def test_guardrail_breach_in_an_arm_pauses_the_experiment(digits, api, services):
    from registry.delivery.guardrail_check import check_guardrails

    promote(api, 1)
    create_experiment(api, guardrails=["p90_latency_ratio < 1.2"])
    values = {("arm", "control"): {"p90_latency_ratio": (5.0, 1000)},  # the control is not judged
              ("arm", "treatment"): {"p90_latency_ratio": (1.1, 1000)}}
    assert check_guardrails(services, recorded(values)) == []
    values[("arm", "treatment")] = {"p90_latency_ratio": (1.5, 300)}
    halts = check_guardrails(services, recorded(values))
    assert [(h.kind, h.target) for h in halts] == [("experiment", "digits-v2-vs-v1")]
    got = api.get("/v1/experiments/digits-v2-vs-v1").get_json()
    assert got["status"] == "paused" and "arm treatment" in got["halted_reason"]
    assert services.store.audit_log(limit=1, action="experiment.halt")[0].details["breaches"]


def test_a_failing_provider_does_not_stop_the_sweep(digits, api, services):
    from registry.delivery.guardrail_check import check_guardrails

    promote(api, 1, guardrails=["crash_rate <= 0.01"])
    promote(api, 2, channel="beta", guardrails=["crash_rate <= 0.01"])

    def provider(services, kind, obj):
        if obj.channel == "production":
            raise RuntimeError("telemetry down")
        return {"crash_rate": (0.5, 1000)}

    halts = check_guardrails(services, provider)
    assert [h.target for h in halts] == ["digits/beta#1"]


def test_guardrail_check_endpoint_is_admin_only(digits, api, admin_api):
    promote(api, 1, guardrails=["crash_rate <= 0.01"])
    assert_problem(api.post("/v1/guardrails/check"), 403, "forbidden")
    resp = admin_api.post("/v1/guardrails/check")
    assert resp.status_code == 200 and resp.get_json() == {"halted": []}  # no telemetry yet


# -- both databases -------------------------------------------------------------------------

def test_delivery_state_on_both_databases(tmp_path, db_url):
    """Counters under concurrent promotes, sticky assignments and winner releases behave the
    same on SQLite and PostgreSQL."""
    from concurrent.futures import ThreadPoolExecutor

    from registry.app import create_app
    from registry.delivery import experiments, releases
    from registry.delivery.deltas import wait_for_deltas
    from registry.delivery.manifest import parse_query, resolve
    from tests.helpers import base_settings

    app = create_app(base_settings(tmp_path, database_url=db_url))
    services = app.extensions["modeldrop"]
    try:
        for _ in range(2):
            make_ready_version(services, "digits")
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda i: releases.promote(
                services, "digits", 1 + i % 2, channel="production", actor="t",
                rollout_percent=50), range(8)))
        assert sorted(r.counter for r in made) == list(range(1, 9))
        releases.set_rollout(services, "digits", "production", actor="t", rollout_percent=100)
        exp = experiments.create_experiment(
            services, "both", model="digits", channel="production", actor="t",
            arms=[{"name": "a", "version": 1}, {"name": "b", "version": 2}])
        devices = [f"device-{i:04d}" for i in range(40)]
        arms = {}
        for install_id in devices:
            query = parse_query({"model": "digits", "install_id": install_id,
                                 "platform": "android"})
            with ThreadPoolExecutor(4) as pool:  # racing first requests record one arm
                answers = {o.arm for o in pool.map(lambda _: resolve(services, query), range(4))}  # noqa: B023 - mapped here
            assert len(answers) == 1
            arms[install_id] = answers.pop()
        assert services.store.experiment_assignments("both") == arms
        assert set(arms.values()) == {"a", "b"} and exp.seed
        stopped, winner = experiments.stop_experiment(services, "both", actor="t", winner="b")
        assert stopped.status == "stopped" and (winner.counter, winner.version) == (9, 2)
        back = releases.rollback(services, "digits", "production", actor="t")
        assert (back.counter, back.version) == (10, 1)
        assert wait_for_deltas(30)
    finally:
        services.store.engine.dispose()
