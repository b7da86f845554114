"""The pure rules every ModelDrop SDK must reproduce exactly, in any language.

Names, bucketing, the rollout gate, targeting, the ``min_app_version`` comparison,
variant choice and the evaluation of a whole signed ruleset with them are pure functions
of (rules, device): no I/O, no clock, no randomness
(except :func:`new_seed`, which makes seeds, never decisions). They live in the SDK
distribution, which the server depends on; ``conformance/`` at the repository root pins
each one with JSON vectors and a prose specification, and CI runs every vector against
this module and against the server's delivery code, so a Kotlin, Swift or JS SDK that
passes the vectors decides like the server.
"""

from ._bucketing import (
    BASIS_POINTS,
    MAX_TOTAL_WEIGHT,
    arm_ranges,
    assign_arm,
    bucket,
    fnv1a32,
    hash_v2,
    in_rollout,
    new_seed,
    validate_install_id,
)
from ._names import CHANNEL_RE, MODEL_NAME_RE, validate_channel, validate_model_name
from ._ruleset import (
    RULESET_KIND,
    RULESET_SCHEMA,
    Decision,
    Ruleset,
    check_ruleset_freshness,
    evaluate_ruleset,
    parse_ruleset,
    ruleset_target_path,
    sticky_key,
)
from ._targeting import PLATFORMS, TargetingRules, meets_min_app_version, validate_min_app_version
from ._variants import FORMAT_BY_PLATFORM, choose_variant, platform_format

__all__ = [
    "BASIS_POINTS",
    "CHANNEL_RE",
    "FORMAT_BY_PLATFORM",
    "MAX_TOTAL_WEIGHT",
    "MODEL_NAME_RE",
    "PLATFORMS",
    "RULESET_KIND",
    "RULESET_SCHEMA",
    "Decision",
    "Ruleset",
    "TargetingRules",
    "arm_ranges",
    "assign_arm",
    "bucket",
    "check_ruleset_freshness",
    "choose_variant",
    "evaluate_ruleset",
    "fnv1a32",
    "hash_v2",
    "in_rollout",
    "meets_min_app_version",
    "new_seed",
    "parse_ruleset",
    "platform_format",
    "ruleset_target_path",
    "sticky_key",
    "validate_channel",
    "validate_install_id",
    "validate_min_app_version",
    "validate_model_name",
]
