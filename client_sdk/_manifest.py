"""The signed manifest: strict parsing, path safety and signature checks — pure data.

No I/O here: the manifest is bytes in, a frozen :class:`Manifest` or an error out. That
keeps the security rules in one readable place and lets a contract test feed it the
server's real output.

Order matters and is deliberate: the document is parsed and its target paths are checked
*before* anything uses them (a hostile path never reaches a URL or the file system);
the signature is checked against keys from the verified TUF root; then freshness and the
device binding. The release-counter check needs persistent state and lives in the client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from securesystemslib.formats import encode_canonical
from securesystemslib.signer import Signature, SSlibKey

from ._signature import IOSignature, parse_signature
from .errors import (
    InstallIdMismatchError,
    ManifestExpiredError,
    ManifestInvalidError,
    ManifestKeyMissingError,
    ManifestSignatureError,
    ReleaseRollbackError,
    TargetMismatchError,
    TargetNotFoundError,
    UnsafeTargetPathError,
)

__all__ = [
    "MANIFEST_KEY_FIELD",
    "Artifact",
    "Delta",
    "Manifest",
    "ManifestKeys",
    "canonical_bytes",
    "check_binding",
    "check_counter",
    "check_freshness",
    "check_target_entry",
    "parse_manifest",
    "parse_manifest_keys",
    "validate_target_path",
    "verify_manifest",
    "verify_signatures",
]

#: The signed TUF root extension field that carries the manifest public keys.
MANIFEST_KEY_FIELD = "x-modeldrop-manifest"

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._+-]+")  # no %, no spaces, no separators
_MAX_PATH = 1024  # characters


@dataclass(frozen=True)
class Artifact:
    target: str
    length: int
    sha256: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class Delta:
    target: str
    url: str | None
    length: int
    sha256: str
    base_sha256: str
    algorithm: str


@dataclass(frozen=True)
class Manifest:
    """A parsed (not yet trusted) schema-1 manifest; ``document`` is what was signed."""

    document: Mapping[str, Any]
    model: str
    channel: str
    release_counter: int
    version: int
    variant: str
    format: str
    artifact: Artifact
    install_id: str
    issued_at: datetime
    expires_at: datetime
    experiment: str | None = None
    arm: str | None = None
    delta: Delta | None = None
    signature: IOSignature | None = None  # the artifact's inputs and outputs; None: unknown


@dataclass(frozen=True)
class ManifestKeys:
    keys: Mapping[str, SSlibKey]
    threshold: int


def validate_target_path(path: Any) -> str:
    """Return ``path`` if it is a clean relative POSIX path made of safe segments.

    Target paths become URL paths and file names on the device, so anything that could
    climb directories or be read differently by another layer is refused outright.

    Raises:
        UnsafeTargetPathError: empty, absolute, backslash, ``.``/``..``/empty segment,
            or characters outside ``[A-Za-z0-9._+-]``.
    """
    if not isinstance(path, str) or not path:
        raise UnsafeTargetPathError("target path must be a non-empty string")
    if len(path) > _MAX_PATH:
        raise UnsafeTargetPathError(f"target path is longer than {_MAX_PATH} characters")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise UnsafeTargetPathError(f"target path must be relative: {path!r}")
    if "\\" in path:
        raise UnsafeTargetPathError(f"target path must not contain a backslash: {path!r}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeTargetPathError(f"target path has an empty, '.' or '..' segment: {path!r}")
        if not _SEGMENT_RE.fullmatch(segment):
            raise UnsafeTargetPathError(f"target path has unsafe characters: {path!r}")
    return path


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The signed bytes: OLPC canonical JSON of the document without ``signatures``."""
    unsigned = {k: v for k, v in document.items() if k != "signatures"}
    try:
        return encode_canonical(unsigned).encode("utf-8")
    except Exception as e:  # FormatError on floats, TypeError on odd values
        raise ManifestInvalidError("manifest is not canonical JSON (floats are not allowed)") from e


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers reading different values for a duplicated key is a classic way to make
    # the verified document differ from the used one.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestInvalidError(f"manifest repeats the key {key!r}")
        out[key] = value
    return out


