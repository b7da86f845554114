"""Signed rulesets: the server's whole decision for a (model, channel), as one TUF target.

A ruleset (docs/wire-format.md, "Rulesets") carries everything ``manifest.resolve`` reads
— the releases newest first with rollout, seed, targeting, pause and ``min_app_version``,
the active experiment with seed, coverage and arms, and the variant table of each version
they name (formats, sizes, fidelity, per-device-class latency) — plus the release counter,
issue time and expiry. A device configured with ``resolve="local"`` fetches it through TUF
and decides with ``client_sdk.rules.evaluate_ruleset``, the same rules the manifest uses;
a static mirror or CDN can then answer every poll (``modeldrop mirror``).

Publication: the canonical bytes go to the blob store (content-addressed), then the TUF
target ``rulesets/<model>/<channel>.json`` is added (targets -> snapshot -> timestamp).
:func:`republish` runs after every change of a channel (release, rollout, pause,
experiment change, guardrail halt, rollback); a document whose decision-relevant content
did not change is not re-published until half its lifetime is gone. Publication failures
never fail the change itself: they are logged, and the worker's maintenance
(:func:`refresh_rulesets`) re-publishes every stale or expiring ruleset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from client_sdk.rules import RULESET_KIND, RULESET_SCHEMA, ruleset_target_path
from registry.delivery.bucketing import arm_ranges, assign_arm, in_rollout
from registry.delivery.manifest import _with_latency, wire_signature
from registry.delivery.targeting import TargetingRules

__all__ = [
    "build_ruleset",
    "canonical_ruleset_bytes",
    "check_local_decision",
    "publish_ruleset",
    "published_ruleset",
    "refresh_rulesets",
    "republish",
    "ruleset_etag",
]

log = logging.getLogger("modeldrop.delivery")

_VOLATILE = ("issued_at", "expires_at")
_BYTES: dict[str, bytes] = {}  # sha256 -> published ruleset bytes, per process
_PREFIX = "rulesets/"


def canonical_ruleset_bytes(document: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, ASCII escapes, no NaN/Infinity: one byte string per
    document, so its sha256 (the TUF target hash and the ETag) is stable."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def ruleset_etag(data: bytes) -> str:
    """The strong ETag of ruleset bytes: their sha256 (unquoted)."""
    return hashlib.sha256(data).hexdigest()


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _variant_entry(v: Mapping[str, Any]) -> dict[str, Any]:
    fidelity = v.get("fidelity")
    latency = v.get("latency_by_device") or {}
    entry = {
        "name": v["name"], "format": v["format"], "size": int(v["size"]), "sha256": v["sha256"],
        "target": v["target_path"],
        "fidelity": fidelity if _finite(fidelity) else None,
        # What choose_variant would ignore anyway (non-finite, non-positive) is left out.
        "latency_by_device": {k: x for k, x in sorted(latency.items())
                              if isinstance(k, str) and _finite(x) and x > 0},
    }
    # Written only when known: an SDK from before signatures refuses a ruleset with a field
    # it does not know, so the rulesets of models converted earlier stay readable to it.
    signature = wire_signature(v.get("signature"))
    if signature is not None:
        entry["signature"] = signature
    return entry


def build_ruleset(services: Any, model: str, channel: str, *,
                  now: datetime | None = None) -> dict[str, Any]:
    """The ruleset of (model, channel) from the current state (not yet published)."""
    state = services.store.channel_state(model, channel)
    issued = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    versions: dict[int, dict[str, Any]] = {}

    def version(number: int, version_id: int, min_app_version: str | None) -> None:
        if number not in versions:
            table = _with_latency(services, version_id,
                                  services.store.servable_variants(version_id))
            versions[number] = {"version": number, "min_app_version": min_app_version,
                                "variants": [_variant_entry(v) for v in table]}

    releases = []
    for r in state.releases:
        version(r.version, r.version_id, r.min_app_version)
        releases.append({"counter": r.counter, "version": r.version, "variant": r.variant,
                         "rollout_bp": r.rollout_bp, "rollout_seed": r.rollout_seed,
                         "targeting": dict(r.targeting or {}), "paused": bool(r.paused),
                         "min_app_version": r.min_app_version})
    experiment = None
    if state.experiment is not None:
        e = state.experiment
        for a in e.arms:
            version(a.version, a.version_id, a.min_app_version)
        experiment = {"name": e.name, "seed": e.seed, "status": e.status,
                      "coverage_bp": e.coverage_bp, "targeting": dict(e.targeting or {}),
                      "arms": [{"name": a.name, "version": a.version, "variant": a.variant,
                                "weight": a.weight} for a in e.arms]}
    ttl = services.settings.ruleset_ttl
    return {
        "schema": RULESET_SCHEMA,
        "kind": RULESET_KIND,
        "model": model,
        "channel": channel,
        "release_counter": state.counter,
        "issued_at": _rfc3339(issued),
        "expires_at": _rfc3339(issued + timedelta(seconds=ttl)),
        "releases": releases,
        "experiment": experiment,
        "versions": [versions[n] for n in sorted(versions)],
    }


def published_ruleset(services: Any, model: str, channel: str) -> bytes | None:
    """The bytes of the ruleset now listed in TUF targets, or None if there is none."""
    info = services.signing.target_info(ruleset_target_path(model, channel))
    if info is None:
        return None
    sha256 = info.get("hashes", {}).get("sha256")
    if not sha256:
        return None
    cached = _BYTES.get(sha256)  # content-addressed: a cached copy never goes stale
    if cached is not None:
        return cached
    if not services.blobs.exists(sha256):
        return None
    data = services.blobs.read_bytes(sha256)
    if len(_BYTES) >= 64:
        _BYTES.clear()
    _BYTES[sha256] = data
    return data


def publish_ruleset(services: Any, model: str, channel: str, *, now: datetime | None = None,
                    force: bool = False) -> str | None:
    """Publish the ruleset if its content changed or half its lifetime is gone.

    Returns:
        The sha256 of the newly published bytes, or None when nothing was published.

    Raises:
        SigningError, StorageError: nothing was published.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    document = build_ruleset(services, model, channel, now=now)
    current = published_ruleset(services, model, channel)
    if current is not None and not force:
        old = json.loads(current)
        same = _stable(old) == _stable(document)
        expires = datetime.strptime(old["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if same and expires - now > timedelta(seconds=services.settings.ruleset_ttl / 2):
            return None
        if old["issued_at"] > document["issued_at"]:  # a clock step back must not reorder
            document["issued_at"] = old["issued_at"]
    data = canonical_ruleset_bytes(document)
    info = services.blobs.put_bytes(data)
    sha256 = info.sha256
    # Blob first, then the target: once listed, any mirror or client may fetch it.
    services.signing.add_targets([services.target_spec(
        ruleset_target_path(model, channel), sha256, len(data), kind="ruleset", model=model,
        channel=channel, release_counter=document["release_counter"])])
    log.info("published ruleset %s/%s (counter %d)", model, channel,
             document["release_counter"])
    return sha256


def republish(services: Any, model: str, channel: str) -> None:
    """After a change of (model, channel): publish its ruleset; never raises."""
    try:
        publish_ruleset(services, model, channel)
    except Exception:
        log.exception("could not publish the ruleset of %s/%s; maintenance will retry",
                      model, channel)


def refresh_rulesets(services: Any, *, now: datetime | None = None) -> list[str]:
    """Re-publish every listed ruleset that is stale or past half its lifetime (the worker's
    maintenance). Returns the target paths re-published."""
    done = []
    for path in sorted(services.signing.target_paths()):
        if not path.startswith(_PREFIX) or path.count("/") != 2 or not path.endswith(".json"):
            continue
        _, model, name = path.split("/")
        try:
            if publish_ruleset(services, model, name[:-len(".json")], now=now):
                done.append(path)
        except Exception:
            log.exception("could not refresh the ruleset %s", path)
    return done


def check_local_decision(services: Any, model: str, channel: str, release_counter: int,
                         version: int | None, variant: str | None, experiment: str | None,
                         arm: str | None, install_id: str, *,
                         platform: str | None = None) -> bool:
    """Recompute a device's local decision from its install id; if it holds, record the
    device as served (and its arm as assigned), as a manifest would have.

    Telemetry carries no region or app version, so targeting is checked only as far as the
    event shows (platform); what is recomputed exactly is what the install id decides: the
    rollout gate of a release of that version at or below ``release_counter``, and the arm
    (a recorded assignment, or the experiment's seed and ranges). Never raises.
    """
    try:
        if version is None or variant is None:
            return False
        state = services.store.channel_state(model, channel, max_age=1.0)
        if release_counter > state.counter:
            return False
        release = None
        for r in state.releases:
            if r.counter > release_counter:
                continue
            rules = TargetingRules.from_dict(r.targeting)
            if rules.platforms is not None and platform not in rules.platforms:
                continue
            if in_rollout(r.rollout_seed, install_id, r.rollout_bp):
                release = r
                break
        if release is None:
            return False
        exp = state.experiment
        if experiment is not None:
            if exp is None or exp.name != experiment:
                return False
            chosen = next((a for a in exp.arms if a.name == arm), None)
            if chosen is None or chosen.version != version:
                return False
            recorded = services.store.assignment(exp.id, install_id)
            if recorded is None:
                index = assign_arm(exp.seed, install_id,
                                   arm_ranges([a.weight for a in exp.arms], exp.coverage_bp))
                if index is None or exp.arms[index].name != arm or exp.status != "running":
                    return False
                recorded = services.store.record_assignment(exp.id, install_id, arm)
            if recorded != arm:
                return False
        elif release.version != version:
            return False
        if variant not in {v["name"] for v in services.store.servable_variants(
                services.store.version_id(model, version), max_age=1.0)}:
            return False
        services.store.record_served(model, channel, version, variant, install_id,
                                     release.counter)
        return True
    except Exception:
        log.exception("could not check the local decision of %s for %s/%s", install_id,
                      model, channel)
        return False


def _stable(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in _VOLATILE}


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
