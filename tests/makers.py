"""Makers for delivery tests: ready versions with real, servable variant artifacts.

``make_ready_version`` records variants exactly as the job runner does — bytes in the
blob store, then the variant rows with their planned target paths — without running a
converter, so delivery tests stay fast and still serve real, verifiable artifacts. Like a
converted version, its variants are confidential until a release or experiment publishes
them (``registry.delivery.publication``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping
from typing import Any

from registry.signing import variant_target_path

__all__ = ["DEFAULT_VARIANTS", "fleet_ids", "make_ready_version", "variant_bytes"]

EXTENSIONS = {"tflite": "tflite", "coreml": "mlpackage.zip"}

#: name -> spec; sizes differ so "the smallest" is unambiguous per format.
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "tflite-fp32": {"format": "tflite", "size": 6000},
    "tflite-int8-dynamic": {"format": "tflite", "size": 2400},
    "coreml-fp16": {"format": "coreml", "size": 3000},
}


def variant_bytes(model: str, variant: str, version: int, size: int) -> bytes:
    """Deterministic bytes: one random base per (model, variant), 1% of bytes changed per
    version — like successive trainings of one architecture, so bsdiff patches are small."""
    base = bytearray(random.Random(f"{model}/{variant}").randbytes(size))
    edits = random.Random(f"{model}/{variant}/{version}")
    for _ in range(max(1, size // 100)):
        base[edits.randrange(size)] = edits.randrange(256)
    return bytes(base)


def make_ready_version(services: Any, name: str, *,
                       variants: Mapping[str, Mapping[str, Any]] | None = None,
                       min_app_version: str | None = None, number: int | None = None,
                       actor: str = "tests"):
    """Create a ``ready`` version of ``name`` whose variants are stored and recorded (not yet
    public: promoting the version publishes them).

    Args:
        variants: name -> {"format": "tflite"|"coreml", "size": int, "data": bytes,
            "servable": bool, "agreement": float, "signature": dict}; default
            :data:`DEFAULT_VARIANTS`.
        min_app_version: Put into the version's metadata.
        number: Explicit version number (default: next).
    """
    variants = DEFAULT_VARIANTS if variants is None else variants
    source = services.blobs.put_bytes(f"source {name} {uuid.uuid4()}".encode())
    metadata = {"framework": "keras"}
    if min_app_version is not None:
        metadata["min_app_version"] = min_app_version
    version, _ = services.store.create_version(
        name, sha256=source.sha256, size=source.size, source_format="keras",
        filename="model.keras", metadata=metadata, eval_sha256=None, actor=actor, number=number)
    number = version.version
    version_id = services.store.version_id(name, number)
    stored = []
    for variant, spec in variants.items():
        fmt = spec.get("format", "tflite")
        data = spec.get("data") or variant_bytes(name, variant, number, spec.get("size", 4000))
        info = services.blobs.put_bytes(data)
        path = variant_target_path(name, number, variant, EXTENSIONS[fmt])
        stored.append((variant, fmt, info, path, bool(spec.get("servable", True)),
                       spec.get("agreement", 0.99), spec.get("signature")))
    for variant, fmt, info, path, ok, agreement, signature in stored:
        services.store.record_variant(
            version_id, name=variant, format=fmt, sha256=info.sha256, size=info.size,
            target_path=path if ok else None, fidelity={"top1_agreement": agreement},
            reference_latency_ms=None, servable=ok, reason=None if ok else "below threshold",
            error=None, signature=signature)
    services.store.set_version_status(version_id, "ready")
    return services.store.get_version(name, number)


def fleet_ids(n: int, prefix: str = "dev") -> list[str]:
    """``n`` distinct valid install ids (lowercase UUID4s, reproducible)."""
    rng = random.Random(f"fleet/{prefix}/{n}")
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


EVENT_INSTALL_ID = "0b7e4c1a-3f5d-4e2b-9a8c-6d1f2e3a4b5c"


def telemetry_event(**fields) -> dict:
    """The wire-format example event (docs/wire-format.md) with overrides; None removes a field."""
    base = {"id": str(uuid.uuid4()), "kind": "inference", "install_id": EVENT_INSTALL_ID,
            "ts": "2026-11-27T14:00:00Z", "model": "digits", "version": 4,
            "variant": "tflite-int8-dynamic", "experiment": "digits-v4-vs-v3", "arm": "treatment",
            "device_model": "pixel7", "platform": "android", "latency_ms": 4.1, "correct": True}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}
