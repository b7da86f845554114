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
EVAL_BATCH_INPUT_BYTES = 4 << 20  # bytes of input per batch when running the eval set


LABEL_PREFIX = "y__"  # y__<output name>: labels for that output
SYNTHETIC_INT_HIGH = 8  # synthetic integer inputs are in [0, 8) when no vocabulary size is known


def eval_batch_size(sample_bytes: int | tuple[int, ...]) -> int:
    """Samples per batch when running the eval set through a model.

    Activation memory grows with batch x input size: MobileNetV2 at batch 64 peaks at
    6.5 GB in Keras and runs 5x slower than at batch 8, so large inputs get small batches.
    ``sample_bytes`` is the bytes of one sample (or, as before, a float32 input shape).
    """
    if isinstance(sample_bytes, tuple):
        sample_bytes = 4 * int(np.prod(sample_bytes))
    return max(1, min(64, EVAL_BATCH_INPUT_BYTES // max(1, int(sample_bytes))))


@dataclass(frozen=True)
class EvalSet:
    """Inputs by input name (batch first, each in its input's dtype), labels by output
    name (integer class labels, possibly several per sample), and where they came from.

    ``labels`` keys are output names, except ``"y"``: labels not yet tied to an output
    (the engine ties them once it knows the outputs' tasks, ``resolve_labels``)."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    source: str  # "uploaded" | "synthetic"

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def calibration_inputs(self) -> dict[str, np.ndarray]:
        return {name: x[:CALIBRATION_SAMPLES] for name, x in self.inputs.items()}

    def first_sample(self) -> dict[str, np.ndarray]:
        return {name: x[:1] for name, x in self.inputs.items()}


def synthetic_eval_set(inputs, int_high: int | None = None) -> EvalSet:
    """Fixed-seed inputs shaped and typed like the model's (``inputs``: TensorSpecs, or a
    float32 input shape as before).

    Float inputs are uniform noise in [0, 1); integer inputs (token ids) are uniform in
    [0, ``int_high``), the smallest embedding vocabulary found in the model, else in
    [0, 8) (valid for any vocabulary of 8 or more); uint8 in [0, 256); bool fair coins.
    Noise only supports an agreement check (does the variant pick the same class as
    the source?); it carries no labels, and as calibration data for full-integer
    quantization it is a poor stand-in for real inputs.
    """
    from ._source import TensorSpec

    if isinstance(inputs, tuple) and all(isinstance(d, int) for d in inputs):
        inputs = (TensorSpec("x", "float32", inputs),)
    rng = np.random.default_rng(EVAL_SEED)
    arrays = {}
    for spec in inputs:
        shape = (SYNTHETIC_SAMPLES, *spec.shape)
        if spec.dtype in ("float32", "float16"):
            arrays[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
        elif spec.dtype == "bool":
            arrays[spec.name] = rng.random(shape) < 0.5
        elif spec.dtype == "uint8":
            arrays[spec.name] = rng.integers(0, 256, shape).astype(np.uint8)
        else:
            high = int(int_high) if int_high else SYNTHETIC_INT_HIGH
            arrays[spec.name] = rng.integers(0, high, shape).astype(spec.dtype)
    return EvalSet(inputs=arrays, labels={}, source="synthetic")


def _read_header(fh):
    version = np.lib.format.read_magic(fh)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    return read_header(fh)


def peek_arrays(eval_path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{array name: (per-sample shape, dtype name)}`` of every input-like array in the
    eval set (labels ``y`` and ``y__*`` left out), read from the npy headers only: for a
    source that records neither its input shapes nor dtypes (TorchScript)."""
    found = {}
    try:
        with zipfile.ZipFile(eval_path) as archive:
            for member in archive.namelist():
                name = member[:-4] if member.endswith(".npy") else None
                if not name or name == "y" or name.startswith(LABEL_PREFIX):
                    continue
                with archive.open(member) as fh:
                    shape, _, dtype = _read_header(fh)
                if len(shape) < 2 or any(int(d) < 1 for d in shape[1:]):
                    raise ConversionError(f"evaluation set array {name!r} has shape {tuple(shape)}, "
                                          "expected (N, ...input shape)")
                found[name] = (tuple(int(d) for d in shape[1:]), np.dtype(dtype).name)
    except ConversionError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConversionError(f"cannot read evaluation set {eval_path.name}: {exc}") from exc
    return found


def peek_input_shape(eval_path: Path) -> tuple[int, ...] | None:
    """The per-sample shape of the eval set's ``x`` (None without one)."""
    found = peek_arrays(eval_path)
    return found["x"][0] if "x" in found else None


def input_array_name(spec_name: str, files, single: bool) -> str | None:
    """Which eval-set array feeds an input: the one named after it, or ``x`` for a single input."""
    if spec_name in files:
        return spec_name
    if single and "x" in files:
        return "x"
    return None


def _fit_dtype(x: np.ndarray, spec, array: str) -> np.ndarray:
    kind = spec.dtype
    if kind in ("float32", "float16"):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ConversionError(f"evaluation set array {array!r} has dtype {x.dtype}; input {spec.name!r} "
                                  f"takes {kind} numbers")
        return np.ascontiguousarray(x, dtype=kind)
    if kind == "bool":
        if x.dtype != np.bool_:
            raise ConversionError(f"evaluation set array {array!r} has dtype {x.dtype}; input {spec.name!r} "
                                  "takes bool")
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ConversionError(f"evaluation set array {array!r} has dtype {x.dtype}; input {spec.name!r} takes "
                              f"{kind} (integers, e.g. token ids)")
    info = np.iinfo(kind)
    if x.size and (x.min() < info.min or x.max() > info.max):
        raise ConversionError(f"evaluation set array {array!r} has values outside the range of {kind} "
                              f"(input {spec.name!r})")
    return np.ascontiguousarray(x, dtype=kind)


def load_eval_set(eval_path: Path, inputs, outputs=()) -> EvalSet:
    """Read an uploaded ``.npz``: one array per input name (``x`` for a single input),
    shaped (N, *input shape), and optional integer labels ``y`` / ``y__<output name>``.

    ``inputs``/``outputs`` are the model's TensorSpecs (or, as before, a float32 input
    shape).

    Raises:
        ConversionError: unreadable file, an input without an array (named), an array
            whose shape or dtype does not fit its input (named), labels for an output
            the model does not have. Pickled objects are refused (``allow_pickle=False``).
    """
    from ._source import TensorSpec

    if isinstance(inputs, tuple) and all(isinstance(d, int) for d in inputs):
        inputs = (TensorSpec("x", "float32", inputs),)
    output_names = {t.name for t in outputs}
    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    try:
        with np.load(eval_path, allow_pickle=False) as data:
            files = list(data.files)
            for spec in inputs:
                array = input_array_name(spec.name, files, len(inputs) == 1)
                if array is None:
                    raise ConversionError(
                        f"evaluation set {eval_path.name} has no array for input {spec.name!r} "
                        f"(found: {', '.join(files) or 'none'}); name one array after each input"
                        + (" or call it 'x'" if len(inputs) == 1 else ""))
                arrays[spec.name] = (array, np.asarray(data[array][:MAX_EVAL_SAMPLES]))
            for key in files:
                if key == "y" or key.startswith(LABEL_PREFIX):
                    target = key if key == "y" else key[len(LABEL_PREFIX):]
                    if outputs and target != "y" and target not in output_names:
                        raise ConversionError(f"evaluation set labels {key!r} name no output of the model "
                                              f"(outputs: {', '.join(sorted(output_names))})")
                    labels[target] = np.asarray(data[key][:MAX_EVAL_SAMPLES])
    except ConversionError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConversionError(f"cannot read evaluation set {eval_path.name}: {exc}") from exc

    fitted: dict[str, np.ndarray] = {}
    count = None
    for spec in inputs:
        array, x = arrays[spec.name]
        if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != tuple(spec.shape):
            raise ConversionError(
                f"evaluation set array {array!r} has shape {tuple(x.shape)}, expected "
                f"(N, {', '.join(map(str, spec.shape))}) for input {spec.name!r}")
        if x.shape[0] == 0:
            raise ConversionError(f"evaluation set array {array!r} is empty")
        if count is not None and x.shape[0] != count:
            raise ConversionError(f"evaluation set array {array!r} has {x.shape[0]} samples, the others {count}")
        count = x.shape[0]
        fitted[spec.name] = _fit_dtype(x, spec, array)
    for target, y in labels.items():
        key = "y" if target == "y" else LABEL_PREFIX + target
        if y.ndim < 1 or y.shape[0] != count:
            raise ConversionError(f"evaluation set labels {key!r} have shape {tuple(y.shape)}, expected ({count}, ...)")
        if not np.issubdtype(y.dtype, np.integer):
            raise ConversionError(f"evaluation set labels {key!r} have dtype {y.dtype}, expected integer class labels")
        labels[target] = y.astype(np.int64)
    return EvalSet(inputs=fitted, labels=labels, source="uploaded")
