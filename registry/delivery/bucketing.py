"""Bucketing of install ids into rollouts and experiment arms: the SDK's rules, server errors.

The one implementation lives in the SDK distribution (``client_sdk/_bucketing.py``,
exported by ``client_sdk.rules``): the server, its reports and the devices must put every
install id in the same bucket, so they run the same code, and ``conformance/bucketing.json``
pins it for SDKs in other languages. This module re-exports those functions with the
server's errors (:mod:`registry.delivery.errors`, same codes), so nothing in the server
catches an SDK class. docs/delivery.md ("Bucketing") is the re-implementation guide.
"""

from __future__ import annotations

from client_sdk import rules as _rules

from .errors import sdk_rules

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

BASIS_POINTS = _rules.BASIS_POINTS  # the whole bucket space: buckets are 0..9999
MAX_TOTAL_WEIGHT = _rules.MAX_TOTAL_WEIGHT

# Pure and error-free: the SDK's own functions.
fnv1a32 = _rules.fnv1a32
hash_v2 = _rules.hash_v2
new_seed = _rules.new_seed

# May refuse their input: the same functions, raising InvalidInstallIdError /
# InvalidBucketingError of this package.
validate_install_id = sdk_rules(_rules.validate_install_id)
bucket = sdk_rules(_rules.bucket)
arm_ranges = sdk_rules(_rules.arm_ranges)
assign_arm = sdk_rules(_rules.assign_arm)
in_rollout = sdk_rules(_rules.in_rollout)
