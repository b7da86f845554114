"""Guardrails: the conditions under which a rollout or experiment halts itself.

A guardrail states the *healthy* condition, e.g. ``"load_failure_rate < 0.02"``; it is
breached when enough telemetry has arrived and the condition is false. "Installed" is
not "working", and no peer product halts a rollout on model behaviour, so these are
checked continuously against telemetry by the caller.

Design decisions:

* **Only ``<`` and ``<=``.** Every known metric is lower-is-better, so ``>`` would
  almost always be someone writing the halt condition instead of the healthy one — the
  opposite of what they meant, silently. Rejecting it makes the mistake loud.
* **No data is never a breach.** A metric missing from the telemetry, or seen over
  fewer than ``min_samples`` samples, is "not enough data yet": a rollout at 1% must not
  halt because one of its first three devices failed.
* **Plain thresholds, uncorrected.** Guardrails are a safety net, not a statistical
  comparison; the experiment reports do the statistics.

Known metrics (all lower-is-better; what "samples" counts is in brackets):

* ``load_failure_rate`` — share of model load attempts that failed, so the SDK fell
  back to the last good model [load attempts].
* ``install_failure_rate`` — share of install attempts that failed verification or
  installation [install attempts].
* ``download_failure_rate`` — share of started downloads that failed [downloads started].
* ``crash_rate`` — share of devices running the model that reported a crash [devices].
* ``p90_latency_ratio`` / ``p50_latency_ratio`` — the 90th / 50th percentile of
  per-device inference latency for this release or arm, divided by the same figure for
  the baseline (previous release or control arm); 1.2 means 20% slower [devices with
  inference telemetry].
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidGuardrailError

__all__ = [
    "DEFAULT_MIN_SAMPLES",
    "KNOWN_METRICS",
    "Breach",
    "Guardrail",
    "MetricValue",
    "evaluate",
    "insufficient_data",
    "parse_guardrail",
    "parse_guardrails",
]

RATE_METRICS = frozenset(
    {"load_failure_rate", "install_failure_rate", "download_failure_rate", "crash_rate"}
)
RATIO_METRICS = frozenset({"p90_latency_ratio", "p50_latency_ratio"})
KNOWN_METRICS = RATE_METRICS | RATIO_METRICS

# Samples needed before a guardrail may fire: at a 2% threshold, 100 attempts are about
# two expected failures, below which a single unlucky device would halt a rollout.
DEFAULT_MIN_SAMPLES = 100

_OPERATORS: dict[str, Callable[[float, float], bool]] = {"<": operator.lt, "<=": operator.le}
_EXPRESSION = re.compile(
    r"\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|!=|<|>|=)\s*"
    r"(?P<threshold>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*"
)


@dataclass(frozen=True)
class Guardrail:
    """One healthy condition ``metric op threshold``, checked once ``min_samples`` arrive.

    Raises:
        InvalidGuardrailError: on construction with an unknown metric, an operator other
            than ``<``/``<=``, an out-of-range threshold or a non-positive ``min_samples``.
    """

    metric: str
    op: str
    threshold: float
    min_samples: int = DEFAULT_MIN_SAMPLES

    def __post_init__(self) -> None:
        problem = _problem(self.metric, self.op, self.threshold, self.min_samples)
        if problem is not None:
            raise InvalidGuardrailError(
                f"guardrail '{self.metric} {self.op} {self.threshold!r}': {problem}"
            )
        object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def expression(self) -> str:
        """The canonical text, e.g. ``"crash_rate <= 0.01"``."""
        return f"{self.metric} {self.op} {self.threshold!r}"

    def holds(self, value: float) -> bool:
        """Whether ``value`` satisfies the healthy condition."""
        return _OPERATORS[self.op](value, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON form accepted by :func:`parse_guardrails`."""
        return {"expression": self.expression, "min_samples": self.min_samples}

    def __str__(self) -> str:
        return self.expression


@dataclass(frozen=True)
class MetricValue:
    """A metric as aggregated from telemetry, with the number of samples behind it.

    ``value`` may be None when there is nothing to compute (e.g. a latency ratio for the
    control arm itself); that counts as not enough data.
    """

    value: float | None
    samples: int


@dataclass(frozen=True)
class Breach:
    """A guardrail whose condition failed with enough data behind the value."""

    guardrail: Guardrail
    value: float
    samples: int

    @property
    def metric(self) -> str:
        return self.guardrail.metric

    @property
    def message(self) -> str:
        """One line for the audit log and the dashboard."""
        return (
            f"{self.metric} = {self.value:.4g} over {self.samples} samples "
            f"breaks guardrail '{self.guardrail.expression}'"
        )


