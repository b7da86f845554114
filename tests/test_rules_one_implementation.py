"""The server decides with the SDK's rules: one implementation, the server's error classes.

``registry.delivery.bucketing``, ``targeting`` and ``variants`` used to be copies of
``client_sdk/_bucketing.py``, ``_targeting.py`` and ``_variants.py``; a fix applied to one
copy only would make devices that decide locally (``resolve="local"``) disagree with the
manifest. Now the server's names are the SDK's functions, wrapped only to re-raise the SDK's
errors as the server's (same stable code, a ``registry.errors.ModelDropError``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from client_sdk import errors as sdk_errors
from client_sdk import rules
from registry import delivery
from registry.delivery import bucketing, errors, targeting, variants
from registry.errors import ModelDropError

ROOT = Path(__file__).resolve().parents[1]


def _impl(function):
    return getattr(function, "__wrapped__", function)


@pytest.mark.parametrize("name", ["fnv1a32", "hash_v2", "new_seed", "validate_install_id",
                                  "bucket", "arm_ranges", "assign_arm", "in_rollout"])
def test_bucketing_is_the_sdks(name):
    assert _impl(getattr(bucketing, name)) is getattr(rules, name)


def test_targeting_and_variants_are_the_sdks():
    assert issubclass(targeting.TargetingRules, rules.TargetingRules)
    assert targeting.TargetingRules.matches is rules.TargetingRules.matches
    assert _impl(targeting.meets_min_app_version) is rules.meets_min_app_version
    assert _impl(targeting.validate_min_app_version) is rules.validate_min_app_version
    assert _impl(variants.choose_variant) is rules.choose_variant
    assert _impl(variants.platform_format) is rules.platform_format
    assert variants.FORMAT_BY_PLATFORM is rules.FORMAT_BY_PLATFORM
    assert targeting.PLATFORMS is rules.PLATFORMS


@pytest.mark.parametrize(("call", "server_cls"), [
    (lambda: delivery.validate_install_id("UPPER-CASE-ID"), errors.InvalidInstallIdError),
    (lambda: delivery.in_rollout("s", "short", 10), errors.InvalidInstallIdError),
    (lambda: delivery.in_rollout("s", "abcdefgh", 10_001), errors.InvalidBucketingError),
    (lambda: delivery.arm_ranges([0, 0], 10_000), errors.InvalidBucketingError),
    (lambda: delivery.assign_arm("s", "x", [(0, 10)]), errors.InvalidInstallIdError),
    (lambda: delivery.TargetingRules.from_dict({"platform": ["ios"]}),
     errors.InvalidTargetingError),
    (lambda: delivery.validate_min_app_version("not a version"), errors.InvalidTargetingError),
    (lambda: delivery.meets_min_app_version("1.0", "nope"), errors.InvalidTargetingError),
    (lambda: delivery.platform_format("windows"), errors.InvalidDeviceError),
    (lambda: delivery.choose_variant([], "windows"), errors.InvalidDeviceError),
])
def test_sdk_errors_become_server_errors_with_the_same_code(call, server_cls):
    with pytest.raises(server_cls) as caught:
        call()
    err = caught.value
    assert isinstance(err, ModelDropError) and not isinstance(err, sdk_errors.ModelDropError)
    assert err.status == 400 and err.detail
    assert sdk_errors.error_class_for_code(err.code).code == err.code


def test_rules_parse_to_server_class():
    parsed = delivery.TargetingRules.from_dict({"regions": ["de"]})
    assert type(parsed) is targeting.TargetingRules and parsed.regions == ("DE",)


def test_no_second_copy_of_the_rules_in_the_server():
    """The server's rule modules define no functions of their own (beyond the error
    translation of ``from_dict`` and the request-side DeviceProfile check)."""
    for name in ("bucketing.py", "targeting.py", "variants.py"):
        tree = ast.parse((ROOT / "registry" / "delivery" / name).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert defined <= {"from_dict", "__post_init__"}, (name, defined)


def test_sdk_never_imports_registry():
    for path in (ROOT / "client_sdk").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "registry" for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "registry", path
