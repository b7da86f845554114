"""Loading the uploaded model and reducing every input format to one SavedModel.

Whatever TensorFlow upload arrived (.keras, .h5, zipped SavedModel), the converters see
the same thing: a SavedModel directory with a ``serving_default`` signature taking named
tensors and returning a dict of named tensors (``ModelSignature``). PyTorch uploads (.pt2,
.pt) are loaded by ``_torch`` instead and keep their own file (``framework == "torch"``).
TFLite converts fastest from a SavedModel, and Core ML converts reliably from a tf.function
wrapping that signature (this also covers Sequential models, which ``ct.convert`` rejects
directly). The parent exports it once; workers only read it.
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


# Tensor dtypes a source model may have (numpy names). int8 appears only in artifacts.
SUPPORTED_DTYPES = ("float32", "float16", "int32", "int64", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of the source model; ``shape`` is without the batch."""

    name: str
    dtype: str  # one of SUPPORTED_DTYPES
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class ModelSignature:
    """What a worker process needs to find and call the model (picklable).

    ``inputs`` and ``outputs`` are in the model's own order; the first output is the one
    the top-level fidelity figures describe. ``batch`` is the source's batch dimension
    (None: free, as a Keras/SavedModel export has; 1 for a PyTorch program).
    ``int_high`` is the exclusive upper bound for synthetic integer inputs (the smallest
    embedding vocabulary found in the model), None when unknown.
    """

    saved_model_dir: str  # the SavedModel (TensorFlow) or the uploaded .pt2/.pt file (torch)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    framework: str = "tensorflow"  # "tensorflow" | "torch"
    batch: int | None = None
    int_high: int | None = None

    # The single-tensor view older callers use: the first input and output.
    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape

    def as_dict(self) -> dict:
        """The same shape as an artifact signature (registry.convert._signature)."""
        def entry(t: TensorSpec) -> dict:
            return {"name": t.name, "dtype": t.dtype, "shape": [self.batch, *t.shape]}

        return {"inputs": [entry(t) for t in self.inputs], "outputs": [entry(t) for t in self.outputs]}


def sample_bytes(specs) -> int:
    """Bytes of one sample across the given tensors (as float32 or wider)."""
    return sum(max(4, np.dtype(t.dtype).itemsize) * int(np.prod(t.shape)) for t in specs)


