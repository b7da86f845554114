"""The wire format in docs/wire-format.md is the contract: the server's documents match it and
the SDK's parser accepts exactly what the server produces (and the documented example)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import requests

from client_sdk._manifest import canonical_bytes, check_binding, parse_manifest, parse_manifest_keys, verify_signatures
from tests.makers import make_ready_version

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-format.md"
INSTALL_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _documented_manifest() -> dict:
    text = DOC.read_text()
    block = text.split("## Manifest", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    return json.loads(re.sub(r'"<[^">]*>"', '"x"', block))


def test_server_manifest_has_the_documented_fields_and_the_sdk_accepts_it(live_server):
    svc = live_server.services
    version = make_ready_version(svc, "digits", variants={
        "tflite-fp32": {"format": "tflite", "data": b"tflite bytes " * 100}})
    resp = requests.post(f"{live_server.base_url}/v1/models/digits/releases",
                         json={"version": version.version, "channel": "production"},
                         headers={"Authorization": f"Bearer {live_server.admin_token}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    served = requests.get(f"{live_server.base_url}/v1/manifest", timeout=10, params={
        "model": "digits", "channel": "production", "platform": "android",
        "install_id": INSTALL_ID, "app_version": "2.3.0"})
    assert served.status_code == 200, served.text
    document = served.json()

    documented = _documented_manifest()
    assert set(documented) <= set(document), set(documented) - set(document)
    assert set(documented["artifact"]) <= set(document["artifact"])
    assert document["schema"] == 1 and document["install_id"] == INSTALL_ID
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["issued_at"])

    manifest = parse_manifest(served.content, model="digits", channel="production")
    root = json.loads(requests.get(f"{live_server.base_url}/v1/trusted-root", timeout=10).content)
    keys = parse_manifest_keys(root["signed"])
    verify_signatures(manifest, keys)
    check_binding(manifest, INSTALL_ID)
    unsigned = {k: v for k, v in document.items() if k != "signatures"}
    from securesystemslib.formats import encode_canonical

    assert canonical_bytes(unsigned) == encode_canonical(unsigned).encode()


def test_documented_example_parses_in_the_sdk():
    example = _documented_manifest()
    example["artifact"]["sha256"] = "a" * 64
    example["artifact"]["urls"] = ["https://cdn.example/v1/artifacts/" + "a" * 64]
    example["install_id"] = INSTALL_ID
    example["signatures"] = [{"keyid": "b" * 64, "sig": "c" * 128}]
    manifest = parse_manifest(json.dumps(example).encode(), model="digits", channel="production")
    assert manifest.release_counter == 7 and manifest.arm == "treatment"
    assert [t.name for t in manifest.signature.inputs] == ["image"]
    assert manifest.signature.inputs[0].shape == (None, 28, 28, 1)


def test_signature_dtypes_are_the_same_in_docs_server_and_sdk():
    from client_sdk._signature import DTYPES as SDK_DTYPES
    from registry.delivery.manifest import _WIRE_DTYPES
    from registry.jobs.results import SIGNATURE_DTYPES
    from registry.schemas import ARTIFACT_DTYPES

    text = DOC.read_text().split("`signature` (signed like every field)", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(\w+)`", text.split("`dtype` is one of", 1)[1].split(";", 1)[0]))
    assert documented == set(SDK_DTYPES) == set(_WIRE_DTYPES) == set(SIGNATURE_DTYPES) \
        == set(ARTIFACT_DTYPES)


def test_a_server_manifest_with_a_signature_parses_in_the_sdk(live_server):
    svc = live_server.services
    signature = {"inputs": [{"name": "tokens", "dtype": "int32", "shape": [None, 12],
                             "narrowed_from": "int64"}],
                 "outputs": [{"name": "scores", "dtype": "float32", "shape": None}]}
    version = make_ready_version(svc, "texts", variants={
        "tflite-fp32": {"format": "tflite", "data": b"tflite bytes " * 100, "signature": signature}})
    resp = requests.post(f"{live_server.base_url}/v1/models/texts/releases",
                         json={"version": version.version, "channel": "production"},
                         headers={"Authorization": f"Bearer {live_server.admin_token}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    served = requests.get(f"{live_server.base_url}/v1/manifest", timeout=10, params={
        "model": "texts", "channel": "production", "platform": "android", "install_id": INSTALL_ID})
    assert served.json()["signature"] == signature
    manifest = parse_manifest(served.content, model="texts", channel="production")
    root = json.loads(requests.get(f"{live_server.base_url}/v1/trusted-root", timeout=10).content)
    verify_signatures(manifest, parse_manifest_keys(root["signed"]))  # signed over it
    assert manifest.signature.inputs[0].narrowed_from == "int64"
    assert manifest.signature.outputs[0].shape is None


def test_sdk_events_match_the_documented_telemetry_kinds():
    from registry.telemetry import ingest

    text = DOC.read_text()
    documented = set(re.findall(r"`(download_started|download_finished|download_failed|"
                                r"install_ok|install_failed|inference|crash)`", text))
    server_kinds = set(ingest.EVENT_KINDS)
    assert documented == server_kinds, (documented, server_kinds)
