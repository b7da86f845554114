"""Loading the uploaded model and reducing every input format to one SavedModel.

Whatever TensorFlow upload arrived (.keras, .h5, zipped SavedModel), the converters see
the same thing: a SavedModel directory with a ``serving_default`` signature taking one
float32 tensor. PyTorch uploads (.pt2, .pt) are loaded by ``_torch`` instead and keep
their own file (``framework == "torch"``). TFLite converts fastest from a SavedModel, and
Core ML converts reliably from a tf.function wrapping that signature (this also covers Sequential models, which
``ct.convert`` rejects directly). The parent exports it once; workers only read it.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ._evalset import eval_batch_size
from .catalog import SOURCE_FORMATS, ConversionError

SIGNATURE_KEY = "serving_default"
MAX_SAVEDMODEL_BYTES = 8 << 30  # bytes; uncompressed size cap for an uploaded SavedModel zip
DISK_HEADROOM_BYTES = 256 << 20  # bytes left free on the work volume after extracting


class SourceTooLargeError(ConversionError):
    """The upload would expand beyond its budget or the free disk space."""

    code = "upload_too_large"


@dataclass(frozen=True)
class ModelSignature:
    """What a worker process needs to find and call the model (picklable)."""

    saved_model_dir: str  # the SavedModel (TensorFlow) or the uploaded .pt2/.pt file (torch)
    input_name: str
    output_name: str
    input_shape: tuple[int, ...]  # without the batch dimension
    framework: str = "tensorflow"  # "tensorflow" | "torch"


class SourceModel:
    """The uploaded model, loaded once in the parent to produce reference outputs."""

    def __init__(self, signature: ModelSignature, predict_fn, kind: str):
        self.signature = signature
        self.kind = kind  # "keras" | "saved_model" | "torch"
        self._predict_fn = predict_fn

    def predict(self, x: np.ndarray) -> np.ndarray:
        batch = eval_batch_size(self.signature.input_shape)
        outputs = [
            np.asarray(self._predict_fn(x[start:start + batch]), dtype=np.float32)
            for start in range(0, len(x), batch)
        ]
        return np.concatenate(outputs, axis=0)


def load_source(source_path: Path, workdir: Path, *, max_extract_bytes: int = MAX_SAVEDMODEL_BYTES,
                check_ops: bool = True, eval_path: Path | None = None) -> SourceModel:
    """Load the upload and make sure a SavedModel for the converters exists in workdir.

    A zipped SavedModel is extracted within ``max_extract_bytes`` and, with ``check_ops``,
    its graph is checked for file, network and process operations before TensorFlow
    loads it (``_opcheck``). A TorchScript ``.pt`` takes its input shape from the eval
    set at ``eval_path`` (TorchScript does not record one).

    Raises:
        ConversionError: unsupported extension, unsafe or broken zip, the loader's
            own error, or a model shape the converters do not handle.
    """
    suffix = source_path.suffix.lower()
    if suffix not in SOURCE_FORMATS:
        raise ConversionError(
            f"unsupported source format {suffix or source_path.name!r}; expected one of {', '.join(SOURCE_FORMATS)}"
        )
    if not source_path.is_file():
        raise ConversionError(f"source model {source_path} does not exist")
    if suffix in (".pt2", ".pt"):
        return _load_torch_source(source_path, eval_path)
    if suffix == ".zip":
        saved_model_dir = _extract_saved_model_zip(source_path, workdir / "source", max_extract_bytes)
        if check_ops:
            from ._opcheck import check_saved_model

            check_saved_model(saved_model_dir)
        return _load_saved_model_source(saved_model_dir)
    return _load_keras_source(source_path, workdir / "saved_model")


def _load_keras_source(source_path: Path, export_dir: Path) -> SourceModel:
    import keras

    try:
        # safe_mode refuses Lambda layers carrying pickled Python code (the Keras default,
        # stated here because uploads are not trusted code).
        model = keras.models.load_model(source_path, compile=False, safe_mode=True)
    except Exception as exc:  # the loader raises many types; its message is what matters
        raise ConversionError(f"cannot load {source_path.name}: {exc}") from exc
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ConversionError(
            f"only single-input, single-output models are supported; {source_path.name} has "
            f"{len(inputs)} inputs and {len(outputs)} outputs"
        )
    if export_dir.exists():
        shutil.rmtree(export_dir)
    try:
        model.export(str(export_dir), format="tf_saved_model", verbose=False)
    except Exception as exc:
        raise ConversionError(f"cannot export {source_path.name} as a SavedModel: {exc}") from exc
    signature = _describe_saved_model(export_dir)[0]

    def predict(batch: np.ndarray) -> np.ndarray:
        return model(batch, training=False)

    return SourceModel(signature, predict, kind="keras")


class ToolchainMissingError(ConversionError):
    """This worker's environment lacks the converters the upload's framework needs."""

    code = "toolchain_missing"


def _load_torch_source(source_path: Path, eval_path: Path | None) -> SourceModel:
    try:
        import litert_torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ToolchainMissingError(
            f"toolchain_missing: {source_path.suffix} is a PyTorch upload and this worker has no PyTorch "
            f"toolchain ({exc.name or exc} is not installed); install the convert extra "
            "(torch==2.13.0, litert-torch==0.10.0) on the conversion workers") from exc
    from . import _torch
    from ._evalset import peek_input_shape

    input_shape = peek_input_shape(eval_path) if eval_path is not None else None
    program, script = _torch.load_program(source_path, input_shape)
    if script is not None:
        input_name, shape, output_name, _ = _torch.describe_script(script, input_shape, source_path.name)
    else:
        input_name, shape, output_name, _ = _torch.describe_program(program, source_path.name)
    signature = ModelSignature(saved_model_dir=str(source_path), input_name=input_name,
                               output_name=output_name, input_shape=shape, framework="torch")
    return SourceModel(signature, _torch.TorchPredictor(program, script), kind="torch")


def _load_saved_model_source(saved_model_dir: Path) -> SourceModel:
    signature, loaded, serving = _describe_saved_model(saved_model_dir)
    import tensorflow as tf

    def predict(batch: np.ndarray) -> np.ndarray:
        result = serving(**{signature.input_name: tf.constant(batch)})
        return result[signature.output_name].numpy()

    source = SourceModel(signature, predict, kind="saved_model")
    source._keepalive = loaded  # the signature function needs its SavedModel object alive
    return source


def _describe_saved_model(saved_model_dir: Path):
    """Load a SavedModel and check its serving signature; returns (signature, loaded, fn)."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
    except Exception as exc:
        raise ConversionError(f"cannot load SavedModel: {exc}") from exc
    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE_KEY not in signatures:
        raise ConversionError(
            f"SavedModel has no {SIGNATURE_KEY!r} signature (found: {', '.join(signatures) or 'none'})"
        )
    serving = signatures[SIGNATURE_KEY]
    _, input_specs = serving.structured_input_signature
    output_specs = serving.structured_outputs
    if len(input_specs) != 1 or not isinstance(output_specs, dict) or len(output_specs) != 1:
        raise ConversionError(
            f"only single-input, single-output models are supported; {SIGNATURE_KEY!r} has "
            f"{len(input_specs)} inputs and {len(output_specs)} outputs"
        )
    (input_name, input_spec), = input_specs.items()
    (output_name,) = output_specs
    shape = input_spec.shape
    if input_spec.dtype != tf.float32:
        raise ConversionError(f"model input {input_name!r} is {input_spec.dtype.name}; only float32 is supported")
    if shape.rank is None or shape.rank < 2 or not shape[1:].is_fully_defined():
        raise ConversionError(
            f"model input {input_name!r} has shape {shape}; every dimension but the batch must be known"
        )
    if shape[0] not in (None, 1):
        raise ConversionError(f"model input {input_name!r} has a fixed batch of {shape[0]}; use None or 1")
    signature = ModelSignature(
        saved_model_dir=str(saved_model_dir),
        input_name=input_name,
        output_name=output_name,
        input_shape=tuple(int(d) for d in shape[1:]),
    )
    return signature, loaded, serving


