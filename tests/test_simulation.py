"""A smaller run of bench/simulate_experiment.py: the report finds a known effect and its size,
and finds nothing when there is nothing to find.

Each run sends 1,500 simulated devices through the real manifest (enrolment, sticky arms) and
the real telemetry endpoint, then reads the report; the seeds are fixed, so the outcome is
reproducible. The full-size runs (4,000 devices, also with other seeds) are in docs/reports.md.
"""

from __future__ import annotations

import math

import pytest

from bench import simulate_experiment as sim

DEVICES = 1500


@pytest.fixture(scope="module")
def with_effect(tmp_path_factory):
    scenario = sim.Scenario(devices=DEVICES, seed=3)
    return scenario, sim.simulate(scenario, data_dir=tmp_path_factory.mktemp("effect"))


def metric(outcome, name):
    return next(m for m in outcome.report["metrics"] if m["metric"] == name)


def test_known_effect_is_detected_and_sized(with_effect):
    scenario, outcome = with_effect
    report = outcome.report
    assert sum(outcome.enrolled.values()) == report["units"] == DEVICES
    assert not report["srm"]["alert"]
    assert outcome.verdicts() == {"download_failure_rate": None, "install_failure_rate": "worse",
                                  "crash_rate": None, "latency_geomean_ratio": "worse",
                                  "accuracy": None}
    latency = metric(outcome, "latency_geomean_ratio")
    lo, hi = latency["ci95"]
    assert lo < scenario.latency_ratio < hi and lo > 1
    install = metric(outcome, "install_failure_rate")
    # ITT: the 3-point difference applies to devices that got as far as installing
    reached = report["arms"]["treatment"]["downloaded"] / report["arms"]["treatment"]["assigned"]
    true_diff = (scenario.install_failure[1] - scenario.install_failure[0]) * reached
    assert install["ci95"][0] < true_diff < install["ci95"][1]
    # the guardrail engine sees per-attempt rates close to the truth
    load = report["guardrail_inputs"]["treatment"]["load_failure_rate"]
    se = math.sqrt(0.05 * 0.95 / load["samples"])
    assert abs(load["value"] - scenario.install_failure[1]) < 4 * se


def test_no_effect_detects_nothing(tmp_path):
    scenario = sim.Scenario(devices=DEVICES, seed=1).no_effect()
    outcome = sim.simulate(scenario, data_dir=tmp_path)
    assert set(outcome.verdicts().values()) == {None}
    assert not outcome.report["srm"]["alert"]
    latency = metric(outcome, "latency_geomean_ratio")
    assert latency["ci95"][0] < 1 < latency["ci95"][1]
