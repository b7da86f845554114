"""The manifest service: which artifact one device should run, as a signed document.

``manifest_answer`` is everything ``GET /v1/manifest`` does: validate the request, resolve
the release, experiment arm and variant for this device, build the schema-1 document of
docs/wire-format.md, answer 304 when the device already has exactly this document
(ETag), else sign it with the manifest key. Resolution (docs/delivery.md, "Manifest"):

1. Releases of (model, channel) are tried newest first. A release applies to the device
   when its targeting matches, the device's rollout bucket (release's own rollout seed)
   is below the rollout percentage, the app meets the version's ``min_app_version``, and
   a variant can be chosen for the platform (the pinned one, if the release pins one).
   Otherwise the device gets the previous release, recursively; none left: 204.
   A paused (or guardrail-halted) release is frozen at its percentage, so the same rule
   keeps devices inside it and lets none join.
2. An active experiment on (model, channel) then overrides the version/variant for an
   enrolled device. A device already assigned keeps its recorded arm (sticky); a new
   device is enrolled only while the experiment runs (not paused), when the experiment's
   targeting matches and it can run *every* arm (variant for its platform, app version),
   so arms compare like with like. Its bucket (experiment seed) then picks the arm, which
   is recorded before it is served.
3. ``release_counter`` is the newest counter of (model, channel) — also for devices served
   an older release — so the counter a device sees never goes down, and every new
   release (a rollback included) raises it for every device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from registry.delivery.bucketing import arm_ranges, assign_arm, in_rollout, validate_install_id
from registry.delivery.targeting import DeviceProfile, TargetingRules, meets_min_app_version
from registry.delivery.variants import choose_variant
from registry.errors import ValidationError

__all__ = [
    "MANIFEST_SCHEMA",
    "ManifestAnswer",
    "ManifestQuery",
    "Offer",
    "build_document",
    "manifest_answer",
    "manifest_etag",
    "parse_query",
    "resolve",
    "wire_signature",
]

log = logging.getLogger("modeldrop.delivery")

MANIFEST_SCHEMA = 1
DEFAULT_CHANNEL = "production"
LATENCY_CACHE_SECONDS = 300  # how long a version's per-device latency table is reused
# Seconds a process reuses the releases/experiment/variants it read for a (model, channel):
# a poll storm costs no database queries, and a change made through another process (or
# machine) reaches every device within this long; changes through this process at once.
STATE_CACHE_SECONDS = 1.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_ATTRIBUTE = 128  # characters of a device attribute
_UNSIGNED_VOLATILE = ("issued_at", "expires_at", "signatures")


@dataclass(frozen=True)
class ManifestQuery:
    """A validated manifest request."""

    model: str
    channel: str
    install_id: str
    device: DeviceProfile
    installed_sha256: str | None = None


@dataclass(frozen=True)
class Offer:
    """What the device should run: the resolved release, arm and variant."""

    release_counter: int  # newest counter of (model, channel)
    served_counter: int  # counter of the release the device resolved to
    version: int
    variant: Mapping[str, Any]  # name, format, size, sha256, target_path
    experiment: str | None = None
    arm: str | None = None


@dataclass(frozen=True)
class ManifestAnswer:
    status: int  # 200, 204 or 304
    etag: str | None = None  # unquoted
    document: dict[str, Any] | None = None  # signed, for 200


def parse_query(args: Mapping[str, str]) -> ManifestQuery:
    """Validate the query string of ``GET /v1/manifest``.

    Raises:
        ValidationError: missing/invalid model or channel, overlong attribute, bad sha256.
        InvalidInstallIdError: the install id is missing or not lowercase ASCII.
        InvalidDeviceError: the platform is missing or unknown.
    """
    from registry.delivery.releases import validate_channel
    from registry.schemas import validate_name

    def text(name: str) -> str | None:
        value = args.get(name)
        if value is None or value == "":
            return None
        if len(value) > _MAX_ATTRIBUTE:
            raise ValidationError(f"{name} is longer than {_MAX_ATTRIBUTE} characters",
                                  field=name)
        return value

    model = args.get("model")
    if not model:
        raise ValidationError("the model query parameter is required", field="model")
    installed = text("installed_sha256")
    if installed is not None:
        installed = installed.lower()
        if not _SHA256.fullmatch(installed):
            raise ValidationError("installed_sha256 must be 64 hex characters",
                                  field="installed_sha256")
    install_id = validate_install_id(args.get("install_id"))
    device = DeviceProfile(platform=args.get("platform") or "", os_version=text("os_version"),
                        device_model=text("device_model"), app_version=text("app_version"),
                        region=text("region"))
    return ManifestQuery(model=validate_name(model),
                         channel=validate_channel(args.get("channel") or DEFAULT_CHANNEL),
                         install_id=install_id, device=device, installed_sha256=installed)


def manifest_answer(services: Any, args: Mapping[str, str], *,
                    artifact_url: Callable[[str], str],
                    etag_matches: Callable[[str], bool] = lambda etag: False,
                    now: datetime | None = None) -> ManifestAnswer:
    """Answer one manifest request: 204 (nothing targets the device), 304, or 200 signed.

    Args:
        args: The query parameters.
        artifact_url: sha256 -> download URL (public/CDN base or this server).
        etag_matches: Whether the request's ``If-None-Match`` matches an (unquoted) ETag.
        now: Issue time (tests); default the current time.
    """
    query = parse_query(args)
    offer = resolve(services, query)
    if offer is None:
        return ManifestAnswer(204)
    _record_served(services, query, offer)
    delta = None
    sha = offer.variant["sha256"]
    if query.installed_sha256 and query.installed_sha256 != sha:
        found = services.store.find_delta(query.installed_sha256, sha)
        if found is not None and found.sha256:
            delta = {"target": found.target_path, "url": artifact_url(found.sha256),
                     "length": found.size, "sha256": found.sha256,
                     "base_sha256": found.base_sha256, "algorithm": "bsdiff4"}
    document = build_document(query, offer, artifact_url=artifact_url, delta=delta,
                              now=now or datetime.now(UTC),
                              ttl=services.settings.manifest_ttl)
    etag = manifest_etag(document)
    if etag_matches(etag):
        return ManifestAnswer(304, etag)
    return ManifestAnswer(200, etag, services.signing.sign_manifest(document))


def _record_served(services: Any, query: ManifestQuery, offer: Offer) -> None:
    """Remember the device was served this artifact: only such devices count in guardrails
    and reports (registry/store/_served.py). Never fails the manifest."""
    try:
        services.store.record_served(query.model, query.channel, offer.version,
                                     offer.variant["name"], query.install_id,
                                     offer.served_counter)
    except Exception:
        log.exception("could not record that %s was served %s", query.install_id, query.model)


def build_document(query: ManifestQuery, offer: Offer, *, artifact_url: Callable[[str], str],
                   delta: dict[str, Any] | None, now: datetime, ttl: int) -> dict[str, Any]:
    """The unsigned schema-1 manifest (docs/wire-format.md); only ints and strings."""
    variant = offer.variant
    issued = now.astimezone(UTC).replace(microsecond=0)
    return {
        "schema": MANIFEST_SCHEMA,
        "model": query.model,
        "channel": query.channel,
        "release_counter": offer.release_counter,
        "version": offer.version,
        "variant": variant["name"],
        "format": variant["format"],
        "artifact": {"target": variant["target_path"], "length": int(variant["size"]),
                     "sha256": variant["sha256"], "urls": [artifact_url(variant["sha256"])]},
        "experiment": offer.experiment,
        "arm": offer.arm,
        "install_id": query.install_id,
        "issued_at": _rfc3339(issued),
        "expires_at": _rfc3339(issued + timedelta(seconds=ttl)),
        "delta": delta,
        "signature": wire_signature(variant.get("signature")),
    }


_WIRE_DTYPES = frozenset({"float32", "float16", "int32", "int64", "uint8", "int8", "bool"})


def wire_signature(signature: Any) -> dict[str, Any] | None:
    """A variant's stored I/O signature as devices receive it (manifest and ruleset), or
    None when it is unknown (variants recorded before signatures were kept) or not one.

    Only integers, strings, lists and null: the manifest is signed as canonical JSON,
    which has no floats. ``narrowed_from`` appears only on a narrowed tensor; ``shape`` is
    null where the artifact does not state one."""
    if not isinstance(signature, Mapping):
        return None
    out: dict[str, Any] = {}
    for side in ("inputs", "outputs"):
        tensors = signature.get(side)
        if not isinstance(tensors, list):
            return None
        clean = []
        for t in tensors:
            if not isinstance(t, Mapping):
                return None
            name, dtype, shape = t.get("name"), t.get("dtype"), t.get("shape")
            if not isinstance(name, str) or dtype not in _WIRE_DTYPES or (shape is not None and (
                    not isinstance(shape, list)
                    or not all(d is None or (type(d) is int and d >= 0) for d in shape))):
                return None
            entry: dict[str, Any] = {"name": name, "dtype": dtype,
                                     "shape": None if shape is None else list(shape)}
            if t.get("narrowed_from") is not None:
                if not isinstance(t["narrowed_from"], str):
                    return None
                entry["narrowed_from"] = t["narrowed_from"]
            clean.append(entry)
        out[side] = clean
    return out


def manifest_etag(document: Mapping[str, Any]) -> str:
    """Hash of the manifest without ``issued_at``, ``expires_at`` and ``signatures``.

    Everything that decides what the device does is in it (counter, version, variant,
    artifact, arm, delta, install id), and nothing that changes on every request, so a
    device polling with nothing new gets 304.
    """
    stable = {k: v for k, v in document.items() if k not in _UNSIGNED_VOLATILE}
    # Sorted compact JSON is deterministic for these documents (ints, strings, null) and
    # several times cheaper than the canonical form the signature needs.
    text = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "m1-" + hashlib.sha256(text.encode("ascii")).hexdigest()[:40]


def resolve(services: Any, query: ManifestQuery) -> Offer | None:
    """The offer for this device, or None when no release applies (module docstring)."""
    state = services.store.channel_state(query.model, query.channel,
                                         max_age=STATE_CACHE_SECONDS)
    candidates = _Candidates(services, query)
    offer = None
    for release in state.releases:
        if not _rules(release.targeting).matches(query.device):
            continue
        if not in_rollout(release.rollout_seed, query.install_id, release.rollout_bp):
            continue
        variant = candidates.variant(release.version_id, release.min_app_version,
                                     release.variant)
        if variant is None:
            continue
        offer = Offer(release_counter=state.counter, served_counter=release.counter,
                      version=release.version, variant=variant)
        break
    if offer is None or state.experiment is None:
        return offer
    arm = _arm(services, state.experiment, query, candidates)
    if arm is None:
        return offer
    variant = candidates.variant(arm.version_id, arm.min_app_version, arm.variant)
    if variant is None:  # e.g. the app was downgraded below the arm's minimum since
        return offer
    return replace(offer, version=arm.version, variant=variant,
                   experiment=state.experiment.name, arm=arm.name)


def _arm(services: Any, experiment: Any, query: ManifestQuery, candidates: _Candidates):
    store = services.store
    recorded = store.assignment(experiment.id, query.install_id)
    if recorded is None:
        if experiment.status != "running":
            return None
        if not _rules(experiment.targeting).matches(query.device):
            return None
        if any(candidates.variant(a.version_id, a.min_app_version, a.variant) is None
               for a in experiment.arms):
            return None  # not every arm can run here: not eligible (like with like)
        ranges = arm_ranges([a.weight for a in experiment.arms], experiment.coverage_bp)
        index = assign_arm(experiment.seed, query.install_id, ranges)
        if index is None:
            return None
        recorded = store.record_assignment(experiment.id, query.install_id,
                                           experiment.arms[index].name)
    return next((a for a in experiment.arms if a.name == recorded), None)


class _Candidates:
    """Per-request memo of each version's servable variants and the chosen one."""

    def __init__(self, services: Any, query: ManifestQuery) -> None:
        self._services = services
        self._query = query
        self._variants: dict[int, list[dict[str, Any]]] = {}

    def variant(self, version_id: int, min_app_version: str | None,
                pinned: str | None) -> Mapping[str, Any] | None:
        device = self._query.device
        if not meets_min_app_version(device.app_version, min_app_version):
            return None
        if version_id not in self._variants:
            self._variants[version_id] = _with_latency(
                self._services, version_id,
                self._services.store.servable_variants(version_id, max_age=STATE_CACHE_SECONDS))
        return choose_variant(self._variants[version_id], device.platform,
                              device_class=device.device_model, pinned=pinned)