def _extract_saved_model_zip(zip_path: Path, dest: Path, max_bytes: int = MAX_SAVEDMODEL_BYTES) -> Path:
    """Extract a zipped SavedModel safely and return the directory holding saved_model.pb.

    Member names that are absolute, climb out with ``..``, carry a drive letter or are
    symlinks are refused before anything is written. The declared uncompressed total is
    checked against ``max_bytes`` and the free disk space first (a zip bomb fails here,
    with a clear reason, before it fills the disk); the byte total is capped again while
    streaming, since header sizes can lie.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConversionError(f"cannot open {zip_path.name}: {exc}") from exc
    with archive:
        members = []
        for info in archive.infolist():
            relative = _safe_member_path(info)
            members.append((info, relative))
        declared = sum(info.file_size for info, _ in members)
        if declared > max_bytes:
            raise SourceTooLargeError(
                f"upload_too_large: {zip_path.name} declares {declared} bytes uncompressed; "
                f"the limit for this upload is {max_bytes} bytes (MODELDROP_CONVERT_WORK_FACTOR "
                f"times its size)")
        free = shutil.disk_usage(dest).free
        if declared + DISK_HEADROOM_BYTES > free:
            raise SourceTooLargeError(
                f"upload_too_large: {zip_path.name} needs {declared} bytes to extract but the "
                f"conversion volume has {free} bytes free")
        budget = max_bytes
        for info, relative in members:
            target = dest.joinpath(*relative.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        budget -= len(chunk)
                        if budget < 0:
                            raise SourceTooLargeError(
                                f"upload_too_large: {zip_path.name} expands beyond {max_bytes} bytes"
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ConversionError(f"cannot extract {info.filename!r} from {zip_path.name}: {exc}") from exc
    roots = sorted(p.parent for p in dest.rglob("saved_model.pb"))
    if len(roots) != 1:
        raise ConversionError(
            f"{zip_path.name} must contain exactly one SavedModel (saved_model.pb); found {len(roots)}"
        )
    return roots[0]


def _safe_member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    posix = PurePosixPath(name.replace("\\", "/"))
    unsafe = (
        name.startswith(("/", "\\"))
        or posix.is_absolute()
        or ".." in posix.parts
        or (posix.parts and ":" in posix.parts[0])
        or not posix.parts
    )
    if unsafe:
        raise ConversionError(f"unsafe path in SavedModel zip: {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ConversionError(f"symlink in SavedModel zip: {name!r}")
    return posix
