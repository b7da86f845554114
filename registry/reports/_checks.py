"""Data-quality checks: sample-ratio mismatch and "too little data", as health entries.

Each finding is ``{"level", "code", "message", "arm"?, "metric"?}`` appended to the report's
``health`` list; docs/reports.md lists every code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from typing import Any

from registry.reports import _stats
from registry.reports._arms import Arm
from registry.reports._inputs import ExperimentDef

__all__ = ["data_health", "health_entry", "srm_section"]

SRM_ALERT_P = 0.001  # GrowthBook's threshold: an SRM alert should almost never be noise
SRM_MIN_UNITS = 8


def health_entry(level: str, code: str, message: str, **where: str) -> dict[str, Any]:
    return {"level": level, "code": code, "message": message, **where}


def srm_section(exp: ExperimentDef, arms: dict[str, Arm], health: list) -> dict[str, Any]:
    """The report's ``srm`` dict; findings go to ``health``."""
    observed = [arms[name].assigned for name in exp.arms]
    res = _stats.srm_test(observed, exp.weights, SRM_MIN_UNITS)
    total_obs = sum(observed)
    total_w = sum(exp.weights)
    skipped = []
    for name, obs, w, tested in zip(exp.arms, observed, exp.weights, res.tested):
        if tested:
            continue
        skipped.append(name)
        share_expected = w / total_w * total_obs
        if w == 0:
            if obs:
                health.append(health_entry("error", "units_in_zero_weight_arm",
                                           f"Arm '{name}' has weight 0 but {obs} units.", arm=name))
            continue
        # An arm that should have plenty of units but has almost none is the loudest SRM of
        # all (e.g. its manifest is broken); do not let the small-arm skip hide it.
        starved = share_expected >= SRM_MIN_UNITS
        message = (f"Arm '{name}' has {obs} units (about {share_expected:.0f} expected from the "
                   f"configured split); arms with fewer than {SRM_MIN_UNITS} units are left out "
                   "of the sample-ratio test.")
        if starved:
            message += (" So few units where many were expected usually means assignment or "
                        "telemetry for this arm is broken.")
        health.append(health_entry("error" if starved else "info", "srm_arm_skipped", message,
                                   arm=name))
    alert = res.p_value is not None and res.p_value < SRM_ALERT_P
    if alert:
        health.append(health_entry(
            "error", "srm",
            f"Sample-ratio mismatch: assigned counts {observed} do not fit the configured weights "
            f"{list(exp.weights)} (p = {res.p_value:.2g}). Assignment or logging is broken for some "
            "units; do not trust the metrics until the cause is found."))
    if res.p_value is None:
        health.append(health_entry("info", "srm_not_tested",
                                   "Too few units to test the sample ratio (needs 2 arms with "
                                   f"{SRM_MIN_UNITS}+ units)."))
    return {
        "p_value": res.p_value,
        "statistic": res.statistic,
        "alert": alert,
        "threshold": SRM_ALERT_P,
        "arms": list(exp.arms),
        "weights": list(exp.weights),
        "observed": observed,
        "expected": res.expected,
        "skipped": skipped,
    }


def data_health(exp: ExperimentDef, arms: dict[str, Arm], unknown: Counter, min_units: int,
                known_guardrails: Collection[str], health: list) -> None:
    """Warn about unknown arms and guardrails, too little data and dropped latencies."""
    for name, n in unknown.items():
        health.append(health_entry("warning", "unknown_arm",
                                   f"{n} units assigned to arm '{name}', which is not in the experiment; "
                                   "they are left out.", arm=name))
    for g in sorted(exp.guardrail_metrics):
        if g not in known_guardrails:
            health.append(health_entry("warning", "unknown_guardrail",
                                       f"Guardrail metric '{g}' is not a report metric; ignored."))
    any_rated = any(a.rated for a in arms.values())
    for name in exp.arms:
        a = arms[name]
        if a.assigned < min_units:
            health.append(health_entry("warning", "too_little_data",
                                       f"Arm '{name}' has {a.assigned} assigned units, fewer than "
                                       f"{min_units}: intervals are wide and p-values rough.", arm=name))
        n_lat = len(a.device_latencies)
        if n_lat == 0:
            health.append(health_entry("warning", "no_latency_data",
                                       f"Arm '{name}' has no device with inference latencies.",
                                       arm=name, metric="latency_geomean_ratio"))
        elif n_lat < min_units:
            health.append(health_entry("warning", "too_little_data",
                                       f"Arm '{name}' has latency from {n_lat} devices, fewer than "
                                       f"{min_units}.", arm=name, metric="latency_geomean_ratio"))
        if any_rated and len(a.rated) < min_units:
            health.append(health_entry("warning", "too_little_data",
                                       f"Arm '{name}' has rated inferences from {len(a.rated)} devices, "
                                       f"fewer than {min_units}.", arm=name, metric="accuracy"))
        if a.invalid_latencies:
            health.append(health_entry("info", "invalid_latency",
                                       f"Arm '{name}': {a.invalid_latencies} latency values that were not "
                                       "positive finite numbers were ignored.", arm=name))
