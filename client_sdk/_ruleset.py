"""Signed rulesets: everything the server uses to decide, evaluated on the device.

A ruleset is one canonical JSON document per (model, channel) — releases newest first with
their rollout, targeting and ``min_app_version``, the active experiment with its seed, arms
and coverage, and the variant table of every version they name — published by the server
as the TUF target ``rulesets/<model>/<channel>.json`` (docs/wire-format.md, "Rulesets").
The SDK reaches it only through TUF (length and sha256 from the verified targets
metadata), so this module sees bytes that are already authentic; it still parses them
strictly, because a parser that guesses is where two SDKs start to disagree.

:func:`evaluate_ruleset` is the server's manifest resolution
(``registry.delivery.manifest.resolve``) written against the document instead of the
database, with the same rules (``client_sdk.rules``), in the same order:

1. releases newest first: the first whose targeting matches, whose rollout gate (its own
   seed) lets the install id in, whose version the app can run (``min_app_version``) and
   for which a variant can be chosen, is the device's release; none: no decision;
2. an experiment (running or paused) then overrides version and variant: a sticky
   assignment is kept; a new one is made only while the experiment runs, when its
   targeting matches and the device can run every arm, from the experiment's seed;
3. ``release_counter`` is the newest counter of the channel, whatever the device got.

``conformance/rulesets.json`` pins documents and decisions for SDKs in other languages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from ._bucketing import BASIS_POINTS, arm_ranges, assign_arm, in_rollout, validate_install_id
from ._names import validate_channel, validate_model_name
from ._signature import parse_signature
from ._targeting import TargetingRules, meets_min_app_version
from ._variants import choose_variant
from .errors import (
    ManifestInvalidError,
    RulesetExpiredError,
    RulesetInvalidError,
    RulesetRollbackError,
    ValidationError,
)

__all__ = [
    "RULESET_KIND",
    "RULESET_SCHEMA",
    "Decision",
    "Ruleset",
    "check_ruleset_freshness",
    "evaluate_ruleset",
    "parse_ruleset",
    "ruleset_target_path",
    "sticky_key",
]

RULESET_SCHEMA = 1
RULESET_KIND = "modeldrop-ruleset"
MAX_ATTRIBUTE = 128  # characters of a device attribute, as the manifest route allows

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SEED = re.compile(r"[0-9A-Za-z_-]{1,64}")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_TOP = {"schema", "kind", "model", "channel", "release_counter", "issued_at", "expires_at",
        "releases", "experiment", "versions"}
_RELEASE = {"counter", "version", "variant", "rollout_bp", "rollout_seed", "targeting",
            "paused", "min_app_version"}
_EXPERIMENT = {"name", "seed", "status", "coverage_bp", "targeting", "arms"}
_ARM = {"name", "version", "variant", "weight"}
_VERSION = {"version", "min_app_version", "variants"}
_VARIANT = {"name", "format", "size", "sha256", "target", "fidelity", "latency_by_device",
            "signature"}
_OPTIONAL_VARIANT = frozenset({"signature"})  # written only when the server knows it


def ruleset_target_path(model: str, channel: str) -> str:
    """The TUF target path of a ruleset: ``rulesets/<model>/<channel>.json``."""
    return f"rulesets/{validate_model_name(model)}/{validate_channel(channel)}.json"


def sticky_key(experiment: str, seed: str) -> str:
    """Key of a local sticky assignment: a re-created experiment (new seed) starts afresh."""
    return f"{experiment}@{seed}"


@dataclass(frozen=True)
class Ruleset:
    """A parsed, validated ruleset (the JSON document is kept as ``document``)."""

    model: str
    channel: str
    release_counter: int
    issued_at: datetime
    expires_at: datetime
    document: Mapping[str, Any]


@dataclass(frozen=True)
class Decision:
    """What the device should run, decided locally; the fields of a manifest's decision."""

    release_counter: int  # newest counter of (model, channel)
    served_counter: int  # counter of the release the device resolved to
    version: int
    variant: Mapping[str, Any]  # name, format, size, sha256, target
    experiment: Optional[str] = None
    arm: Optional[str] = None