class SourceModel:
    """The uploaded model, loaded once in the parent to produce reference outputs."""

    def __init__(self, signature: ModelSignature, predict_fn, kind: str):
        self.signature = signature
        self.kind = kind  # "keras" | "saved_model" | "torch"
        self._predict_fn = predict_fn

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for inputs by name (batch first), in batches."""
        batch = eval_batch_size(sample_bytes(self.signature.inputs))
        count = len(next(iter(inputs.values())))
        chunks: dict[str, list[np.ndarray]] = {t.name: [] for t in self.signature.outputs}
        for start in range(0, count, batch):
            result = self._predict_fn({name: x[start:start + batch] for name, x in inputs.items()})
            for name in chunks:
                chunks[name].append(np.asarray(result[name]))
        return {name: np.concatenate(parts, axis=0) for name, parts in chunks.items()}


def load_source(source_path: Path, workdir: Path, *, max_extract_bytes: int = MAX_SAVEDMODEL_BYTES,
                check_ops: bool = True, eval_path: Path | None = None,
                output_names: list[str] | None = None) -> SourceModel:
    """Load the upload and make sure a SavedModel for the converters exists in workdir.

    A zipped SavedModel is extracted within ``max_extract_bytes`` and, with ``check_ops``,
    its graph is checked for file, network and process operations before TensorFlow
    loads it (``_opcheck``). A TorchScript ``.pt`` takes its input shapes and dtypes from
    the eval set at ``eval_path`` (TorchScript does not record them). ``output_names``
    (the metadata's declared outputs) name a PyTorch model's outputs, which have no names
    of their own unless ``forward`` returns a dict.

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
        return _load_torch_source(source_path, eval_path, output_names)
    if suffix == ".zip":
        saved_model_dir = _extract_saved_model_zip(source_path, workdir / "source", max_extract_bytes)
        if check_ops:
            from ._opcheck import check_saved_model

            check_saved_model(saved_model_dir)
        return _load_saved_model_source(saved_model_dir)
    return _load_keras_source(source_path, workdir / "saved_model")


def _tf_dtype_name(dtype, where: str) -> str:
    name = getattr(dtype, "name", str(dtype))
    if name not in SUPPORTED_DTYPES:
        raise ConversionError(f"{where} is {name}; supported dtypes are {', '.join(SUPPORTED_DTYPES)}")
    return name


def _static_dims(shape, where: str) -> tuple[int, ...]:
    """Every dimension but the batch must be known: Core ML and the eval set need them."""
    dims = list(shape)
    if len(dims) < 2:
        raise ConversionError(f"{where} has shape {tuple(dims)}; expected a batch dimension and at least one more")
    for index, dim in enumerate(dims[1:], start=1):
        if dim is None:
            raise ConversionError(
                f"{where} has a free dimension {index} (shape {tuple(dims)}); ModelDrop needs every dimension "
                "but the batch to be fixed (Core ML and the eval set do): build the model with a fixed size")
    if dims[0] not in (None, 1):
        raise ConversionError(f"{where} has a fixed batch of {dims[0]} (dimension 0); use None or 1")
    return tuple(int(d) for d in dims[1:])


def _keras_vocabulary(model) -> int | None:
    sizes = []
    for layer in getattr(model, "_flatten_layers", lambda: [])():
        if type(layer).__name__ == "Embedding" and getattr(layer, "input_dim", None):
            sizes.append(int(layer.input_dim))
    return min(sizes) if sizes else None


def _keras_output_names(model) -> list[str]:
    """``model.output_names`` (a functional model's output layers, or its dict keys); a
    Sequential model has none, so the name of the layer producing each output, else
    ``output_<i>``."""
    names = list(getattr(model, "output_names", None) or [])
    outputs = list(getattr(model, "outputs", None) or [])
    if names and len(names) == len(outputs):
        return [str(n) for n in names]
    found = []
    for index, tensor in enumerate(outputs):
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None) if history is not None else None
        found.append(str(getattr(operation, "name", None) or f"output_{index}"))
    return found if len(set(found)) == len(found) else [f"output_{i}" for i in range(len(outputs))]


def _load_keras_source(source_path: Path, export_dir: Path) -> SourceModel:
    import keras
    import tensorflow as tf

    try:
        # safe_mode refuses Lambda layers carrying pickled Python code (the Keras default,
        # stated here because uploads are not trusted code).
        model = keras.models.load_model(source_path, compile=False, safe_mode=True)
    except Exception as exc:  # the loader raises many types; its message is what matters
        raise ConversionError(f"cannot load {source_path.name}: {exc}") from exc
    inputs = list(getattr(model, "inputs", None) or [])
    output_names = _keras_output_names(model)
    if not inputs or not output_names:
        raise ConversionError(f"{source_path.name} has no inputs or outputs (a model that was never built?)")
    input_names = [str(t.name) for t in inputs]
    if len(set(input_names)) != len(input_names):
        raise ConversionError(f"{source_path.name} has inputs with the same name: {', '.join(input_names)}")
    specs = []
    for tensor, name in zip(inputs, input_names):
        where = f"model input {name!r}"
        _static_dims(tensor.shape, where)
        specs.append(tf.TensorSpec((None, *tensor.shape[1:]), _tf_dtype_name(tf.as_dtype(tensor.dtype), where),
                                   name=name))

    def serve(*args):
        outputs = model(list(args) if len(args) > 1 else args[0], training=False)
        if isinstance(outputs, dict):
            return dict(outputs)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(output_names, outputs))

    if export_dir.exists():
        shutil.rmtree(export_dir)
    try:
        # Our own endpoint rather than model.export: it names the signature's outputs after
        # the model's outputs (model.export calls them output_0, output_1, ...).
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE_KEY, fn=serve, input_signature=specs)
        archive.write_out(str(export_dir), verbose=False)
    except Exception as exc:
        raise ConversionError(f"cannot export {source_path.name} as a SavedModel: {exc}") from exc
    signature, _, _ = _describe_saved_model(export_dir, input_order=input_names, output_order=output_names)
    signature = ModelSignature(saved_model_dir=signature.saved_model_dir, inputs=signature.inputs,
                               outputs=signature.outputs, int_high=_keras_vocabulary(model))
    function = tf.function(serve, input_signature=specs)

    def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = function(*[tf.constant(batch[t.name], dtype=t.dtype) for t in signature.inputs])
        return {name: value.numpy() for name, value in result.items()}

    return SourceModel(signature, predict, kind="keras")


