"""``resolve="local"``: the device makes the manifest's decision from the signed ruleset.

Order of checks (the security argument, as in ``_updater``):

1. Refresh TUF from the embedded root (done by the caller, under the TUF lock).
2. Look up the verified targets entry ``rulesets/<model>/<channel>.json``; its ``custom``
   must name this model and channel with ``kind="ruleset"``.
3. Use the cached ruleset if its bytes have exactly the entry's sha256 (no download, the
   cheapest "no update" poll there is); else fetch ``/v1/rulesets/<model>/<channel>``
   capped at the entry's length and require that length and sha256.
4. Parse strictly; refuse an expired ruleset (``expires_at`` + clock skew) and one whose
   ``release_counter`` or ``issued_at`` is below what this device already used.
5. Evaluate with ``client_sdk.rules.evaluate_ruleset`` and the device's own sticky arms
   (stored before they are used, so a crash never re-rolls an assignment).
6. Only then remember the ruleset; the caller then cross-checks the artifact against its
   TUF entry and downloads, verifies and installs exactly as for a manifest.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import requests

from ._http import read_body, request, response_error
from ._manifest import Artifact, Manifest
from ._ruleset import (
    Decision,
    Ruleset,
    check_ruleset_freshness,
    evaluate_ruleset,
    parse_ruleset,
    ruleset_target_path,
)
from ._signature import parse_signature
from ._store import atomic_write_bytes, atomic_write_json, file_lock, read_json
from ._trust import TrustCycle
from ._types import ClientConfig
from .errors import ArtifactTooLargeError, HashMismatchError, TargetMismatchError

__all__ = ["LocalResolver"]

_TIME = "%Y-%m-%dT%H:%M:%SZ"


class LocalResolver:
    """Ruleset fetch, verification, anti-rollback state and sticky arms for one device."""

    def __init__(self, base_url: str, state_dir: Path, session: requests.Session,
                 config: ClientConfig, install_id: str) -> None:
        self._base = base_url.rstrip("/")
        self._dir = state_dir / "rulesets"
        self._session = session
        self._config = config
        self._install_id = install_id

    def decide(self, name: str, channel: str, trust: TrustCycle,
               device: Any) -> tuple[Optional[Decision], Ruleset]:
        """The verified ruleset's decision for this device (None: nothing targets it).

        Raises:
            TargetNotFoundError: no ruleset is published (not a target in TUF).
            TargetMismatchError, HashMismatchError: the bytes are not the TUF target.
            RulesetInvalidError, RulesetExpiredError, RulesetRollbackError.
        """
        path = ruleset_target_path(name, channel)
        info = trust.verified_target(path)
        custom = info.custom if isinstance(info.custom, dict) else {}
        for key, want in (("kind", "ruleset"), ("model", name), ("channel", channel)):
            if key in custom and custom[key] != want:
                raise TargetMismatchError(f"{path}: TUF entry says {key}={custom[key]!r}")
        sha256 = info.hashes.get("sha256")
        if not isinstance(sha256, str):
            raise TargetMismatchError(f"{path}: the TUF entry has no sha256")
        data = self._cached(name, channel, sha256, info.length)
        if data is None:
            try:
                data = self._fetch(f"{self._base}/v1/rulesets/{name}/{channel}", info.length)
            except ArtifactTooLargeError:  # longer than TUF says: not these bytes
                data = b""
            if not _matches(data, info.length, sha256):
                # A mirror being synced may already hold a newer ruleset at the stable path;
                # the content-addressed name always has the bytes this TUF view lists.
                data = self._fetch(f"{self._base}/tuf/targets/rulesets/{name}/"
                                   f"{sha256}.{channel}.json", info.length)
            if not _matches(data, info.length, sha256):
                raise HashMismatchError(
                    f"{path}: the ruleset bytes are not the ones TUF lists "
                    f"({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}...)")
        ruleset = parse_ruleset(data, name, channel)
        self.check(ruleset)
        with file_lock(self._dir / ".lock"):
            sticky_path = self._dir / name / f"{channel}.assignments.json"
            sticky = read_json(sticky_path)
            sticky = {k: v for k, v in sticky.items() if isinstance(v, str)} \
                if isinstance(sticky, dict) else {}
            before = dict(sticky)
            decision = evaluate_ruleset(ruleset, self._install_id, device, sticky)
            if sticky != before:
                atomic_write_json(sticky_path, sticky)
            self._remember(name, channel, ruleset, data)
        return decision, ruleset

    def check(self, ruleset: Ruleset) -> None:
        """Freshness and anti-rollback against what this device already used.

        Raises:
            RulesetExpiredError, RulesetRollbackError.
        """
        seen = read_json(self._dir / "seen.json")
        entry = seen.get(f"{ruleset.model}/{ruleset.channel}") if isinstance(seen, dict) else None
        entry = entry if isinstance(entry, dict) else {}
        counter, issued = entry.get("release_counter"), entry.get("issued_at")
        issued_at = None
        if isinstance(issued, str):
            try:
                issued_at = datetime.strptime(issued, _TIME).replace(tzinfo=timezone.utc)
            except ValueError:
                issued_at = None
        check_ruleset_freshness(ruleset, datetime.now(timezone.utc), self._config.clock_skew,
                                counter if isinstance(counter, int) else None, issued_at)

    def manifest_for(self, decision: Decision, ruleset: Ruleset) -> Manifest:
        """The decision in the shape the rest of the update cycle takes (no signature: its
        authenticity is the ruleset's TUF entry; the artifact is cross-checked next)."""
        variant = decision.variant
        directory, _, filename = variant["target"].rpartition("/")
        urls = (f"{self._base}/tuf/targets/{directory}/{variant['sha256']}.{filename}",
                f"{self._base}/v1/artifacts/{variant['sha256']}")
        document = {"resolved": "local", "model": ruleset.model, "channel": ruleset.channel,
                    "release_counter": decision.release_counter, "version": decision.version,
                    "variant": variant["name"], "experiment": decision.experiment,
                    "arm": decision.arm}
        return Manifest(
            document=document, model=ruleset.model, channel=ruleset.channel,
            release_counter=decision.release_counter, version=decision.version,
            variant=variant["name"], format=variant["format"],
            artifact=Artifact(target=variant["target"], length=variant["size"],
                              sha256=variant["sha256"], urls=urls),
            install_id=self._install_id, issued_at=ruleset.issued_at,
            expires_at=ruleset.expires_at + timedelta(0), experiment=decision.experiment,
            arm=decision.arm, signature=parse_signature(variant.get("signature")))

    # -- storage ------------------------------------------------------------------------

    def _file(self, name: str, channel: str) -> Path:
        return self._dir / name / f"{channel}.json"

    def _cached(self, name: str, channel: str, sha256: str, length: int) -> Optional[bytes]:
        try:
            data = self._file(name, channel).read_bytes()
        except OSError:
            return None
        return data if _matches(data, length, sha256) else None

    def _fetch(self, url: str, length: int) -> bytes:
        response = request(self._session, "GET", url, self._config,
                           headers={"Accept": "application/json",
                                    "Accept-Encoding": "identity"})
        if response.status_code != 200:
            raise response_error(response, self._config, "ruleset")
        return read_body(response, self._config, length, "ruleset")

    def _remember(self, name: str, channel: str, ruleset: Ruleset, data: bytes) -> None:
        path = self._file(name, channel)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        seen_path = self._dir / "seen.json"
        seen = read_json(seen_path)
        seen = seen if isinstance(seen, dict) else {}
        key = f"{name}/{channel}"
        old = seen.get(key) if isinstance(seen.get(key), dict) else {}
        seen[key] = {
            "release_counter": max(ruleset.release_counter, old.get("release_counter", 0)
                                   if isinstance(old.get("release_counter"), int) else 0),
            "issued_at": max(ruleset.issued_at.strftime(_TIME), old.get("issued_at", "")
                             if isinstance(old.get("issued_at"), str) else ""),
        }
        atomic_write_json(seen_path, seen)


def _matches(data: bytes, length: int, sha256: str) -> bool:
    return len(data) == length and hashlib.sha256(data).hexdigest() == sha256
