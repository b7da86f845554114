"""``ModelClient(..., resolve="local")`` against the real server over HTTP.

The device fetches the ruleset through TUF, decides with the SDK's rules, then downloads,
verifies and installs as from a manifest; its telemetry carries the decision, which the
server recomputes from the install id (an agreeing device counts as served). A slice of ids
is compared over real HTTP: the signed manifest each id gets from ``GET /v1/manifest``
against the SDK's local decision from the ruleset fetched and verified through TUF
(tests/test_ruleset_equality.py does 100,000 ids in-process).
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import requests

from client_sdk import DeviceInfo, ModelClient
from client_sdk._trust import TrustCycle
from client_sdk.rules import evaluate_ruleset, parse_ruleset, ruleset_target_path
from tests.makers import fleet_ids, make_ready_version
from tests.sdk_origin import fast_config

MODEL, CHANNEL = "digits", "production"
DEVICE = DeviceInfo(platform="android", os_version="14", device_model="pixel7",
                    app_version="2.3.0", region="de")


def _post(server, path: str, body: dict, status: int = 201) -> dict:
    resp = requests.post(server.base_url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {server.admin_token}"})
    assert resp.status_code == status, resp.text
    return resp.json()


def _root(server) -> bytes:
    return requests.get(server.base_url + "/tuf/metadata/1.root.json", timeout=10).content


def test_local_mode_installs_updates_rolls_back_and_reports(live_server, tmp_path,
                                                           tflite_models, monkeypatch):
    server = live_server
    asked: list[str] = []
    monkeypatch.setattr("registry.api.delivery.manifest_answer",
                        lambda *a, **k: asked.append("manifest") or pytest.fail("manifest"))
    v1, v2 = tflite_models["v1"], tflite_models["v2"]
    for data in (v1, v2):
        make_ready_version(server.services, MODEL,
                           variants={"tflite-fp32": {"format": "tflite", "data": data}})
    _post(server, f"/v1/models/{MODEL}/releases", {"version": 1, "channel": CHANNEL})
    client = ModelClient(server.base_url, tmp_path / "cache", trusted_root=_root(server),
                         device=DEVICE, config=fast_config(), resolve="local")
    model = client.get_model(MODEL, CHANNEL)
    assert (model.version, model.release_counter, model.arm) == (1, 1, None)
    assert hashlib.sha256(model.path.read_bytes()).digest() == hashlib.sha256(v1).digest()
    cached = client.state_dir / "rulesets" / MODEL / f"{CHANNEL}.json"
    assert cached.read_bytes() == requests.get(
        f"{server.base_url}/v1/rulesets/{MODEL}/{CHANNEL}", timeout=10).content

    _post(server, f"/v1/models/{MODEL}/releases", {"version": 2, "channel": CHANNEL})
    model = client.get_model(MODEL, CHANNEL)
    assert (model.version, model.release_counter) == (2, 2)
    _post(server, f"/v1/models/{MODEL}/channels/{CHANNEL}/rollback", {})
    model = client.get_model(MODEL, CHANNEL)
    assert (model.version, model.release_counter) == (1, 3)
    assert hashlib.sha256(model.path.read_bytes()).digest() == hashlib.sha256(v1).digest()

    # The device was never sent a manifest: only its telemetry (install_ok events, sent in
    # the background) told the server what it decided, and the server agreed.
    assert asked == []
    store = server.services.store
    client.wait_for_background(10)
    assert store.served_pairs([(MODEL, client.install_id)]) == {(MODEL, client.install_id)}
    client.report_inference(model, latency_ms=3.5, correct=True)
    pending = client.pending_telemetry()
    assert pending and all(e["channel"] == CHANNEL for e in pending)
    assert pending[-1]["release_counter"] == 3 and pending[-1]["version"] == 1
    result = client.flush_telemetry()
    assert result.error is None and result.pending == 0
    assert store.served_pairs([(MODEL, client.install_id)]) == {(MODEL, client.install_id)}
    client.close()


def test_a_decision_the_server_cannot_recompute_stays_unserved(live_server):
    server = live_server
    make_ready_version(server.services, MODEL)
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": 1, "channel": CHANNEL, "rollout_percent": 10})
    from client_sdk.rules import bucket
    seed = server.services.store.channel_state(MODEL, CHANNEL).releases[0].rollout_seed
    outside = next(i for i in fleet_ids(200, "outside") if bucket(seed, i) >= 1000)
    inside = next(i for i in fleet_ids(200, "inside") if bucket(seed, i) < 1000)
    events = [{"id": f"00000000-0000-4000-8000-00000000000{n}", "kind": "install_ok",
               "install_id": install_id, "ts": "2026-12-01T00:00:00Z", "model": MODEL,
               "version": 1, "variant": "tflite-int8-dynamic", "platform": "android",
               "channel": CHANNEL, "release_counter": 1}
              for n, install_id in enumerate((outside, inside))]
    resp = requests.post(server.base_url + "/v1/telemetry", json={"events": events}, timeout=10)
    assert resp.status_code == 200 and resp.json()["accepted"] == 2, resp.text
    served = server.services.store.served_pairs([(MODEL, outside), (MODEL, inside)])
    assert served == {(MODEL, inside)}  # outside its rollout: a forged decision
    bad = dict(events[0], id="00000000-0000-4000-8000-0000000000aa", release_counter=None)
    resp = requests.post(server.base_url + "/v1/telemetry", json={"events": [bad]}, timeout=10)
    assert resp.json()["rejected"][0]["field"] == "release_counter"


def test_http_slice_local_decisions_equal_signed_manifests(live_server, tmp_path):
    server = live_server
    for _ in range(3):
        make_ready_version(server.services, MODEL)
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": 1, "channel": CHANNEL, "targeting": {"platforms": ["android", "ios"]}})
    _post(server, f"/v1/models/{MODEL}/releases",
          {"version": 2, "channel": CHANNEL, "rollout_percent": 40,
           "targeting": {"regions": ["de", "us"]}})
    _post(server, "/v1/experiments", {
        "name": "slice", "model": MODEL, "channel": CHANNEL, "coverage_percent": 50,
        "weights": [1, 2, 1], "arms": [{"name": "control", "version": 1},
                                       {"name": "b", "version": 2},
                                       {"name": "c", "version": 3,
                                        "variant": "tflite-fp32"}]})
    session = requests.Session()
    trust = TrustCycle(server.base_url, tmp_path / "tuf", _root(server), session, fast_config())
    trust.refresh()
    info = trust.verified_target(ruleset_target_path(MODEL, CHANNEL))
    data = session.get(f"{server.base_url}/v1/rulesets/{MODEL}/{CHANNEL}", timeout=10).content
    assert hashlib.sha256(data).hexdigest() == info.hashes["sha256"]
    ruleset = parse_ruleset(data, MODEL, CHANNEL)
    rng = random.Random("http-slice")
    seen = set()
    for install_id in fleet_ids(300, "http-slice"):
        device = DeviceInfo(platform=rng.choice(["android", "ios", "linux"]),
                            os_version="14", device_model=rng.choice(["pixel7", "iPhone15,2"]),
                            app_version="3.0.0", region=rng.choice(["de", "us", "fr"]))
        query = {"model": MODEL, "channel": CHANNEL, "install_id": install_id,
                 "platform": device.platform, "os_version": device.os_version,
                 "device_model": device.device_model, "app_version": device.app_version,
                 "region": device.region}
        resp = session.get(server.base_url + "/v1/manifest", params=query, timeout=10)
        local = evaluate_ruleset(ruleset, install_id, device, {})
        if resp.status_code == 204:
            assert local is None, install_id
            seen.add("none")
            continue
        assert resp.status_code == 200, resp.text
        doc = json.loads(resp.content)
        assert local is not None, install_id
        assert (local.release_counter, local.version, local.variant["name"],
                local.variant["sha256"], local.experiment, local.arm) == \
            (doc["release_counter"], doc["version"], doc["variant"],
             doc["artifact"]["sha256"], doc["experiment"], doc["arm"]), install_id
        seen.add((doc["version"], doc["arm"]))
    assert {"none", (1, None), (2, None), (1, "control"), (2, "b"), (3, "c")} <= seen, seen