class ToolchainMissingError(ConversionError):
    """This worker's environment lacks the converters the upload's framework needs."""

    code = "toolchain_missing"


def _load_torch_source(source_path: Path, eval_path: Path | None,
                       output_names: list[str] | None = None) -> SourceModel:
    try:
        import litert_torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ToolchainMissingError(
            f"toolchain_missing: {source_path.suffix} is a PyTorch upload and this worker has no PyTorch "
            f"toolchain ({exc.name or exc} is not installed); install the convert extra "
            "(torch==2.13.0, litert-torch==0.10.0) on the conversion workers") from exc
    from . import _torch
    from ._evalset import peek_arrays

    arrays = peek_arrays(eval_path) if eval_path is not None else None
    program, script = _torch.load_program(source_path, None)
    if script is not None:
        inputs = _torch.script_inputs(script, arrays, source_path.name)
        program, script = _torch.load_program(source_path, inputs)
        outputs = _torch.describe_script_outputs(script, inputs, source_path.name, output_names)
        int_high = None
    else:
        inputs, outputs = _torch.describe_program(program, source_path.name, output_names)
        int_high = _torch.vocabulary(program)
    signature = ModelSignature(saved_model_dir=str(source_path), inputs=inputs, outputs=outputs,
                               framework="torch", batch=1, int_high=int_high)
    return SourceModel(signature, _torch.TorchPredictor(program, script, signature), kind="torch")