def _need(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = doc.get(key)
    if kind is int or kind == (int,):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ManifestInvalidError(f"{where}{key} is missing or has the wrong type")
    return value


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ManifestInvalidError(f"{key} must be a string or null")
    return value


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise ManifestInvalidError(f"{where} must be 64 lowercase hex characters")
    return value


def _length(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestInvalidError(f"{where} must be a non-negative integer")
    return value


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https", ""):
        raise ManifestInvalidError(f"{where} must be an http(s) URL")
    return value


def parse_time(value: Any, where: str) -> datetime:
    """RFC 3339 UTC with a ``Z`` suffix, as the wire format says."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ManifestInvalidError(f"{where} must be an RFC 3339 UTC time ending in Z")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError as e:
        raise ManifestInvalidError(f"{where} is not a valid time: {value!r}") from e
    return parsed.astimezone(timezone.utc)


def _target(value: Any, model: str, where: str) -> str:
    path = validate_target_path(value)
    if path.split("/", 1)[0] != model:
        raise UnsafeTargetPathError(f"{where} {path!r} is outside the model {model!r}")
    return path


def parse_manifest(body: bytes, *, model: str, channel: str) -> Manifest:
    """Parse and structurally validate a manifest for the requested model and channel.

    Raises:
        ManifestInvalidError: not JSON, wrong schema, wrong types, another model/channel.
        UnsafeTargetPathError: a target path that must not be used.
    """
    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except ManifestInvalidError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestInvalidError("manifest is not valid UTF-8 JSON") from e
    if not isinstance(doc, dict):
        raise ManifestInvalidError("manifest must be a JSON object")
    if doc.get("schema") != 1 or isinstance(doc.get("schema"), bool):
        raise ManifestInvalidError(f"unsupported manifest schema {doc.get('schema')!r}")
    if _need(doc, "model", str, "") != model:
        raise ManifestInvalidError(f"manifest is for model {doc['model']!r}, not {model!r}")
    if _need(doc, "channel", str, "") != channel:
        raise ManifestInvalidError(
            f"manifest is for channel {doc['channel']!r}, not {channel!r}")
    art = _need(doc, "artifact", dict, "")
    urls = art.get("urls", [])
    if not isinstance(urls, list):
        raise ManifestInvalidError("artifact.urls must be a list")
    artifact = Artifact(
        target=_target(art.get("target"), model, "artifact.target"),
        length=_length(art.get("length"), "artifact.length"),
        sha256=_sha(art.get("sha256"), "artifact.sha256"),
        urls=tuple(_url(u, "artifact.urls[]") for u in urls),
    )
    delta = None
    raw_delta = doc.get("delta")
    if raw_delta is not None:
        if not isinstance(raw_delta, dict):
            raise ManifestInvalidError("delta must be an object or null")
        delta = Delta(
            target=_target(raw_delta.get("target"), model, "delta.target"),
            url=_url(raw_delta["url"], "delta.url") if raw_delta.get("url") else None,
            length=_length(raw_delta.get("length"), "delta.length"),
            sha256=_sha(raw_delta.get("sha256"), "delta.sha256"),
            base_sha256=_sha(raw_delta.get("base_sha256"), "delta.base_sha256"),
            algorithm=_need(raw_delta, "algorithm", str, "delta."),
        )
    if not isinstance(doc.get("signatures"), list):
        raise ManifestInvalidError("manifest has no signatures list")
    issued_at = parse_time(doc.get("issued_at"), "issued_at")
    expires_at = parse_time(doc.get("expires_at"), "expires_at")
    if expires_at < issued_at:
        raise ManifestInvalidError("manifest expires before it was issued")
    counter = _need(doc, "release_counter", int, "")
    version = _need(doc, "version", int, "")
    if counter < 0 or version < 0:
        raise ManifestInvalidError("release_counter and version must not be negative")
    return Manifest(
        document=doc,
        model=model,
        channel=channel,
        release_counter=counter,
        version=version,
        variant=_need(doc, "variant", str, ""),
        format=_need(doc, "format", str, ""),
        artifact=artifact,
        install_id=_need(doc, "install_id", str, ""),
        issued_at=issued_at,
        expires_at=expires_at,
        experiment=_optional_str(doc, "experiment"),
        arm=_optional_str(doc, "arm"),
        delta=delta,
        signature=parse_signature(doc.get("signature")),
    )


def parse_manifest_keys(root_signed_fields: Mapping[str, Any]) -> ManifestKeys:
    """Read the manifest keys from the *verified* root's extension fields.

    Raises:
        ManifestKeyMissingError: the field is absent or malformed, or names no Ed25519 key.
    """
    field = root_signed_fields.get(MANIFEST_KEY_FIELD)
    if not isinstance(field, Mapping):
        raise ManifestKeyMissingError(f"the trusted root has no {MANIFEST_KEY_FIELD} field")
    try:
        threshold = field["threshold"]
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ValueError("threshold must be a positive integer")
        keys: dict[str, SSlibKey] = {}
        for keyid in field["keyids"]:
            key = SSlibKey.from_dict(keyid, dict(field["keys"][keyid]))
            if key.keytype != "ed25519" or key.scheme != "ed25519":
                raise ValueError(f"manifest key {keyid} is not ed25519")
            keys[keyid] = key
    except (KeyError, TypeError, ValueError) as e:
        raise ManifestKeyMissingError(f"the {MANIFEST_KEY_FIELD} field is malformed: {e}") from e
    if len(keys) < threshold:
        raise ManifestKeyMissingError(
            f"{MANIFEST_KEY_FIELD} lists {len(keys)} key(s) but needs {threshold} signatures")
    return ManifestKeys(keys=keys, threshold=threshold)


def verify_signatures(manifest: Manifest, trusted: ManifestKeys) -> None:
    """Require ``threshold`` valid signatures by distinct trusted keys.

    The same public key listed under two key ids counts once, so a threshold cannot be
    met by one key twice.

    Raises:
        ManifestSignatureError: not enough valid signatures.
    """
    payload = canonical_bytes(manifest.document)
    valid_public_keys: set[str] = set()
    for entry in manifest.document.get("signatures", []):
        if not isinstance(entry, Mapping):
            continue
        keyid, sig = entry.get("keyid"), entry.get("sig")
        key = trusted.keys.get(keyid) if isinstance(keyid, str) else None
        if key is None or not isinstance(sig, str):
            continue
        try:
            key.verify_signature(Signature(keyid, sig), payload)
        except Exception:  # noqa: BLE001 - UnverifiedSignatureError, VerificationError, bad hex
            continue
        valid_public_keys.add(key.keyval.get("public", keyid))
    if len(valid_public_keys) < trusted.threshold:
        raise ManifestSignatureError(
            f"manifest has {len(valid_public_keys)} valid signature(s) by trusted manifest "
            f"keys; {trusted.threshold} required")


def check_freshness(manifest: Manifest, now: datetime, skew: timedelta) -> None:
    """Refuse an expired manifest, tolerating ``skew`` of device clock error.

    Raises:
        ManifestExpiredError: ``expires_at + skew`` is in the past.
    """
    if now > manifest.expires_at + skew:
        raise ManifestExpiredError(
            f"manifest expired at {manifest.expires_at.isoformat()} (device time "
            f"{now.isoformat()}, allowed skew {skew})")


def check_binding(manifest: Manifest, install_id: str) -> None:
    """Refuse a manifest issued to another device (replayed or mixed-up responses).

    Raises:
        InstallIdMismatchError: the install ids differ.
    """
    if manifest.install_id != install_id:
        raise InstallIdMismatchError("manifest was issued for another install id")


def check_counter(counter: int, highest_seen: int | None) -> None:
    """Refuse a release counter below the highest this device has accepted.

    Equal is fine: the same release is re-fetched on every cycle.

    Raises:
        ReleaseRollbackError: ``counter < highest_seen`` (a replayed manifest).
    """
    if highest_seen is not None and counter < highest_seen:
        raise ReleaseRollbackError(
            f"release counter {counter} is lower than {highest_seen}, already seen (a "
            "replayed manifest; real rollbacks get higher counters)")


def check_target_entry(path: str, length: int, sha256: str, entry: Mapping[str, Any] | None,
                       expect_custom: Mapping[str, Any] | None = None) -> None:
    """Require the verified TUF targets entry for ``path`` to agree with the manifest.

    Args:
        entry: The TUF ``targets`` entry as data (``length``, ``hashes``, ``custom``), or
            None when the verified targets metadata does not list ``path``.
        expect_custom: Fields (model, version, variant, format, kind) compared only when
            the entry's ``custom`` carries them: ``custom`` is signed by the targets role
            but python-tuf does not interpret it, so this is where it earns its keep.

    Raises:
        TargetNotFoundError: no entry.
        TargetMismatchError: length, sha256 or a custom field differ.
    """
    if entry is None:
        raise TargetNotFoundError(f"{path!r} is not a target in the verified TUF targets")
    if entry.get("length") != length:
        raise TargetMismatchError(
            f"{path}: manifest says {length} bytes, TUF targets say {entry.get('length')}")
    tuf_sha = (entry.get("hashes") or {}).get("sha256")
    if not isinstance(tuf_sha, str) or tuf_sha.lower() != sha256:
        raise TargetMismatchError(f"{path}: manifest sha256 differs from TUF targets")
    custom = entry.get("custom")
    custom = custom if isinstance(custom, Mapping) else {}
    for key, expected in (expect_custom or {}).items():
        if key in custom and custom[key] != expected:
            raise TargetMismatchError(
                f"{path}: TUF custom {key}={custom[key]!r}, manifest says {expected!r}")


def verify_manifest(body: bytes, *, model: str, channel: str, keys: ManifestKeys,
                    install_id: str, now: datetime, skew: timedelta = timedelta(0),
                    highest_counter: int | None = None,
                    tuf_entry: Mapping[str, Any] | None = None) -> Manifest:
    """Every check a device makes on a manifest before it downloads, in the device's order.

    The update cycle runs these same steps with the network in between (the keys come
    from the freshly verified TUF root, the entry from verified TUF targets); this pure
    composition is what ``conformance/manifests.json`` exercises: parse and path checks,
    signatures, freshness, device binding, release counter, then the TUF entry.

    Raises:
        UpdateRejectedError: the subclass of the first check that fails.
    """
    manifest = parse_manifest(body, model=model, channel=channel)
    verify_signatures(manifest, keys)
    check_freshness(manifest, now, skew)
    check_binding(manifest, install_id)
    check_counter(manifest.release_counter, highest_counter)
    art = manifest.artifact
    check_target_entry(art.target, art.length, art.sha256, tuf_entry, {
        "model": model, "version": manifest.version, "variant": manifest.variant,
        "format": manifest.format, "kind": "variant"})
    return manifest
