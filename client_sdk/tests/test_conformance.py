"""The SDK against every conformance vector (conformance/*.json at the repository root).

Imports only the SDK and its dependencies, so it also runs from a virtualenv that has
nothing but the modeldrop-sdk wheel (tests/test_sdk_dist.py does exactly that). The
server runs the same vectors in tests/test_conformance_server.py.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from client_sdk import errors, rules
from client_sdk._delta import apply_patch
from client_sdk._manifest import parse_manifest_keys, parse_time, verify_manifest

VECTORS = Path(os.environ.get("MODELDROP_CONFORMANCE_DIR")
               or Path(__file__).resolve().parents[2] / "conformance")


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def cases(name: str, section: str = "cases") -> list:
    items = load(name)[section]
    assert items, f"{name} has no {section}"
    return items


def code_of(call) -> str | None:
    """None if ``call`` succeeds, else the stable code of the SDK error it raised."""
    try:
        call()
    except errors.ModelDropError as e:
        return e.code
    return None


def label(case: dict) -> str:
    return str(case.get("name") or case.get("note") or case.get("value") or "")[:60]


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("names.json"), ids=label)
def test_names(case):
    check = rules.validate_model_name if case["kind"] == "model" else rules.validate_channel
    assert (code_of(lambda: check(case["value"])) is None) == case["valid"]


# --- bucketing -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("bucketing.json", "fnv1a32"), ids=label)
def test_fnv1a32(case):
    assert rules.fnv1a32(case["input"]) == case["fnv1a32"]


@pytest.mark.parametrize("case", cases("bucketing.json", "hash"), ids=label)
def test_hash(case):
    assert rules.fnv1a32(case["seed"] + case["install_id"]) == case["fnv1a32_first"]
    assert rules.hash_v2(case["seed"], case["install_id"]) == case["bucket"]


@pytest.mark.parametrize("case", cases("bucketing.json", "install_ids"), ids=label)
def test_install_ids(case):
    got = code_of(lambda: rules.validate_install_id(case["install_id"]))
    assert got == (None if case["valid"] else "invalid_install_id")


@pytest.mark.parametrize("case", cases("bucketing.json", "ranges"), ids=label)
def test_ranges(case):
    if "error" in case:
        assert code_of(lambda: rules.arm_ranges(case["weights"], case["coverage_bp"])) == \
            case["error"]
    else:
        got = rules.arm_ranges(case["weights"], case["coverage_bp"])
        assert [list(r) for r in got] == case["ranges"]


@pytest.mark.parametrize("case", cases("bucketing.json", "assignments"), ids=label)
def test_assignments(case):
    def assign():
        return rules.assign_arm(case["seed"], case["install_id"],
                                rules.arm_ranges(case["weights"], case["coverage_bp"]))
    if "error" in case:
        assert code_of(assign) == case["error"]
        return
    assert rules.bucket(case["seed"], case["install_id"]) == case["bucket"]
    assert assign() == case["arm"]


@pytest.mark.parametrize("case", cases("bucketing.json", "coverage_steps"), ids=label)
def test_coverage_steps(case):
    arms = [rules.assign_arm(case["seed"], case["install_id"],
                             rules.arm_ranges(case["weights"], c)) for c in case["coverage_bp"]]
    assert arms == case["arms"]


@pytest.mark.parametrize("case", cases("bucketing.json", "rollout"), ids=label)
def test_rollout(case):
    def gate():
        return rules.in_rollout(case["seed"], case["install_id"], case["percent_bp"])
    if "error" in case:
        assert code_of(gate) == case["error"]
    else:
        assert gate() == case["in_rollout"]


# --- targeting, versions, variants ---------------------------------------------------------

def device(data: dict) -> SimpleNamespace:
    fields = ("platform", "os_version", "device_model", "app_version", "region")
    return SimpleNamespace(**{f: data.get(f) for f in fields})


@pytest.mark.parametrize("case", cases("targeting.json"), ids=label)
def test_targeting(case):
    assert rules.TargetingRules.from_dict(case["rules"]).matches(device(case["device"])) is \
        case["matches"]


@pytest.mark.parametrize("case", cases("targeting.json", "errors"), ids=label)
def test_targeting_errors(case):
    assert code_of(lambda: rules.TargetingRules.from_dict(case["rules"])) == case["error"]


@pytest.mark.parametrize("case", cases("versions.json"), ids=label)
def test_versions(case):
    def meets():
        return rules.meets_min_app_version(case["app_version"], case["min_app_version"])
    if "error" in case:
        assert code_of(meets) == case["error"]
    else:
        assert meets() is case["meets"]


@pytest.mark.parametrize("case", cases("variants.json"), ids=label)
def test_variants(case):
    chosen = rules.choose_variant(case["variants"], case["platform"], case["device_class"],
                                  case["pinned"])
    assert (chosen["name"] if chosen else None) == case["chosen"]


@pytest.mark.parametrize("case", cases("variants.json", "errors"), ids=label)
def test_variant_errors(case):
    assert code_of(lambda: rules.choose_variant(case["variants"], case["platform"])) == \
        case["error"]


# --- manifests and deltas --------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("manifests.json"), ids=label)
def test_manifests(case):
    keys = parse_manifest_keys({"x-modeldrop-manifest": case["trusted"]})

    def verify():
        verify_manifest(case["body"].encode("utf-8"), model=case["model"],
                        channel=case["channel"], keys=keys, install_id=case["install_id"],
                        now=parse_time(case["now"], "now"),
                        skew=timedelta(seconds=case["skew_seconds"]),
                        highest_counter=case["highest_counter"], tuf_entry=case["tuf_entry"])
    assert code_of(verify) == case["expect"].get("error")


def test_manifest_times_are_utc():
    assert parse_time("2026-01-01T12:00:00Z", "now") == datetime(2026, 1, 1, 12,
                                                                 tzinfo=timezone.utc)


@pytest.mark.parametrize("case", cases("deltas.json"), ids=label)
def test_deltas(case, tmp_path):
    base, patch = tmp_path / "base", tmp_path / "patch"
    base.write_bytes(base64.b64decode(case["base"]))
    patch.write_bytes(base64.b64decode(case["patch"]))
    out = tmp_path / "out"
    got = code_of(lambda: apply_patch(base, patch, sha256=case["sha256"], length=case["length"],
                                      out=out))
    assert got == case["expect"].get("error")
    assert out.exists() == (got is None)


def test_every_vector_file_is_exercised():
    names = {p.name for p in VECTORS.glob("*.json")}
    assert names == {"names.json", "bucketing.json", "targeting.json", "versions.json",
                     "variants.json", "manifests.json", "deltas.json", "rulesets.json"}


# -- rulesets ---------------------------------------------------------------------------------

def _ruleset(doc: dict) -> rules.Ruleset:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return rules.parse_ruleset(data, doc["model"], doc["channel"])


@pytest.mark.parametrize("case", cases("rulesets.json"),
                         ids=lambda c: f"{c['ruleset']}-{c['install_id'][:8]}")
def test_ruleset_evaluation(case):
    ruleset = _ruleset(load("rulesets.json")["rulesets"][case["ruleset"]])
    sticky = dict(case["sticky"])
    got = rules.evaluate_ruleset(ruleset, case["install_id"], SimpleNamespace(**case["device"]),
                                 sticky)
    if case["expect"] is None:
        assert got is None
    else:
        assert got is not None
        assert {"release_counter": got.release_counter, "served_counter": got.served_counter,
                "version": got.version, "variant": got.variant["name"],
                "experiment": got.experiment, "arm": got.arm} == case["expect"]
    assert sticky == case["sticky_after"]


@pytest.mark.parametrize("case", cases("rulesets.json", "invalid"), ids=lambda c: c["note"])
def test_invalid_rulesets(case):
    doc = case["document"]
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert code_of(lambda: rules.parse_ruleset(data, "digits", "production")) == \
        case["expect"]["error"]


@pytest.mark.parametrize("case", cases("rulesets.json", "freshness"), ids=lambda c: c["note"])
def test_ruleset_freshness(case):
    ruleset = _ruleset(load("rulesets.json")["rulesets"]["main"])

    def at(text):
        return None if text is None else datetime.strptime(
            text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    got = code_of(lambda: rules.check_ruleset_freshness(
        ruleset, at(case["now"]), timedelta(seconds=case["skew_seconds"]),
        case["seen_counter"], at(case["seen_issued_at"])))
    assert got == case["expect"].get("error")
