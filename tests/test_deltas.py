"""Delta patches: computed when a release is published, offered for the installed artifact,
and a bsdiff4 patch of the base yields exactly the offered artifact."""

from __future__ import annotations

import hashlib
import random

import bsdiff4

from registry.delivery.deltas import compute_release_deltas, delta_target_path, wait_for_deltas
from tests.makers import make_ready_version

ANDROID = {"platform": "android", "os_version": "14", "device_model": "pixel7",
           "app_version": "3.2.0"}
DEVICE = "5d9c0e8e-6b1f-4a43-9d3e-2f1d7c9b8a10"


def manifest(client, installed=None, **headers):
    query = {"model": "digits", "channel": "production", "install_id": DEVICE, **ANDROID}
    if installed:
        query["installed_sha256"] = installed
    resp = client.get("/v1/manifest", query_string=query, headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp


def promote(api, version, **body):
    resp = api.post("/v1/models/digits/releases",
                    json={"version": version, "channel": "production", **body})
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def variant(version, name="tflite-int8-dynamic"):
    return next(v for v in version.variants if v.name == name)


def test_delta_is_offered_and_patches_the_base_into_the_artifact(services, api, anon_api):
    v1 = make_ready_version(services, "digits")
    v2 = make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2)
    assert wait_for_deltas(30)
    base, target = variant(v1), variant(v2)
    doc = manifest(anon_api, installed=base.sha256).get_json()
    assert doc["artifact"]["sha256"] == target.sha256
    delta = doc["delta"]
    assert delta is not None
    assert delta["target"] == delta_target_path("digits", 2, "tflite-int8-dynamic", base.sha256)
    assert delta["target"] == f"digits/2/tflite-int8-dynamic.from-{base.sha256[:16]}.bsdiff"
    assert delta["base_sha256"] == base.sha256 and delta["algorithm"] == "bsdiff4"
    assert delta["length"] < target.size
    patch = anon_api.get(delta["url"].split("localhost", 1)[1]).get_data()
    assert len(patch) == delta["length"] and hashlib.sha256(patch).hexdigest() == delta["sha256"]
    base_bytes = anon_api.get(f"/v1/artifacts/{base.sha256}").get_data()
    rebuilt = bsdiff4.patch(base_bytes, patch)
    assert hashlib.sha256(rebuilt).hexdigest() == doc["artifact"]["sha256"]
    # signed in TUF like any artifact
    info = services.signing.target_info(delta["target"])
    assert info["length"] == delta["length"] and info["hashes"]["sha256"] == delta["sha256"]
    assert info["custom"]["kind"] == "delta" and info["custom"]["version"] == 2
    assert info["custom"]["base_sha256"] == base.sha256
    # patches exist for every variant name both versions share
    for name in ("tflite-fp32", "coreml-fp16"):
        found = services.store.find_delta(variant(v1, name).sha256, variant(v2, name).sha256)
        assert found is not None and found.sha256
    assert services.store.audit_log(limit=1, action="delta.create")


def test_no_delta_without_a_known_older_base(services, api, anon_api):
    make_ready_version(services, "digits")
    v2 = make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2)
    assert wait_for_deltas(30)
    current = variant(v2).sha256
    assert manifest(anon_api).get_json()["delta"] is None
    assert manifest(anon_api, installed=current).get_json()["delta"] is None  # up to date
    assert manifest(anon_api, installed="ab" * 32).get_json()["delta"] is None  # unknown base


def test_a_patch_that_is_not_smaller_is_recorded_but_not_offered(services, api, anon_api):
    def noise(seed):
        return {"tflite-int8-dynamic": {"format": "tflite",
                                        "data": random.Random(seed).randbytes(3000)}}

    v1 = make_ready_version(services, "digits", variants=noise(1))
    v2 = make_ready_version(services, "digits", variants=noise(2))
    promote(api, 1)
    promote(api, 2)
    assert wait_for_deltas(30)
    base, target = variant(v1), variant(v2)
    found = services.store.find_delta(base.sha256, target.sha256)
    assert found is not None and found.sha256 is None and found.size >= target.size
    assert manifest(anon_api, installed=base.sha256).get_json()["delta"] is None
    # computed once: a second pass has nothing left to try
    assert compute_release_deltas(services, "digits", "production", 2, 2) == []


def test_rollback_gets_a_delta_back_to_the_old_artifact(services, api, anon_api):
    make_ready_version(services, "digits")
    v2 = make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2)
    rollback = api.post("/v1/models/digits/channels/production/rollback").get_json()
    assert rollback["version"] == 1
    assert wait_for_deltas(30)
    resp = manifest(anon_api, installed=variant(v2).sha256)
    doc = resp.get_json()
    assert doc["version"] == 1 and doc["release_counter"] == 3
    assert doc["delta"]["base_sha256"] == variant(v2).sha256
    assert doc["delta"]["target"].startswith("digits/1/tflite-int8-dynamic.from-")
    # a device without that base gets another ETag: the delta is part of the document
    assert manifest(anon_api).headers["ETag"] != resp.headers["ETag"]


def test_deltas_skip_pairs_already_computed(services, api):
    make_ready_version(services, "digits")
    make_ready_version(services, "digits")
    promote(api, 1)
    promote(api, 2)
    assert wait_for_deltas(30)
    assert compute_release_deltas(services, "digits", "production", 2, 2) == []
