"""A/B experiments: split the devices a channel serves into arms by weight.

An experiment runs on one (model, channel) — at most one at a time — and overrides the
version (or variant) of the release a device resolves to when the device is enrolled.
Assignment is ``assign_arm(seed, install_id, arm_ranges(weights, coverage))`` (GrowthBook
hash v2, integer basis points), recorded on first enrolment and sticky for the life of the
experiment, so reports can analyse by assignment (intent-to-treat).

Stopping an experiment with a winner publishes the winning arm's version (and pinned
variant, if the arm names one) as a new release of the channel at 100% of the devices the
experiment targeted, in the same transaction as the stop. Stopping without a winner just
ends the overrides: every device goes back to what the releases say.
"""

from __future__ import annotations

import re
from typing import Any

from registry.delivery.bucketing import BASIS_POINTS, arm_ranges, new_seed
from registry.delivery.publication import publish_deliverable
from registry.delivery.releases import (
    _reason,
    _validate_model,
    _version_number,
    canonical_guardrails,
    check_servable,
    percent_to_bp,
    validate_channel,
)
from registry.delivery.targeting import TargetingRules
from registry.errors import InvalidExperimentError, ReleaseNotFoundError
from registry.schemas import ExperimentOut, ReleaseOut

__all__ = [
    "ARM_NAME_RE",
    "create_experiment",
    "get_experiment",
    "list_experiments",
    "stop_experiment",
    "update_experiment",
]

ARM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_SEED_RE = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII: same bytes in every language
MAX_ARMS = 10


def create_experiment(services: Any, name: object, *, model: object, channel: object,
                      arms: Any, actor: str, weights: Any = None,
                      coverage_percent: object = 100, seed: object = None,
                      targeting: Any = None, guardrails: Any = None) -> ExperimentOut:
    """Validate and start an experiment.

    Each arm's variants (its pinned one, else every servable one of its version) are
    published — TUF targets, then public — before the experiment is written
    (``registry.delivery.publication``); a refused experiment publishes nothing.

    Args:
        arms: ``[{"name": "control", "version": 3}, {"name": "int8", "version": 4,
            "variant": "tflite-int8-dynamic", "weight": 50}, ...]`` in order; the first arm
            is the control (the baseline of reports and latency-ratio guardrails).
        weights: One non-negative integer per arm (e.g. ``[50, 50]``); overrides the arms'
            ``weight`` fields; default equal weights.
        coverage_percent: Share of the targeted devices enrolled, 0..100.
        seed: Bucketing seed (printable ASCII); default a random ``new_seed()``.

    Raises:
        InvalidExperimentError, InvalidBucketingError, InvalidTargetingError,
        InvalidGuardrailError: bad definition (400).
        VersionNotServableError: an arm's version or variant cannot be served (409).
        ReleaseNotFoundError: the channel has no release to experiment on (404).
        ExperimentConflictError: the name is taken or the channel has an active experiment.
    """
    from registry.schemas import validate_name

    name = validate_name(name if isinstance(name, str) else "", "experiment name")
    model = _validate_model(model)
    channel = validate_channel(channel)
    parsed = _arms(arms, weights)
    coverage_bp = percent_to_bp(coverage_percent, "coverage_percent")
    arm_ranges([a["weight"] for a in parsed], coverage_bp)  # raises InvalidBucketingError
    if seed is None:
        seed = new_seed()
    elif not isinstance(seed, str) or not _SEED_RE.fullmatch(seed):
        raise InvalidExperimentError("seed must be 1-64 printable ASCII characters",
                                     field="seed")
    rules = TargetingRules.from_dict(targeting).to_dict()
    checks = canonical_guardrails(guardrails)
    for arm in parsed:
        check_servable(services, model, arm["version"], arm["variant"])
    if not services.store.list_releases(model, channel, limit=1):
        raise ReleaseNotFoundError(
            f"{model}/{channel} has no release: an experiment splits the devices a release "
            "serves, so promote a version to the channel first", model=model, channel=channel)
    # Refuse a taken name or a busy channel before publishing anything: the arms' variants
    # become public (TUF targets first) before the experiment can reach a manifest.
    services.store.check_experiment_free(name, model, channel)
    publish_deliverable(services, model, [(a["version"], a["variant"]) for a in parsed], actor)
    created = services.store.create_experiment(
        name, model=model, channel=channel, seed=seed, coverage_bp=coverage_bp, arms=parsed,
        targeting=rules, guardrails=checks, actor=actor)
    _republish(services, created)
    return created


