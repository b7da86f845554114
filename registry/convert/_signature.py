"""The I/O signature a built artifact really has: names, dtypes and shapes of its tensors.

Read from the artifact itself, never from what the converter was asked for: a TFLite
flatbuffer through the LiteRT interpreter, a Core ML model from its protobuf spec. The
result is a plain dict, the same for both formats::

    {"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 28, 28, 1]}, ...],
     "outputs": [{"name": "scores", "dtype": "float32", "shape": [1, 10]}, ...]}

``shape`` has ``None`` for a dimension the artifact leaves free (TFLite ``shape_signature``
-1, a Core ML flexible range); ``shape`` itself is ``None`` where the artifact does not say
(a Core ML array with no shape, as neuralnetwork outputs often are). ``dtype`` is one of
``DTYPES``. The converter may add ``"narrowed_from": "int64"`` to an entry whose source
tensor was wider (``mark_narrowed``).

Core ML packages are read without extracting anything: a zipped ``.mlpackage`` is read
member by member in memory (sizes capped), so this also serves for an engineer's own
uploaded artifact.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

DTYPES = ("float32", "float16", "int32", "int64", "uint8", "int8", "bool")
MAX_SPEC_BYTES = 64 << 20  # bytes of a Core ML spec (model.mlmodel); weights live elsewhere
MAX_MANIFEST_BYTES = 1 << 20

_NUMPY_DTYPES = {np.dtype(name): name for name in DTYPES}


class SignatureError(ValueError):
    """The artifact's signature cannot be read, or uses a type outside ``DTYPES``."""


def _dtype_name(dtype, where: str) -> str:
    try:
        name = _NUMPY_DTYPES.get(np.dtype(dtype))
    except TypeError:
        name = None
    if name is None:
        raise SignatureError(f"{where} has dtype {dtype}, which ModelDrop does not serve "
                             f"(supported: {', '.join(DTYPES)})")
    return name


# -- TFLite ---------------------------------------------------------------------------------


