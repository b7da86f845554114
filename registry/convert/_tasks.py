"""One unit of conversion work, runnable in the parent or in a spawned worker process.

Everything a task carries is plain picklable data, and this module imports nothing
heavy at import time, so a spawned worker starts by importing only what its variant
needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ._source import ModelSignature
from .catalog import VARIANTS


@dataclass(frozen=True)
class ConvertTask:
    variant: str
    signature: ModelSignature
    build_dir: str
    artifact_path: str
    calibration_path: str | None = None
    base_package: str | None = None  # Core ML variants derived from another package


@dataclass(frozen=True)
class TaskOutcome:
    variant: str
    artifact_path: str | None  # the file that ships
    package_path: str | None  # Core ML: the unzipped package, base for derived variants
    seconds: float
    error: str | None = None


def warm_up_worker(framework: str = "tensorflow") -> None:
    """Pool initializer: pay the TensorFlow/coremltools import (~4 s; torch and litert-torch
    ~7 s) while the parent is still loading the source, not on the first task."""
    import coremltools  # noqa: F401

    if framework == "torch":
        import litert_torch  # noqa: F401
        import torch  # noqa: F401
    else:
        import tensorflow  # noqa: F401


def worker_ready() -> int:
    """A no-op task; submitting one per worker makes the pool start them all now."""
    import os

    return os.getpid()


def describe_error(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def run_task(task: ConvertTask) -> TaskOutcome:
    """Build one variant; a converter failure becomes ``error`` instead of raising."""
    start = time.perf_counter()
    artifact = Path(task.artifact_path)
    package = None
    try:
        if VARIANTS[task.variant].format == "tflite":
            from ._tflite import convert_tflite

            calibration = Path(task.calibration_path) if task.calibration_path else None
            if task.signature.framework == "torch":
                from ._torch import convert_tflite as convert_torch_tflite

                convert_torch_tflite(Path(task.signature.saved_model_dir), task.signature,
                                     task.variant, artifact, Path(task.build_dir), calibration)
            else:
                convert_tflite(task.signature, task.variant, artifact, calibration)
        else:
            from ._coreml import convert_coreml, zip_package

            base = Path(task.base_package) if task.base_package else None
            package = convert_coreml(task.signature, task.variant, Path(task.build_dir), base)
            zip_package(package, artifact)
    except Exception as exc:  # noqa: BLE001 - any converter error is this variant's outcome, not the job's
        return TaskOutcome(task.variant, None, None, time.perf_counter() - start, describe_error(exc))
    return TaskOutcome(
        task.variant,
        str(artifact),
        str(package) if package is not None else None,
        time.perf_counter() - start,
    )
