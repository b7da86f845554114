"""Turn per-unit summaries into the experiment report dict (the JSON the API returns).

Every field is explained in docs/reports.md. The report is plain data — floats, ints,
strings, lists, dicts, ``None`` — so the API serialises it as is and the HTML page and the
charts are drawn from the report alone, without going back to the telemetry.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from scipy import stats

from registry.reports import _stats
from registry.reports._arms import Arm, collect
from registry.reports._checks import data_health, health_entry, srm_section
from registry.reports._inputs import ExperimentDef, UnitSummary

__all__ = ["GUARDRAIL_INPUT_NAMES", "METRICS", "MetricInfo", "build_report", "guardrail_metrics_for"]



@dataclass(frozen=True)
class MetricInfo:
    """How to show a metric: its unit, a label for people, and which direction is good."""

    unit: str  # "proportion" (0..1) or "ms"
    label: str
    higher_is_better: bool = False


#: Metrics in report order.
METRICS: dict[str, MetricInfo] = {
    "download_failure_rate": MetricInfo("proportion", "Download failure rate"),
    "install_failure_rate": MetricInfo("proportion", "Install (load) failure rate"),
    "crash_rate": MetricInfo("proportion", "Crash rate"),
    "latency_geomean_ratio": MetricInfo("ms", "Latency (geometric mean)"),
    "accuracy": MetricInfo("proportion", "Accuracy (rated inferences)", higher_is_better=True),
}
#: Guardrail-engine names that map onto a report metric for the ``guardrail`` flag.
_GUARDRAIL_ALIASES = {
    "load_failure_rate": "install_failure_rate",
    "p50_latency_ratio": "latency_geomean_ratio",
    "p90_latency_ratio": "latency_geomean_ratio",
}
#: What ``guardrail_metrics_for`` returns, per arm.
GUARDRAIL_INPUT_NAMES = (
    "load_failure_rate",
    "install_failure_rate",
    "download_failure_rate",
    "crash_rate",
    "p50_latency_ratio",
    "p90_latency_ratio",
)
_QUANTILES = (0.5, 0.9)
_FEW_EVENTS = 5  # expected events per arm below which the z-test is only a rough guide
# No test at all below this many units (devices) in either arm, or when a test that uses each
# arm's own variance (accuracy, latency) meets an arm whose variance is zero: 3 devices that
# were all correct are not "certain". This is gbstats's rule (its frequentist tests return no
# result when either side has zero variance). The proportion z-test pools the two arms'
# variance, so an arm with no events still has a defined test there.
MIN_TEST_UNITS = 10
_PERCENTILES = np.arange(0, 101)  # device-latency distribution kept for the chart


def _arms_table(exp: ExperimentDef, arms: dict[str, Arm]) -> dict[str, dict[str, Any]]:
    total_w = sum(exp.weights)
    return {
        name: {
            "weight": w,
            "expected_share": w / total_w,
            "assigned": arms[name].assigned,
            "downloaded": arms[name].count("downloaded"),
            "installed": arms[name].count("installed"),
            "active": arms[name].count("active"),
            "download_failed": arms[name].count("download_failed"),
            "install_failed": arms[name].count("install_failed"),
            "crashed": arms[name].count("crashed"),
            "latency_devices": len(arms[name].device_latencies),
            "rated_devices": len(arms[name].rated),
        }
        for name, w in zip(exp.arms, exp.weights)
    }


def _daily(exp: ExperimentDef, arms: dict[str, Arm]) -> dict[str, Any]:
    days: set[date] = {u.assigned_day for a in arms.values() for u in a.units}
    if not days:
        return {"days": [], "arms": {name: [] for name in exp.arms}}
    first, last = min(days), max(days)
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    out = {}
    for name in exp.arms:
        per_day = Counter(u.assigned_day for u in arms[name].units)
        out[name] = [per_day.get(d, 0) for d in span]
    return {"days": [d.isoformat() for d in span], "arms": out}


def _row(metric: str, arm: str, guardrail: bool, **values: Any) -> dict[str, Any]:
    row = {
        "metric": metric, "label": METRICS[metric].label, "arm": arm, "unit": METRICS[metric].unit,
        "value": None, "value_ci95": None, "control_value": None, "control_value_ci95": None,
        "diff": None, "ci95": None, "ci95_of": "diff", "lift": None, "lift_ci95": None,
        "p_value": None, "p_value_adjusted": None, "significant": False, "verdict": None,
        "guardrail": guardrail,
        "n": 0, "control_n": 0, "method": "",
    }
    row.update(values)
    return row


def _proportion_row(metric: str, flag: str, t: Arm, c: Arm, alpha: float, guardrail: bool,
                    health: list) -> dict[str, Any]:
    xt, nt, xc, nc = t.count(flag), t.assigned, c.count(flag), c.assigned
    row = _row(metric, t.name, guardrail, n=nt, control_n=nc, events=xt, control_events=xc,
               method="two-proportion z-test (pooled), Newcombe hybrid score interval for the "
                      "difference, Wilson intervals per arm; denominator: assigned units (ITT)")
    if nt == 0 or nc == 0:
        return row
    pt, pc = xt / nt, xc / nc
    lift, lift_ci = _stats.relative_lift_interval(pt, pt * (1 - pt) / nt, pc, pc * (1 - pc) / nc, alpha)
    row.update(
        value=pt, value_ci95=_stats.wilson_interval(xt, nt, alpha),
        control_value=pc, control_value_ci95=_stats.wilson_interval(xc, nc, alpha),
        diff=pt - pc, ci95=_stats.newcombe_diff_interval(xt, nt, xc, nc, alpha),
        lift=lift, lift_ci95=lift_ci, p_value=_stats.two_proportion_ztest(xt, nt, xc, nc),
    )
    pooled = (xt + xc) / (nt + nc)
    if 0 < xt + xc and min(nt, nc) * pooled < _FEW_EVENTS:
        health.append(health_entry(
            "info", "few_events",
            f"{metric}: only {xt} vs {xc} events; the z-test p-value is approximate at so few "
            "events — read the Newcombe interval.", arm=t.name, metric=metric))
    return row


def _geomean_ci(log_means: np.ndarray, alpha: float) -> tuple[float, float] | None:
    n = len(log_means)
    if n < 2:
        return None
    half = stats.t.ppf(1 - alpha / 2, n - 1) * log_means.std(ddof=1) / math.sqrt(n)
    m = log_means.mean()
    return math.exp(m - half), math.exp(m + half)


def _latency_row(t: Arm, c: Arm, alpha: float, guardrail: bool) -> dict[str, Any]:
    lt, lc = t.log_means, c.log_means
    row = _row("latency_geomean_ratio", t.name, guardrail, n=len(lt), control_n=len(lc),
               ci95_of="ratio",
               method="per-device mean of log latency; Welch t-test between arms; ratio of "
                      "geometric means with exp(Welch interval)")
    if len(lt):
        row.update(value=math.exp(lt.mean()), value_ci95=_geomean_ci(lt, alpha))
    if len(lc):
        row.update(control_value=math.exp(lc.mean()), control_value_ci95=_geomean_ci(lc, alpha))
    if len(lt) and len(lc):
        row["diff"] = row["value"] - row["control_value"]
        row["ratio"] = row["value"] / row["control_value"]
        row["lift"] = row["ratio"] - 1.0
    welch = _stats.welch_log_ratio(lt, lc, alpha)
    zero = [a for a, x in ((t.name, lt), (c.name, lc)) if len(x) > 1 and not x.var(ddof=1) > 0.0]
    if zero:
        row.update(_zero_variance=True, _zero_variance_arm=", ".join(zero))
    if welch is not None:
        row.update(ratio=welch.ratio, ci95=welch.ci, p_value=welch.p_value, welch_df=welch.df,
                   lift_ci95=(welch.ci[0] - 1.0, welch.ci[1] - 1.0))
    return row


def _accuracy_row(t: Arm, c: Arm, alpha: float, guardrail: bool) -> dict[str, Any]:
    row = _row("accuracy", t.name, guardrail, n=len(t.rated), control_n=len(c.rated),
               events=sum(t.rated), control_events=sum(c.rated),
               method="correct / rated per arm (ratio estimator), delta-method variance "
                      "clustered by device; z-test and Wald interval for the difference")
    est_t = _stats.ratio_estimate(np.array(t.correct), np.array(t.rated))
    est_c = _stats.ratio_estimate(np.array(c.correct), np.array(c.rated))
    z = float(stats.norm.ppf(1 - alpha / 2))

    def ci(est: tuple[float, float]) -> tuple[float, float]:
        half = z * math.sqrt(est[1])
        return max(0.0, est[0] - half), min(1.0, est[0] + half)

    if est_t is not None:
        row.update(value=est_t[0], value_ci95=ci(est_t))
    if est_c is not None:
        row.update(control_value=est_c[0], control_value_ci95=ci(est_c))
    if est_t is not None and est_c is not None:
        zero = [a for a, est in ((t.name, est_t), (c.name, est_c)) if not est[1] > 0.0]
        if zero:
            row.update(_zero_variance=True, _zero_variance_arm=", ".join(zero))
        diff, diff_ci, p = _stats.normal_diff_test(est_t[0], est_t[1], est_c[0], est_c[1], alpha)
        lift, lift_ci = _stats.relative_lift_interval(est_t[0], est_t[1], est_c[0], est_c[1], alpha)
        row.update(diff=diff, ci95=diff_ci, p_value=p, lift=lift, lift_ci95=lift_ci)
    return row


def _refuse_degenerate_test(m: dict[str, Any], health: list) -> None:
    """Drop the p-value and intervals of a test gbstats would not run (see MIN_TEST_UNITS)."""
    if m["p_value"] is None:
        return
    why = None
    if min(m["n"], m["control_n"]) < MIN_TEST_UNITS:
        why = (f"{m['metric']}: {m['n']} vs {m['control_n']} units; no test below "
               f"{MIN_TEST_UNITS} per arm")
    elif m.pop("_zero_variance", None):
        why = f"{m['metric']}: an arm has zero variance ({m.pop('_zero_variance_arm', '')}); no test"
    m.pop("_zero_variance_arm", None)
    if why is None:
        return
    m.update(p_value=None, ci95=None, lift_ci95=None, no_test=why)
    health.append(health_entry("warning", "no_test", why + " (the difference is shown, not judged).",
                               arm=m["arm"], metric=m["metric"]))


def _verdict(m: dict[str, Any]) -> str | None:
    """"better" or "worse" for users, from the direction of the effect and of the metric."""
    effect = m["lift"] if m["lift"] is not None else m["diff"]
    if effect is None or effect == 0:
        return None
    return "better" if (effect > 0) == METRICS[m["metric"]].higher_is_better else "worse"


def _is_guardrail(metric: str, configured: set[str]) -> bool:
    return metric in configured or any(_GUARDRAIL_ALIASES.get(g) == metric for g in configured)


def _latency_section(exp: ExperimentDef, arms: dict[str, Arm], alpha: float, n_boot: int,
                     seed: int) -> dict[str, Any]:
    """p50/p90 of pooled inference latencies per arm with device-level bootstrap intervals.

    Each arm resamples with its own generator ``default_rng([seed, arm_index])`` so one arm's
    numbers do not depend on which other arms have data.
    """
    lo_q, hi_q = alpha / 2, 1 - alpha / 2
    boots: dict[str, _stats.BootstrapQuantiles] = {}
    out: dict[str, Any] = {}
    for i, name in enumerate(exp.arms):
        arm = arms[name]
        entry: dict[str, Any] = {"devices": len(arm.device_latencies),
                                 "samples": int(sum(len(d) for d in arm.device_latencies)),
                                 "p50": None, "p90": None, "p50_ci95": None, "p90_ci95": None,
                                 "device_geomean_percentiles_ms": None}
        out[name] = entry
        if not arm.device_latencies:
            continue
        b = _stats.cluster_bootstrap_quantiles(arm.device_latencies, _QUANTILES, n_boot,
                                               np.random.default_rng([seed, i]))
        boots[name] = b
        for j, q in enumerate(("p50", "p90")):
            entry[q] = float(b.point[j])
            if b.replicates is not None:
                entry[f"{q}_ci95"] = tuple(np.quantile(b.replicates[:, j], [lo_q, hi_q]).tolist())
        entry["device_geomean_percentiles_ms"] = np.exp(
            np.percentile(arm.log_means, _PERCENTILES)).tolist()
    control = exp.arms[0]
    for name in exp.arms[1:]:
        entry = out[name]
        for j, q in enumerate(("p50", "p90")):
            entry[f"{q}_ratio"] = None
            entry[f"{q}_ratio_ci95"] = None
            if name in boots and control in boots:
                bt, bc = boots[name], boots[control]
                entry[f"{q}_ratio"] = float(bt.point[j] / bc.point[j])
                if bt.replicates is not None and bc.replicates is not None:
                    ratios = bt.replicates[:, j] / bc.replicates[:, j]
                    entry[f"{q}_ratio_ci95"] = tuple(np.quantile(ratios, [lo_q, hi_q]).tolist())
    return out


def _guardrail_inputs(exp: ExperimentDef, arms: dict[str, Arm], latency: dict) -> dict[str, Any]:
    """Absolute per-arm rates for the delivery guardrail engine.

    Unlike the ITT metrics (whose job is an unbiased comparison between arms), a guardrail
    threshold such as "halt above 5% load failures" means failures per *attempt*, so these
    rates use the units that attempted the step as denominator and report it as ``samples``.
    """
    out: dict[str, Any] = {}
    for name in exp.arms:
        units = arms[name].units
        dl_attempts = sum(1 for u in units if u.downloaded or u.download_failed)
        inst_attempts = sum(1 for u in units if u.installed or u.install_failed)
        ran = sum(1 for u in units if u.installed or u.active or u.crashed)

        def rate(k: int, n: int) -> dict[str, Any]:
            return {"value": k / n if n else None, "samples": n}

        load = rate(arms[name].count("install_failed"), inst_attempts)
        lat = latency[name]
        out[name] = {
            "load_failure_rate": load,
            "install_failure_rate": dict(load),
            "download_failure_rate": rate(arms[name].count("download_failed"), dl_attempts),
            "crash_rate": rate(arms[name].count("crashed"), ran),
            "p50_latency_ratio": {"value": lat.get("p50_ratio"), "samples": lat["devices"]},
            "p90_latency_ratio": {"value": lat.get("p90_ratio"), "samples": lat["devices"]},
        }
    return out


def guardrail_metrics_for(report: dict[str, Any], arm: str) -> dict[str, tuple[float | None, int]]:
    """Per-arm values for the guardrail engine: ``{name: (value, samples)}``.

    Names are ``GUARDRAIL_INPUT_NAMES``. Rates are failures per attempt (see docs/reports.md);
    latency ratios are this arm's pooled p50/p90 over the control's, ``None`` for the control
    itself or without latency data in either arm; ``samples`` is the denominator (attempts or
    latency devices) so the engine can refuse to act on too little data.

    Raises:
        KeyError: ``arm`` is not an arm of the report's experiment.
    """
    inputs = report["guardrail_inputs"][arm]
    return {name: (inputs[name]["value"], inputs[name]["samples"]) for name in GUARDRAIL_INPUT_NAMES}


def _json_clean(obj: Any) -> Any:
    """numpy scalars to Python, tuples to lists, NaN/inf to None: JSON without surprises."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def build_report(exp: ExperimentDef, units: Iterable[UnitSummary], *, alpha: float = 0.05,
                 min_units: int = 100, bootstrap_samples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Compute the experiment report.

    Args:
        exp: The experiment; ``exp.arms[0]`` is the control.
        units: One summary per assigned install id (intent-to-treat). Units whose arm is not in
            ``exp.arms`` are left out and reported in ``health``.
        alpha: Two-sided significance level; intervals have confidence ``1 - alpha`` (the
            ``ci95`` field names follow the default).
        min_units: Per-arm units (and latency / rated devices) below which the report warns
            "too little data".
        bootstrap_samples: Device-level bootstrap replicates for latency quantiles; 0 skips them.
        seed: Seed of the bootstrap, so the same data always gives the same report.

    Returns:
        A JSON-serialisable dict; see docs/reports.md for every field.

    Raises:
        ValueError: Bad parameters or an inconsistent unit (``correct > rated``).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if bootstrap_samples < 0 or min_units < 0:
        raise ValueError("bootstrap_samples and min_units must be >= 0")
    arms, unknown = collect(exp, units)
    health: list[dict[str, Any]] = []
    srm = srm_section(exp, arms, health)
    data_health(exp, arms, unknown, min_units, set(METRICS) | set(_GUARDRAIL_ALIASES), health)

    control = arms[exp.arms[0]]
    metrics: list[dict[str, Any]] = []
    include_accuracy = any(a.rated for a in arms.values())
    for name in exp.arms[1:]:
        t = arms[name]
        for metric, flag in (("download_failure_rate", "download_failed"),
                             ("install_failure_rate", "install_failed"), ("crash_rate", "crashed")):
            metrics.append(_proportion_row(metric, flag, t, control, alpha,
                                           _is_guardrail(metric, exp.guardrail_metrics), health))
        metrics.append(_latency_row(t, control, alpha,
                                    _is_guardrail("latency_geomean_ratio", exp.guardrail_metrics)))
        if include_accuracy:
            metrics.append(_accuracy_row(t, control, alpha,
                                         _is_guardrail("accuracy", exp.guardrail_metrics)))

    for m in metrics:
        _refuse_degenerate_test(m, health)
    # Holm across every non-guardrail metric x arm; guardrails keep their raw p-value because
    # missing a real regression costs more than a false alarm that a person then checks.
    family = [m for m in metrics if not m["guardrail"]]
    for m, adj in zip(family, _stats.holm_adjust([m["p_value"] for m in family])):
        m["p_value_adjusted"] = adj
    for m in metrics:
        if m["guardrail"]:
            m["p_value_adjusted"] = m["p_value"]
        m["significant"] = m["p_value_adjusted"] is not None and m["p_value_adjusted"] < alpha
        m["verdict"] = _verdict(m) if m["significant"] else None

    latency = _latency_section(exp, arms, alpha, bootstrap_samples, seed)
    order = {"error": 0, "warning": 1, "info": 2}
    health.sort(key=lambda h: order[h["level"]])
    report = {
        "experiment": exp.name,
        "control": exp.arms[0],
        "alpha": alpha,
        "confidence_level": 1 - alpha,
        "min_units": min_units,
        "bootstrap_samples": bootstrap_samples,
        "seed": seed,
        "units": sum(a.assigned for a in arms.values()),
        "arms": _arms_table(exp, arms),
        "daily_assigned": _daily(exp, arms),
        "srm": srm,
        "health": health,
        "metrics": metrics,
        "latency": latency,
        "guardrail_inputs": _guardrail_inputs(exp, arms, latency),
    }
    return _json_clean(report)