def tflite_signature(path: Path) -> dict:
    """Inputs and outputs of a ``.tflite`` file, as the LiteRT interpreter sees them.

    Names are the signature runner's keys where the model has a signature (what a client
    calling ``get_signature_runner()`` passes), else the tensor names; the order is the
    interpreter's tensor order. Shapes come from ``shape_signature`` so that a free
    dimension (-1) reads as ``None``.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except Exception as exc:  # the runtime raises ValueError/RuntimeError for a bad flatbuffer
        raise SignatureError(f"cannot read the TFLite model: {exc}") from exc
    by_index_in: dict[int, str] = {}
    by_index_out: dict[int, str] = {}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        (key,) = signatures
        runner = interpreter.get_signature_runner(key)
        by_index_in = {int(d["index"]): name for name, d in runner.get_input_details().items()}
        by_index_out = {int(d["index"]): name for name, d in runner.get_output_details().items()}
    return {"inputs": [_tflite_entry(d, by_index_in, "input") for d in interpreter.get_input_details()],
            "outputs": [_tflite_entry(d, by_index_out, "output") for d in interpreter.get_output_details()]}


def _tflite_entry(detail: dict, names: dict[int, str], role: str) -> dict:
    name = names.get(int(detail["index"]), detail["name"])
    shape_signature = detail.get("shape_signature")
    dims = shape_signature if shape_signature is not None and len(shape_signature) else detail["shape"]
    return {"name": str(name), "dtype": _dtype_name(detail["dtype"], f"{role} {name!r}"),
            "shape": [None if int(d) < 0 else int(d) for d in dims]}


# -- Core ML --------------------------------------------------------------------------------

# ArrayFeatureType.ArrayDataType numbers (coremltools/proto/FeatureTypes.proto).
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 131080: "int8"}
_DOUBLE = 65600
_IMAGE_CHANNELS = {10: 1, 20: 3, 30: 3, 40: 1}  # GRAYSCALE, RGB, BGR, GRAYSCALE_FLOAT16
_IMAGE_FLOAT16 = 40


def coreml_signature(path: Path) -> dict:
    """Inputs and outputs of a Core ML model from its spec's description.

    ``path`` is an ``.mlpackage`` directory, a zip holding one ``.mlpackage`` (how
    ModelDrop ships them), or an ``.mlmodel`` file. Multi-array features give their dtype
    and shape (flexible dimensions as ``None``); an image feature is ``uint8``
    ``[1, channels, height, width]`` (``float16`` for a GRAYSCALE_FLOAT16 image); an
    ``int64`` scalar feature is ``int64`` ``[1]``. A Core ML double array is reported as
    what it is and refused (ModelDrop does not serve float64).
    """
    spec = _load_spec(Path(path))
    return {"inputs": [_coreml_entry(f, "input") for f in spec.description.input],
            "outputs": [_coreml_entry(f, "output") for f in spec.description.output]}


def _load_spec(path: Path):
    from coremltools.proto import Model_pb2

    data = _spec_bytes(path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise SignatureError(f"the Core ML spec does not parse: {exc}") from exc
    return spec


def _spec_bytes(path: Path) -> bytes:
    if path.is_dir():
        manifest = json.loads(_capped(path / "Manifest.json", MAX_MANIFEST_BYTES))
        return _capped(path / "Data" / _root_spec_path(manifest), MAX_SPEC_BYTES)
    if path.suffix.lower() == ".mlmodel" and not zipfile.is_zipfile(path):
        return _capped(path, MAX_SPEC_BYTES)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SignatureError(f"{path.name} is neither an .mlmodel nor a zipped .mlpackage: {exc}") from exc
    with archive:
        names = archive.namelist()
        manifests = [n for n in names if PurePosixPath(n).name == "Manifest.json"
                     and PurePosixPath(n).parent.name.endswith(".mlpackage")]
        if len(manifests) != 1:
            raise SignatureError(f"{path.name} must hold exactly one .mlpackage; found {len(manifests)}")
        root = PurePosixPath(manifests[0]).parent
        manifest = json.loads(_member(archive, manifests[0], MAX_MANIFEST_BYTES))
        return _member(archive, str(root / "Data" / _root_spec_path(manifest)), MAX_SPEC_BYTES)


def _root_spec_path(manifest) -> str:
    try:
        entry = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]
        relative = PurePosixPath(str(entry["path"]))
    except (KeyError, TypeError) as exc:
        raise SignatureError("the .mlpackage manifest names no root model") from exc
    if relative.is_absolute() or ".." in relative.parts:
        raise SignatureError("the .mlpackage manifest's root model path leaves the package")
    return str(relative)


def _capped(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise SignatureError(f"{path.name} is larger than {limit} bytes")
    return data


def _member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        with archive.open(name) as fh:
            data = fh.read(limit + 1)
    except KeyError as exc:
        raise SignatureError(f"the package has no {name}") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SignatureError(f"cannot read {name}: {exc}") from exc
    if len(data) > limit:
        raise SignatureError(f"{name} is larger than {limit} bytes")
    return data


def _coreml_entry(feature, role: str) -> dict:
    kind = feature.type.WhichOneof("Type")
    where = f"{role} {feature.name!r}"
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        if array.dataType == _DOUBLE:
            dtype = "float64"
        else:
            dtype = _ARRAY_DTYPES.get(array.dataType)
        if dtype not in DTYPES:
            raise SignatureError(f"{where} is a Core ML {dtype or 'unknown'} array, which ModelDrop does not "
                                 f"serve (supported: {', '.join(DTYPES)})")
        return {"name": feature.name, "dtype": dtype, "shape": _array_shape(array)}
    if kind == "imageType":
        image = feature.type.imageType
        channels = _IMAGE_CHANNELS.get(image.colorSpace)
        if channels is None:
            raise SignatureError(f"{where} is an image with an unknown color space")
        flexible = image.WhichOneof("SizeFlexibility") is not None
        height = None if flexible else int(image.height) or None
        width = None if flexible else int(image.width) or None
        dtype = "float16" if image.colorSpace == _IMAGE_FLOAT16 else "uint8"
        return {"name": feature.name, "dtype": dtype, "shape": [1, channels, height, width]}
    if kind == "int64Type":
        return {"name": feature.name, "dtype": "int64", "shape": [1]}
    raise SignatureError(f"{where} is a Core ML {kind or 'untyped'} feature; only arrays and images are served")


def _array_shape(array) -> list[int | None] | None:
    if not array.shape and array.WhichOneof("ShapeFlexibility") is None:
        return None  # Core ML's "unspecified" (neuralnetwork outputs often are); not a scalar
    flexibility = array.WhichOneof("ShapeFlexibility")
    if flexibility == "shapeRange":
        return [int(r.lowerBound) if r.upperBound == r.lowerBound and r.lowerBound > 0 else None
                for r in array.shapeRange.sizeRanges]
    if flexibility == "enumeratedShapes" and array.enumeratedShapes.shapes:
        shapes = [list(s.shape) for s in array.enumeratedShapes.shapes]
        return [int(dims[0]) if len(set(dims)) == 1 else None for dims in zip(*shapes)]
    return [int(d) if d > 0 else None for d in array.shape]


def mark_narrowed(signature: dict, source: dict) -> dict:
    """Add ``narrowed_from`` to each artifact tensor whose same-named source tensor had a
    wider dtype (int64 stored as int32, float64 as float32). Returns ``signature``."""
    wider = {"int64": ("int32",), "float64": ("float32", "float16")}
    for role in ("inputs", "outputs"):
        declared = {entry["name"]: entry["dtype"] for entry in source.get(role, [])}
        for entry in signature.get(role, []):
            was = declared.get(entry["name"])
            if was is not None and entry["dtype"] in wider.get(was, ()):
                entry["narrowed_from"] = was
    return signature