def parse_guardrail(expression: str, *, min_samples: int | None = None) -> Guardrail:
    """Parse ``"<metric> <op> <number>"``, e.g. ``"p90_latency_ratio < 1.2"``.

    Args:
        expression: The healthy condition; whitespace around tokens is optional.
        min_samples: Samples required before the guardrail can fire; defaults to
            :data:`DEFAULT_MIN_SAMPLES`.

    Raises:
        InvalidGuardrailError: quoting the expression and saying what is wrong.
    """
    if not isinstance(expression, str):
        raise InvalidGuardrailError(f"guardrail must be a string, got {expression!r}")
    match = _EXPRESSION.fullmatch(expression)
    if match is None:
        raise InvalidGuardrailError(
            f"guardrail {expression!r}: expected '<metric> < <number>', e.g. 'crash_rate < 0.01'"
        )
    parts = (
        match["metric"],
        match["op"],
        float(match["threshold"]),
        DEFAULT_MIN_SAMPLES if min_samples is None else min_samples,
    )
    # Checked here too so the message quotes exactly what the user wrote.
    problem = _problem(*parts)
    if problem is not None:
        raise InvalidGuardrailError(f"guardrail {expression!r}: {problem}")
    return Guardrail(*parts)


def parse_guardrails(items: Iterable[str | Mapping[str, Any]] | None) -> list[Guardrail]:
    """Parse a list of guardrails as stored with a release or experiment.

    Each item is an expression string, or ``{"expression": str, "min_samples": int}``.

    Raises:
        InvalidGuardrailError: for the first item that does not parse.
    """
    if items is None:
        return []
    if not isinstance(items, list | tuple):  # a string, an object, true/false, a number
        raise InvalidGuardrailError("guardrails must be a list of expressions")
    guardrails = []
    for item in items:
        if isinstance(item, Mapping):
            unknown = sorted(set(item) - {"expression", "min_samples"})
            if unknown:
                raise InvalidGuardrailError(
                    f"guardrail {dict(item)!r}: unknown key {unknown[0]!r}; "
                    "use 'expression' and optionally 'min_samples'"
                )
            if "expression" not in item:
                raise InvalidGuardrailError(f"guardrail {dict(item)!r}: 'expression' is required")
            guardrails.append(
                parse_guardrail(item["expression"], min_samples=item.get("min_samples"))
            )
        else:
            guardrails.append(parse_guardrail(item))
    return guardrails


Observed = MetricValue | tuple[float | None, int | None]


def evaluate(guardrails: Iterable[Guardrail], metrics: Mapping[str, Observed]) -> list[Breach]:
    """The guardrails that are breached, in the order given.

    Args:
        guardrails: Parsed guardrails.
        metrics: Metric name -> :class:`MetricValue`, or a plain ``(value, samples)``
            pair as ``registry.reports.guardrail_metrics_for`` returns.

    A guardrail whose metric is missing, has no numeric value (None, NaN) or is backed
    by fewer than ``min_samples`` samples is not breached (see :func:`insufficient_data`).
    """
    breaches = []
    for guardrail in guardrails:
        observed = _observed(metrics, guardrail.metric)
        if not _has_enough_data(guardrail, observed):
            continue
        if not guardrail.holds(observed.value):
            breaches.append(Breach(guardrail, observed.value, observed.samples))
    return breaches


def insufficient_data(
    guardrails: Iterable[Guardrail], metrics: Mapping[str, Observed]
) -> list[Guardrail]:
    """The guardrails that cannot be judged yet — for "waiting for data" on dashboards."""
    return [g for g in guardrails if not _has_enough_data(g, _observed(metrics, g.metric))]


def _problem(metric: object, op: object, threshold: object, min_samples: object) -> str | None:
    """What is wrong with a guardrail definition, or None if it is valid."""
    if not isinstance(metric, str) or metric not in KNOWN_METRICS:
        return f"unknown metric {metric!r}; known: {', '.join(sorted(KNOWN_METRICS))}"
    if not isinstance(op, str) or op not in _OPERATORS:
        return (
            "operator must be '<' or '<=': a guardrail states the healthy condition and "
            f"every metric is lower-is-better, e.g. '{metric} < 0.02'"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        return "threshold must be a number"
    if not math.isfinite(threshold) or threshold < 0:
        return "threshold must be a finite number >= 0"
    if op == "<" and threshold == 0:
        return "'< 0' can never hold; use '<= 0' for zero tolerance"
    if metric in RATE_METRICS and threshold > 1:
        return f"{metric} is a share in 0..1, so the threshold must be at most 1"
    if metric in RATIO_METRICS and threshold == 0:
        return "a latency ratio threshold must be > 0"
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        return f"min_samples must be a positive integer, got {min_samples!r}"
    return None


def _observed(metrics: Mapping[str, Observed], name: str) -> MetricValue | None:
    observed = metrics.get(name)
    if observed is None or isinstance(observed, MetricValue):
        return observed
    value, samples = observed
    return MetricValue(value, samples)


def _has_enough_data(guardrail: Guardrail, observed: MetricValue | None) -> bool:
    if observed is None:
        return False
    samples, value = observed.samples, observed.value
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < guardrail.min_samples:
        return False
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)
