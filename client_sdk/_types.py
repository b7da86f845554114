"""The plain data an app hands to the SDK and gets back from it.

Kept free of I/O so that an iOS/Android port can mirror these one to one (Swift structs,
Kotlin data classes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Optional, Protocol, runtime_checkable

from .errors import ModelDropError

__all__ = [
    "ClientConfig",
    "DeviceInfo",
    "DeviceState",
    "DeviceStateProvider",
    "DownloadConditions",
    "FixedDeviceState",
    "LocalModel",
    "ModelContract",
    "Policy",
    "ProgressCallback",
    "TensorSpec",
    "UpdateInfo",
    "UpdateState",
    "UpdateStatus",
]

#: ``on_progress(done_bytes, total_bytes)``; called from the downloading thread.
ProgressCallback = Callable[[int, int], None]



class Policy(enum.Enum):
    """When :meth:`ModelClient.get_model` talks to the server (as in Firebase's downloader).

    LOCAL_MODEL: use the installed model; only download when nothing is installed.
    LOCAL_MODEL_UPDATE_IN_BACKGROUND: use the installed model now and update it on a
        background thread for next time; download and wait only when nothing is installed.
    LATEST_MODEL: check for an update and wait for it; on failure keep the installed model.
    """

    LOCAL_MODEL = "local_model"
    LOCAL_MODEL_UPDATE_IN_BACKGROUND = "local_model_update_in_background"
    LATEST_MODEL = "latest_model"


@dataclass(frozen=True)
class DeviceInfo:
    """What the server targets on. Sent with every manifest request."""

    platform: str  # "android" | "ios" | "linux"
    os_version: str = ""
    device_model: str = ""
    app_version: str = ""
    region: str | None = None


@dataclass(frozen=True)
class DeviceState:
    """The device's condition right now, as far as downloads care."""

    on_wifi: bool = True  # an unmetered network
    charging: bool = True
    idle: bool = True


@runtime_checkable
class DeviceStateProvider(Protocol):
    """Supplied by the app (ConnectivityManager/BatteryManager on Android, NWPathMonitor
    and UIDevice on iOS); the SDK asks it before and during every download."""

    def current_state(self) -> DeviceState: ...


@dataclass
class FixedDeviceState:
    """A provider with a settable state; the default is a mains-powered, wired device."""

    state: DeviceState = field(default_factory=DeviceState)

    def current_state(self) -> DeviceState:
        return self.state


@dataclass(frozen=True)
class DownloadConditions:
    """Conditions the device must meet before (and while) a model is downloaded."""

    wifi_only: bool = False
    require_charging: bool = False
    require_idle: bool = False

    def unmet(self, state: DeviceState) -> list[str]:
        """Names of the unmet conditions; empty when the download may proceed."""
        missing = []
        if self.wifi_only and not state.on_wifi:
            missing.append("wifi")
        if self.require_charging and not state.charging:
            missing.append("charging")
        if self.require_idle and not state.idle:
            missing.append("idle")
        return missing


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor as the app's code feeds or reads it.

    With a ``name`` it is matched to the model's tensor of that name (the name in the
    version's signature, e.g. the Keras input's name); without, by position.
    """

    shape: tuple[int, ...]  # -1 for a dimension of any size
    dtype: str  # numpy name: "float32", "float16", "int8", "uint8", "int32", "int64", "bool"
    name: Optional[str] = None


@dataclass(frozen=True)
class ModelContract:
    """The tensors this app version's code expects a model to have.

    A model that disagrees is refused before it can fail at run time ("Input 0 should have
    921600 bytes, but found 1228800") — the previous model stays active: first against the
    signature the manifest carries, before any byte is downloaded, then (TFLite) against the
    interpreter's own tensors after download. Every tensor is checked (name if given, dtype,
    shape). An empty tuple means "not checked".
    """

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()


@dataclass(frozen=True)
class ClientConfig:
    """Tunables of :class:`ModelClient`; the defaults suit a phone."""

    clock_skew: timedelta = timedelta(minutes=5)  # allowed device clock error for expiry
    download_deadline: timedelta = timedelta(minutes=30)  # whole artifact, one attempt
    metadata_deadline: timedelta = timedelta(seconds=60)  # one manifest or TUF file
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 30.0  # seconds of silence before a read fails
    http_retries: int = 3  # urllib3 Retry total, for connect errors and 5xx/429
    retry_backoff: float = 0.5  # seconds; urllib3 backoff_factor
    telemetry_batch_size: int = 50  # events; a full batch triggers a background send
    telemetry_max_batch: int = 1000  # events per POST (server limit)
    telemetry_max_outbox: int = 10_000  # events kept offline; oldest dropped beyond this
    telemetry_min_interval: float = 30.0  # seconds between failed sends (doubles, max 1 h)
    manifest_max_bytes: int = 1 << 20  # bytes
    chunk_bytes: int = 64 << 10  # bytes per read and per progress callback at most
    user_agent: str = "modeldrop-sdk-python/0.1"


class UpdateState(enum.Enum):
    """Lifecycle of one (model, channel) as reported by :meth:`ModelClient.status`."""

    IDLE = "idle"
    CHECKING = "checking"
    WAITING_FOR_CONDITIONS = "waiting_for_conditions"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    UP_TO_DATE = "up_to_date"
    INSTALLED = "installed"
    FAILED = "failed"


@dataclass(frozen=True)
class UpdateStatus:
    """Snapshot of the update lifecycle; ``error`` is set when ``state`` is FAILED or
    WAITING_FOR_CONDITIONS."""

    state: UpdateState = UpdateState.IDLE
    done_bytes: int = 0
    total_bytes: int = 0
    error: ModelDropError | None = None
    version: int | None = None  # the version being fetched or just installed
    updated_at: datetime | None = None


@dataclass(frozen=True)
class LocalModel:
    """An installed, verified, load-checked model file.

    ``path`` stays valid until the model is replaced twice (the SDK keeps the previous
    model as the fallback slot).
    """

    name: str
    channel: str
    path: Path
    version: int
    variant: str
    format: str
    sha256: str
    size: int
    release_counter: int
    arm: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class UpdateInfo:
    """A verified offer, known before any artifact byte is downloaded.

    ``download_bytes`` is what will actually travel: the delta patch when one applies,
    else the full artifact; 0 when the artifact is already on the device.
    """

    name: str
    channel: str
    update_available: bool
    version: int | None = None
    variant: str | None = None
    format: str | None = None
    arm: str | None = None
    experiment: str | None = None
    release_counter: int | None = None
    sha256: str | None = None
    artifact_bytes: int = 0
    download_bytes: int = 0
    is_delta: bool = False
    installed: LocalModel | None = None
    # the verified plan, used by ModelClient.apply_update(); not part of the public shape
    _plan: object = field(default=None, repr=False, compare=False)
