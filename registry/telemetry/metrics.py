"""Guardrail inputs from telemetry: ``{metric: (value, samples)}`` for the delivery engine.

``registry.delivery.guardrail_check`` imports this module lazily and calls the two functions
below for every guarded release and running experiment. Both compute exactly what the
experiment report's ``guardrail_inputs`` say (docs/reports.md, "Guardrail inputs"): rates
per *attempt* (a threshold like "2% of loads fail" is absolute), latency ratios of pooled
p50/p90 against a baseline, and the number of samples behind each value so the engine can
wait for enough data. They reuse ``build_report`` rather than re-deriving the numbers, so a
guardrail and the report shown to people never disagree.

A release has no control arm, so it is compared with the release it replaced: the latest
earlier release of the same model and channel that served a different version or pinned
variant. Both sides only count events received since the release was created — the devices
outside a partial rollout keep reporting on the old release over the same period, which makes
the latency ratio a concurrent comparison. Telemetry does not carry the channel, so two
channels serving the same version share its events.
"""

from __future__ import annotations

from typing import Any

from registry.reports import ExperimentDef, build_report, guardrail_metrics_for

__all__ = ["Observed", "experiment_arm_metrics", "release_metrics"]

Observed = tuple[float | None, int]


def _inputs(exp: ExperimentDef, units: list) -> dict[str, Any]:
    # No bootstrap: guardrails need the point estimates only; min_units only shapes warnings.
    return build_report(exp, units, bootstrap_samples=0, min_units=0)


def experiment_arm_metrics(services: Any, experiment: Any) -> dict[str, dict[str, Observed]]:
    """Per-arm guardrail metrics of an experiment: ``{arm: {metric: (value, samples)}}``.

    Args:
        services: ``registry.services.Services``.
        experiment: The experiment's name, its id, or an object with ``name`` (such as the
            ``ExperimentOut`` the delivery store returns).

    Units are the assigned install ids (as in the report); the latency ratios compare each
    arm with the first arm, the control, whose own ratios are ``None``.

    Raises:
        ExperimentNotFoundError: no such experiment.
    """
    exp, units, _ = services.store.experiment_units(experiment)
    report = _inputs(exp, units)
    return {arm: _enough_devices(services, units, arm, guardrail_metrics_for(report, arm))
            for arm in exp.arms}


def release_metrics(services: Any, release: Any) -> dict[str, Observed]:
    """Guardrail metrics of one release: ``{metric: (value, samples)}``.

    Args:
        services: ``registry.services.Services``.
        release: The release's database id, or an object (or dict) with an integer ``id``
            (such as the ``ReleaseOut`` the delivery store returns).

    Rates count the installs that reported on the release's version (and pinned variant, if
    any) since it was created. Latency ratios are ``None`` when there is no baseline release
    or no latency from either side — "not enough data", never a breach.

    Raises:
        ReleaseNotFoundError: no such release.
    """
    scope = services.store.release_scope(release)
    units = services.store.release_units(scope)
    exp = ExperimentDef(name=f"{scope.model}/{scope.channel}#{scope.counter}",
                        arms=["baseline", "release"], weights=[1, 1])
    return _enough_devices(services, units, "release",
                           guardrail_metrics_for(_inputs(exp, units), "release"))


def _enough_devices(services: Any, units: list, arm: str,
                    metrics: dict[str, Observed]) -> dict[str, Observed]:
    """No data (never a breach) until ``guardrail_min_devices`` distinct served devices of
    the arm reported: a handful of devices, real or not, cannot halt a release."""
    devices = len({u.install_id for u in units if u.arm == arm})
    return metrics if devices >= services.settings.guardrail_min_devices else {}
