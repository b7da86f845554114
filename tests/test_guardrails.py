"""Guardrail expressions: parsing, validation and evaluation against telemetry."""

from __future__ import annotations

import math

import pytest

from registry.delivery import (
    DEFAULT_MIN_SAMPLES,
    KNOWN_METRICS,
    Breach,
    Guardrail,
    InvalidGuardrailError,
    MetricValue,
    evaluate,
    insufficient_data,
    parse_guardrail,
    parse_guardrails,
)


def test_known_metrics():
    assert KNOWN_METRICS == {
        "load_failure_rate",
        "install_failure_rate",
        "download_failure_rate",
        "crash_rate",
        "p90_latency_ratio",
        "p50_latency_ratio",
    }


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("load_failure_rate < 0.02", "load_failure_rate", "<", 0.02),
        ("crash_rate <= 0.01", "crash_rate", "<=", 0.01),
        ("p90_latency_ratio < 1.2", "p90_latency_ratio", "<", 1.2),
        ("  p50_latency_ratio<=1.5  ", "p50_latency_ratio", "<=", 1.5),
        ("download_failure_rate < .1", "download_failure_rate", "<", 0.1),
        ("install_failure_rate < 5e-3", "install_failure_rate", "<", 0.005),
        ("crash_rate <= 0", "crash_rate", "<=", 0.0),
        ("crash_rate < 1", "crash_rate", "<", 1.0),
    ],
)
def test_parse(text, metric, op, threshold):
    guardrail = parse_guardrail(text)
    assert guardrail == Guardrail(metric, op, threshold, DEFAULT_MIN_SAMPLES)
    assert isinstance(guardrail.threshold, float)


def test_parse_with_min_samples_and_canonical_text():
    guardrail = parse_guardrail("crash_rate<=0.01", min_samples=500)
    assert guardrail.min_samples == 500
    assert guardrail.expression == str(guardrail) == "crash_rate <= 0.01"
    assert parse_guardrail(guardrail.expression, min_samples=500) == guardrail


@pytest.mark.parametrize(
    "text",
    [
        "",
        "crash_rate",
        "crash_rate <",
        "< 0.01",
        "crash_rate < 0.01 and load_failure_rate < 0.02",
        "crash_rate < 1%",
        "crash_rate < abc",
        "crash_rate > 0.01",  # the halt condition, not the healthy one
        "crash_rate >= 0.01",
        "crash_rate == 0",
        "crash_rate = 0",
        "crash_rate != 0",
        "crashes < 0.01",  # unknown metric
        "Crash_Rate < 0.01",
        "crash_rate < 1.5",  # a share cannot exceed 1
        "crash_rate < -0.1",
        "crash_rate < 0",  # can never hold
        "p90_latency_ratio <= 0",
        "p90_latency_ratio < 1e999",
    ],
)
def test_invalid_expressions_name_the_expression(text):
    with pytest.raises(InvalidGuardrailError) as info:
        parse_guardrail(text)
    assert info.value.code == "invalid_guardrail"
    assert info.value.status == 400
    assert repr(text) in info.value.detail


@pytest.mark.parametrize("min_samples", [0, -5, 2.5, True])
def test_invalid_min_samples(min_samples):
    with pytest.raises(InvalidGuardrailError, match="min_samples"):
        parse_guardrail("crash_rate < 0.01", min_samples=min_samples)


def test_direct_construction_validates_too():
    with pytest.raises(InvalidGuardrailError):
        Guardrail("crash_rate", ">", 0.01)
    with pytest.raises(InvalidGuardrailError):
        Guardrail("crash_rate", "<", math.nan)
    with pytest.raises(InvalidGuardrailError):
        Guardrail(["crash_rate"], "<", 0.01)


