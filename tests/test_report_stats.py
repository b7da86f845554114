"""Experiment-report statistics, checked three ways.

1. Textbook examples worked by hand (Newcombe 1998, Holm).
2. Independent computations on the same data: explicit formulas or different scipy routes
   than the ones the code uses (e.g. Welch-Satterthwaite by hand, chi-square contingency for
   the z-test, the score-test inversion for Wilson).
3. Simulations: an A/A experiment (1,000 runs through ``build_report``) keeps the
   false-positive rate near alpha, and a known effect is detected.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import date, timedelta

import numpy as np
import pytest
from scipy import stats

from registry.reports import (
    GUARDRAIL_INPUT_NAMES,
    ExperimentDef,
    UnitSummary,
    _stats,
    build_report,
    guardrail_metrics_for,
    render_charts,
    render_report_html,
)

Z95 = stats.norm.ppf(0.975)
DAY0 = date(2026, 11, 20)


def make_unit(i: int, arm: str, **kw) -> UnitSummary:
    return UnitSummary(install_id=f"u{i}", arm=arm, assigned_day=kw.pop("day", DAY0), **kw)


def two_arm(guardrails=()) -> ExperimentDef:
    return ExperimentDef("digits-v4-vs-v3", ["control", "treatment"], [5000, 5000], set(guardrails))


def metric(report: dict, name: str, arm: str = "treatment") -> dict:
    return next(m for m in report["metrics"] if m["metric"] == name and m["arm"] == arm)


# --- 1. Wilson and Newcombe -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("x", "n", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat Med
    # 17:857-872: worked examples, score method without continuity correction.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
     (1, 29, 0.0061, 0.1718)],
)
def test_wilson_textbook(x, n, low, high):
    lo, hi = _stats.wilson_interval(x, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize(("x", "n"), [(81, 263), (3, 17), (50, 50), (0, 7), (999, 1000)])
def test_wilson_bounds_invert_the_score_test(x, n):
    """Independent definition: the bounds are where |p_hat - p| / sqrt(p(1-p)/n) equals z."""
    lo, hi = _stats.wilson_interval(x, n)
    p_hat = x / n
    for bound in (lo, hi):
        if 0 < bound < 1:
            assert abs(p_hat - bound) / math.sqrt(bound * (1 - bound) / n) == pytest.approx(Z95)
    # ...and they are the two roots of the score-test quadratic in p.
    a, b, c = 1 + Z95**2 / n, -(2 * p_hat + Z95**2 / n), p_hat**2
    roots = sorted(np.roots([a, b, c]).real)
    assert (lo, hi) == pytest.approx((max(0.0, roots[0]), min(1.0, roots[1])), abs=1e-12)


@pytest.mark.parametrize(
    ("a", "m", "b", "n", "diff", "low", "high"),
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Stat Med 17:873-890: the six worked examples, method 10 (hybrid score, no
    # continuity correction). 56/70 vs 48/80 is a difference of 0.2000, interval (0.0524, 0.3339).
    [(56, 70, 48, 80, 0.2000, 0.0524, 0.3339),
     (9, 10, 3, 10, 0.6000, 0.1705, 0.8090),
     (6, 7, 2, 7, 0.5714, 0.0582, 0.8062),
     (5, 56, 0, 29, 0.0893, -0.0381, 0.1926),
     (0, 10, 0, 20, 0.0, -0.1611, 0.2775),
     (10, 10, 0, 20, 1.0, 0.6791, 1.0)],
)
def test_newcombe_hybrid_score_textbook(a, m, b, n, diff, low, high):
    lo, hi = _stats.newcombe_diff_interval(a, m, b, n)
    assert a / m - b / n == pytest.approx(diff, abs=5e-5)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_newcombe_matches_wald_for_large_samples():
    x1, n1, x2, n2 = 5200, 100_000, 4800, 100_000
    p1, p2 = x1 / n1, x2 / n2
    half = Z95 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    lo, hi = _stats.newcombe_diff_interval(x1, n1, x2, n2)
    assert (lo, hi) == pytest.approx((p1 - p2 - half, p1 - p2 + half), rel=1e-3)


def test_intervals_without_units_are_none():
    assert _stats.wilson_interval(0, 0) is None
    assert _stats.newcombe_diff_interval(1, 10, 0, 0) is None
    assert _stats.two_proportion_ztest(1, 10, 0, 0) is None


# --- 2. tests against independent computations -----------------------------------------------

@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(30, 1000, 45, 1000), (3, 40, 9, 35),
                                                    (120, 2500, 95, 2600)])
def test_two_proportion_ztest_matches_formula_and_chi_square(x1, n1, x2, n2):
    p = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2) / math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    by_formula = 2 * (1 - stats.norm.cdf(abs(z)))
    # The pooled z-test is the 2x2 chi-square test without continuity correction (z^2 = chi2).
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    chi2_p = stats.chi2_contingency(table, correction=False).pvalue
    got = _stats.two_proportion_ztest(x1, n1, x2, n2)
    assert got == pytest.approx(by_formula, rel=1e-9)
    assert got == pytest.approx(chi2_p, rel=1e-9)


def test_two_proportion_ztest_no_events_is_one():
    assert _stats.two_proportion_ztest(0, 100, 0, 80) == 1.0
    assert _stats.two_proportion_ztest(100, 100, 80, 80) == 1.0


def test_welch_log_ratio_matches_explicit_formula():
    rng = np.random.default_rng(3)
    lt = rng.normal(3.1, 0.6, 40)
    lc = rng.normal(3.0, 0.4, 65)
    vt, vc = lt.var(ddof=1) / len(lt), lc.var(ddof=1) / len(lc)
    se = math.sqrt(vt + vc)
    df = (vt + vc) ** 2 / (vt**2 / (len(lt) - 1) + vc**2 / (len(lc) - 1))  # Welch-Satterthwaite
    d = lt.mean() - lc.mean()
    tcrit = stats.t.ppf(0.975, df)
    res = _stats.welch_log_ratio(lt, lc)
    assert res.df == pytest.approx(df)
    assert res.p_value == pytest.approx(2 * stats.t.sf(abs(d) / se, df))
    assert res.ratio == pytest.approx(math.exp(d))
    assert res.ci == pytest.approx((math.exp(d - tcrit * se), math.exp(d + tcrit * se)))


def test_welch_needs_two_devices_per_arm():
    assert _stats.welch_log_ratio([1.0], [1.0, 2.0]) is None


def test_ratio_estimate_matches_gbstats_delta_method():
    """Var(R) = (var_y/mx^2 - 2 my cov_xy/mx^3 + my^2 var_x/mx^4) / n (ddof=1 moments)."""
    rng = np.random.default_rng(5)
    x = rng.integers(1, 30, 200).astype(float)
    y = rng.binomial(x.astype(int), rng.beta(8, 2, 200)).astype(float)
    mx, my = x.mean(), y.mean()
    cov = np.cov(y, x, ddof=1)
    expected = (cov[0, 0] / mx**2 - 2 * my * cov[0, 1] / mx**3 + my**2 * cov[1, 1] / mx**4) / len(x)
    ratio, var = _stats.ratio_estimate(y, x)
    assert ratio == pytest.approx(y.sum() / x.sum())
    assert var == pytest.approx(expected, rel=1e-9)


def test_relative_lift_interval_delta_method():
    # From the field notes: Var(lift) = s_c^2 mu_t^2 / (mu_c^4 n_c) + s_t^2 / (mu_c^2 n_t).
    mt, st2, nt, mc, sc2, nc = 0.12, 0.1056, 2000, 0.10, 0.09, 2100
    var = sc2 * mt**2 / (mc**4 * nc) + st2 / (mc**2 * nt)
    lift, (lo, hi) = _stats.relative_lift_interval(mt, st2 / nt, mc, sc2 / nc)
    assert lift == pytest.approx(0.2)
    assert (lo, hi) == pytest.approx((0.2 - Z95 * math.sqrt(var), 0.2 + Z95 * math.sqrt(var)))
    assert _stats.relative_lift_interval(0.1, 0.01, 0.0, 0.01) == (None, None)
    # 0 events in treatment: no variance to propagate, so no (falsely zero-width) interval.
    assert _stats.relative_lift_interval(0.0, 0.0, 0.1, 0.0001) == (-1.0, None)


def test_holm_hand_worked():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04).
    assert _stats.holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None entries are not part of the family; values are capped at 1.
    adjusted = _stats.holm_adjust([0.5, None, 0.02])
    assert adjusted[1] is None
    assert adjusted[0] == pytest.approx(0.5) and adjusted[2] == pytest.approx(0.04)
    assert _stats.holm_adjust([0.6, 0.7, 0.9]) == pytest.approx([1.0, 1.0, 1.0])
    assert _stats.holm_adjust([]) == []


def test_srm_skewed_split_alerts():
    exp = two_arm()
    units = [make_unit(i, "control") for i in range(5000)]
    units += [make_unit(10_000 + i, "treatment") for i in range(4600)]
    report = build_report(exp, units, bootstrap_samples=0)
    chi2 = 2 * 200**2 / 4800  # (5000-4800)^2/4800 + (4600-4800)^2/4800
    assert report["srm"]["statistic"] == pytest.approx(chi2)
    assert report["srm"]["p_value"] == pytest.approx(stats.chi2.sf(chi2, 1))
    assert report["srm"]["p_value"] < 0.001 and report["srm"]["alert"]
    assert report["srm"]["expected"] == [4800, 4800]
    assert report["health"][0]["code"] == "srm" and report["health"][0]["level"] == "error"
    # A split that fits 60/40 weights does not alert.
    exp64 = ExperimentDef("e", ["control", "treatment"], [6000, 4000], set())
    ok = build_report(exp64, units[:5000] + units[5000:8333], bootstrap_samples=0)
    assert not ok["srm"]["alert"] and ok["srm"]["p_value"] > 0.5


def test_srm_skips_small_arms_but_flags_a_starved_one():
    exp = ExperimentDef("e", ["control", "a", "b"], [1, 1, 1], set())
    units = [make_unit(i, "control") for i in range(300)] + [make_unit(1000 + i, "a") for i in range(310)]
    units += [make_unit(2000 + i, "b") for i in range(3)]
    report = build_report(exp, units, bootstrap_samples=0)
    assert report["srm"]["skipped"] == ["b"]
    assert report["srm"]["expected"][2] is None
    assert report["srm"]["expected"][:2] == pytest.approx([305, 305])
    starved = [h for h in report["health"] if h["code"] == "srm_arm_skipped"]
    assert starved and starved[0]["level"] == "error" and starved[0]["arm"] == "b"


def test_intent_to_treat_counts_every_assigned_unit():
    exp = two_arm()
    # control: 100 assigned, 90 downloaded, 3 load failures. treatment: 100 assigned but only
    # 50 downloaded (a bigger model), 5 load failures.
    control = [make_unit(i, "control", downloaded=i < 90, installed=3 <= i < 90,
                         install_failed=i < 3) for i in range(100)]
    treatment = [make_unit(100 + i, "treatment", downloaded=i < 50, installed=5 <= i < 50,
                           install_failed=i < 5, download_failed=i >= 50) for i in range(100)]
    report = build_report(exp, control + treatment, bootstrap_samples=0, min_units=10)
    assert report["arms"]["treatment"] == {**report["arms"]["treatment"], "assigned": 100,
                                           "downloaded": 50, "installed": 45, "active": 0}
    m = metric(report, "install_failure_rate")
    assert (m["value"], m["control_value"], m["n"], m["control_n"]) == (0.05, 0.03, 100, 100)
    assert m["diff"] == pytest.approx(0.02)
    assert m["lift"] == pytest.approx(0.05 / 0.03 - 1)
    assert m["p_value"] == pytest.approx(_stats.two_proportion_ztest(5, 100, 3, 100))
    assert m["ci95"] == pytest.approx(list(_stats.newcombe_diff_interval(5, 100, 3, 100)))
    assert metric(report, "download_failure_rate")["value"] == 0.5
    # The guardrail engine gets failures per attempt instead (5 of 50 load attempts).
    g = guardrail_metrics_for(report, "treatment")
    assert g["load_failure_rate"] == (0.1, 50)
    assert g["download_failure_rate"] == (0.5, 100)


def test_lift_is_none_when_control_is_zero():
    units = [make_unit(i, "control") for i in range(50)]
    units += [make_unit(50 + i, "treatment", crashed=i < 2) for i in range(50)]
    m = metric(build_report(two_arm(), units, bootstrap_samples=0), "crash_rate")
    assert m["control_value"] == 0 and m["lift"] is None and m["lift_ci95"] is None
    assert m["ci95"] is not None and m["p_value"] is not None


def latency_units(rng, n_per_arm, arms=("control", "treatment"), ratio=1.0, rows=(1, 30)):
    units = []
    for k, arm in enumerate(arms):
        for i in range(n_per_arm):
            mu = math.log(20) + rng.normal(0, 0.5) + (math.log(ratio) if k else 0.0)
            lat = np.exp(mu + rng.normal(0, 0.3, rng.integers(*rows))).tolist()
            units.append(make_unit(k * 100_000 + i, arm, downloaded=True, installed=True,
                                   active=True, latencies_ms=lat))
    return units


def test_latency_metric_uses_per_device_log_means():
    rng = np.random.default_rng(11)
    units = latency_units(rng, 60, ratio=1.3)
    report = build_report(two_arm(), units, bootstrap_samples=0)
    lt = np.array([np.log(u.latencies_ms).mean() for u in units if u.arm == "treatment"])
    lc = np.array([np.log(u.latencies_ms).mean() for u in units if u.arm == "control"])
    res = stats.ttest_ind(lt, lc, equal_var=False)
    m = metric(report, "latency_geomean_ratio")
    assert m["value"] == pytest.approx(math.exp(lt.mean()))
    assert m["control_value"] == pytest.approx(math.exp(lc.mean()))
    assert m["ratio"] == pytest.approx(math.exp(lt.mean() - lc.mean()))
    assert m["p_value"] == pytest.approx(res.pvalue)
    ci = res.confidence_interval()
    assert m["ci95"] == pytest.approx([math.exp(ci.low), math.exp(ci.high)])
    assert m["lift_ci95"] == pytest.approx([math.exp(ci.low) - 1, math.exp(ci.high) - 1])
    assert (m["n"], m["control_n"], m["ci95_of"]) == (60, 60, "ratio")


def test_cluster_bootstrap_is_reproducible_and_resamples_devices():
    rng = np.random.default_rng(2)
    devices = [np.exp(rng.normal(rng.normal(3, 0.5), 0.3, rng.integers(1, 25))) for _ in range(40)]
    qs = (0.5, 0.9)
    a = _stats.cluster_bootstrap_quantiles(devices, qs, 300, np.random.default_rng(7))
    b = _stats.cluster_bootstrap_quantiles(devices, qs, 300, np.random.default_rng(7))
    c = _stats.cluster_bootstrap_quantiles(devices, qs, 300, np.random.default_rng(8))
    assert np.array_equal(a.replicates, b.replicates)
    assert not np.array_equal(a.replicates, c.replicates)
    pooled = np.concatenate(devices)
    assert a.point == pytest.approx(np.quantile(pooled, qs, method="inverted_cdf"))
    # Independent, naive implementation of the documented protocol: draw device indices, pool
    # the rows of the drawn devices, take numpy's quantile. Same draws, same numbers.
    draws = np.random.default_rng(7).integers(0, len(devices), size=(300, len(devices)))
    naive = np.array([np.quantile(np.concatenate([devices[j] for j in row]), qs,
                                  method="inverted_cdf") for row in draws])
    assert np.array_equal(a.replicates, naive)
    # Small memory chunks give the same answer as one big chunk.
    d = _stats.cluster_bootstrap_quantiles(devices, qs, 300, np.random.default_rng(7), max_cells=1000)
    assert np.array_equal(a.replicates, d.replicates)


def test_report_latency_section_is_seeded():
    rng = np.random.default_rng(4)
    units = latency_units(rng, 50, ratio=1.1)
    r1 = build_report(two_arm(), units, bootstrap_samples=200, seed=1)
    r2 = build_report(two_arm(), units, bootstrap_samples=200, seed=1)
    r3 = build_report(two_arm(), units, bootstrap_samples=200, seed=2)
    assert r1["latency"] == r2["latency"]
    assert r1["latency"]["treatment"]["p90_ci95"] != r3["latency"]["treatment"]["p90_ci95"]
    lat = r1["latency"]["treatment"]
    assert lat["p50_ci95"][0] <= lat["p50"] <= lat["p50_ci95"][1]
    assert lat["p90_ratio"] == pytest.approx(lat["p90"] / r1["latency"]["control"]["p90"])
    assert guardrail_metrics_for(r1, "treatment")["p90_latency_ratio"] == (lat["p90_ratio"], 50)
    assert guardrail_metrics_for(r1, "control")["p90_latency_ratio"] == (None, 50)


def test_accuracy_is_a_clustered_ratio():
    rng = np.random.default_rng(9)
    units = []
    for k, arm in enumerate(("control", "treatment")):
        for i in range(150):
            rated = int(rng.integers(1, 20))
            units.append(make_unit(k * 1000 + i, arm, active=True, latencies_ms=[10.0 + i],
                                   rated=rated, correct=int(rng.binomial(rated, 0.8 + 0.05 * k))))
    report = build_report(two_arm(), units, bootstrap_samples=0)
    m = metric(report, "accuracy")
    ys = {a: np.array([u.correct for u in units if u.arm == a]) for a in ("control", "treatment")}
    xs = {a: np.array([u.rated for u in units if u.arm == a]) for a in ("control", "treatment")}
    (rt, vt), (rc, vc) = (_stats.ratio_estimate(ys[a], xs[a]) for a in ("treatment", "control"))
    z = (rt - rc) / math.sqrt(vt + vc)
    assert m["value"] == pytest.approx(ys["treatment"].sum() / xs["treatment"].sum())
    assert m["diff"] == pytest.approx(rt - rc)
    assert m["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert m["ci95"] == pytest.approx([rt - rc - Z95 * math.sqrt(vt + vc), rt - rc + Z95 * math.sqrt(vt + vc)])


def test_holm_in_the_report_and_guardrails_uncorrected():
    rng = np.random.default_rng(1)
    exp = ExperimentDef("e", ["control", "a", "b"], [1, 1, 1], {"crash_rate", "p90_latency_ratio"})
    units = latency_units(rng, 80, arms=("control", "a", "b"), ratio=1.2)
    for u in units:
        u.crashed = rng.random() < 0.1
        u.install_failed = rng.random() < (0.05 if u.arm == "control" else 0.12)
    report = build_report(exp, units, bootstrap_samples=0)
    family = [m for m in report["metrics"] if not m["guardrail"]]
    guards = [m for m in report["metrics"] if m["guardrail"]]
    assert {m["metric"] for m in guards} == {"crash_rate", "latency_geomean_ratio"}
    assert all(m["p_value_adjusted"] == m["p_value"] for m in guards)
    expected = _stats.holm_adjust([m["p_value"] for m in family])
    assert [m["p_value_adjusted"] for m in family] == pytest.approx(expected)
    assert len([m for m in family if m["p_value"] is not None]) == 4  # 2 metrics x 2 arms
    for m in report["metrics"]:
        assert m["significant"] == (m["p_value_adjusted"] is not None and m["p_value_adjusted"] < 0.05)


def test_health_warns_about_too_little_data():
    units = [make_unit(i, "control", active=True, latencies_ms=[5.0]) for i in range(30)]
    units += [make_unit(100 + i, "treatment") for i in range(40)]
    units += [make_unit(900, "ghost")]
    exp = ExperimentDef("e", ["control", "treatment"], [1, 1], {"not_a_metric"})
    report = build_report(exp, units, bootstrap_samples=0, min_units=100)
    codes = {(h["code"], h.get("arm"), h.get("metric")) for h in report["health"]}
    assert ("too_little_data", "control", None) in codes
    assert ("too_little_data", "treatment", None) in codes
    assert ("no_latency_data", "treatment", "latency_geomean_ratio") in codes
    assert ("unknown_arm", "ghost", None) in codes
    assert any(h["code"] == "unknown_guardrail" for h in report["health"])
    m = metric(report, "latency_geomean_ratio")
    assert m["p_value"] is None and m["value"] is None and m["control_value"] == pytest.approx(5.0)
    assert report["units"] == 70


def _walk(obj):
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def test_report_is_plain_json():
    rng = np.random.default_rng(0)
    units = latency_units(rng, 30, ratio=1.1)
    units.append(make_unit(999, "treatment", active=True, latencies_ms=[float("nan"), -1.0, 3.0]))
    report = build_report(two_arm(), units, bootstrap_samples=100)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    allowed = (dict, list, str, int, float, bool, type(None))
    assert all(type(v) in allowed for v in _walk(report))
    assert set(report) >= {"experiment", "arms", "srm", "health", "metrics", "latency"}
    assert set(report["srm"]) >= {"p_value", "alert", "expected", "observed"}
    assert any(h["code"] == "invalid_latency" for h in report["health"])
    for m in report["metrics"]:
        assert set(m) >= {"metric", "arm", "value", "control_value", "diff", "lift", "ci95",
                          "p_value", "p_value_adjusted", "guardrail", "n", "control_n", "method"}
    assert set(guardrail_metrics_for(report, "treatment")) == set(GUARDRAIL_INPUT_NAMES)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="weights"):
        ExperimentDef("e", ["a", "b"], [1], set())
    with pytest.raises(ValueError, match="control"):
        ExperimentDef("e", ["a"], [1], set())
    with pytest.raises(ValueError, match="correct"):
        build_report(two_arm(), [make_unit(1, "control", rated=1, correct=2)])
    with pytest.raises(ValueError, match="alpha"):
        build_report(two_arm(), [], alpha=1.5)


# --- 3. simulations ---------------------------------------------------------------------------

def simulate_units(rng, n_units, *, fail=(0.04, 0.04), ratio=1.0, acc=(0.85, 0.85)):
    """Devices with a realistic structure: per-device latency level and accuracy, varying
    numbers of inferences, some devices never downloading or never running the model."""
    arm_idx = (rng.random(n_units) < 0.5).astype(int)
    downloaded = rng.random(n_units) < 0.9
    install_failed = downloaded & (rng.random(n_units) < np.take(fail, arm_idx) / 0.9)
    active = downloaded & ~install_failed & (rng.random(n_units) < 0.8)
    crashed = rng.random(n_units) < 0.01
    level = math.log(20) + rng.normal(0, 0.5, n_units) + np.where(arm_idx == 1, math.log(ratio), 0)
    n_rows = np.where(active, rng.integers(1, 30, n_units), 0)
    rows = np.repeat(level, n_rows) + rng.normal(0, 0.3, n_rows.sum())
    latencies = np.split(np.exp(rows), np.cumsum(n_rows)[:-1])
    p = np.take(acc, arm_idx)
    device_acc = rng.beta(p * 10, (1 - p) * 10)  # accuracy varies by device: clustered
    rated = np.where(active, rng.integers(0, 10, n_units), 0)
    correct = rng.binomial(rated, device_acc)
    arms = ("control", "treatment")
    days = rng.integers(0, 7, n_units)
    return [UnitSummary(f"u{i}", arms[a], DAY0 + timedelta(days=int(d)), bool(dl), False,
                        bool(dl and not f), bool(f), bool(c), bool(act), lat.tolist(), int(r), int(k))
            for i, (a, d, dl, f, c, act, lat, r, k) in enumerate(
                zip(arm_idx, days, downloaded, install_failed, crashed, active, latencies, rated,
                    correct))]


def test_aa_simulation_false_positive_rate_near_alpha():
    """1,000 A/A experiments through build_report: no true effect, so each test should be
    significant (raw p < 0.05) in about 5% of runs. Row-level tests that ignore the device
    clustering are shown to be badly anti-conservative on the same data."""
    start = time.perf_counter()
    rng = np.random.default_rng(20261127)
    runs = 1000
    hits = {"install_failure_rate": 0, "latency_geomean_ratio": 0, "accuracy": 0}
    srm_alerts = 0
    naive_latency_hits = naive_accuracy_hits = 0
    exp = two_arm()
    for _ in range(runs):
        units = simulate_units(rng, 1000)
        report = build_report(exp, units, bootstrap_samples=0)
        for name in hits:
            p = metric(report, name)["p_value"]
            hits[name] += p is not None and p < 0.05
        srm_alerts += report["srm"]["alert"]
        # What not to do: treat every inference / every rating as independent.
        rows = {a: np.log(np.concatenate([u.latencies_ms for u in units if u.arm == a] or [[1.0]]))
                for a in ("control", "treatment")}
        naive_latency_hits += stats.ttest_ind(rows["treatment"], rows["control"],
                                              equal_var=False).pvalue < 0.05
        k = {a: sum(u.correct for u in units if u.arm == a) for a in ("control", "treatment")}
        n = {a: sum(u.rated for u in units if u.arm == a) for a in ("control", "treatment")}
        naive_accuracy_hits += _stats.two_proportion_ztest(k["treatment"], n["treatment"],
                                                           k["control"], n["control"]) < 0.05
    rates = {name: h / runs for name, h in hits.items()}
    elapsed = time.perf_counter() - start
    print(f"A/A false-positive rates over {runs} runs: {rates}; SRM alerts {srm_alerts}; "
          f"naive row-level latency {naive_latency_hits / runs:.3f}, accuracy "
          f"{naive_accuracy_hits / runs:.3f}; {elapsed:.1f} s")
    for name, rate in rates.items():
        assert 0.03 <= rate <= 0.07, (name, rate)
    assert srm_alerts <= 5  # alert threshold p < 0.001: expect about 1 in 1,000
    assert naive_latency_hits / runs > 0.2
    assert naive_accuracy_hits / runs > 0.08


def test_known_effect_is_detected():
    rng = np.random.default_rng(99)
    units = simulate_units(rng, 6000, fail=(0.04, 0.07), ratio=1.15, acc=(0.85, 0.80))
    report = build_report(two_arm(), units, bootstrap_samples=200)
    inst = metric(report, "install_failure_rate")
    lat = metric(report, "latency_geomean_ratio")
    acc = metric(report, "accuracy")
    for m in (inst, lat, acc):
        assert m["significant"] and m["verdict"] == "worse", m
    assert inst["ci95"][0] < 0.03 < inst["ci95"][1] and inst["diff"] > 0
    assert lat["ci95"][0] < 1.15 < lat["ci95"][1]
    assert acc["ci95"][0] < -0.05 < acc["ci95"][1]
    assert not metric(report, "crash_rate")["significant"]
    assert metric(report, "crash_rate")["verdict"] is None
    # Lower failure rate is better, higher accuracy is better.
    better = build_report(two_arm(), simulate_units(rng, 6000, fail=(0.07, 0.04), acc=(0.80, 0.85)),
                          bootstrap_samples=0)
    assert metric(better, "install_failure_rate")["verdict"] == "better"
    assert metric(better, "accuracy")["verdict"] == "better"
    assert report["latency"]["treatment"]["p50_ratio"] == pytest.approx(1.15, abs=0.06)


# --- 4. charts and HTML -----------------------------------------------------------------------

def test_html_report_renders_sections_and_escapes_user_strings():
    rng = np.random.default_rng(5)
    evil = '<script>alert("x")</script> & "quotes" $\\alpha$'
    exp = ExperimentDef(evil, ["control", "<b>treat</b>"], [1, 1], {"load_failure_rate"})
    units = simulate_units(rng, 800, fail=(0.03, 0.08))
    for u in units:
        if u.arm == "treatment":
            u.arm = "<b>treat</b>"
    report = build_report(exp, units, bootstrap_samples=100, min_units=1000)
    charts = render_charts(report)
    assert set(charts) == {"lift", "latency", "daily"}
    for svg in charts.values():
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
        assert "<b>" not in svg  # the arm name is text inside the chart, escaped
    page = render_report_html(report, charts)
    for section in ("summary", "health", "arms", "metrics", "latency", "charts", "notes"):
        assert f'id="{section}"' in page
    assert page.count("<svg") == 3
    assert "<script" not in page and "<b>treat</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "&lt;b&gt;treat&lt;/b&gt;" in page
    assert "Install (load) failure rate" in page and "worse</span>" in page
    assert "guardrail" in page and "too_little_data" not in page  # codes stay in the JSON
    assert "fewer than 1000" in page  # the too-little-data warning is shown
    # Self-contained: nothing to fetch.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\(\s*['\"]?(?!#)", page)  # only url(#id) references inside SVG
    png = render_charts(report, fmt="png")
    assert all(v.startswith(b"\x89PNG") for v in png.values())
    assert page.startswith("<!DOCTYPE html>")


def test_charts_render_with_no_data():
    report = build_report(two_arm(), [], bootstrap_samples=0)
    charts = render_charts(report)
    assert all(svg.startswith("<svg") for svg in charts.values())
    assert "No units assigned yet" in render_report_html(report, charts)
