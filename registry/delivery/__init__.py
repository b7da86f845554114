"""Delivery: who gets which release, arm and variant, and when to halt.

The rules are pure — ``bucketing``, ``targeting``, ``variants``, ``guardrails`` touch no
database, web framework or network, and are what this package exports — so every decision
is unit-testable and the same rules can be re-implemented on devices (docs/delivery.md).

The services that apply them to stored state are imported by module name and not
re-exported here, so importing the rules never pulls in the database layer:
``releases`` (promote, rollout, rollback), ``experiments``, ``manifest`` (resolution and
the signed document), ``rulesets`` (the same decision as one signed TUF target per channel,
for devices that decide locally), ``deltas`` (bsdiff4 patches) and ``guardrail_check``
(evaluate guardrails, halt what breaks them). ``bucketing``, ``targeting`` and ``variants``
are the SDK's ``client_sdk.rules`` with the server's errors: one implementation.
"""

from .bucketing import (
    BASIS_POINTS,
    arm_ranges,
    assign_arm,
    fnv1a32,
    hash_v2,
    in_rollout,
    new_seed,
    validate_install_id,
)
from .errors import (
    DeliveryError,
    InvalidBucketingError,
    InvalidDeviceError,
    InvalidGuardrailError,
    InvalidInstallIdError,
    InvalidTargetingError,
)
from .guardrails import (
    DEFAULT_MIN_SAMPLES,
    KNOWN_METRICS,
    Breach,
    Guardrail,
    MetricValue,
    evaluate,
    insufficient_data,
    parse_guardrail,
    parse_guardrails,
)
from .targeting import (
    PLATFORMS,
    DeviceProfile,
    TargetingRules,
    meets_min_app_version,
    validate_min_app_version,
)
from .variants import FORMAT_BY_PLATFORM, choose_variant, platform_format

__all__ = [
    "BASIS_POINTS",
    "DEFAULT_MIN_SAMPLES",
    "FORMAT_BY_PLATFORM",
    "KNOWN_METRICS",
    "PLATFORMS",
    "Breach",
    "DeliveryError",
    "DeviceProfile",
    "Guardrail",
    "InvalidBucketingError",
    "InvalidDeviceError",
    "InvalidGuardrailError",
    "InvalidInstallIdError",
    "InvalidTargetingError",
    "MetricValue",
    "TargetingRules",
    "arm_ranges",
    "assign_arm",
    "choose_variant",
    "evaluate",
    "fnv1a32",
    "hash_v2",
    "in_rollout",
    "insufficient_data",
    "meets_min_app_version",
    "validate_min_app_version",
    "new_seed",
    "parse_guardrail",
    "parse_guardrails",
    "platform_format",
    "validate_install_id",
]
