"""The server's delivery and signing code against every conformance vector.

The SDK runs the same vectors (client_sdk/tests/test_conformance.py). The server's code
paths here are the ones ``GET /v1/manifest`` and the release API use: name validation
(``registry.upload_stream.validate_name``, ``registry.delivery.releases.validate_channel``),
bucketing, targeting, ``min_app_version`` and variant choice from ``registry.delivery``,
and manifest signing/verification from ``registry.signing``. Device-only checks (expiry,
install id binding, release counter, TUF entry, delta application) have no server side;
for manifests the server must instead reproduce the vectors' signatures and agree on
which signatures are valid. Also here: every error code the SDK mirrors exists on the
server.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import bsdiff4
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from registry import delivery
from registry.delivery.releases import validate_channel
from registry.schemas import validate_name
from registry.signing import verify_manifest
from registry.signing._manifest import sign_document

VECTORS = Path(__file__).resolve().parents[1] / "conformance"

# Vectors the server's code still disagrees with, each with why; strict, so a fix fails
# the run until the entry is removed.
KNOWN_SERVER_DISAGREEMENTS: dict[str, str] = {}


def cases(name: str, section: str = "cases") -> list:
    items = json.loads((VECTORS / name).read_text())[section]
    assert items
    return items


def code_of(call) -> str | None:
    """None if ``call`` succeeds, else the stable code of the server error it raised (the
    delivery and signing packages have error bases of their own, each with a ``code``)."""
    try:
        call()
    except Exception as e:
        code = getattr(e, "code", None)
        if not isinstance(code, str):
            raise
        return code
    return None


def label(case: dict) -> str:
    return str(case.get("name") or case.get("note") or case.get("value") or "")[:60]


@pytest.mark.parametrize("case", cases("names.json"), ids=label)
def test_names(case):
    check = validate_name if case["kind"] == "model" else validate_channel
    expected = None if case["valid"] else ("invalid_name" if case["kind"] == "model"
                                           else "invalid_channel")
    assert code_of(lambda: check(case["value"])) == expected


@pytest.mark.parametrize("case", cases("bucketing.json", "hash"), ids=label)
def test_hash(case):
    assert delivery.fnv1a32(case["seed"] + case["install_id"]) == case["fnv1a32_first"]
    assert delivery.hash_v2(case["seed"], case["install_id"]) == case["bucket"]


@pytest.mark.parametrize("case", cases("bucketing.json", "fnv1a32"), ids=label)
def test_fnv1a32(case):
    assert delivery.fnv1a32(case["input"]) == case["fnv1a32"]


@pytest.mark.parametrize("case", cases("bucketing.json", "install_ids"), ids=label)
def test_install_ids(case):
    got = code_of(lambda: delivery.validate_install_id(case["install_id"]))
    assert got == (None if case["valid"] else "invalid_install_id")


@pytest.mark.parametrize("case", cases("bucketing.json", "ranges"), ids=label)
def test_ranges(case):
    if "error" in case:
        assert code_of(lambda: delivery.arm_ranges(case["weights"], case["coverage_bp"])) == \
            case["error"]
    else:
        got = delivery.arm_ranges(case["weights"], case["coverage_bp"])
        assert [list(r) for r in got] == case["ranges"]


@pytest.mark.parametrize("case", cases("bucketing.json", "assignments"), ids=label)
def test_assignments(case):
    def assign():
        return delivery.assign_arm(case["seed"], case["install_id"],
                                   delivery.arm_ranges(case["weights"], case["coverage_bp"]))
    if "error" in case:
        assert code_of(assign) == case["error"]
    else:
        assert delivery.hash_v2(case["seed"], case["install_id"]) == case["bucket"]
        assert assign() == case["arm"]


@pytest.mark.parametrize("case", cases("bucketing.json", "coverage_steps"), ids=label)
def test_coverage_steps(case):
    arms = [delivery.assign_arm(case["seed"], case["install_id"],
                                delivery.arm_ranges(case["weights"], c))
            for c in case["coverage_bp"]]
    assert arms == case["arms"]


@pytest.mark.parametrize("case", cases("bucketing.json", "rollout"), ids=label)
def test_rollout(case):
    def gate():
        return delivery.in_rollout(case["seed"], case["install_id"], case["percent_bp"])
    if "error" in case:
        assert code_of(gate) == case["error"]
    else:
        assert gate() == case["in_rollout"]


def server_device(data: dict) -> delivery.DeviceProfile:
    # GET /v1/manifest turns an empty query value into "not sent" (manifest.parse_query).
    fields = ("os_version", "device_model", "app_version", "region")
    return delivery.DeviceProfile(platform=data["platform"],
                               **{f: data.get(f) or None for f in fields})


@pytest.mark.parametrize("case", cases("targeting.json"), ids=label)
def test_targeting(case):
    rules = delivery.TargetingRules.from_dict(case["rules"])
    assert rules.matches(server_device(case["device"])) is case["matches"]


@pytest.mark.parametrize("case", cases("targeting.json", "errors"), ids=label)
def test_targeting_errors(case):
    assert code_of(lambda: delivery.TargetingRules.from_dict(case["rules"])) == case["error"]


@pytest.mark.parametrize("case", cases("versions.json"), ids=label)
def test_versions(case):
    def meets():
        return delivery.meets_min_app_version(case["app_version"] or None,
                                              case["min_app_version"])
    if "error" in case:
        assert code_of(meets) == case["error"]
    else:
        assert meets() is case["meets"]


@pytest.mark.parametrize("case", cases("variants.json"), ids=label)
def test_variants(case):
    chosen = delivery.choose_variant(case["variants"], case["platform"], case["device_class"],
                                     case["pinned"])
    assert (chosen["name"] if chosen else None) == case["chosen"]


@pytest.mark.parametrize("case", cases("variants.json", "errors"), ids=label)
def test_variant_errors(case):
    assert code_of(lambda: delivery.choose_variant(case["variants"], case["platform"])) == \
        case["error"]


def test_key_file_agrees_with_itself():
    for name in ("manifest-key", "other-key"):
        data = json.loads((VECTORS / "keys" / f"{name}.json").read_text())
        signer = _signer(name)
        assert signer.public_key.keyid == data["keyid"]
        assert signer.public_key.to_dict() == data["public_key"]


def _signer(name: str) -> CryptoSigner:
    data = json.loads((VECTORS / "keys" / f"{name}.json").read_text())
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["private_seed_hex"]))
    public = SSlibKey.from_dict(data["keyid"], dict(data["public_key"]))
    return CryptoSigner(private, public)


def _manifest_case(case: dict):
    reason = KNOWN_SERVER_DISAGREEMENTS.get(case["name"])
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, marks=marks, id=case["name"])


@pytest.mark.parametrize("case", [_manifest_case(c) for c in cases("manifests.json")
                                  if c["signature_valid"] is not None])
def test_server_agrees_which_manifest_signatures_are_valid(case):
    document = json.loads(case["body"])
    got = code_of(lambda: verify_manifest(document, case["trusted"]))
    assert (got is None) == case["signature_valid"], got


@pytest.mark.parametrize("case", [c for c in cases("manifests.json") if c["signed_by"]],
                         ids=label)
def test_server_signing_reproduces_the_vector_signatures(case):
    document = json.loads(case["body"])
    keyids = {e["keyid"] for e in document["signatures"]}
    signer = _signer(case["signed_by"][0])
    if keyids != {signer.public_key.keyid} or len(document["signatures"]) != 1:
        pytest.skip("signatures under other key ids: sign_document names the signer's own id")
    resigned = sign_document(document, [signer])
    assert resigned["signatures"] == document["signatures"]


@pytest.mark.parametrize("case", [c for c in cases("deltas.json") if "ok" in c["expect"]],
                         ids=label)
def test_server_patches_are_the_vector_patches(case):
    # registry.delivery.deltas makes every patch with bsdiff4.diff(base, target): the
    # vector's patch must be byte for byte what the server would publish.
    base = base64.b64decode(case["base"])
    target = bsdiff4.patch(base, base64.b64decode(case["patch"]))
    assert bsdiff4.diff(base, target) == base64.b64decode(case["patch"])


def _server_codes() -> set[str]:
    import registry.app  # noqa: F401 - imports every blueprint, and so every error module

    codes, stack = set(), [Exception]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("registry.") and isinstance(getattr(cls, "code", None), str):
            codes.add(cls.code)
    return codes


def test_every_error_code_the_sdk_mirrors_exists_on_the_server():
    from client_sdk import errors as sdk_errors

    mirrored, stack = set(), [sdk_errors.RemoteError]
    while stack:
        cls = stack.pop()
        mirrored.add(cls.code)
        stack.extend(cls.__subclasses__())
    mirrored.discard("remote_error")  # the SDK's own "unknown server code" wrapper
    assert mirrored, "the SDK mirrors no server codes?"
    missing = mirrored - _server_codes()
    assert not missing, f"the SDK mirrors codes the server never sends: {sorted(missing)}"


# -- rulesets: the manifest's resolution over the state a ruleset describes ------------------

class _RulesetStore:
    """The store calls ``manifest.resolve`` makes, answered from a ruleset vector."""

    def __init__(self, doc: dict, sticky: dict[str, str]) -> None:
        from registry.store._delivery_types import (
            ChannelState,
            ServingArm,
            ServingExperiment,
            ServingRelease,
        )

        self.sticky = sticky
        self.versions = {v["version"]: v for v in doc["versions"]}
        releases = tuple(ServingRelease(
            counter=r["counter"], version=r["version"], version_id=r["version"],
            variant=r["variant"], rollout_bp=r["rollout_bp"], rollout_seed=r["rollout_seed"],
            targeting=r["targeting"], paused=r["paused"], min_app_version=r["min_app_version"])
            for r in doc["releases"])
        exp = doc["experiment"]
        experiment = None if exp is None else ServingExperiment(
            id=1, name=exp["name"], seed=exp["seed"], coverage_bp=exp["coverage_bp"],
            status=exp["status"], targeting=exp["targeting"], arms=tuple(ServingArm(
                name=a["name"], version=a["version"], version_id=a["version"],
                variant=a["variant"], weight=a["weight"],
                min_app_version=self.versions[a["version"]]["min_app_version"])
                for a in exp["arms"]))
        self.key = None if exp is None else f"{exp['name']}@{exp['seed']}"
        self.state = ChannelState(model=doc["model"], channel=doc["channel"],
                                  counter=doc["release_counter"], releases=releases,
                                  experiment=experiment)

    def channel_state(self, model, channel, max_age=0.0):
        return self.state

    def servable_variants(self, version_id, max_age=0.0):
        return [{**v, "target_path": v["target"], "servable": True}
                for v in self.versions[version_id]["variants"]]

    def assignment(self, experiment_id, install_id):
        return self.sticky.get(self.key)

    def record_assignment(self, experiment_id, install_id, arm):
        self.sticky[self.key] = arm
        return arm


@pytest.mark.parametrize("case", cases("rulesets.json"),
                         ids=lambda c: f"{c['ruleset']}-{c['install_id'][:8]}")
def test_ruleset_cases_through_the_manifest_resolution(case):
    from types import SimpleNamespace

    from registry.delivery.manifest import ManifestQuery, resolve

    doc = json.loads((VECTORS / "rulesets.json").read_text())["rulesets"][case["ruleset"]]
    sticky = dict(case["sticky"])
    services = SimpleNamespace(store=_RulesetStore(doc, sticky))
    d = case["device"]
    device = delivery.DeviceProfile(platform=d["platform"], device_model=d["device_model"] or None,
                                 app_version=d["app_version"] or None, region=d["region"] or None)
    offer = resolve(services, ManifestQuery(doc["model"], doc["channel"], case["install_id"],
                                            device))
    got = None if offer is None else {
        "release_counter": offer.release_counter, "served_counter": offer.served_counter,
        "version": offer.version, "variant": offer.variant["name"],
        "experiment": offer.experiment, "arm": offer.arm}
    assert got == case["expect"]
    assert sticky == case["sticky_after"]

