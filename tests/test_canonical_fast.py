"""The manifest signature's canonical JSON (registry/signing/_manifest.py): the C ``json``
fast path writes exactly securesystemslib's ``encode_canonical`` bytes for every document it
takes, and anything outside its value space (floats, non-str keys, control characters,
subclasses) goes to the reference encoder, which also decides what is rejected.
"""

from __future__ import annotations

import enum
import json
import random
from pathlib import Path

import pytest
from securesystemslib.formats import encode_canonical

from registry.signing import _manifest
from registry.signing._manifest import canonical_manifest_bytes, sign_document
from registry.signing.errors import InvalidManifestError

ROOT = Path(__file__).resolve().parent.parent


def _reference(document) -> bytes:
    return encode_canonical({k: v for k, v in document.items() if k != "signatures"}).encode()


def _conformance_documents() -> list[dict]:
    cases = json.loads((ROOT / "conformance" / "manifests.json").read_text())["cases"]
    out = []
    for case in cases:
        try:
            body = json.loads(case["body"])
        except (KeyError, ValueError):
            continue
        if isinstance(body, dict):
            out.append(body)
    return out


def test_every_conformance_manifest_takes_the_fast_path_with_identical_bytes():
    documents = _conformance_documents()
    assert len(documents) >= 20
    fast = 0
    for document in documents:
        unsigned = {k: v for k, v in document.items() if k != "signatures"}
        if _manifest._fast_canonical_ok(unsigned):
            fast += 1
        try:
            expected = _reference(document)
        except Exception:  # noqa: BLE001 - e.g. a float the vectors reject
            with pytest.raises(InvalidManifestError):
                canonical_manifest_bytes(document)
            continue
        assert canonical_manifest_bytes(document) == expected
    assert fast >= len(documents) - 3  # the vectors are real manifests: nearly all are fast


_ALPHABET = ["a", "Z", "0", " ", '"', "\\", "/", "é", "€", "\u2028", "\U0001f600", "\x7f",
             "\n", "\t", "\x00", "\x1f", "{", "}", ",", ":"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 8)))


def _value(rng: random.Random, depth: int):
    pick = rng.randint(0, 9 if depth < 4 else 5)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), rng.randint(-10**9, 10**9)])
    if pick in (3, 4, 5):
        return _text(rng)
    if pick in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if pick == 8:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randint(0, 3)))
    return {_text(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_random_documents_give_the_reference_bytes_on_either_path():
    rng = random.Random(16)
    fast = slow = 0
    for _ in range(3000):
        document = {_text(rng): _value(rng, 0) for _ in range(rng.randint(0, 6))}
        document["install_id"] = _text(rng)
        expected = _reference(document)
        if _manifest._fast_canonical_ok(document):
            fast += 1
        else:
            slow += 1
        assert canonical_manifest_bytes(document) == expected, document
    assert fast > 200 and slow > 200  # both paths were exercised


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(str):
    pass


@pytest.mark.parametrize("document", [
    {"a": 1.5}, {"a": [1, float("nan")]}, {"a": {1: "x"}}, {"a": object()}, {"a": b"x"},
])
def test_what_canonical_json_cannot_encode_is_rejected_as_before(document):
    assert not _manifest._fast_canonical_ok(document)
    with pytest.raises(InvalidManifestError):
        canonical_manifest_bytes(document)


@pytest.mark.parametrize("document", [
    {"a": "line\nbreak"}, {"k\x01": 1}, {"a": _Level.HIGH}, {"a": _Name("x\\\"")},
    {"a": [True, None, (1, "t")]},
])
def test_values_outside_the_fast_space_still_match_the_reference(document):
    assert canonical_manifest_bytes(document) == _reference(document)


def test_a_deep_document_takes_the_reference_encoder(monkeypatch):
    monkeypatch.setattr(_manifest, "_MAX_NODES", 5)
    document = {"a": list(range(10))}
    assert not _manifest._fast_canonical_ok(document)
    assert canonical_manifest_bytes(document) == _reference(document)


def test_the_signed_copy_is_what_was_signed_and_shares_nothing_with_the_input():
    from securesystemslib.signer import CryptoSigner

    signer = CryptoSigner.generate_ed25519()
    document = {"schema": 1, "artifact": {"urls": ["https://x/y"]}, "delta": None,
                "signature": {"inputs": [{"shape": (1, 28)}]}, "signatures": ["stale"]}
    signed = sign_document(document, [signer])
    from registry.signing._manifest import manifest_extension, verify_manifest

    verify_manifest(signed, manifest_extension([signer.public_key]))
    assert signed["artifact"] == document["artifact"] and signed["artifact"] is not document["artifact"]
    signed["artifact"]["urls"].append("mutated")
    assert document["artifact"]["urls"] == ["https://x/y"]
    assert signed["signature"]["inputs"][0]["shape"] == [1, 28]
    assert [s["keyid"] for s in signed["signatures"]] == [signer.public_key.keyid]
