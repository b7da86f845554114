"""A fleet of simulated install ids through promote -> widen -> pause -> experiment -> rollback.

Every device's answer is checked against the documented rules, recomputed here from the
published release and experiment definitions (seeds, basis points, ranges) with the pure
bucketing functions; shares are checked against binomial / chi-square bounds; manifests are
verified with the key from the TUF root; counters never go down for any device.
"""

from __future__ import annotations

import json
import math
from collections import Counter

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.formats import encode_canonical

from registry.delivery.bucketing import hash_v2
from registry.delivery.manifest import parse_query, resolve
from tests.makers import fleet_ids, make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7",
           "app_version": "3.2.0", "region": "DE"}
IOS = {"platform": "ios", "os_version": "17.2", "device_model": "iPhone15,2",
       "app_version": "3.2.0", "region": "US"}
CHI2_DF2_P001 = 13.816  # chi-square critical value, 2 degrees of freedom, p = 0.001


def offer(services, install_id, device=ANDROID, channel="production"):
    """Resolve directly (the manifest service without document and signature)."""
    query = parse_query({"model": "digits", "channel": channel, "install_id": install_id,
                         **device})
    return resolve(services, query)


def promote(api, version, **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": "production", **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def set_rollout(api, **body):
    resp = api.patch("/v1/models/digits/channels/production", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def within_binomial(count: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def chi_square(observed: dict[str, int], weights: dict[str, int]) -> float:
    n, total = sum(observed.values()), sum(weights.values())
    return sum((observed.get(arm, 0) - n * w / total) ** 2 / (n * w / total)
               for arm, w in weights.items())


def test_rollout_share_is_binomial_and_widening_never_removes_a_device(services, api):
    fleet = fleet_ids(5000)
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    release = promote(api, 2, rollout_percent=10)
    seed = release["rollout_seed"]
    previous: set[str] = set()
    for percent in (10, 25, 50, 100):
        if percent != 10:
            set_rollout(api, rollout_percent=percent)
        on_v2 = {i for i in fleet if offer(services, i).version == 2}
        assert on_v2 == {i for i in fleet if hash_v2(seed, i) < percent * 100}  # exact rule
        assert within_binomial(len(on_v2), len(fleet), percent / 100), (percent, len(on_v2))
        assert previous <= on_v2  # widening never removes a device
        previous = on_v2
    set_rollout(api, rollout_percent=5)  # narrowing removes exactly the last added
    assert {i for i in fleet if offer(services, i).version == 2} == \
        {i for i in fleet if hash_v2(seed, i) < 500}


def test_pause_freezes_the_rollout(services, api):
    fleet = fleet_ids(2000, "pause")
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2, rollout_percent=30)
    before = {i for i in fleet if offer(services, i).version == 2}
    set_rollout(api, paused=True)
    assert {i for i in fleet if offer(services, i).version == 2} == before
    assert api.patch("/v1/models/digits/channels/production",
                     json={"rollout_percent": 60}).status_code == 409
    set_rollout(api, paused=False)
    set_rollout(api, rollout_percent=60)
    after = {i for i in fleet if offer(services, i).version == 2}
    assert before < after and within_binomial(len(after), len(fleet), 0.6)


def test_experiment_split_matches_weights_and_is_sticky(services, api):
    fleet = fleet_ids(3000, "exp")
    for _ in range(3):
        make_ready_version(services, "digits")
    promote(api, 1)
    weights = {"control": 50, "treatment": 30, "small": 20}
    created = api.post("/v1/experiments", json={
        "name": "split", "model": "digits", "channel": "production", "coverage_percent": 40,
        "arms": [{"name": "control", "version": 1}, {"name": "treatment", "version": 2},
                 {"name": "small", "version": 3}],
        "weights": list(weights.values()), "targeting": {"regions": ["DE"]}}).get_json()
    seed, ranges = created["seed"], [tuple(a["range"]) for a in created["arms"]]
    version_of = {a["name"]: a["version"] for a in created["arms"]}

    def expected_arm(install_id):
        bucket = hash_v2(seed, install_id)
        return next((a["name"] for a, (lo, hi) in zip(created["arms"], ranges)
                     if lo <= bucket < hi), None)

    first = {}
    for install_id in fleet:
        got = offer(services, install_id)
        first[install_id] = got.arm
        assert got.arm == expected_arm(install_id)
        assert got.version == (version_of[got.arm] if got.arm else 1)
        assert got.experiment == ("split" if got.arm else None)
    enrolled = Counter(a for a in first.values() if a)
    assert within_binomial(sum(enrolled.values()), len(fleet), 0.4)
    assert chi_square(enrolled, weights) < CHI2_DF2_P001, enrolled
    assert services.store.experiment_assignments("split") == \
        {i: a for i, a in first.items() if a}

    # raising coverage never moves an enrolled device; it only enrols more
    raised = api.patch("/v1/experiments/split", json={"coverage_percent": 100}).get_json()
    assert [a["range"][0] for a in raised["arms"]] == [lo for lo, _ in ranges]
    ranges = [tuple(a["range"]) for a in raised["arms"]]
    second = {i: offer(services, i).arm for i in fleet}
    assert all(second[i] == arm for i, arm in first.items() if arm)
    assert all(second[i] == expected_arm(i) for i in fleet)
    full = Counter(second.values())
    assert chi_square(full, weights) < CHI2_DF2_P001, full

    # sticky: a device keeps its arm when it no longer matches the targeting, and pausing
    # stops new enrolments only
    somebody = next(i for i, a in second.items() if a == "treatment")
    assert offer(services, somebody, {**ANDROID, "region": "FR"}).arm == "treatment"
    newcomer = fleet_ids(1, "newcomer")[0]
    api.patch("/v1/experiments/split", json={"paused": True})
    assert offer(services, somebody).arm == "treatment"
    assert offer(services, newcomer).arm is None
    assert newcomer not in services.store.experiment_assignments("split")


def test_variant_arms_serve_pinned_variants_to_devices_that_can_run_them(services, api):
    fleet = fleet_ids(600, "variants")
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    api.post("/v1/experiments", json={
        "name": "fp32-vs-int8", "model": "digits", "channel": "production",
        "arms": [{"name": "fp32", "version": 2, "variant": "tflite-fp32"},
                 {"name": "int8", "version": 2, "variant": "tflite-int8-dynamic"}]})
    served = Counter()
    for install_id in fleet:
        got = offer(services, install_id)
        assert got.version == 2
        assert got.variant["name"] == {"fp32": "tflite-fp32", "int8": "tflite-int8-dynamic"}[
            got.arm]
        served[got.arm] += 1
    assert within_binomial(served["fp32"], len(fleet), 0.5)
    # an iOS device cannot run either TFLite arm: not enrolled, it gets the release
    ios = offer(services, fleet[0], IOS)
    assert (ios.arm, ios.version, ios.variant["name"]) == (None, 1, "coreml-fp16")
    assert fleet[0] in services.store.experiment_assignments("fp32-vs-int8")  # as android


# -- end to end over HTTP -------------------------------------------------------------------

class Fleet:
    """Devices polling over HTTP; remembers the highest counter each has accepted."""

    def __init__(self, client, ids):
        self.client, self.ids = client, ids
        self.highest: dict[str, int] = {}
        root = json.loads(client.get("/v1/trusted-root").get_data())["signed"]
        field = root["x-modeldrop-manifest"]
        self.keys = {kid: Ed25519PublicKey.from_public_bytes(bytes.fromhex(k["keyval"]["public"]))
                     for kid, k in field["keys"].items()}

    def poll(self) -> dict[str, dict]:
        docs = {}
        for install_id in self.ids:
            resp = self.client.get("/v1/manifest", query_string={
                "model": "digits", "channel": "production", "install_id": install_id, **ANDROID})
            assert resp.status_code == 200, resp.get_data(as_text=True)
            doc = resp.get_json()
            payload = encode_canonical({k: v for k, v in doc.items()
                                        if k != "signatures"}).encode()
            sig = doc["signatures"][0]
            self.keys[sig["keyid"]].verify(bytes.fromhex(sig["sig"]), payload)
            assert doc["install_id"] == install_id
            assert doc["release_counter"] >= self.highest.get(install_id, 0)  # never down
            self.highest[install_id] = doc["release_counter"]
            docs[install_id] = doc
        return docs


def expected_version(releases: list[dict], install_id: str) -> int | None:
    """The documented release rule, from the published history (targeting is empty here)."""
    for release in releases:  # newest first
        if hash_v2(release["rollout_seed"], install_id) < release["rollout_bp"]:
            return release["version"]
    return None


def test_fleet_through_promote_widen_experiment_rollback(services, api, anon_api):
    fleet = Fleet(anon_api, fleet_ids(1000, "e2e"))
    for _ in range(3):
        make_ready_version(services, "digits")

    def check(docs, counter, experiment=None):
        history = api.get("/v1/models/digits/releases").get_json()["items"]
        assert history[0]["counter"] == counter
        for install_id, doc in docs.items():
            assert doc["release_counter"] == counter
            arm = None
            if experiment is not None:
                bucket = hash_v2(experiment["seed"], install_id)
                arm = next((a for a in experiment["arms"]
                            if a["range"][0] <= bucket < a["range"][1]), None)
            if arm is not None:
                assert (doc["experiment"], doc["arm"], doc["version"]) == \
                    (experiment["name"], arm["name"], arm["version"])
            else:
                assert doc["arm"] is None
                assert doc["version"] == expected_version(history, install_id)

    promote(api, 1)
    check(fleet.poll(), 1)
    promote(api, 2, rollout_percent=10)
    docs = fleet.poll()
    check(docs, 2)
    assert within_binomial(sum(d["version"] == 2 for d in docs.values()), 1000, 0.1)
    set_rollout(api, rollout_percent=50)
    check(fleet.poll(), 2)
    experiment = api.post("/v1/experiments", json={
        "name": "v3-vs-v2", "model": "digits", "channel": "production", "coverage_percent": 50,
        "arms": [{"name": "control", "version": 2}, {"name": "treatment", "version": 3}]}
    ).get_json()
    assert [a["range"] for a in experiment["arms"]] == [[0, 2500], [5000, 7500]]
    check(fleet.poll(), 2, experiment)
    check(fleet.poll(), 2, experiment)  # the same again: sticky and deterministic
    api.post("/v1/experiments/v3-vs-v2/stop")
    check(fleet.poll(), 2)
    back = api.post("/v1/models/digits/channels/production/rollback",
                    json={"reason": "v2 regressed"}).get_json()
    assert (back["counter"], back["version"]) == (3, 1)
    docs = fleet.poll()
    check(docs, 3)
    assert {d["version"] for d in docs.values()} == {1}  # everyone, at a higher counter
    assert set(fleet.highest.values()) == {3}