def test_parse_guardrails_list_forms():
    parsed = parse_guardrails(
        ["crash_rate < 0.01", {"expression": "p90_latency_ratio < 1.2", "min_samples": 30}]
    )
    assert parsed == [
        Guardrail("crash_rate", "<", 0.01),
        Guardrail("p90_latency_ratio", "<", 1.2, min_samples=30),
    ]
    assert parse_guardrails(None) == []
    assert parse_guardrails([g.to_dict() for g in parsed]) == parsed


@pytest.mark.parametrize(
    "items",
    [
        "crash_rate < 0.01",  # a string, not a list
        [{"expr": "crash_rate < 0.01"}],
        [{"min_samples": 10}],
        [{"expression": "crash_rate < 0.01", "threshold": 1}],
        [42],
    ],
)
def test_parse_guardrails_rejects_bad_items(items):
    with pytest.raises(InvalidGuardrailError):
        parse_guardrails(items)


# --- evaluation --------------------------------------------------------------------


GUARDRAILS = [
    Guardrail("load_failure_rate", "<", 0.02, min_samples=100),
    Guardrail("crash_rate", "<=", 0.01, min_samples=200),
    Guardrail("p90_latency_ratio", "<", 1.2, min_samples=30),
]


def test_healthy_metrics_breach_nothing():
    metrics = {
        "load_failure_rate": MetricValue(0.019, 1000),
        "crash_rate": MetricValue(0.01, 500),  # exactly at a <= threshold: healthy
        "p90_latency_ratio": MetricValue(1.05, 40),
    }
    assert evaluate(GUARDRAILS, metrics) == []
    assert insufficient_data(GUARDRAILS, metrics) == []


def test_breaches_are_reported_in_order_with_their_data():
    metrics = {
        "load_failure_rate": MetricValue(0.02, 1000),  # exactly at a < threshold: breach
        "crash_rate": MetricValue(0.03, 500),
        "p90_latency_ratio": MetricValue(1.19, 40),
    }
    breaches = evaluate(GUARDRAILS, metrics)
    assert breaches == [
        Breach(GUARDRAILS[0], 0.02, 1000),
        Breach(GUARDRAILS[1], 0.03, 500),
    ]
    assert [b.metric for b in breaches] == ["load_failure_rate", "crash_rate"]
    assert "crash_rate = 0.03 over 500 samples" in breaches[1].message
    assert "'crash_rate <= 0.01'" in breaches[1].message


def test_too_few_samples_is_not_a_breach():
    metrics = {
        "load_failure_rate": MetricValue(0.5, 99),  # terrible, but only 99 < 100 samples
        "crash_rate": MetricValue(1.0, 3),
        "p90_latency_ratio": MetricValue(3.0, 30),  # exactly min_samples: judged
    }
    breaches = evaluate(GUARDRAILS, metrics)
    assert [b.metric for b in breaches] == ["p90_latency_ratio"]
    assert insufficient_data(GUARDRAILS, metrics) == GUARDRAILS[:2]


def test_missing_metric_is_not_enough_data_never_a_breach():
    assert evaluate(GUARDRAILS, {}) == []
    assert insufficient_data(GUARDRAILS, {}) == GUARDRAILS


@pytest.mark.parametrize("value", [math.nan, None])
def test_non_numeric_value_is_not_enough_data(value):
    metrics = {"p90_latency_ratio": MetricValue(value, 1000)}
    assert evaluate(GUARDRAILS, metrics) == []
    assert GUARDRAILS[2] in insufficient_data(GUARDRAILS, metrics)


def test_plain_value_samples_pairs_are_accepted():
    # The shape registry.reports.guardrail_metrics_for returns: {name: (value, samples)}.
    metrics = {
        "load_failure_rate": (0.05, 400),
        "crash_rate": (0.0, 0),  # no devices ran it yet
        "p90_latency_ratio": (None, 50),  # e.g. the control arm itself
    }
    assert evaluate(GUARDRAILS, metrics) == [Breach(GUARDRAILS[0], 0.05, 400)]
    assert insufficient_data(GUARDRAILS, metrics) == GUARDRAILS[1:]
