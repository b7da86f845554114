"""Which devices a release is for: targeting rules and the minimum app version.

Two decisions shape this module (the server applies the same code to every manifest
request; ``conformance/targeting.json`` and ``conformance/versions.json`` pin it):

* **Fail closed.** When a rule constrains an attribute the device did not send, or sent in
  a form that cannot be compared (an OS version like "6.8.0-45-generic" that is not a PEP
  440 version), the rule does not match. Serving a model to a device nobody can prove is
  targeted is worse than serving it the previous release.
* **Strict definitions.** A rule definition with any mistake — an unknown key such as
  "platform" for "platforms", an empty list, a version range that does not parse — is an
  error naming the field, never a rule that silently matches everyone or no one.

A device attribute that is ``None`` or ``""`` counts as not sent (the SDK's
:class:`~client_sdk.DeviceInfo` uses ``""`` for "unknown").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .errors import InvalidTargetingError

__all__ = [
    "PLATFORMS",
    "TargetingRules",
    "meets_min_app_version",
    "validate_min_app_version",
]

PLATFORMS = ("ios", "android", "linux")

_REGION = re.compile(r"[A-Za-z]{2}")
_LIST_FIELDS = ("platforms", "device_models", "device_model_prefixes", "regions")
_RANGE_FIELDS = ("os_version", "app_version")
_FIELDS = frozenset(_LIST_FIELDS + _RANGE_FIELDS)


@dataclass(frozen=True)
class TargetingRules:
    """A conjunction of per-attribute constraints; an absent field constrains nothing.

    Within a list field any entry may match. ``device_models`` (exact, case-sensitive) and
    ``device_model_prefixes`` (case-sensitive ``startswith``) together form one criterion:
    the device model must match either. Version ranges are PEP 440 specifier sets such as
    ">=14,<16"; a device's version is compared on its release numbers only ("18.0b1" counts
    as 18.0, so a beta of OS 18 is in ">=18"). Regions are compared case-insensitively and
    stored uppercase.

    Build instances with :meth:`from_dict`, which validates; the default instance matches
    every device.
    """

    platforms: Optional[tuple[str, ...]] = None
    os_version: Optional[str] = None
    device_models: Optional[tuple[str, ...]] = None
    device_model_prefixes: Optional[tuple[str, ...]] = None
    app_version: Optional[str] = None
    regions: Optional[tuple[str, ...]] = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TargetingRules:
        """Validate a JSON rule definition; ``None`` or ``{}`` means "every device".

        Raises:
            InvalidTargetingError: naming the offending field.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidTargetingError("targeting rules must be a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise InvalidTargetingError(
                f"unknown targeting field {unknown[0]!r}; "
                f"known fields: {', '.join(sorted(_FIELDS))}")
        values: dict[str, Any] = {}
        for name in _LIST_FIELDS:
            if data.get(name) is not None:
                values[name] = _string_list(name, data[name])
        for name in _RANGE_FIELDS:
            if data.get(name) is not None:
                values[name] = _specifier(name, data[name])
        if "platforms" in values:
            bad = [p for p in values["platforms"] if p not in PLATFORMS]
            if bad:
                raise InvalidTargetingError(
                    f"platforms: unknown platform {bad[0]!r}; use {', '.join(PLATFORMS)}")
        if "regions" in values:
            bad = [r for r in values["regions"] if _REGION.fullmatch(r) is None]
            if bad:
                raise InvalidTargetingError(
                    f"regions: {bad[0]!r} is not an ISO 3166-1 alpha-2 code such as 'DE'")
            values["regions"] = tuple(r.upper() for r in values["regions"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form; ``from_dict(rules.to_dict()) == rules``."""
        out: dict[str, Any] = {}
        for name in _LIST_FIELDS + _RANGE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def matches(self, device: Any) -> bool:
        """Whether every constraint holds for ``device`` (fail closed on missing data).

        ``device`` is anything with ``platform``, ``os_version``, ``device_model``,
        ``app_version`` and ``region`` attributes (the SDK's DeviceInfo or the server's DeviceProfile).
        """
        platform, os_version, model, app_version, region = (
            getattr(device, name, None) or None
            for name in ("platform", "os_version", "device_model", "app_version", "region"))
        if self.platforms is not None and platform not in self.platforms:
            return False
        if self.os_version is not None and not _in_range(os_version, self.os_version):
            return False
        if self.app_version is not None and not _in_range(app_version, self.app_version):
            return False
        if not self._model_matches(model):
            return False
        if self.regions is not None:
            if not isinstance(region, str) or region.upper() not in self.regions:
                return False
        return True

    def _model_matches(self, model: str | None) -> bool:
        if self.device_models is None and self.device_model_prefixes is None:
            return True
        if not isinstance(model, str):
            return False
        if self.device_models is not None and model in self.device_models:
            return True
        return any(model.startswith(prefix) for prefix in self.device_model_prefixes or ())


def meets_min_app_version(app_version: str | None, min_app_version: str | None) -> bool:
    """Whether an app can run a model that declares ``min_app_version``.

    A model's input/output contract can change between versions; an app older than the
    declared minimum would feed it the wrong tensors. So when a minimum is set, an app that
    did not send its version, or sent one that is not a PEP 440 version, is treated as too
    old (False). No minimum means every app qualifies. The app version is compared on its
    release numbers only, as in targeting ranges ("3.12.0rc1" counts as 3.12.0).

    Raises:
        InvalidTargetingError: if ``min_app_version`` itself is not a version; validate it
            with :func:`validate_min_app_version` when the model is uploaded.
    """
    if min_app_version is None:
        return True
    minimum = _parse_version("min_app_version", min_app_version)
    app = _release(app_version or None)
    return app is not None and app >= minimum


def validate_min_app_version(value: str) -> str:
    """Return ``value`` if it is a PEP 440 version (e.g. "3.12" or "3.12.0").

    Raises:
        InvalidTargetingError: naming ``min_app_version``.
    """
    _parse_version("min_app_version", value)
    return value


def _parse_version(field: str, value: object) -> Version:
    if not isinstance(value, str):
        raise InvalidTargetingError(f"{field} must be a version string, got {value!r}")
    try:
        return Version(value)
    except InvalidVersion as e:
        raise InvalidTargetingError(f"{field}: {value!r} is not a version such as '3.12.0'") from e


def _string_list(field: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidTargetingError(f"{field} must be a list of strings")
    if not value:
        raise InvalidTargetingError(f"{field} must not be empty; omit it to allow every device")
    for item in value:
        if not isinstance(item, str) or not item:
            raise InvalidTargetingError(f"{field} entries must be non-empty strings, got {item!r}")
    return tuple(value)


def _specifier(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidTargetingError(f"{field} must be a version range such as '>=14,<16'")
    try:
        specifiers = SpecifierSet(value)
    except InvalidSpecifier as e:
        raise InvalidTargetingError(
            f"{field}: {value!r} is not a version range such as '>=14,<16'") from e
    if len(specifiers) == 0:
        raise InvalidTargetingError(f"{field} must be a version range such as '>=14,<16'")
    return value.strip()


def _release(version: str | None) -> Version | None:
    """The release part of a device-reported version, or None if it is not a version.

    Pre-release, post-release, dev and local suffixes are dropped ("18.0b1" -> 18.0): a
    device running a beta of OS 18 is on OS 18 for targeting. Comparing the full PEP 440
    version instead would put "18.0b1" outside both "<18" and ">=18", because PEP 440
    excludes pre-releases of V from "<V".
    """
    if not isinstance(version, str):
        return None
    try:
        return Version(Version(version).base_version)
    except InvalidVersion:
        return None


@lru_cache(maxsize=1024)
def _specifier_set(specifiers: str) -> SpecifierSet:
    # Rules are evaluated on every manifest request; parse each range once.
    return SpecifierSet(specifiers)


def _in_range(version: str | None, specifiers: str) -> bool:
    release = _release(version)
    if release is None:
        return False
    return _specifier_set(specifiers).contains(release, prereleases=True)
