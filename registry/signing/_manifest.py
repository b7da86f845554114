"""Signing the per-device manifest with the director key, and publishing that key via root.

The manifest says what *this* device should install; TUF targets say what exists. A
device trusts only the TUF root, so the manifest public keys travel inside root's signed
``x-modeldrop-manifest`` extension field: pinning the root pins the manifest key, and
rotating the manifest key is an ordinary root update clients already know how to follow.

Signatures are over the OLPC canonical JSON of the document without ``signatures`` —
the same encoding TUF uses — so any TUF-capable client can reproduce the bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Key, Signature, Signer, SSlibKey

from .errors import InvalidManifestError, ManifestSignatureError

__all__ = [
    "MANIFEST_EXTENSION",
    "canonical_manifest_bytes",
    "manifest_extension",
    "sign_document",
    "verify_manifest",
]

#: Name of the signed root extension field that carries the manifest public keys.
MANIFEST_EXTENSION = "x-modeldrop-manifest"


def manifest_extension(keys: Iterable[SSlibKey], threshold: int = 1) -> dict[str, Any]:
    """Build the ``x-modeldrop-manifest`` root field for these manifest public keys."""
    keys = list(keys)
    return {
        "keyids": [k.keyid for k in keys],
        "threshold": threshold,
        "keys": {k.keyid: k.to_dict() for k in keys},
    }


def canonical_manifest_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes a manifest signature covers: canonical JSON without ``signatures``.

    Raises:
        InvalidManifestError: not a mapping, or not canonicalisable (floats, non-str keys).
    """
    if not isinstance(document, Mapping):
        raise InvalidManifestError("a manifest must be a JSON object")
    unsigned = {k: v for k, v in document.items() if k != "signatures"}
    try:
        return encode_canonical(unsigned).encode("utf-8")
    except Exception as e:  # FormatError for floats, TypeError for odd values
        raise InvalidManifestError(
            "manifest is not canonical JSON (only str keys, ints, strings, bools, null)"
        ) from e


def sign_document(document: Mapping[str, Any], signers: Iterable[Signer]) -> dict[str, Any]:
    """Return a deep copy of ``document`` whose ``signatures`` are by ``signers``.

    Existing signatures are replaced: a signature is only meaningful over exactly the
    fields being returned.
    """
    payload = canonical_manifest_bytes(document)
    signed = copy.deepcopy({k: v for k, v in document.items() if k != "signatures"})
    signed["signatures"] = [
        {"keyid": sig.keyid, "sig": sig.signature} for sig in (s.sign(payload) for s in signers)
    ]
    return signed


def verify_manifest(document: Mapping[str, Any], extension: Mapping[str, Any]) -> None:
    """Check ``document``'s signatures against an ``x-modeldrop-manifest`` field.

    This is the server-side reference of the device rule; the SDK implements the same
    check without importing the server.

    Raises:
        ManifestSignatureError: fewer than ``threshold`` valid signatures by listed keys.
        InvalidManifestError: the document cannot be canonicalised.
    """
    payload = canonical_manifest_bytes(document)
    try:
        threshold = int(extension["threshold"])
        trusted: dict[str, Key] = {
            keyid: SSlibKey.from_dict(keyid, dict(extension["keys"][keyid]))
            for keyid in extension["keyids"]
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestSignatureError("the manifest key field is malformed") from e
    signatures = document.get("signatures")
    if not isinstance(signatures, list):
        raise ManifestSignatureError("manifest has no signatures list")
    # Distinct public keys, not key ids: one key listed under two ids must not meet a
    # threshold of two (the SDK and conformance/manifests.json count the same way).
    valid: set[str] = set()
    for entry in signatures:
        if not isinstance(entry, Mapping) or entry.get("keyid") not in trusted:
            continue
        keyid = str(entry["keyid"])
        try:
            trusted[keyid].verify_signature(Signature(keyid, str(entry.get("sig", ""))), payload)
        except Exception:  # noqa: BLE001 - UnverifiedSignatureError, VerificationError, bad hex
            continue
        valid.add(trusted[keyid].keyval.get("public", keyid))
    if len(valid) < threshold:
        raise ManifestSignatureError(
            f"manifest has {len(valid)} valid signature(s) from trusted manifest keys, needs {threshold}"
        )
