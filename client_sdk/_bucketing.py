"""Deterministic bucketing of install ids into rollouts and experiment arms.

The server, its reports and the apps on devices must agree on which bucket a device falls
in, so bucketing is a pure function of (seed, install id) built only from integer
arithmetic that every language does the same way:

* the hash is GrowthBook's hash version 2 (FNV-1a 32-bit, applied twice), so GrowthBook's
  published test cases are a cross-check;
* buckets are integer basis points 0..9999 and ranges are integer half-open intervals:
  float boundaries are where GrowthBook's own SDKs disagree (docs/delivery.md says exactly
  where ModelDrop's answers differ from GrowthBook's);
* install ids are lowercase ASCII, because SDKs disagree on how to turn other text into
  bytes (UTF-16 units, UTF-8 bytes, low bytes).

``conformance/bucketing.json`` pins every rule here for SDKs in other languages.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from .errors import InvalidBucketingError, InvalidInstallIdError

__all__ = [
    "BASIS_POINTS",
    "arm_ranges",
    "assign_arm",
    "bucket",
    "fnv1a32",
    "hash_v2",
    "in_rollout",
    "new_seed",
    "validate_install_id",
]

BASIS_POINTS = 10_000  # the whole bucket space: buckets are 0..9999

_FNV_OFFSET_BASIS = 0x811C9DC5
_FNV_PRIME = 16_777_619  # 0x01000193
_UINT32_MASK = 0xFFFFFFFF

_INSTALL_ID = re.compile(r"[a-z0-9][a-z0-9-]{7,63}")

# Weights are summed and multiplied by 10,000; this cap keeps every intermediate below
# 2**63 so a Kotlin Long / Swift Int64 re-implementation cannot overflow.
MAX_TOTAL_WEIGHT = 2**40


def fnv1a32(data: str) -> int:
    """FNV-1a 32-bit hash of the UTF-8 bytes of ``data``, as an unsigned int."""
    h = _FNV_OFFSET_BASIS
    for byte in data.encode("utf-8"):
        h ^= byte
        h = (h * _FNV_PRIME) & _UINT32_MASK
    return h


def hash_v2(seed: str, unit_id: str) -> int:
    """Bucket of ``unit_id`` under ``seed`` in basis points, 0..9999 (no id check).

    GrowthBook hash version 2 without the final division by 10,000: the first hash is
    re-hashed through its *unsigned* decimal string, which breaks the correlation between
    ids that share a prefix (version 1's flaw across parallel experiments).
    """
    return fnv1a32(str(fnv1a32(seed + unit_id))) % BASIS_POINTS


def bucket(seed: str, install_id: str) -> int:
    """:func:`hash_v2` of a validated install id.

    Raises:
        InvalidInstallIdError: if ``install_id`` is not a valid install id.
    """
    return hash_v2(seed, validate_install_id(install_id))


def validate_install_id(install_id: object) -> str:
    """Return ``install_id`` unchanged if it is lowercase ASCII ``[a-z0-9][a-z0-9-]{7,63}``.

    Raises:
        InvalidInstallIdError: for anything else — uppercase, non-ASCII, too short or too
            long, or not a string. There is no normalisation: a device that sent "ABC..."
            and one that sent "abc..." would otherwise share a bucket on the server while
            an app hashing its own id would not.
    """
    if not isinstance(install_id, str) or _INSTALL_ID.fullmatch(install_id) is None:
        raise InvalidInstallIdError(
            "install_id must be 8-64 characters of lowercase ASCII letters, digits and '-', "
            "starting with a letter or digit (a lowercase UUID fits)")
    return install_id


def arm_ranges(weights: Sequence[int], coverage_bp: int) -> list[tuple[int, int]]:
    """Half-open bucket ranges ``[start, end)`` for experiment arms.

    Integer rounding, exactly (W = sum of weights, n = number of arms):

    * ``start_i = floor(10000 * (w_0 + ... + w_{i-1}) / W)`` for i < n, and
      ``start_n = 10000``; so arm i *owns* the slot ``[start_i, start_{i+1})`` of the full
      space whatever the coverage, and the slots tile 0..10000 with no gap;
    * ``end_i = start_i + floor((start_{i+1} - start_i) * coverage_bp / 10000)``.

    Because starts do not depend on coverage and ``end_i`` only grows with it, raising
    coverage never moves an enrolled unit to another arm and never un-enrols one (changing
    weights does move units). Ranges never overlap and at full coverage they cover every
    bucket. All values are non-negative, so floor is plain integer division anywhere.

    Args:
        weights: One non-negative integer per arm (at least one positive); only their
            ratios matter.
        coverage_bp: Share of the population enrolled, in basis points 0..10000.

    Raises:
        InvalidBucketingError: if weights or coverage are out of range.
    """
    _check_basis_points("coverage_bp", coverage_bp)
    if not weights:
        raise InvalidBucketingError("weights must name at least one arm")
    for weight in weights:
        if not _is_int(weight) or weight < 0:
            raise InvalidBucketingError(f"weights must be non-negative integers, got {weight!r}")
    total = sum(weights)
    if total <= 0:
        raise InvalidBucketingError("at least one weight must be positive")
    if total > MAX_TOTAL_WEIGHT:
        raise InvalidBucketingError(f"weights must sum to at most {MAX_TOTAL_WEIGHT}")

    starts = []
    cumulative = 0
    for weight in weights:
        starts.append(BASIS_POINTS * cumulative // total)
        cumulative += weight
    starts.append(BASIS_POINTS)
    return [(starts[i], starts[i] + (starts[i + 1] - starts[i]) * coverage_bp // BASIS_POINTS)
            for i in range(len(weights))]


def assign_arm(seed: str, install_id: str, ranges: Sequence[tuple[int, int]]) -> int | None:
    """Index of the arm whose range holds this device's bucket, or None if not enrolled.

    Raises:
        InvalidInstallIdError: if ``install_id`` is not a valid install id.
    """
    value = bucket(seed, install_id)
    for index, (start, end) in enumerate(ranges):
        if start <= value < end:
            return index
    return None


def in_rollout(seed: str, install_id: str, percent_bp: int) -> bool:
    """Whether a device is inside a staged rollout of ``percent_bp`` basis points.

    The device is in when its bucket is below ``percent_bp``, so raising the percentage
    only ever adds devices. Use the release's *rollout* seed, never an experiment's: with
    a shared seed the devices in a 10% rollout would be exactly those in the first arm's
    slot, and rollout and arm assignment would correlate.

    Raises:
        InvalidInstallIdError: if ``install_id`` is not a valid install id.
        InvalidBucketingError: if ``percent_bp`` is not an integer in 0..10000.
    """
    _check_basis_points("percent_bp", percent_bp)
    return bucket(seed, install_id) < percent_bp


def new_seed() -> str:
    """A fresh random seed: 16 lowercase hex characters (64 bits).

    Random rather than derived from a name, so two experiments never share buckets by
    accident and a re-created experiment reshuffles. Hex keeps the seed ASCII, so its
    UTF-8 bytes are the same in every language.
    """
    return secrets.token_hex(8)


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python; True as a weight is a bug, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_basis_points(name: str, value: object) -> None:
    if not _is_int(value) or not 0 <= value <= BASIS_POINTS:  # type: ignore[operator]
        raise InvalidBucketingError(
            f"{name} must be an integer number of basis points in 0..{BASIS_POINTS}, "
            f"got {value!r}")
