"""Signing the per-device manifest with the director key, and publishing that key via root.

The manifest says what *this* device should install; TUF targets say what exists. A
device trusts only the TUF root, so the manifest public keys travel inside root's signed
``x-modeldrop-manifest`` extension field: pinning the root pins the manifest key, and
rotating the manifest key is an ordinary root update clients already know how to follow.

Signatures are over the OLPC canonical JSON of the document without ``signatures`` —
the same encoding TUF uses — so any TUF-capable client can reproduce the bytes.
"""

from __future__ import annotations

import json
import re
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
        if _fast_canonical_ok(unsigned):
            return _FAST.encode(unsigned).encode("utf-8")
        return encode_canonical(unsigned).encode("utf-8")
    except Exception as e:  # FormatError for floats, TypeError for odd values
        raise InvalidManifestError(
            "manifest is not canonical JSON (only str keys, ints, strings, bools, null)"
        ) from e


# The OLPC canonical form TUF uses (securesystemslib's ``encode_canonical``, pure Python and
# most of a manifest signature's cost) is sorted keys, no whitespace, and strings with only
# ``"`` and ``\`` escaped. The C encoder of ``json`` writes exactly that for dicts with str
# keys, lists, tuples, ints, bools, None and strings without control characters (it would
# escape U+0000-U+001F, which canonical JSON writes raw), so for such documents — every
# manifest ``build_document`` makes — it is used; anything else (a float, a non-str key, a
# control character, an int or str subclass, a cycle) takes ``encode_canonical``, which
# also decides what is rejected. tests/test_canonical_fast.py checks the identity.
_FAST = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False,
                         sort_keys=True, separators=(",", ":"))
_CONTROL = re.compile("[\x00-\x1f]")
_MAX_NODES = 10_000  # a bigger document takes the reference encoder (and no deep walk here)


def _fast_canonical_ok(value: Any) -> bool:
    """Whether ``value`` is in the value space where ``_FAST`` equals ``encode_canonical``."""
    stack = [value]
    seen = 0
    control = _CONTROL.search
    while stack:
        item = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return False
        kind = type(item)
        if kind is str:
            if control(item):
                return False
        elif kind is dict:
            for key, child in item.items():
                if type(key) is not str or control(key):
                    return False
                stack.append(child)
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif not (kind is int or kind is bool or item is None):
            return False
    return True


def sign_document(document: Mapping[str, Any], signers: Iterable[Signer]) -> dict[str, Any]:
    """Return a deep copy of ``document`` whose ``signatures`` are by ``signers``.

    Existing signatures are replaced: a signature is only meaningful over exactly the
    fields being returned. The copy is parsed back from the signed bytes, so it is exactly
    what the signatures cover (tuples come back as lists; ``json.loads`` is several times
    cheaper than ``copy.deepcopy``).
    """
    payload = canonical_manifest_bytes(document)
    signed = json.loads(payload, strict=False)  # canonical JSON writes control characters raw
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