def _load_saved_model_source(saved_model_dir: Path) -> SourceModel:
    signature, loaded, serving = _describe_saved_model(saved_model_dir)
    import tensorflow as tf

    def predict(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = serving(**{t.name: tf.constant(batch[t.name], dtype=t.dtype) for t in signature.inputs})
        return {t.name: result[t.name].numpy() for t in signature.outputs}

    source = SourceModel(signature, predict, kind="saved_model")
    source._keepalive = loaded  # the signature function needs its SavedModel object alive
    return source


def _describe_saved_model(saved_model_dir: Path, *, input_order: list[str] | None = None,
                          output_order: list[str] | None = None):
    """Load a SavedModel and check its serving signature; returns (signature, loaded, fn).

    Inputs and outputs keep ``input_order``/``output_order`` where given (a Keras model's
    own order), else the signature's.
    """
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
    if not input_specs or not isinstance(output_specs, dict) or not output_specs:
        raise ConversionError(f"{SIGNATURE_KEY!r} must take named tensors and return a dict of named tensors")

    def ordered(specs: dict, order: list[str] | None):
        names = [n for n in (order or []) if n in specs] + sorted(n for n in specs if n not in (order or []))
        return [(n, specs[n]) for n in names]

    inputs = []
    for name, spec in ordered(input_specs, input_order):
        where = f"model input {name!r}"
        if spec.shape.rank is None:
            raise ConversionError(f"{where} has an unknown rank; every dimension but the batch must be known")
        inputs.append(TensorSpec(name, _tf_dtype_name(spec.dtype, where), _static_dims(spec.shape.as_list(), where)))
    outputs = []
    for name, spec in ordered(output_specs, output_order):
        where = f"model output {name!r}"
        dims = spec.shape.as_list() if spec.shape.rank is not None else None
        if not dims or any(d is None for d in dims[1:]):
            raise ConversionError(f"{where} has shape {spec.shape}; every dimension but the batch must be known")
        outputs.append(TensorSpec(name, _tf_dtype_name(spec.dtype, where), tuple(int(d) for d in dims[1:])))
    signature = ModelSignature(saved_model_dir=str(saved_model_dir), inputs=tuple(inputs), outputs=tuple(outputs))
    return signature, loaded, serving


def check_declared(signature: ModelSignature, declared: dict | None) -> None:
    """The metadata's declared ``input``/``output`` lists must match the model.

    Each declared list that is not empty must name exactly the model's tensors; each
    declared tensor's dtype must be the model's and its shape (batch included) must have
    the model's rank, dimensions equal where both are known (null matches anything).

    Raises:
        ConversionError: naming the first tensor that differs.
    """
    check_declared_signature(signature.as_dict(), declared)


def check_declared_signature(real: dict, declared: dict | None) -> None:
    """``check_declared`` for a signature dict (``_signature``'s shape), as read from a
    provided artifact or a source model: the same rules, the same messages.

    Raises:
        ConversionError: naming the first tensor that differs (its name, dtype or shape).
    """
    if not declared:
        return
    for key, role in (("input", "inputs"), ("output", "outputs")):
        wanted = declared.get(key) or []
        if not wanted:
            continue
        have = {t["name"]: t for t in real[role]}
        names = [str(t.get("name")) for t in wanted]
        for name in names:
            if name not in have:
                raise ConversionError(f"declared {key} {name!r} is not in the model, whose {role} are "
                                      f"{', '.join(repr(n) for n in have)}")
        for name in have:
            if name not in names:
                raise ConversionError(f"the model's {key} {name!r} is not declared in the metadata's {key!r} list")
        for entry in wanted:
            name, tensor = str(entry["name"]), have[str(entry["name"])]
            dtype = entry.get("dtype", "float32")
            if dtype != tensor["dtype"]:
                raise ConversionError(f"declared {key} {name!r} is {dtype} but the model's is {tensor['dtype']}")
            shape = list(entry.get("shape") or [])
            have_shape = tensor["shape"]
            if have_shape is None:  # the artifact does not say (a Core ML array with no shape)
                continue
            same = len(shape) == len(have_shape) and all(
                a is None or b is None or a == b for a, b in zip(shape, have_shape))
            if not same:
                shown = ", ".join("null" if d is None else str(d) for d in have_shape)
                raise ConversionError(f"declared {key} {name!r} has shape {shape} but the model's is [{shown}]")


def _extract_saved_model_zip(zip_path: Path, dest: Path, max_bytes: int = MAX_SAVEDMODEL_BYTES) -> Path:
    """Extract a zipped SavedModel safely (``extract_zip``) and return the directory
    holding saved_model.pb."""
    extract_zip(zip_path, dest, max_bytes)
    roots = sorted(p.parent for p in dest.rglob("saved_model.pb"))
    if len(roots) != 1:
        raise ConversionError(
            f"{zip_path.name} must contain exactly one SavedModel (saved_model.pb); found {len(roots)}"
        )
    return roots[0]


def extract_zip(zip_path: Path, dest: Path, max_bytes: int = MAX_SAVEDMODEL_BYTES,
                what: str = "SavedModel zip") -> None:
    """Extract an uploaded zip (a SavedModel, a Core ML package) into ``dest``, safely.

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
            relative = _safe_member_path(info, what)
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


def _safe_member_path(info: zipfile.ZipInfo, what: str = "SavedModel zip") -> PurePosixPath:
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
        raise ConversionError(f"unsafe path in {what}: {name!r}")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ConversionError(f"symlink in {what}: {name!r}")
    return posix
