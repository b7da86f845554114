"""The evaluation set every variant is measured on (and tflite-int8-full calibrates on).

Only numpy here: loading an uploaded ``.npz`` must not need TensorFlow.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import ConversionError

EVAL_SEED = 20261127  # fixed, so a synthetic set is the same on every run
SYNTHETIC_SAMPLES = 64
MAX_EVAL_SAMPLES = 2000  # an uploaded set is truncated to its first N samples
CALIBRATION_SAMPLES = 200  # representative inputs for full-integer quantization
EVAL_BATCH_INPUT_BYTES = 4 << 20  # bytes of float32 input per batch when running the eval set


def eval_batch_size(input_shape: tuple[int, ...]) -> int:
    """Samples per batch when running the eval set through a model.

    Activation memory grows with batch x input size: MobileNetV2 at batch 64 peaks at
    6.5 GB in Keras and runs 5x slower than at batch 8, so large inputs get small batches.
    """
    sample_bytes = 4 * int(np.prod(input_shape))
    return max(1, min(64, EVAL_BATCH_INPUT_BYTES // sample_bytes))


@dataclass(frozen=True)
class EvalSet:
    """Inputs (float32, batch first), optional integer labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray | None
    source: str  # "uploaded" | "synthetic"

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def calibration_inputs(self) -> np.ndarray:
        return self.x[:CALIBRATION_SAMPLES]


def synthetic_eval_set(input_shape: tuple[int, ...]) -> EvalSet:
    """Uniform noise in [0, 1) shaped like the model input.

    Noise only supports an agreement check (does the variant pick the same class as
    the source?); it carries no labels, and as calibration data for full-integer
    quantization it is a poor stand-in for real inputs.
    """
    rng = np.random.default_rng(EVAL_SEED)
    x = rng.random((SYNTHETIC_SAMPLES, *input_shape), dtype=np.float32)
    return EvalSet(x=x, y=None, source="synthetic")


def peek_input_shape(eval_path: Path) -> tuple[int, ...] | None:
    """The per-sample shape of the eval set's ``x`` (None without one), read from the npy
    header only: for a source that does not record its own input shape (TorchScript)."""
    try:
        with zipfile.ZipFile(eval_path) as archive, archive.open("x.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(fh)
    except KeyError:
        return None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConversionError(f"cannot read evaluation set {eval_path.name}: {exc}") from exc
    if len(shape) < 2 or any(int(d) < 1 for d in shape[1:]):
        raise ConversionError(f"evaluation set x has shape {tuple(shape)}, expected (N, ...input shape)")
    return tuple(int(d) for d in shape[1:])


def load_eval_set(eval_path: Path, input_shape: tuple[int, ...]) -> EvalSet:
    """Read an uploaded ``.npz`` with ``x`` (N, *input_shape) and optional integer ``y`` (N,).

    Raises:
        ConversionError: unreadable file, missing ``x``, or shapes that do not fit
            the model. Pickled objects are refused (``allow_pickle=False``).
    """
    try:
        with np.load(eval_path, allow_pickle=False) as data:
            if "x" not in data.files:
                raise ConversionError(
                    f"evaluation set {eval_path.name} has no array 'x' (found: {', '.join(data.files) or 'none'})"
                )
            x = np.asarray(data["x"][:MAX_EVAL_SAMPLES])
            y = np.asarray(data["y"][:MAX_EVAL_SAMPLES]) if "y" in data.files else None
    except ConversionError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConversionError(f"cannot read evaluation set {eval_path.name}: {exc}") from exc

    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ConversionError(
            f"evaluation set x has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, input_shape))})"
        )
    if x.shape[0] == 0:
        raise ConversionError("evaluation set x is empty")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ConversionError(f"evaluation set x has dtype {x.dtype}, expected numbers")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ConversionError(
                f"evaluation set y has shape {tuple(y.shape)}, expected ({x.shape[0]},)"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise ConversionError(f"evaluation set y has dtype {y.dtype}, expected integer class labels")
        y = y.astype(np.int64)
    return EvalSet(x=np.ascontiguousarray(x, dtype=np.float32), y=y, source="uploaded")