def _arms(arms: Any, weights: Any) -> list[dict[str, Any]]:
    if not isinstance(arms, list) or not 2 <= len(arms) <= MAX_ARMS:
        raise InvalidExperimentError(f"arms must be a list of 2 to {MAX_ARMS} arms",
                                     field="arms")
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(arms)):
        raise InvalidExperimentError(
            f"weights must be a list with one integer per arm ({len(arms)})", field="weights")
    parsed, seen = [], set()
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict) or set(arm) - {"name", "version", "variant", "weight"}:
            raise InvalidExperimentError(
                f"arms[{i}] must be an object with name, version and optionally variant and "
                "weight", field="arms")
        arm_name = arm.get("name")
        if not isinstance(arm_name, str) or not ARM_NAME_RE.fullmatch(arm_name):
            raise InvalidExperimentError(
                f"arms[{i}].name {arm_name!r} must be 1-32 characters [a-z0-9_-]", field="arms")
        if arm_name in seen:
            raise InvalidExperimentError(f"arm name {arm_name!r} is used twice", field="arms")
        seen.add(arm_name)
        variant = arm.get("variant")
        if variant is not None and (not isinstance(variant, str) or not variant):
            raise InvalidExperimentError(f"arms[{i}].variant must be a variant name",
                                         field="arms")
        weight = weights[i] if weights is not None else arm.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise InvalidExperimentError(
                f"weight of arm {arm_name!r} must be a non-negative integer, got {weight!r}",
                field="weights")
        parsed.append({"name": arm_name, "version": _version_number(arm.get("version"),
                                                                    f"arms[{i}].version"),
                       "variant": variant, "weight": weight})
    return parsed


def get_experiment(services: Any, name: str) -> ExperimentOut:
    """The definition: seed, hash version 2, arms in order with basis-point ranges."""
    return services.store.get_experiment(name)


def list_experiments(services: Any, model: str | None = None,
                     status: str | None = None) -> list[ExperimentOut]:
    if model is not None:
        model = _validate_model(model)
    if status is not None and status not in ("running", "paused", "stopped"):
        raise InvalidExperimentError("status must be running, paused or stopped",
                                     field="status")
    return services.store.list_experiments(model, status)


def update_experiment(services: Any, name: str, *, actor: str, coverage_percent: object = None,
                      paused: bool | None = None, reason: str = "") -> ExperimentOut:
    """Change coverage, or pause/resume enrolment.

    Raising coverage never moves an enrolled device (its arm keeps the slot it owns);
    lowering it stops new enrolments in the uncovered part, while recorded assignments
    stay (sticky). Pausing stops new enrolments; assigned devices keep their arm.
    """
    if coverage_percent is None and paused is None:
        raise InvalidExperimentError("send coverage_percent, or paused true/false",
                                     field="body")
    if paused is not None and not isinstance(paused, bool):
        raise InvalidExperimentError("paused must be true or false", field="paused")
    bp = None if coverage_percent is None else percent_to_bp(coverage_percent,
                                                             "coverage_percent")
    updated = services.store.update_experiment(name, actor=actor, coverage_bp=bp,
                                                paused=paused, reason=_reason(reason))
    _republish(services, updated)
    return updated


def stop_experiment(services: Any, name: str, *, actor: str, winner: str | None = None,
                    reason: str = "") -> tuple[ExperimentOut, ReleaseOut | None]:
    """Stop the experiment; with ``winner``, release that arm at 100% (see module doc).

    Returns:
        (the stopped experiment, the winner's release or None).
    """
    reason = _reason(reason)
    winner_release = None
    if winner is not None:
        if not isinstance(winner, str):
            raise InvalidExperimentError("winner must be an arm name", field="winner")
        experiment = services.store.get_experiment(name)
        arm = next((a for a in experiment.arms if a.name == winner), None)
        if arm is not None:  # an unknown arm is reported by the store, in the transaction
            check_servable(services, experiment.model, arm.version, arm.variant)
            if experiment.status != "stopped":  # public since the experiment started: a repair
                publish_deliverable(services, experiment.model, [(arm.version, arm.variant)],
                                    actor)
            why = f"winner of experiment {name}: arm {winner}" + (f" ({reason})" if reason else "")
            winner_release = {"rollout_bp": BASIS_POINTS, "rollout_seed": new_seed(),
                              "targeting": experiment.targeting, "guardrails": [],
                              "reason": why}
    stopped, release = services.store.stop_experiment(name, actor=actor, winner=winner,
                                                      winner_release=winner_release,
                                                      reason=reason)
    if release is not None:
        from registry.delivery.deltas import schedule_release_deltas

        schedule_release_deltas(services, release)
    _republish(services, stopped)
    return stopped, release


def _republish(services: Any, experiment: ExperimentOut) -> None:
    # The signed ruleset follows every change of the channel (registry.delivery.rulesets).
    from registry.delivery.rulesets import republish

    republish(services, experiment.model, experiment.channel)
