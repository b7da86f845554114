"""ModelDrop client SDK: the device-side update logic, in Python.

It mirrors what an iOS/Android app does: ask the server which model to run, verify the
signed manifest against the TUF image repository (trusting only the embedded TUF root),
download on demand with resume, install atomically with a fallback, and report
telemetry. It imports nothing from the server (``registry``), Flask or SQLModel; the
wire format in ``docs/wire-format.md`` is the only contract. See ``docs/sdk.md``.
"""

from . import errors
from ._telemetry import FlushResult
from ._types import (
    ClientConfig,
    DeviceInfo,
    DeviceState,
    DeviceStateProvider,
    DownloadConditions,
    FixedDeviceState,
    LocalModel,
    ModelContract,
    Policy,
    TensorSpec,
    UpdateInfo,
    UpdateState,
    UpdateStatus,
)
from .client import ModelClient
from .errors import ModelDropError

__all__ = [
    "ClientConfig",
    "DeviceInfo",
    "DeviceState",
    "DeviceStateProvider",
    "DownloadConditions",
    "FixedDeviceState",
    "FlushResult",
    "LocalModel",
    "ModelClient",
    "ModelContract",
    "ModelDropError",
    "Policy",
    "TensorSpec",
    "UpdateInfo",
    "UpdateState",
    "UpdateStatus",
    "errors",
]

__version__ = "0.1.0"
