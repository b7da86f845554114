"""Equal decisions, proven: 100,000 install ids, the SDK's local decision from the published
ruleset against the server's manifest resolution, for every id.

The matrix walks one channel through targeting (platform, region, app version range, device
model prefixes, ``min_app_version``), a staged rollout, a paused rollout, an experiment with
coverage and uneven weights (a pinned arm included), the same experiment paused (sticky
assignments only), a guardrail halt and a rollback; per-device-class latency is in the
variant table, so the latency branch of the variant choice is exercised too. The server side
is ``registry.delivery.manifest.resolve`` (what ``GET /v1/manifest`` signs); the device side
is ``client_sdk.rules.evaluate_ruleset`` over the bytes of the TUF target the server
published, with a sticky table of its own. Compared for each id: version, variant (name,
sha256, target), experiment, arm, release counter and served counter.

Evaluated in-process for speed; tests/test_sdk_local.py compares a slice over real HTTP.
"""

from __future__ import annotations

import random
import time

import pytest

from client_sdk.rules import evaluate_ruleset, parse_ruleset
from registry.delivery.guardrail_check import check_guardrails
from registry.delivery.manifest import parse_query, resolve
from registry.delivery.rulesets import published_ruleset
from tests.makers import fleet_ids, make_ready_version

TOTAL_IDS = 100_000

VARIANTS = {
    "tflite-fp32": {"format": "tflite", "size": 6000, "agreement": 0.995},
    "tflite-int8-dynamic": {"format": "tflite", "size": 2400, "agreement": 0.97},
    "tflite-int8-full": {"format": "tflite", "size": 2500, "agreement": 0.98},
    "coreml-fp16": {"format": "coreml", "size": 3000, "agreement": 0.99},
    "coreml-fp32": {"format": "coreml", "size": 5000, "agreement": 0.999},
}
# variant -> device class -> median ms (the telemetry hook of the variant choice)
LATENCY = {
    "tflite-fp32": {"pixel7": 9.5, "pixel8": 4.0, "sm-s918b": 7.25},
    "tflite-int8-full": {"pixel7": 3.5, "pixel8": 4.0},
    "tflite-int8-dynamic": {"pixel8": 4.0, "sm-s918b": 12.0},
    "coreml-fp16": {"iPhone15,2": 2.0, "iPhone16,1": 1.5},
    "coreml-fp32": {"iPhone15,2": 1.9},
}
MODELS = ["pixel7", "pixel8", "sm-s918b", "iPhone15,2", "iPhone16,1", "raspberrypi5", ""]
APP_VERSIONS = ["2.9.0", "3.0.0", "3.1.0rc1", "3.5.2", "4.0", "", "not-a-version"]
OS_VERSIONS = ["13", "14", "15", "17.2", "18.0b1", "", "6.8.0-45-generic"]
REGIONS = ["de", "DE", "us", "fr", "jp", ""]


class Device:
    __slots__ = ("app_version", "device_model", "os_version", "platform", "region")

    def __init__(self, rng: random.Random) -> None:
        self.platform = rng.choice(["android", "android", "ios", "linux"])
        self.device_model = rng.choice(MODELS)
        self.app_version = rng.choice(APP_VERSIONS)
        self.os_version = rng.choice(OS_VERSIONS)
        self.region = rng.choice(REGIONS)

    def query(self, install_id: str) -> dict[str, str]:
        return {"model": "digits", "channel": "production", "install_id": install_id,
                "platform": self.platform, "device_model": self.device_model,
                "app_version": self.app_version, "os_version": self.os_version,
                "region": self.region}


