"""Report statistics (issue 13): a zero-variance or tiny arm never yields a verdict (gbstats's
rule). The issue's case: 3 treatment devices, all correct, against 300 control devices was
"better" at adjusted p 1.6e-34."""

from __future__ import annotations

import numpy as np

from registry.reports import build_report
from registry.reports._report import MIN_TEST_UNITS
from tests.test_report_stats import make_unit, metric, two_arm


def _accuracy_units(n_t: int, n_c: int, treatment_correct: float | None, seed: int = 1):
    rng = np.random.default_rng(seed)
    units = []
    for i in range(n_c):
        rated = int(rng.integers(5, 20))
        units.append(make_unit(i, "control", active=True, latencies_ms=[10.0 + i % 7], rated=rated,
                               correct=int(rng.binomial(rated, 0.8))))
    for i in range(n_t):
        rated = int(rng.integers(5, 20))
        correct = rated if treatment_correct is None else int(rng.binomial(rated, treatment_correct))
        units.append(make_unit(10_000 + i, "treatment", active=True, latencies_ms=[10.0 + i % 5],
                               rated=rated, correct=correct))
    return units


def test_three_all_correct_devices_against_300_get_no_verdict():
    report = build_report(two_arm(), _accuracy_units(3, 300, None), bootstrap_samples=0)
    m = metric(report, "accuracy")
    assert m["value"] == 1.0 and m["diff"] > 0  # the difference is still shown
    assert m["p_value"] is None and m["p_value_adjusted"] is None
    assert not m["significant"] and m["verdict"] is None and m["no_test"]
    assert any(h["code"] == "no_test" and h["metric"] == "accuracy" for h in report["health"])


def test_a_zero_variance_arm_above_the_minimum_gets_no_verdict_either():
    n = 5 * MIN_TEST_UNITS  # plenty of devices, all 100% correct: zero variance
    report = build_report(two_arm(), _accuracy_units(n, 300, None), bootstrap_samples=0)
    m = metric(report, "accuracy")
    assert m["p_value"] is None and not m["significant"] and "zero variance" in m["no_test"]


def test_tiny_arms_get_no_test_on_any_metric():
    units = [make_unit(i, "control", crashed=i < 40) for i in range(300)]
    units += [make_unit(1000 + i, "treatment", crashed=True) for i in range(MIN_TEST_UNITS - 1)]
    m = metric(build_report(two_arm(), units, bootstrap_samples=0), "crash_rate")
    assert m["p_value"] is None and not m["significant"] and m["verdict"] is None


def test_a_real_difference_with_variance_is_still_found():
    report = build_report(two_arm(), _accuracy_units(300, 300, 0.95), bootstrap_samples=0)
    m = metric(report, "accuracy")
    assert m["significant"] and m["verdict"] == "better" and "no_test" not in m
