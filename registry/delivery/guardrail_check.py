"""Evaluate the guardrails of live releases and experiments and halt what breaks them.

The rule engine (``registry.delivery.guardrails``) is pure; this module feeds it metric
values and acts on breaches. A halt pauses: a release stays frozen at its rollout
percentage (no new devices get it, devices inside keep it), an experiment stops enrolling
(assigned devices keep their arm). The reason is stored (``halted_reason``), audited
(``release.halt`` / ``experiment.halt``) and shown by ``modeldrop releases`` and the
experiment's GET; ``resume`` clears it. Taking a model away from the devices that have it
is a rollback, a human decision.

Metrics come from a provider ``metrics_provider(services, kind, obj)``:

* ``kind == "release"``, ``obj`` a ``ReleaseOut``: ``{metric: (value, samples)}``;
* ``kind == "arm"``, ``obj`` an ``ArmRef`` (experiment and arm name): the same for one arm.

The default provider asks ``registry.telemetry.metrics`` (``release_metrics(services,
release)`` and ``experiment_arm_metrics(services, experiment)`` returning ``{arm: {metric:
(value, samples)}}``) when that module exists, and otherwise reports no data — which is
never a breach. Experiment guardrails are evaluated for every arm except the first, the
control: the baseline is what the treatment is compared against, not what is on trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.delivery.guardrails import Breach, evaluate, parse_guardrails
from registry.delivery.rulesets import republish

__all__ = ["ArmRef", "Halt", "MetricsProvider", "check_guardrails", "default_metrics_provider"]

log = logging.getLogger("modeldrop.guardrails")

ACTOR = "system:guardrails"
Metrics = Mapping[str, Any]  # metric -> (value, samples) or MetricValue
MetricsProvider = Callable[[Any, str, Any], Metrics]


@dataclass(frozen=True)
class ArmRef:
    experiment: Any  # ExperimentOut
    arm: str


@dataclass(frozen=True)
class Halt:
    kind: str  # release | experiment
    target: str  # "model/channel#counter" or the experiment name
    reason: str
    breaches: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "reason": self.reason,
                "breaches": list(self.breaches)}


def default_metrics_provider(services: Any, kind: str, obj: Any) -> Metrics:
    """Telemetry's aggregates of the release, or of the experiment arm."""
    from registry.telemetry import metrics

    if kind == "release":
        return metrics.release_metrics(services, obj) or {}
    per_arm = metrics.experiment_arm_metrics(services, obj.experiment) or {}
    return per_arm.get(obj.arm) or {}


def check_guardrails(services: Any,
                     metrics_provider: MetricsProvider = default_metrics_provider
                     ) -> list[Halt]:
    """Evaluate every unpaused release and running experiment that declares guardrails.

    One failing provider call is logged and skipped, so a broken metric for one release
    never stops the others from being checked. Returns the halts made by this call.
    """
    halts: list[Halt] = []
    for release in services.store.guarded_releases():
        breaches = _breaches(services, metrics_provider, release.guardrails, "release", release,
                             f"release {release.model}/{release.channel}#{release.counter}")
        if not breaches:
            continue
        reason = "guardrail: " + "; ".join(b.message for b in breaches)
        details = {"breaches": [_breach_dict(b) for b in breaches]}
        if services.store.halt_release(release.model, release.channel, release.counter, reason,
                                       ACTOR, details):
            log.warning("halted %s/%s release %d: %s", release.model, release.channel,
                        release.counter, reason)
            halts.append(Halt("release", f"{release.model}/{release.channel}#{release.counter}",
                              reason, tuple(details["breaches"])))
            republish(services, release.model, release.channel)
    for experiment in services.store.guarded_experiments():
        found: list[tuple[str, Breach]] = []
        for arm in experiment.arms[1:]:
            found += [(arm.name, b) for b in _breaches(
                services, metrics_provider, experiment.guardrails, "arm",
                ArmRef(experiment, arm.name), f"experiment {experiment.name} arm {arm.name}")]
        if not found:
            continue
        reason = "guardrail: " + "; ".join(f"arm {arm}: {b.message}" for arm, b in found)
        details = {"breaches": [{"arm": arm, **_breach_dict(b)} for arm, b in found]}
        if services.store.halt_experiment(experiment.name, reason, ACTOR, details):
            log.warning("halted experiment %s: %s", experiment.name, reason)
            halts.append(Halt("experiment", experiment.name, reason,
                              tuple(details["breaches"])))
            republish(services, experiment.model, experiment.channel)
    return halts


def _breaches(services: Any, provider: MetricsProvider, guardrails: Any, kind: str, obj: Any,
              label: str) -> list[Breach]:
    try:
        parsed = parse_guardrails(guardrails)
        return evaluate(parsed, provider(services, kind, obj) or {})
    except Exception:
        log.exception("guardrails of %s could not be evaluated", label)
        return []


def _breach_dict(breach: Breach) -> dict[str, Any]:
    return {"guardrail": breach.guardrail.expression, "metric": breach.metric,
            "value": breach.value, "samples": breach.samples,
            "min_samples": breach.guardrail.min_samples}
