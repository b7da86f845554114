"""Pure delivery logic: who gets which release, arm and variant, and when to halt.

Nothing in this package touches the database, the web framework or the network; the
manifest service feeds it stored releases and the device's request and turns its
answers into a signed manifest. That keeps every decision unit-testable and lets the
same rules be re-implemented on devices (docs/delivery.md).
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
    DeviceInfo,
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
    "DeviceInfo",
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
    "new_seed",
    "parse_guardrail",
    "parse_guardrails",
    "platform_format",
    "validate_install_id",
]
