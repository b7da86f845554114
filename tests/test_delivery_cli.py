"""`modeldrop promote / rollout / rollback / releases / experiment` against a real server."""

from __future__ import annotations

import json

import click
import pytest
import requests
from click.testing import CliRunner

from registry.cli import main
from tests.makers import make_ready_version


@pytest.fixture
def cli(live_server):
    for _ in range(3):
        make_ready_version(live_server.services, "digits")
    token = live_server.services.store.create_token("publisher", "cli-tests").token

    def run(*args, token=token, ok=True):
        result = CliRunner().invoke(main, ["--url", live_server.base_url,
                                           *(["--token", token] if token else []), *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    run.live = live_server
    return run


def test_promote_rollout_rollback_and_history(cli):
    out = cli("promote", "digits", "1", "--channel", "production", "--reason", "launch").output
    assert "digits/production release 1: version 1, 100% of targeted devices, active" in out
    out = cli("promote", "digits", "2", "--channel", "production", "--rollout", "10",
              "--target-platform", "android", "--target-region", "DE",
              "--guardrail", "load_failure_rate < 0.02", "--reason", "staged v2").output
    assert "release 2: version 2, 10% of targeted devices" in out
    assert "50%" in cli("rollout", "digits", "--channel", "production", "--percent", "50").output
    assert "paused" in cli("rollout", "digits", "--channel", "production", "--pause",
                           "--reason", "looking at crashes").output
    refused = cli("rollout", "digits", "--channel", "production", "--percent", "80", ok=False)
    assert refused.exit_code == 1 and "[release_paused]" in refused.output
    assert "active" in cli("rollout", "digits", "--channel", "production", "--resume").output
    out = cli("rollback", "digits", "--channel", "production", "--to", "1",
              "--reason", "v2 regressed").output
    assert out.startswith("rolled back: digits/production release 3: version 1, 100%")

    history = json.loads(cli("releases", "digits", "--channel", "production", "--json").output)
    assert [(r["counter"], r["version"], r["kind"]) for r in history] == \
        [(3, 1, "rollback"), (2, 2, "promote"), (1, 1, "promote")]
    assert history[1]["targeting"] == {"platforms": ["android"], "regions": ["DE"]}
    assert history[1]["guardrails"][0]["expression"] == "load_failure_rate < 0.02"
    table = cli("releases", "digits").output
    assert table.splitlines()[0].split() == ["CHANNEL", "COUNTER", "VERSION", "VARIANT",
                                             "ROLLOUT", "STATE", "KIND", "WHO", "WHEN", "WHY"]
    assert "3*" in table and "v2 regressed" in table and "staged v2" in table


def test_promote_with_a_targeting_file(cli, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"platforms": ["ios"], "os_version": ">=17"}))
    cli("promote", "digits", "1", "--channel", "beta", "--targeting", str(rules),
        "--variant", "coreml-fp16", "--json")
    release = json.loads(cli("releases", "digits", "--json").output)[0]
    assert release["targeting"] == {"platforms": ["ios"], "os_version": ">=17"}
    assert release["variant"] == "coreml-fp16"
    both = cli("promote", "digits", "1", "--channel", "beta", "--targeting", str(rules),
               "--target-platform", "ios", ok=False)
    assert both.exit_code == 2 and "not both" in both.output


def test_cli_errors_are_clean_messages(cli):
    missing = cli("promote", "digits", "9", "--channel", "production", ok=False)
    assert missing.exit_code == 1 and "[version_not_found]" in missing.output
    assert "Traceback" not in missing.output
    bad = cli("promote", "digits", "1", "--channel", "production", "--guardrail",
              "crash_rate > 0.01", ok=False)
    assert "[invalid_guardrail]" in bad.output
    anonymous = cli("releases", "digits", token=None, ok=False)
    assert "[unauthenticated]" in anonymous.output and "MODELDROP_TOKEN" in anonymous.output
    usage = cli("rollout", "digits", "--channel", "production", ok=False)
    assert usage.exit_code == 2 and "exactly one of" in usage.output
    assert "no releases" in cli("releases", "digits").output


