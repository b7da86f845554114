"""Releases: promote a version to a channel, widen or pause its rollout, roll back.

A release is (model, channel, version, optional pinned variant, rollout %, targeting,
guardrails, counter). The counter is per (model, channel) and only grows: promote, roll
back and an experiment's winner each add a release with the next counter; changing the
rollout or pausing changes the newest release in place (and is audited). Who gets which
release is decided per device by ``registry.delivery.manifest``; docs/delivery.md
("Releases and rollouts") states the rules.
"""

from __future__ import annotations

import math
from typing import Any

from registry.delivery.bucketing import BASIS_POINTS, new_seed
from registry.delivery.guardrails import parse_guardrails
from registry.delivery.publication import publish_deliverable
from registry.delivery.targeting import TargetingRules
from registry.errors import InvalidChannelError, ValidationError, VersionNotServableError
from registry.schemas import CHANNEL_RE, ReleaseOut

__all__ = [
    "canonical_guardrails",
    "check_servable",
    "history",
    "percent_to_bp",
    "promote",
    "rollback",
    "set_rollout",
    "validate_channel",
]


def validate_channel(channel: object) -> str:
    """Channels are ``[a-z0-9-]{1,32}`` (``production``, ``beta``, ``canary-eu``)."""
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        raise InvalidChannelError(
            f"invalid channel {channel!r}: use 1-32 characters [a-z0-9-], e.g. 'production'",
            field="channel")
    return channel