def _bad(detail: str) -> RulesetInvalidError:
    return RulesetInvalidError(f"ruleset: {detail}")


def _obj(value: Any, keys: set, what: str, optional: frozenset = frozenset()) -> Mapping:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object")
    missing = sorted(keys - optional - set(value))
    if missing:
        raise _bad(f"{what} lacks {missing[0]!r}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise _bad(f"{what} has unknown field {unknown[0]!r}")
    return value


def _int(value: Any, what: str, low: int = 0, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or \
            (high is not None and value > high):
        raise _bad(f"{what} must be an integer >= {low}" + (f" and <= {high}" if high else ""))
    return value


def _str(value: Any, what: str, pattern: Optional[re.Pattern] = None,
         nullable: bool = False) -> Optional[str]:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value or (pattern and not pattern.fullmatch(value)):
        raise _bad(f"{what} must be a valid string")
    return value


def _time(value: Any, what: str) -> datetime:
    text = _str(value, what, _TIME)
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def _targeting(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object")
    try:
        TargetingRules.from_dict(value)
    except ValidationError as e:
        raise _bad(f"{what}: {e.detail}") from None
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def parse_ruleset(data: bytes, model: str, channel: str) -> Ruleset:
    """Parse and validate ruleset bytes for (model, channel).

    Raises:
        RulesetInvalidError: not a schema-1 ruleset of this model and channel, or any
            field missing, unknown or of the wrong type.
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"not JSON: {e}") from None
    _obj(doc, _TOP, "the ruleset")
    if doc["schema"] != RULESET_SCHEMA or doc["kind"] != RULESET_KIND:
        raise _bad(f"schema {doc['schema']!r} / kind {doc['kind']!r} is not supported")
    if doc["model"] != model or doc["channel"] != channel:
        raise _bad(f"it is for {doc['model']!r}/{doc['channel']!r}, not {model}/{channel}")
    counter = _int(doc["release_counter"], "release_counter")
    issued, expires = _time(doc["issued_at"], "issued_at"), _time(doc["expires_at"], "expires_at")
    versions: dict[int, Mapping] = {}
    if not isinstance(doc["versions"], list):
        raise _bad("versions must be a list")
    for item in doc["versions"]:
        _obj(item, _VERSION, "a version")
        number = _int(item["version"], "version", 1)
        if number in versions:
            raise _bad(f"version {number} is listed twice")
        _str(item["min_app_version"], "min_app_version", nullable=True)
        if not isinstance(item["variants"], list):
            raise _bad("variants must be a list")
        for v in item["variants"]:
            _obj(v, _VARIANT, "a variant", _OPTIONAL_VARIANT)
            try:
                parse_signature(v.get("signature"), "variant signature")
            except ManifestInvalidError as e:
                raise _bad(e.detail) from None
            _str(v["name"], "variant name")
            _str(v["format"], "variant format")
            _int(v["size"], "variant size")
            _str(v["sha256"], "variant sha256", _SHA256)
            _str(v["target"], "variant target")
            if v["fidelity"] is not None and not _number(v["fidelity"]):
                raise _bad("variant fidelity must be a finite number or null")
            lat = v["latency_by_device"]
            if not isinstance(lat, dict) or not all(
                    isinstance(k, str) and _number(x) and x > 0 for k, x in lat.items()):
                raise _bad("latency_by_device must map device classes to positive numbers")
        versions[number] = item
    if not isinstance(doc["releases"], list):
        raise _bad("releases must be a list")
    previous = None
    for r in doc["releases"]:
        _obj(r, _RELEASE, "a release")
        c = _int(r["counter"], "release counter", 1)
        if previous is not None and c >= previous:
            raise _bad("releases must be listed newest (highest counter) first")
        previous = c
        if _int(r["version"], "release version", 1) not in versions:
            raise _bad(f"release {c} names version {r['version']} that is not listed")
        _str(r["variant"], "release variant", nullable=True)
        _int(r["rollout_bp"], "rollout_bp", 0, BASIS_POINTS)
        _str(r["rollout_seed"], "rollout_seed", _SEED)
        _targeting(r["targeting"], "release targeting")
        if not isinstance(r["paused"], bool):
            raise _bad("paused must be true or false")
        if r["min_app_version"] != versions[r["version"]]["min_app_version"]:
            raise _bad("a release's min_app_version must be its version's")
    if doc["releases"] and doc["releases"][0]["counter"] != counter:
        raise _bad("release_counter must be the newest release's counter")
    if not doc["releases"] and counter != 0:
        raise _bad("release_counter must be 0 when there is no release")
    exp = doc["experiment"]
    if exp is not None:
        _obj(exp, _EXPERIMENT, "the experiment")
        _str(exp["name"], "experiment name")
        _str(exp["seed"], "experiment seed", _SEED)
        if exp["status"] not in ("running", "paused"):
            raise _bad("experiment status must be running or paused")
        _int(exp["coverage_bp"], "coverage_bp", 0, BASIS_POINTS)
        _targeting(exp["targeting"], "experiment targeting")
        if not isinstance(exp["arms"], list) or not exp["arms"]:
            raise _bad("the experiment must have arms")
        names = set()
        for a in exp["arms"]:
            _obj(a, _ARM, "an arm")
            names.add(_str(a["name"], "arm name"))
            if _int(a["version"], "arm version", 1) not in versions:
                raise _bad(f"arm {a['name']!r} names a version that is not listed")
            _str(a["variant"], "arm variant", nullable=True)
            _int(a["weight"], "arm weight")
        if len(names) != len(exp["arms"]):
            raise _bad("arm names must be unique")
        try:
            arm_ranges([a["weight"] for a in exp["arms"]], exp["coverage_bp"])
        except ValidationError as e:
            raise _bad(f"experiment weights: {e.detail}") from None
    return Ruleset(model=model, channel=channel, release_counter=counter, issued_at=issued,
                   expires_at=expires, document=doc)


def check_ruleset_freshness(ruleset: Ruleset, now: datetime, skew: timedelta,
                            seen_counter: Optional[int] = None,
                            seen_issued_at: Optional[datetime] = None) -> None:
    """Refuse an expired ruleset, or one older than what this device already used.

    Raises:
        RulesetExpiredError: ``expires_at + skew`` is before ``now`` (a frozen mirror).
        RulesetRollbackError: ``release_counter`` below ``seen_counter``, or ``issued_at``
            before ``seen_issued_at`` (an older ruleset replayed).
    """
    if now > ruleset.expires_at + skew:
        raise RulesetExpiredError(
            f"ruleset of {ruleset.model}/{ruleset.channel} expired at "
            f"{ruleset.expires_at.strftime(_TIME_FORMAT)} "
            f"(device time {now.strftime(_TIME_FORMAT)})")
    if seen_counter is not None and ruleset.release_counter < seen_counter:
        raise RulesetRollbackError(
            f"ruleset release_counter {ruleset.release_counter} is below {seen_counter}, "
            "which this device already used")
    if seen_issued_at is not None and ruleset.issued_at < seen_issued_at:
        raise RulesetRollbackError(
            f"ruleset issued at {ruleset.issued_at.strftime(_TIME_FORMAT)} is older than "
            f"the one this device already used ({seen_issued_at.strftime(_TIME_FORMAT)})")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _attribute(device: Any, name: str) -> Optional[str]:
    value = getattr(device, name, None)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_ATTRIBUTE:
        raise ValidationError(f"{name} must be a string of at most {MAX_ATTRIBUTE} characters")
    return value


class _Device:
    """The device as the server sees it: "" is "not sent"; attributes are length-checked."""

    __slots__ = ("app_version", "device_model", "os_version", "platform", "region")

    def __init__(self, device: Any) -> None:
        self.platform = getattr(device, "platform", None)
        for name in ("os_version", "device_model", "app_version", "region"):
            setattr(self, name, _attribute(device, name))


def evaluate_ruleset(ruleset: Ruleset, install_id: str, device: Any,
                     sticky: MutableMapping[str, str]) -> Optional[Decision]:
    """The decision for one device, exactly as the server's manifest would make it.

    Args:
        ruleset: A ruleset from :func:`parse_ruleset`.
        install_id: The device's install id (validated).
        device: Anything with ``platform``, ``os_version``, ``device_model``,
            ``app_version`` and ``region``.
        sticky: The device's recorded experiment arms (:func:`sticky_key` -> arm name);
            a new assignment is written into it before it is returned.

    Returns:
        The decision, or None when no release applies (the server's 204).

    Raises:
        InvalidInstallIdError, InvalidDeviceError, ValidationError: bad device input.
    """
    validate_install_id(install_id)
    dev = _Device(device)
    doc = ruleset.document
    versions = {v["version"]: v for v in doc["versions"]}
    memo: dict[tuple, Optional[Mapping[str, Any]]] = {}

    def variant(number: int, pinned: Optional[str]) -> Optional[Mapping[str, Any]]:
        key = (number, pinned)
        if key not in memo:
            entry = versions[number]
            if not meets_min_app_version(dev.app_version, entry["min_app_version"]):
                memo[key] = None
            else:
                table = [{**v, "servable": True} for v in entry["variants"]]
                memo[key] = choose_variant(table, dev.platform, device_class=dev.device_model,
                                           pinned=pinned)
        return memo[key]

    decision = None
    for release in doc["releases"]:
        if not _rules(release["targeting"]).matches(dev):
            continue
        if not in_rollout(release["rollout_seed"], install_id, release["rollout_bp"]):
            continue
        chosen = variant(release["version"], release["variant"])
        if chosen is None:
            continue
        decision = Decision(release_counter=ruleset.release_counter,
                            served_counter=release["counter"], version=release["version"],
                            variant=_public(chosen))
        break
    exp = doc["experiment"]
    if decision is None or exp is None:
        return decision
    key = sticky_key(exp["name"], exp["seed"])
    recorded = sticky.get(key)
    if recorded is None:
        if exp["status"] != "running" or not _rules(exp["targeting"]).matches(dev):
            return decision
        if any(variant(a["version"], a["variant"]) is None for a in exp["arms"]):
            return decision
        index = assign_arm(exp["seed"], install_id,
                           arm_ranges([a["weight"] for a in exp["arms"]], exp["coverage_bp"]))
        if index is None:
            return decision
        recorded = exp["arms"][index]["name"]
        sticky[key] = recorded
    arm = next((a for a in exp["arms"] if a["name"] == recorded), None)
    if arm is None:
        return decision
    chosen = variant(arm["version"], arm["variant"])
    if chosen is None:
        return decision
    return Decision(release_counter=decision.release_counter,
                    served_counter=decision.served_counter, version=arm["version"],
                    variant=_public(chosen), experiment=exp["name"], arm=arm["name"])


def _public(variant: Mapping[str, Any]) -> Mapping[str, Any]:
    return {**{k: variant[k] for k in ("name", "format", "size", "sha256", "target")},
            "signature": variant.get("signature")}


_RULES_CACHE: dict[str, TargetingRules] = {}


def _rules(targeting: Mapping[str, Any]) -> TargetingRules:
    key = json.dumps(targeting, sort_keys=True)
    rules = _RULES_CACHE.get(key)
    if rules is None:
        if len(_RULES_CACHE) > 1024:
            _RULES_CACHE.clear()
        rules = _RULES_CACHE[key] = TargetingRules.from_dict(targeting)
    return rules
