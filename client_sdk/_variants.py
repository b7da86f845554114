"""Which converted variant of a model version a given device should download.

The choice uses only what was measured, because the cheap proxies mislead: on the
reference machine the smallest TFLite variant (dynamic-range int8) was *slower* than
float32, while full-integer int8 was the fastest (docs/delivery.md, "Variant choice").
The rule, applied to the variants of one model version (``conformance/variants.json``):

1. Keep the variants in the platform's format (iOS -> Core ML, Android/Linux -> TFLite)
   that are ``servable`` (the converter marks a variant servable only when its fidelity
   is within the model's threshold, so this is also the fidelity filter).
2. If the release pins a variant by name, answer that variant — or None when it is not
   among the candidates: a pin is an explicit decision, and silently serving something
   else would hide the mistake.
3. If latency was measured on this device class for at least two candidates, answer the
   fastest of those (median ms; ties: higher fidelity, then smaller size, then name).
4. Otherwise answer the smallest candidate (ties: higher fidelity, then name) — the
   download cost is certain, a speed-up is not.

``reference_latency_ms`` (measured on the server) is deliberately not used: lab numbers do
not predict on-device speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ._targeting import PLATFORMS
from .errors import InvalidDeviceError

__all__ = ["FORMAT_BY_PLATFORM", "choose_variant", "platform_format"]

# One entry per PLATFORMS value.
FORMAT_BY_PLATFORM = {"ios": "coreml", "android": "tflite", "linux": "tflite"}


def platform_format(platform: str) -> str:
    """The model format a platform runs: "coreml" for iOS, "tflite" otherwise.

    Raises:
        InvalidDeviceError: for a platform other than ios, android or linux.
    """
    try:
        return FORMAT_BY_PLATFORM[platform]
    except (KeyError, TypeError):
        raise InvalidDeviceError(
            f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}") from None


def choose_variant(
    variants: Sequence[Mapping[str, Any]],
    platform: str,
    device_class: str | None = None,
    pinned: str | None = None,
) -> Mapping[str, Any] | None:
    """Pick the variant for one device, by the rule in this module's docstring.

    Args:
        variants: Variant descriptions with keys ``name``, ``format``, ``size`` (bytes),
            ``servable``, ``fidelity`` (agreement with the source, higher is better, may be
            None) and ``latency_by_device`` (device class -> median ms; may be empty/None).
        platform: The device's platform; decides the format.
        device_class: Key into ``latency_by_device``; None when unknown.
        pinned: Name of a variant the release insists on.

    Returns:
        One of the given mappings, or None when no variant can be served to this device.

    Raises:
        InvalidDeviceError: for an unknown platform.
    """
    wanted_format = platform_format(platform)
    candidates = [v for v in variants if v["format"] == wanted_format and bool(v["servable"])]
    if pinned is not None:
        return next((v for v in candidates if v["name"] == pinned), None)
    if not candidates:
        return None

    if device_class is not None:
        measured = [(latency, v) for v in candidates
                    if (latency := _latency_on(v, device_class)) is not None]
        if len(measured) >= 2:
            return min(measured, key=lambda pair: (
                pair[0], -_fidelity(pair[1]), pair[1]["size"], pair[1]["name"]))[1]

    return min(candidates, key=lambda v: (v["size"], -_fidelity(v), v["name"]))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _latency_on(variant: Mapping[str, Any], device_class: str) -> float | None:
    value = (variant.get("latency_by_device") or {}).get(device_class)
    # A missing, non-numeric, non-finite or non-positive figure is no measurement.
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _fidelity(variant: Mapping[str, Any]) -> float:
    # Unknown fidelity (no evaluation set) ranks below any measured fidelity.
    fidelity = variant.get("fidelity")
    if not _is_number(fidelity) or not math.isfinite(fidelity):
        return -math.inf
    return float(fidelity)
