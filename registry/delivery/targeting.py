"""Which devices a release is for: targeting rules and the minimum app version.

The rules themselves (fail closed on missing or unparsable attributes; strict definitions
that name the offending field) are implemented once, in ``client_sdk/_targeting.py``
(``client_sdk.rules``): a device that evaluates a signed ruleset locally must match
exactly the devices this server matches, so both run the same code, and
``conformance/targeting.json`` / ``versions.json`` pin it. This module adds what only the
server needs — :class:`DeviceProfile`, the validated description a manifest request carries —
and re-exports the rules with the server's errors (same codes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client_sdk import errors as _sdk_errors
from client_sdk import rules as _rules

from .errors import InvalidDeviceError, InvalidTargetingError, sdk_rules

__all__ = [
    "PLATFORMS",
    "DeviceProfile",
    "TargetingRules",
    "meets_min_app_version",
    "validate_min_app_version",
]

PLATFORMS = _rules.PLATFORMS


@dataclass(frozen=True)
class DeviceProfile:
    """What a device says about itself on a manifest request.

    Attributes:
        platform: "ios", "android" or "linux"; decides the model format.
        os_version: e.g. "17.2.1" (iOS) or "14" (Android API-level releases).
        device_model: hardware identifier, e.g. "iPhone15,2" or "pixel7".
        app_version: the host app's version, e.g. "3.12.0".
        region: ISO 3166-1 alpha-2 country code, any case, e.g. "DE".
    """

    platform: str
    os_version: str | None = None
    device_model: str | None = None
    app_version: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise InvalidDeviceError(
                f"platform must be one of {', '.join(PLATFORMS)}, got {self.platform!r}"
            )
        for name in ("os_version", "device_model", "app_version", "region"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidDeviceError(f"{name} must be a string, got {type(value).__name__}")


class TargetingRules(_rules.TargetingRules):
    """The SDK's :class:`client_sdk.rules.TargetingRules`; :meth:`from_dict` raises the
    server's :class:`~registry.delivery.errors.InvalidTargetingError`."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TargetingRules:
        try:
            return super().from_dict(data)  # type: ignore[return-value]
        except _sdk_errors.InvalidTargetingError as e:
            raise InvalidTargetingError(e.detail) from None


meets_min_app_version = sdk_rules(_rules.meets_min_app_version)
validate_min_app_version = sdk_rules(_rules.validate_min_app_version)