def percent_to_bp(value: object, field: str) -> int:
    """A percentage 0..100 with at most two decimals, as integer basis points (1% = 100).

    Basis points are what bucketing compares with, so a percentage that is not a whole
    number of basis points (33.333) is refused instead of silently rounded.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not 0 <= value <= 100:
        raise ValidationError(f"{field} must be a number from 0 to 100, got {value!r}",
                              field=field)
    bp = round(value * 100)
    if abs(value * 100 - bp) > 1e-6:
        raise ValidationError(f"{field} allows at most two decimals (basis points), got {value!r}",
                              field=field)
    return int(bp)


def canonical_guardrails(items: Any) -> list[dict[str, Any]]:
    """Validated guardrails in their stored form ``{"expression", "min_samples"}``."""
    return [g.to_dict() for g in parse_guardrails(items)]


def check_servable(services: Any, model: str, version: int, variant: str | None) -> None:
    """A version can be released only when converted and with a servable variant.

    Raises:
        VersionNotFoundError: no such version.
        VersionNotServableError: not ``ready``, no servable variant, or the pinned variant
            is unknown or not servable.
    """
    found = services.store.get_version(model, version)
    servable = [v.name for v in found.variants if v.servable and v.sha256]
    if found.status != "ready":
        raise VersionNotServableError(
            f"version {version} of {model!r} is {found.status!r}; only 'ready' versions can be "
            "released", model=model, version=version, version_status=found.status)
    if not servable:
        raise VersionNotServableError(
            f"version {version} of {model!r} has no servable variant", model=model,
            version=version)
    if variant is not None and variant not in servable:
        raise VersionNotServableError(
            f"variant {variant!r} of {model!r} version {version} is not servable; servable: "
            + ", ".join(servable), model=model, version=version, variant=variant)


def _validate_model(name: object) -> str:
    from registry.schemas import validate_name

    return validate_name(name if isinstance(name, str) else "")


def _version_number(value: object, field: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{field} must be a positive integer, got {value!r}", field=field)
    return value


def promote(services: Any, model: str, version: object, *, channel: object, actor: str,
            rollout_percent: object = 100, variant: str | None = None,
            targeting: Any = None, guardrails: Any = None, reason: str = "") -> ReleaseOut:
    """Publish ``version`` on ``channel`` as a new release (the next counter).

    Devices the release targets and whose rollout bucket is below the percentage get it;
    everyone else keeps resolving to the earlier releases. The variants it can deliver (the
    pinned one, else every servable one) are published first — TUF targets, then public —
    even at 0% rollout: once the release exists, widening it needs no new publication.
    Deltas from the artifacts of earlier releases are computed in the background.
    """
    model = _validate_model(model)
    channel = validate_channel(channel)
    version = _version_number(version)
    rollout_bp = percent_to_bp(rollout_percent, "rollout_percent")
    if variant is not None and (not isinstance(variant, str) or not variant):
        raise ValidationError("variant must be a variant name", field="variant")
    rules = TargetingRules.from_dict(targeting).to_dict()
    checks = canonical_guardrails(guardrails)
    reason = _reason(reason)
    check_servable(services, model, version, variant)
    publish_deliverable(services, model, [(version, variant)], actor)
    release = services.store.create_release(
        model, channel, version=version, variant=variant, rollout_bp=rollout_bp,
        rollout_seed=new_seed(), targeting=rules, guardrails=checks, kind="promote",
        reason=reason, actor=actor)
    _schedule_deltas(services, release)
    _republish(services, model, channel)
    return release


def set_rollout(services: Any, model: str, channel: object, *, actor: str,
                rollout_percent: object = None, paused: bool | None = None,
                reason: str = "") -> ReleaseOut:
    """Widen/narrow the newest release's rollout, or pause/resume it.

    Pausing freezes the rollout: devices inside it keep the release, no device joins.
    Widening a paused release is refused; narrowing is allowed. Resuming also clears a
    guardrail halt.
    """
    model = _validate_model(model)
    channel = validate_channel(channel)
    if rollout_percent is None and paused is None:
        raise ValidationError("send rollout_percent, or paused true/false", field="body")
    bp = None if rollout_percent is None else percent_to_bp(rollout_percent, "rollout_percent")
    if paused is not None and not isinstance(paused, bool):
        raise ValidationError("paused must be true or false", field="paused")
    release = services.store.update_current_release(model, channel, actor=actor,
                                                    reason=_reason(reason), rollout_bp=bp,
                                                    paused=paused)
    _republish(services, model, channel)
    return release


def rollback(services: Any, model: str, channel: object, *, actor: str,
             to_version: object = None, reason: str = "") -> ReleaseOut:
    """Publish a NEW release (higher counter) that points at an older version.

    The restored release is the latest earlier release whose version differs from the
    current one, or with ``to_version`` the latest earlier release of that version. The new
    release keeps that release's pinned variant, reaches 100% of the devices the current
    release targets (so it replaces exactly what the current release could have served),
    and has no guardrails.

    Raises:
        ReleaseNotFoundError: the channel has no release.
        NothingToRollBackError: no earlier release qualifies.
        VersionNotServableError: the old version's artifacts are no longer servable.
    """
    model = _validate_model(model)
    channel = validate_channel(channel)
    if to_version is not None:
        to_version = _version_number(to_version, "to_version")
    current, source = services.store.rollback_source(model, channel, to_version)
    check_servable(services, model, source.version, source.variant)
    # Already public since its first release; this only repairs a publication a crash cut short.
    publish_deliverable(services, model, [(source.version, source.variant)], actor)
    release = services.store.create_release(
        model, channel, version=source.version, variant=source.variant,
        rollout_bp=BASIS_POINTS, rollout_seed=new_seed(), targeting=current.targeting,
        guardrails=[], kind="rollback", reason=_reason(reason), actor=actor,
        details={"from_counter": current.counter, "from_version": current.version,
                 "restores_counter": source.counter})
    _schedule_deltas(services, release)
    _republish(services, model, channel)
    return release


def history(services: Any, model: str, channel: str | None = None,
            limit: int = 100) -> list[ReleaseOut]:
    """Releases newest first (per channel): counter, version, rollout, who, when, why."""
    model = _validate_model(model)
    if channel is not None:
        channel = validate_channel(channel)
    return services.store.list_releases(model, channel, limit=limit)


def _reason(reason: object) -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str) or len(reason) > 1000:
        raise ValidationError("reason must be a string of at most 1000 characters",
                              field="reason")
    return reason


def _schedule_deltas(services: Any, release: ReleaseOut) -> None:
    from registry.delivery.deltas import schedule_release_deltas

    schedule_release_deltas(services, release)


def _republish(services: Any, model: str, channel: str) -> None:
    # The signed ruleset follows every change of the channel (registry.delivery.rulesets).
    from registry.delivery.rulesets import republish

    republish(services, model, channel)