def promote(api, version, **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": "production", **body})
    assert resp.status_code == 201, resp.get_json()


def compare(services, ids, devices, sticky) -> dict[str, int]:
    """Every id decided both ways; returns counts of what the ids got, for coverage."""
    ruleset = parse_ruleset(published_ruleset(services, "digits", "production"),
                            "digits", "production")
    seen: dict[str, int] = {}
    for install_id in ids:
        device = devices[install_id]
        offer = resolve(services, parse_query(device.query(install_id)))
        local = evaluate_ruleset(ruleset, install_id, device, sticky.setdefault(install_id, {}))
        if offer is None:
            assert local is None, (install_id, local)
            seen["none"] = seen.get("none", 0) + 1
            continue
        assert local is not None, (install_id, offer)
        server = (offer.release_counter, offer.served_counter, offer.version,
                  offer.variant["name"], offer.variant["sha256"], offer.variant["target_path"],
                  offer.experiment, offer.arm)
        device_side = (local.release_counter, local.served_counter, local.version,
                       local.variant["name"], local.variant["sha256"], local.variant["target"],
                       local.experiment, local.arm)
        assert device_side == server, device.query(install_id)
        key = f"v{offer.version}/{offer.variant['name']}/{offer.arm}"
        seen[key] = seen.get(key, 0) + 1
    return seen


@pytest.mark.timeout(300)
def test_local_decisions_equal_the_manifest_for_100k_ids(services, api, monkeypatch):
    for _ in range(3):
        make_ready_version(services, "digits", variants=VARIANTS)
    make_ready_version(services, "digits", variants=VARIANTS, min_app_version="3.1")  # v4
    monkeypatch.setattr(services.store, "latency_by_device", lambda version_id: LATENCY,
                        raising=False)
    rng = random.Random("ruleset-equality")
    ids = fleet_ids(TOTAL_IDS, prefix="equality")
    devices = {i: Device(rng) for i in ids}
    sticky: dict[str, dict[str, str]] = {}
    # Slices: each stage sees its own ids, and the experiment stages share theirs, so
    # the paused experiment is checked on devices that were (and were not) enrolled.
    slices = [ids[k * 12_500:(k + 1) * 12_500] for k in range(8)]
    started = time.monotonic()
    counts = []

    # 1. targeting: v1 for android and ios (linux: nothing unless v2 applies), v2 for
    #    DE/FR with app >= 3 at full rollout, v3 pinned for pixels
    promote(api, 1, targeting={"platforms": ["android", "ios"]})
    promote(api, 2, targeting={"regions": ["de", "fr"], "app_version": ">=3"})
    promote(api, 3, variant="tflite-int8-full",
            targeting={"platforms": ["android"], "device_model_prefixes": ["pixel"],
                       "os_version": ">=14"})
    counts.append(compare(services, slices[0], devices, sticky))
    # 2. a staged rollout of v4 (min_app_version 3.1) at 35%, targeting android and ios
    promote(api, 4, rollout_percent=35, targeting={"platforms": ["android", "ios"]},
            guardrails=["crash_rate <= 0.01"])
    counts.append(compare(services, slices[1], devices, sticky))
    # 3. paused at 35% (devices inside keep it, none join), then narrowed to 20%
    assert api.patch("/v1/models/digits/channels/production",
                     json={"paused": True}).status_code == 200
    counts.append(compare(services, slices[2], devices, sticky))
    assert api.patch("/v1/models/digits/channels/production",
                     json={"rollout_percent": 20}).status_code == 200
    counts.append(compare(services, slices[3], devices, sticky))
    # 4. an experiment at 45% coverage, weights 5:3:2, one arm pinned; then paused (sticky)
    resp = api.post("/v1/experiments", json={
        "name": "eq", "model": "digits", "channel": "production", "coverage_percent": 45,
        "weights": [5000, 3000, 2000], "targeting": {"regions": ["de", "us", "jp"]},
        "arms": [{"name": "control", "version": 1}, {"name": "v2", "version": 2},
                 {"name": "v3-fp32", "version": 3, "variant": "tflite-fp32"}]})
    assert resp.status_code == 201, resp.get_json()
    counts.append(compare(services, slices[4] + slices[5][:6000], devices, sticky))
    assert api.patch("/v1/experiments/eq", json={"paused": True}).status_code == 200
    counts.append(compare(services, slices[4][:6000] + slices[5], devices, sticky))
    assert api.post("/v1/experiments/eq/stop").status_code == 200
    # 5. resume and widen v4, then a guardrail halt freezes it
    assert api.patch("/v1/models/digits/channels/production",
                     json={"paused": False, "rollout_percent": 60}).status_code == 200

    def bad(services_, kind, obj):
        return {"crash_rate": (0.2, 1000)} if kind == "release" and obj.counter == 4 else {}
    assert len(check_guardrails(services, bad)) == 1
    counts.append(compare(services, slices[6], devices, sticky))
    # 6. rollback: a new release (counter 5) of the previous version for v4's audience
    assert api.post("/v1/models/digits/channels/production/rollback").status_code == 201
    counts.append(compare(services, slices[7], devices, sticky))
    elapsed = time.monotonic() - started

    assert sum(len(s) for s in slices) == TOTAL_IDS
    merged: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            merged[k] = merged.get(k, 0) + n
    # The matrix really exercised every branch: no release, each version, each arm, the
    # pinned variants and the latency-chosen ones on both platforms.
    for needed in ("none", "v1/tflite-int8-dynamic/None", "v1/coreml-fp16/None",
                   "v2/tflite-int8-dynamic/None", "v3/tflite-int8-full/None",
                   "v4/tflite-int8-full/None", "v4/coreml-fp32/None",
                   "v1/tflite-int8-dynamic/control",
                   "v2/tflite-int8-dynamic/v2", "v3/tflite-fp32/v3-fp32"):
        assert merged.get(needed, 0) > 20, (needed, sorted(merged.items()))
    print(f"{TOTAL_IDS} ids compared in {elapsed:.1f} s: {sorted(merged.items())}")