@lru_cache(maxsize=1024)
def _parsed_rules(canonical: str) -> TargetingRules:
    return TargetingRules.from_dict(json.loads(canonical))


def _rules(targeting: Mapping[str, Any]) -> TargetingRules:
    # Stored rules were validated when saved; parse each distinct one once per process. The
    # channel state is cached, so the same targeting object comes back on every request for
    # a second: found by identity first (the entry holds the object, so its id is not reused).
    hit = _rules_by_id.get(id(targeting))
    if hit is not None and hit[0] is targeting:
        return hit[1]
    rules = _parsed_rules(json.dumps(targeting, sort_keys=True))
    if len(_rules_by_id) >= 1024:
        _rules_by_id.clear()
    _rules_by_id[id(targeting)] = (targeting, rules)
    return rules


_rules_by_id: dict[int, tuple[Any, TargetingRules]] = {}


# -- per-device latency from telemetry (the variant choice hook) ---------------------------
_latency_cache: dict[tuple[str, int], tuple[float, dict[str, dict[str, float]]]] = {}
_latency_lock = threading.Lock()


def _with_latency(services: Any, version_id: int,
                  variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill ``latency_by_device`` from telemetry when the store can aggregate it.

    The table is reused for ``LATENCY_CACHE_SECONDS`` per process: it moves slowly and
    computing it reads the version's inference events. Telemetry trouble never fails a
    manifest; the variant choice then falls back to the smallest variant.
    """
    lookup = getattr(services.store, "latency_by_device", None)
    if lookup is None:
        return variants
    key = (services.store.engine.url, version_id)  # a URL is hashable: no rendering per call
    now = time.monotonic()
    with _latency_lock:
        cached = _latency_cache.get(key)
    if cached is None or cached[0] < now:
        try:
            table = lookup(version_id)
        except Exception:
            log.exception("per-device latency of version id %s is unavailable", version_id)
            table = {}
        cached = (now + LATENCY_CACHE_SECONDS, table)
        with _latency_lock:
            _latency_cache[key] = cached
    table = cached[1]
    if not table:
        return variants
    return [{**v, "latency_by_device": table.get(v["name"], {})} for v in variants]


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