def test_experiment_create_show_update_stop(cli):
    cli("promote", "digits", "1", "--channel", "production")
    out = cli("experiment", "create", "digits-v2-vs-v1", "--model", "digits",
              "--channel", "production", "--arm", "control=1", "--arm", "treatment=2",
              "--variant-arm", "int8=2:tflite-int8-dynamic", "--split", "50,30,20",
              "--coverage", "50", "--seed", "3f9a1c0e5b7d2a64",
              "--guardrail", "crash_rate <= 0.01", "--target-platform", "android").output
    assert "experiment digits-v2-vs-v1 running on digits/production (seed 3f9a1c0e5b7d2a64)" \
        in out
    shown = json.loads(cli("experiment", "show", "digits-v2-vs-v1", "--json").output)
    assert shown["hash_version"] == 2 and shown["seed"] == "3f9a1c0e5b7d2a64"
    assert [(a["name"], a["variant"], a["range"]) for a in shown["arms"]] == [
        ("control", None, [0, 2500]), ("treatment", None, [5000, 6500]),
        ("int8", "tflite-int8-dynamic", [8000, 9000])]
    text = cli("experiment", "show", "digits-v2-vs-v1").output
    assert "seed 3f9a1c0e5b7d2a64  hash version 2  coverage 50%" in text
    assert "control (control)" in text and "[8000, 9000)" in text
    assert "coverage 100%" in cli("experiment", "update", "digits-v2-vs-v1",
                                  "--coverage", "100").output
    listed = cli("experiment", "list", "--model", "digits").output
    assert "digits-v2-vs-v1" in listed and "running" in listed
    out = cli("experiment", "stop", "digits-v2-vs-v1", "--winner", "treatment").output
    assert "winner treatment" in out
    assert "released: digits/production release 2: version 2, 100%" in out
    assert "stopped, winner treatment" in cli("experiment", "show", "digits-v2-vs-v1").output
    bad = cli("experiment", "create", "x", "--model", "digits", "--channel", "production",
              "--arm", "control", ok=False)
    assert bad.exit_code == 2 and "NAME=VERSION" in bad.output


def test_experiment_group_is_extensible():
    from registry.cli._delivery import experiment

    assert isinstance(experiment, click.Group)
    assert {"create", "show", "list", "update", "stop"} <= set(experiment.commands)


def test_manifest_over_real_http(cli):
    cli("promote", "digits", "1", "--channel", "production")
    url = f"{cli.live.base_url}/v1/manifest"
    params = {"model": "digits", "platform": "linux",
              "install_id": "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"}
    first = requests.get(url, params=params, timeout=10)
    assert first.status_code == 200 and first.headers["ETag"].startswith('"m1-')
    doc = first.json()
    assert doc["artifact"]["urls"][0].startswith(cli.live.base_url + "/v1/artifacts/")
    artifact = requests.get(doc["artifact"]["urls"][0], timeout=10)
    assert len(artifact.content) == doc["artifact"]["length"]
    again = requests.get(url, params=params, headers={"If-None-Match": first.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304 and again.content == b""


def test_experiments_say_who_paused_or_halted_them_when_and_why(cli):
    cli("promote", "digits", "1", "--channel", "production")
    cli("experiment", "create", "pause-me", "--model", "digits", "--channel", "production",
        "--arm", "control=1", "--arm", "treatment=2")
    cli("experiment", "update", "pause-me", "--pause", "--reason", "checking crash reports")
    services, url = cli.live.services, cli.live.base_url
    reader = services.store.create_token("reader", "watcher").token
    body = requests.get(f"{url}/v1/experiments/pause-me", timeout=10,  # no audit log: a reader
                        headers={"Authorization": f"Bearer {reader}"}).json()
    assert body["status"] == "paused" and body["paused_reason"] == "checking crash reports"
    assert body["paused_by"].startswith("token:") and "cli-tests" in body["paused_by"], body
    assert body["paused_at"] and body["halted_reason"] is None
    shown = cli("experiment", "show", "pause-me", token=reader).output
    assert f"experiment pause-me paused by {body['paused_by']} at " in shown, shown
    assert shown.count("checking crash reports") == 1, shown
    listed = cli("experiment", "list", token=reader).output
    assert "checking crash reports" in listed and body["paused_by"] in listed, listed

    cli("experiment", "update", "pause-me", "--resume")
    resumed = json.loads(cli("experiment", "show", "pause-me", "--json").output)
    assert resumed["paused_reason"] is resumed["paused_by"] is resumed["paused_at"] is None
    assert "paused" not in cli("experiment", "list").output

    assert services.store.halt_experiment("pause-me", "crash_rate 0.2 > 0.01",
                                          actor="system:guardrails", details={})
    halted = json.loads(cli("experiment", "show", "pause-me", "--json", token=reader).output)
    assert halted["halted_reason"] == "crash_rate 0.2 > 0.01"
    assert halted["paused_by"] == "system:guardrails" and halted["paused_at"]
    assert halted["paused_reason"] is None
    text = cli("experiment", "show", "pause-me", token=reader).output
    assert "experiment pause-me halted by a guardrail (system:guardrails) at " in text, text
    assert ": crash_rate 0.2 > 0.01 (resume: modeldrop experiment update pause-me --resume)" \
        in text, text
