"""One update cycle: ask, verify, plan — then download, verify, install, report.

The order of checks is the security argument, so it is spelled out once here:

1. ``GET /v1/manifest`` with ``If-None-Match``; 304 keeps the installed model.
2. Parse strictly and reject unsafe target paths before anything uses them.
3. Refresh TUF with a new ``Updater`` bootstrapped from the embedded root.
4. Verify the manifest signature with keys from the root *just verified* by TUF.
5. Freshness (expiry + clock skew), device binding (install id), release counter.
6. Cross-check the artifact (and any delta) against the verified TUF targets entry.
7. Only then record the counter, and only then download: capped at the verified length,
   hashed while written, under one deadline.
8. Install into a slot, load-check, move the active pointer.

Nothing before step 8 touches the installed model, so every failure leaves it active.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urljoin

import requests

from ._delta import SUPPORTED_ALGORITHMS, apply_patch
from ._download import Downloader, DownloadRequest
from ._http import read_body, request, response_error
from ._install import Installer
from ._loadcheck import format_kind
from ._local import LocalResolver
from ._manifest import (
    Manifest,
    check_binding,
    check_freshness,
    parse_manifest,
    verify_signatures,
)
from ._signature import check_contract
from ._store import RejectedArtifacts, ReleaseCounters, file_lock
from ._telemetry import Telemetry
from ._trust import TrustCycle
from ._types import (
    ClientConfig,
    DeviceInfo,
    DeviceStateProvider,
    DownloadConditions,
    LocalModel,
    ModelContract,
    ProgressCallback,
    UpdateInfo,
    UpdateState,
)
from .errors import (
    ConditionsNotMetError,
    ManifestInvalidError,
    ModelContractError,
    ModelDropError,
    ModelLoadError,
    NoModelAvailableError,
    ProtocolError,
    UpdateRejectedError,
    error_class_for_code,
)

__all__ = ["Plan", "UpdateEngine"]

logger = logging.getLogger(__name__)

StatusSink = Callable[..., None]  # (name, channel, state, **fields)


@dataclass(frozen=True)
class Plan:
    """A verified offer: everything needed to fetch and install it."""

    manifest: Manifest
    etag: str | None
    entry: dict[str, Any]
    full: DownloadRequest
    delta: DownloadRequest | None = None
    delta_base: Path | None = None
    existing: Path | None = None


class UpdateEngine:
    """Runs check and apply; the caller holds the per-model lock."""

    def __init__(self, *, base_url: str, install_id: str, device: DeviceInfo,
                 trusted_root: bytes, tuf_dir: Path, session: requests.Session,
                 config: ClientConfig, installer: Installer, downloader: Downloader,
                 counters: ReleaseCounters, rejected: RejectedArtifacts,
                 telemetry: Telemetry, status: StatusSink,
                 local: LocalResolver | None = None,
                 contracts: Mapping[str, ModelContract] | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._local = local  # set: resolve="local" (decide from the signed ruleset)
        self._install_id = install_id
        self._device = device
        self._trusted_root = trusted_root
        self._tuf_dir = tuf_dir
        self._session = session
        self._config = config
        self._installer = installer
        self._downloader = downloader
        self._counters = counters
        self._rejected = rejected
        self._telemetry = telemetry
        self._status = status
        self._contracts = dict(contracts or {})

    # -- telemetry helpers -----------------------------------------------------------

    def event_fields(self, name: str, **model_fields: Any) -> dict[str, Any]:
        return {"install_id": self._install_id, "platform": self._device.platform,
                "device_model": self._device.device_model or None, "model": name,
                **model_fields}

    def _manifest_fields(self, m: Manifest) -> dict[str, Any]:
        return self.event_fields(m.model, version=m.version, variant=m.variant,
                                 experiment=m.experiment, arm=m.arm,
                                 **self.decision_fields(m.channel, m.release_counter))

    def decision_fields(self, channel: str, release_counter: int) -> dict[str, Any]:
        """In local mode, events say which decision the device made (the server recomputes
        it from the install id to check it); a server-resolved device sends none."""
        if self._local is None:
            return {}
        return {"channel": channel, "release_counter": release_counter}

    # -- recovery --------------------------------------------------------------------

    def recover(self, name: str, channel: str) -> None:
        """Handle a load check that a previous process did not survive."""
        sha = self._installer.interrupted_check(name, channel)
        if sha is None:
            return
        detail = "the app stopped while this model was being load-checked"
        logger.warning("%s/%s: %s (%s); keeping the previous model", name, channel, detail,
                       sha[:12])
        self._rejected.add(sha, self._device.app_version, detail)
        self._telemetry.record("install_failed", self.event_fields(
            name, error=ModelLoadError.code))

    # -- check -------------------------------------------------------------------------

    def check(self, name: str, channel: str) -> UpdateInfo:
        """Fetch and fully verify the offer for (name, channel); download nothing."""
        self._status(name, channel, UpdateState.CHECKING)
        local = self._installer.current(name, channel)
        if self._local is not None:
            return self._check_local(name, channel, local)
        response = self._get_manifest(name, channel, local)
        if response.status_code == 304:
            response.close()
            if local is None:
                raise ProtocolError("manifest: 304 Not Modified without a cached manifest")
            return UpdateInfo(name, channel, False, installed=local)
        if response.status_code == 204:
            response.close()
            if local is None:
                raise NoModelAvailableError(f"no release of {name!r}/{channel!r} targets "
                                            "this device")
            return UpdateInfo(name, channel, False, installed=local)
        if response.status_code != 200:
            raise response_error(response, self._config, "manifest")
        ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json" and not ctype.endswith("+json"):
            response.close()
            raise ProtocolError(f"manifest: expected JSON, got {ctype or 'no content type'}",
                                status=200)
        etag = response.headers.get("ETag")
        body = read_body(response, self._config, self._config.manifest_max_bytes, "manifest")
        manifest = parse_manifest(body, model=name, channel=channel)
        if format_kind(manifest.format, manifest.artifact.target) is None:
            raise ManifestInvalidError(f"format {manifest.format!r} is not supported here")

        art = manifest.artifact
        # One TUF client state per device: cycles of different models (threads or
        # processes) take turns, so a slower cycle never writes back older metadata.
        with file_lock(self._tuf_dir.parent / ".tuf.lock"):
            trust = TrustCycle(self._base, self._tuf_dir, self._trusted_root, self._session,
                               self._config)
            trust.refresh()
            verify_signatures(manifest, trust.manifest_keys())
            self._check_current(manifest, local)
            trust.cross_check(art.target, art.length, art.sha256, {
                "model": name, "version": manifest.version, "variant": manifest.variant,
                "format": manifest.format, "kind": "variant"})
            delta_req, delta_base = self._delta_plan(manifest, trust)
        return self._plan(manifest, etag, local, delta_req, delta_base)

    def _check_local(self, name: str, channel: str, local: LocalModel | None) -> UpdateInfo:
        """The same checks, decided on the device from the TUF-verified ruleset."""
        assert self._local is not None
        with file_lock(self._tuf_dir.parent / ".tuf.lock"):
            trust = TrustCycle(self._base, self._tuf_dir, self._trusted_root, self._session,
                               self._config)
            trust.refresh()
            decision, ruleset = self._local.decide(name, channel, trust, self._device)
            if decision is None:
                if local is None:
                    raise NoModelAvailableError(f"no release of {name!r}/{channel!r} "
                                                "targets this device")
                return UpdateInfo(name, channel, False, installed=local)
            manifest = self._local.manifest_for(decision, ruleset)
            if format_kind(manifest.format, manifest.artifact.target) is None:
                raise ManifestInvalidError(f"format {manifest.format!r} is not supported here")
            self._check_current(manifest, local)
            art = manifest.artifact
            trust.cross_check(art.target, art.length, art.sha256, {
                "model": name, "version": manifest.version, "variant": manifest.variant,
                "format": manifest.format, "kind": "variant"})
        return self._plan(manifest, None, local, None, None)

    def _plan(self, manifest: Manifest, etag: str | None, local: LocalModel | None,
              delta_req: DownloadRequest | None, delta_base: Path | None) -> UpdateInfo:
        name, channel, art = manifest.model, manifest.channel, manifest.artifact
        self._counters.record(name, channel, manifest.release_counter)

        rejected = self._rejected.is_rejected(art.sha256, self._device.app_version)
        if rejected:
            code, detail = rejected
            cls = error_class_for_code(code)
            cls = cls if cls is not None and issubclass(cls, ModelLoadError) else ModelLoadError
            raise cls(f"{art.target}: {detail} (not downloaded again)")
        self._check_signature(manifest, local)
        entry = {"sha256": art.sha256, "length": art.length, "target": art.target,
                 "file": art.target.rsplit("/", 1)[-1], "version": manifest.version,
                 "variant": manifest.variant, "format": manifest.format,
                 "release_counter": manifest.release_counter, "arm": manifest.arm,
                 "experiment": manifest.experiment, "installed_at": _now_rfc3339()}
        info = dict(version=manifest.version, variant=manifest.variant,
                    format=manifest.format, arm=manifest.arm,
                    experiment=manifest.experiment,
                    release_counter=manifest.release_counter, sha256=art.sha256,
                    artifact_bytes=art.length)
        if local is not None and local.sha256 == art.sha256:
            refreshed = self._installer.refresh_current(name, channel, entry | {
                "installed_at": self._installer.pointer(name, channel)["current"].get(
                    "installed_at")}, etag)
            return UpdateInfo(name, channel, False, installed=refreshed, **info)
        existing = self._installer.find_verified_slot(name, art.sha256)
        full = DownloadRequest(art.sha256, art.length, self._artifact_urls(manifest), art.target)
        if existing is not None:
            delta_req = delta_base = None
        plan = Plan(manifest, etag, entry, full, delta_req, delta_base, existing)
        size = 0 if existing is not None else (delta_req or full).length
        return UpdateInfo(name, channel, True, download_bytes=size,
                          is_delta=delta_req is not None, installed=local, _plan=plan, **info)

    def _check_signature(self, manifest: Manifest, local: LocalModel | None) -> None:
        """Refuse, before any byte is downloaded, a model whose signed signature differs
        from the app's contract: remembered like a failed load check (per app version), so
        it is not offered again, reported once, and the installed model stays."""
        if local is not None and local.sha256 == manifest.artifact.sha256:
            return  # already installed (it passed when it was)
        try:
            check_contract(self._contracts.get(manifest.model), manifest.signature,
                           "the offered model")
        except ModelContractError as e:
            art = manifest.artifact
            logger.warning("%s: %s; not downloading it", art.target, e.detail)
            self._rejected.add(art.sha256, self._device.app_version, e.detail, e.code)
            self._telemetry.record("install_failed", self._manifest_fields(manifest) | {
                "error": e.code})
            raise

    def _get_manifest(self, name: str, channel: str,
                      local: LocalModel | None) -> requests.Response:
        d = self._device
        params = {"model": name, "channel": channel, "platform": d.platform,
                  "install_id": self._install_id, "os_version": d.os_version,
                  "device_model": d.device_model, "app_version": d.app_version,
                  "region": d.region or "",
                  "installed_sha256": local.sha256 if local else ""}
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        etag = self._installer.etag(name, channel) if local else None
        if etag:
            headers["If-None-Match"] = etag
        url = f"{self._base}/v1/manifest?{urlencode({k: v for k, v in params.items() if v})}"
        return request(self._session, "GET", url, self._config, headers=headers)

    def _check_current(self, manifest: Manifest, local: LocalModel | None) -> None:
        """Freshness, binding and the release counter (also re-run before applying)."""
        check_freshness(manifest, datetime.now(timezone.utc), self._config.clock_skew)
        check_binding(manifest, self._install_id)
        self._counters.check(manifest.model, manifest.channel, manifest.release_counter,
                             floor=local.release_counter if local else None)

    def _delta_plan(self, manifest: Manifest,
                    trust: TrustCycle) -> tuple[DownloadRequest | None, Path | None]:
        delta = manifest.delta
        if delta is None or delta.algorithm not in SUPPORTED_ALGORITHMS:
            return None, None
        pointer = self._installer.pointer(manifest.model, manifest.channel)
        base_entry = next((e for e in (pointer.get("current"), pointer.get("previous"))
                           if isinstance(e, dict) and e.get("sha256") == delta.base_sha256),
                          None)
        if base_entry is None:
            return None, None
        base = self._installer.slot_file(manifest.model, base_entry)
        if not base.is_file():
            return None, None
        try:
            trust.cross_check(delta.target, delta.length, delta.sha256,
                              {"model": manifest.model, "version": manifest.version,
                               "kind": "delta", "base_sha256": delta.base_sha256,
                               "target_sha256": manifest.artifact.sha256})
        except UpdateRejectedError as e:
            logger.warning("ignoring delta for %s: %s", manifest.artifact.target, e)
            return None, None
        urls = ([urljoin(self._base + "/", delta.url)] if delta.url else [])
        urls.append(self._tuf_target_url(delta.target, delta.sha256))
        return DownloadRequest(delta.sha256, delta.length, tuple(urls), delta.target), base

    def _artifact_urls(self, manifest: Manifest) -> tuple[str, ...]:
        art = manifest.artifact
        if self._local is not None:  # a static mirror has exactly these two paths
            return art.urls
        urls = [urljoin(self._base + "/", u) for u in art.urls]
        for fallback in (f"{self._base}/v1/artifacts/{art.sha256}",
                         self._tuf_target_url(art.target, art.sha256)):
            if fallback not in urls:
                urls.append(fallback)
        return tuple(urls)

    def _tuf_target_url(self, target: str, sha256: str) -> str:
        directory, _, name = target.rpartition("/")
        return f"{self._base}/tuf/targets/{directory}/{sha256}.{name}"

    # -- apply -------------------------------------------------------------------------

    def apply(self, info: UpdateInfo, *, conditions: DownloadConditions,
              state_provider: DeviceStateProvider,
              on_progress: ProgressCallback | None) -> LocalModel:
        """Download (unless the bytes are on the device), install and activate."""
        plan = info._plan
        if not isinstance(plan, Plan):
            raise ValueError("apply() needs an UpdateInfo with update_available=True")
        name, channel, m = info.name, info.channel, plan.manifest
        # The offer may have waited (e.g. for Wi-Fi): re-check what time can change.
        self._check_current(m, self._installer.current(name, channel))
        source, move = plan.existing, False
        if source is None:
            source, move = self._download(plan, conditions, state_provider, on_progress), True
        self._status(name, channel, UpdateState.INSTALLING, version=m.version)
        try:
            model = self._installer.install(name, channel, source, plan.entry, plan.etag,
                                            move=move)
        except ModelLoadError as e:
            self._rejected.add(m.artifact.sha256, self._device.app_version, e.detail, e.code)
            self._telemetry.record("install_failed", self._manifest_fields(m) | {
                "error": e.code})
            raise
        self._downloader.discard(m.artifact.sha256)
        self._telemetry.record("install_ok", self._manifest_fields(m))
        return model

    def _download(self, plan: Plan, conditions: DownloadConditions,
                  state_provider: DeviceStateProvider,
                  on_progress: ProgressCallback | None) -> Path:
        m = plan.manifest
        name, channel = m.model, m.channel

        def check_conditions() -> None:
            unmet = conditions.unmet(state_provider.current_state())
            if unmet:
                self._status(name, channel, UpdateState.WAITING_FOR_CONDITIONS,
                             error=ConditionsNotMetError(f"waiting for: {', '.join(unmet)}"))
                raise ConditionsNotMetError(f"download needs: {', '.join(unmet)}")

        check_conditions()
        req = plan.delta or plan.full

        def progress(done: int, total: int) -> None:
            self._status(name, channel, UpdateState.DOWNLOADING, done_bytes=done,
                         total_bytes=total, version=m.version)
            if on_progress is not None:
                on_progress(done, total)

        fields = self._manifest_fields(m)
        self._telemetry.record("download_started", fields | {"bytes": req.length})
        started = time.monotonic()
        deadline = started + self._config.download_deadline.total_seconds()
        try:
            staged = None
            if plan.delta is not None and plan.delta_base is not None:
                staged = self._via_delta(plan, deadline, progress, check_conditions)
            if staged is None:
                req = plan.full
                staged = self._downloader.fetch(req, deadline=deadline, on_progress=progress,
                                                check_conditions=check_conditions)
        except ModelDropError as e:
            self._telemetry.record("download_failed", fields | {
                "error": e.code, "seconds": round(time.monotonic() - started, 3)})
            raise
        self._telemetry.record("download_finished", fields | {
            "bytes": req.length, "seconds": round(time.monotonic() - started, 3)})
        return staged

    def _via_delta(self, plan: Plan, deadline: float, progress: ProgressCallback,
                   check_conditions: Callable[[], None]) -> Path | None:
        """The patched artifact in staging, or None to fall back to the full file.

        Transient failures propagate (the partial patch is kept for resuming); a patch
        that is rejected or does not rebuild the verified bytes means "use the full file".
        """
        assert plan.delta is not None and plan.delta_base is not None
        art = plan.manifest.artifact
        try:
            patch = self._downloader.fetch(plan.delta, deadline=deadline,
                                           on_progress=progress,
                                           check_conditions=check_conditions)
            out = self._downloader.part_path(art.sha256).with_suffix(".patched")
            apply_patch(plan.delta_base, patch, sha256=art.sha256, length=art.length, out=out)
        except UpdateRejectedError as e:  # includes DeltaPatchError and hash mismatches
            logger.warning("delta update of %s failed (%s); downloading the full file",
                           art.target, e)
            self._downloader.discard(plan.delta.sha256)
            return None
        self._downloader.discard(plan.delta.sha256)
        return out


def _now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

