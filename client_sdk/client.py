"""``ModelClient``: what an app calls. Policies, background updates, status, telemetry.

The app's path (``get_model``, ``report_inference``) never fails because an *update*
failed: the installed model is returned and the failure is visible through
:meth:`ModelClient.status` (and telemetry). It raises only when there is no model to
return at all. The explicit calls (``check_for_update``, ``update``, ``apply_update``)
raise, because their caller asked for exactly that operation.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests
from tuf.api.metadata import Metadata, Root

from ._download import Downloader, discard_stale
from ._http import make_session
from ._install import Installer
from ._loadcheck import check_model
from ._local import LocalResolver
from ._names import validate_channel, validate_model_name
from ._store import (
    RejectedArtifacts,
    ReleaseCounters,
    file_lock,
    load_or_create_install_id,
)
from ._telemetry import FlushResult, Telemetry
from ._types import (
    ClientConfig,
    DeviceInfo,
    DeviceStateProvider,
    DownloadConditions,
    FixedDeviceState,
    LocalModel,
    ModelContract,
    Policy,
    ProgressCallback,
    UpdateInfo,
    UpdateState,
    UpdateStatus,
)
from ._updater import UpdateEngine
from .errors import ModelDropError

__all__ = ["ModelClient"]

logger = logging.getLogger(__name__)

_STALE_PARTIAL_SECONDS = 14 * 86400  # abandoned partial downloads are dropped after this


class ModelClient:
    """Fetches, verifies, installs and reports on models for one app installation.

    Args:
        base_url: the ModelDrop server, e.g. ``https://models.example.com``.
        cache_dir: downloads and installed models; may be cleared by the OS. The install
            id is kept here (and mirrored in ``state_dir``).
        trusted_root: the TUF root metadata bytes shipped inside the app — the only
            trust anchor. The manifest key is read from its ``x-modeldrop-manifest`` field.
        device: what the server targets on.
        state_provider: tells whether the device is on Wi-Fi/charging/idle; defaults to
            "always yes" (a mains-powered device on a wired network).
        clock_skew, download_deadline: shorthands for the same :class:`ClientConfig`
            fields.
        http: a ``requests.Session`` to use instead of the SDK's retrying one.
        state_dir: release counters, TUF metadata and the telemetry outbox; defaults to
            ``<cache_dir>.state`` beside the cache so that clearing the cache keeps it.
        config: the remaining tunables.
        contracts: per model name, the tensors this app version expects; a model that
            disagrees is refused at install time and the previous one stays active.
        resolve: ``"server"`` (default): ask ``GET /v1/manifest`` which model to run;
            ``"local"``: decide on the device from the signed ruleset, fetched through
            TUF, so ``base_url`` may be a static mirror or CDN (``modeldrop mirror``).
        telemetry_url: where events go (default ``<base_url>/v1/telemetry``); set it when
            ``base_url`` is a mirror that cannot take POSTs.
    """

    def __init__(self, base_url: str, cache_dir: str | Path, *, trusted_root: bytes,
                 device: DeviceInfo, state_provider: DeviceStateProvider | None = None,
                 clock_skew: timedelta | None = None,
                 download_deadline: timedelta | None = None,
                 http: requests.Session | None = None, state_dir: str | Path | None = None,
                 config: ClientConfig | None = None,
                 contracts: Mapping[str, ModelContract] | None = None,
                 resolve: str = "server", telemetry_url: str | None = None) -> None:
        if resolve not in ("server", "local"):
            raise ValueError(f"resolve must be 'server' or 'local', got {resolve!r}")
        if not isinstance(trusted_root, (bytes, bytearray)):
            raise TypeError("trusted_root must be the TUF root metadata as bytes")
        try:
            Metadata[Root].from_bytes(bytes(trusted_root))
        except Exception as e:
            raise ValueError(f"trusted_root is not TUF root metadata: {e}") from e
        config = config or ClientConfig()
        if clock_skew is not None:
            config = dataclasses.replace(config, clock_skew=clock_skew)
        if download_deadline is not None:
            config = dataclasses.replace(config, download_deadline=download_deadline)
        self.config = config
        self.device = device
        self._base = base_url.rstrip("/")
        self._cache = Path(cache_dir).absolute()
        self._state = (Path(state_dir) if state_dir is not None
                       else self._cache.with_name(self._cache.name + ".state")).absolute()
        self._cache.mkdir(parents=True, exist_ok=True)
        self._state.mkdir(parents=True, exist_ok=True)
        self._state_provider = state_provider or FixedDeviceState()
        self._session = http or make_session(config)
        self._install_id = load_or_create_install_id(self._cache, self._state)
        self._contracts = dict(contracts or {})
        self._installer = Installer(
            self._cache / "models",
            lambda path, fmt, target, name: check_model(path, fmt, target,
                                                        contract=self._contracts.get(name)))
        self._downloader = Downloader(self._cache / "staging", self._session, config)
        self._telemetry = Telemetry(self._state / "telemetry.sqlite",
                                    telemetry_url or f"{self._base}/v1/telemetry",
                                    self._session, config)
        self._statuses: dict[tuple[str, str], UpdateStatus] = {}
        self._status_lock = threading.Lock()
        self._threads: dict[tuple[str, str], threading.Thread] = {}
        self._engine = UpdateEngine(
            base_url=self._base, install_id=self._install_id, device=device,
            trusted_root=bytes(trusted_root), tuf_dir=self._state / "tuf",
            session=self._session, config=config, installer=self._installer,
            downloader=self._downloader, counters=ReleaseCounters(self._state),
            rejected=RejectedArtifacts(self._state), telemetry=self._telemetry,
            status=self._set_status,
            local=(LocalResolver(self._base, self._state, self._session, config,
                                 self._install_id) if resolve == "local" else None),
            contracts=self._contracts)

    # -- identity & status -------------------------------------------------------------

    @property
    def install_id(self) -> str:
        """This installation's id (lowercase uuid4), stable across runs."""
        return self._install_id

    @property
    def cache_dir(self) -> Path:
        return self._cache

    @property
    def state_dir(self) -> Path:
        return self._state

    def status(self, name: str, channel: str = "production") -> UpdateStatus:
        """The latest lifecycle state of (name, channel) in this process."""
        with self._status_lock:
            return self._statuses.get((name, channel), UpdateStatus())

    def _set_status(self, name: str, channel: str, state: UpdateState, **fields: Any) -> None:
        with self._status_lock:
            self._statuses[(name, channel)] = UpdateStatus(
                state=state, updated_at=datetime.now(timezone.utc), **fields)

    # -- the app's path ----------------------------------------------------------------

    def get_local_model(self, name: str, channel: str = "production") -> LocalModel | None:
        """The installed model, without any network traffic."""
        _check_names(name, channel)
        return self._installer.current(name, channel)

    def get_model(self, name: str, channel: str = "production", *,
                  policy: Policy = Policy.LATEST_MODEL,
                  conditions: DownloadConditions = DownloadConditions(),
                  on_progress: ProgressCallback | None = None) -> LocalModel:
        """Return a model to run now, according to ``policy``.

        Raises:
            ModelDropError: only when nothing is installed and no model could be fetched
                (e.g. NoModelAvailableError, ConditionsNotMetError, a rejected update).
        """
        _check_names(name, channel)
        local = self._installer.current(name, channel)
        if local is not None and policy is Policy.LOCAL_MODEL:
            return local
        if local is not None and policy is Policy.LOCAL_MODEL_UPDATE_IN_BACKGROUND:
            self.update_in_background(name, channel, conditions=conditions,
                                      on_progress=on_progress)
            return local
        try:
            return self.update(name, channel, conditions=conditions, on_progress=on_progress)
        except Exception as e:
            fallback = self._installer.current(name, channel)
            if fallback is None:
                raise
            if not isinstance(e, ModelDropError):
                logger.exception("unexpected error updating %s/%s", name, channel)
            else:
                logger.warning("update of %s/%s failed, keeping version %s: %s", name,
                               channel, fallback.version, e)
            return fallback

    def update_in_background(self, name: str, channel: str = "production", *,
                             conditions: DownloadConditions = DownloadConditions(),
                             on_progress: ProgressCallback | None = None) -> bool:
        """Start a background update unless one is running; returns whether it started."""
        _check_names(name, channel)
        key = (name, channel)
        with self._status_lock:
            running = self._threads.get(key)
            if running is not None and running.is_alive():
                return False

            def run() -> None:
                try:
                    self.update(name, channel, conditions=conditions, on_progress=on_progress)
                except ModelDropError as e:
                    logger.info("background update of %s/%s: %s", name, channel, e)
                except Exception:  # never let a bug kill the app through a thread
                    logger.exception("background update of %s/%s crashed", name, channel)

            thread = threading.Thread(target=run, name=f"modeldrop-update-{name}",
                                      daemon=True)
            self._threads[key] = thread
        thread.start()
        return True

    def wait_for_background(self, timeout: float | None = None) -> bool:
        """Join background updates and telemetry sends; True when none is still running."""
        with self._status_lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)
        self._telemetry.join(timeout)
        return not any(t.is_alive() for t in threads) and not self._telemetry.sending()

    # -- explicit update API -------------------------------------------------------------

    def check_for_update(self, name: str, channel: str = "production") -> UpdateInfo:
        """Verify the server's offer and say what it would cost, downloading no artifact.

        Raises:
            ModelDropError: the check failed (see ``status`` for the same error).
        """
        _check_names(name, channel)
        with self._model_lock(name):
            return self._run(name, channel, lambda: self._check(name, channel))

    def apply_update(self, info: UpdateInfo, *,
                     conditions: DownloadConditions = DownloadConditions(),
                     on_progress: ProgressCallback | None = None) -> LocalModel:
        """Download and install an offer from :meth:`check_for_update`.

        Raises:
            ModelDropError: the update failed; the installed model is unchanged.
        """
        if not info.update_available:
            if info.installed is None:
                raise ValueError("this UpdateInfo offers nothing to apply")
            return info.installed
        with self._model_lock(info.name):
            return self._run(info.name, info.channel, lambda: self._apply(
                info, conditions, on_progress))

    def update(self, name: str, channel: str = "production", *,
               conditions: DownloadConditions = DownloadConditions(),
               on_progress: ProgressCallback | None = None) -> LocalModel:
        """Check, download, verify and install in one locked cycle.

        Raises:
            ModelDropError: the update failed; the installed model is unchanged.
        """
        _check_names(name, channel)
        with self._model_lock(name):
            def cycle() -> LocalModel:
                info = self._check(name, channel)
                if not info.update_available:
                    assert info.installed is not None
                    return info.installed
                return self._apply(info, conditions, on_progress)
            return self._run(name, channel, cycle)

    def _check(self, name: str, channel: str) -> UpdateInfo:
        self._engine.recover(name, channel)
        info = self._engine.check(name, channel)
        if not info.update_available:
            self._set_status(name, channel, UpdateState.UP_TO_DATE,
                             version=info.installed.version if info.installed else None)
        return info

    def _apply(self, info: UpdateInfo, conditions: DownloadConditions,
               on_progress: ProgressCallback | None) -> LocalModel:
        model = self._engine.apply(info, conditions=conditions,
                                   state_provider=self._state_provider,
                                   on_progress=on_progress)
        self._set_status(info.name, info.channel, UpdateState.INSTALLED,
                         done_bytes=info.download_bytes, total_bytes=info.download_bytes,
                         version=model.version)
        discard_stale(self._cache / "staging", set(), _STALE_PARTIAL_SECONDS)
        self._telemetry.flush_in_background()
        return model

    def _run(self, name: str, channel: str, fn: Any) -> Any:
        try:
            return fn()
        except ModelDropError as e:
            state = (UpdateState.WAITING_FOR_CONDITIONS if e.code == "conditions_not_met"
                     else UpdateState.FAILED)
            self._set_status(name, channel, state, error=e)
            raise
        except Exception as e:  # a bug: still leave an honest status behind
            self._set_status(name, channel, UpdateState.FAILED, error=ModelDropError(
                f"unexpected {type(e).__name__}: {e}"))
            raise

    def _model_lock(self, name: str):
        return file_lock(self._cache / "models" / name / ".lock")

    # -- telemetry -------------------------------------------------------------------------

    def report_inference(self, model: LocalModel, latency_ms: float,
                         correct: bool | None = None) -> None:
        """Record one inference (stored on disk, sent in batches). Never raises."""
        self._telemetry.record("inference", self._model_fields(model) | {
            "latency_ms": float(latency_ms), "correct": correct})

    def report_crash(self, model: LocalModel, error: str = "") -> None:
        """Record that the app crashed while running ``model``. Never raises."""
        self._telemetry.record("crash", self._model_fields(model) | {"error": error[:500]})

    def flush_telemetry(self) -> FlushResult:
        """Send every stored event now (batches of at most 1,000). Never raises."""
        return self._telemetry.flush()

    def pending_telemetry(self) -> list[dict[str, Any]]:
        """Events stored and not yet accepted by the server, oldest first."""
        return self._telemetry.pending_events()

    def _model_fields(self, model: LocalModel) -> dict[str, Any]:
        return self._engine.event_fields(model.name, version=model.version,
                                         variant=model.variant, experiment=model.experiment,
                                         arm=model.arm, **self._engine.decision_fields(
                                             model.channel, model.release_counter))

    def close(self) -> None:
        """Wait briefly for background work and release the HTTP session."""
        self.wait_for_background(timeout=5)
        self._telemetry.close()
        self._session.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_names(name: str, channel: str) -> None:
    validate_model_name(name)
    validate_channel(channel)
