"""Is a verified model actually usable on this device? Checked before it becomes active.

A correct hash proves the bytes are the ones the server published, not that this app's
runtime can run them (new ops, a broken conversion, a truncated upload signed anyway).
So before the active pointer moves:

* TFLite: the real interpreter (``ai_edge_litert``, the device runtime — not TensorFlow)
  loads the file, allocates tensors and runs one inference on zeros.
* Core ML: devices have no coremltools and Linux cannot run Core ML, so the check is
  structural: the ``.mlpackage`` zip is intact, ``Manifest.json`` names a root model
  whose spec file exists and walks as a protobuf ``Model`` with a specification version
  (a file that is not a zip is an ``.mlmodel``: it must walk as that ``Model`` itself).
  An iOS port replaces this with ``MLModel.compileModel(at:)``.
"""

from __future__ import annotations

import json
import posixpath
import zipfile
from pathlib import Path

from ._signature import check_contract, tflite_signature
from ._types import ModelContract
from .errors import ModelLoadError

__all__ = ["SUPPORTED_FORMATS", "check_model", "format_kind"]

_TFLITE = "tflite"
_COREML = "coreml"
#: manifest ``format`` values this SDK can load-check, and what they are
SUPPORTED_FORMATS = {"tflite": _TFLITE, "coreml": _COREML, "mlprogram": _COREML,
                     "mlpackage": _COREML}


def format_kind(fmt: str, target: str = "") -> str | None:
    """``tflite``/``coreml`` for a manifest ``format``, else None (cannot be checked).

    Only the signed ``format`` decides, never the file name: a format this client does
    not know is refused before any byte is downloaded.
    """
    return SUPPORTED_FORMATS.get(fmt.lower())


def check_model(path: Path, fmt: str, target: str = "",
                contract: ModelContract | None = None) -> None:
    """Raise :class:`ModelLoadError` unless the model at ``path`` loads.

    ``contract`` is checked for TFLite models against the interpreter's tensors, every
    input and output (name where the contract gives one, dtype, shape). Core ML I/O is
    checked against the manifest's signature before download (``_signature``) and on the
    device by Core ML itself; the structural check here cannot see it.

    Raises:
        ModelContractError: the tensors differ from ``contract``.
        ModelLoadError: the runtime (or structural check) rejected the model.
    """
    kind = format_kind(fmt, target)
    if kind == _TFLITE:
        _check_tflite(path, contract)
    elif kind == _COREML:
        _check_coreml_package(path)
    else:
        raise ModelLoadError(f"format {fmt!r} cannot be loaded by this client")


def _check_tflite(path: Path, contract: ModelContract | None) -> None:
    try:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:  # a build without the runtime cannot vouch for any model
        raise ModelLoadError(f"no TFLite runtime available: {e}") from e
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=1)
    except Exception as e:  # the interpreter raises ValueError/RuntimeError of its own
        raise ModelLoadError(f"TFLite interpreter rejected the model: {e}") from e
    if contract is not None:
        check_contract(contract, tflite_signature(interpreter), "the downloaded model")
    try:
        for detail in interpreter.get_input_details():
            signature = detail.get("shape_signature", detail["shape"])
            if any(int(d) < 0 for d in signature):
                concrete = [1 if int(d) < 0 else int(d) for d in signature]
                interpreter.resize_tensor_input(detail["index"], concrete)
        interpreter.allocate_tensors()
        # Zeros of each input's own dtype: float, int (token ids: 0 is a valid index) and bool.
        for detail in interpreter.get_input_details():
            zeros = np.zeros(detail["shape"], dtype=detail["dtype"])
            interpreter.set_tensor(detail["index"], zeros)
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            interpreter.get_tensor(detail["index"])
    except Exception as e:  # the interpreter raises ValueError/RuntimeError of its own
        raise ModelLoadError(f"TFLite interpreter rejected the model: {e}") from e


def _check_coreml_package(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        # Not a zipped .mlpackage: an .mlmodel (a single protobuf Model), as an engineer's
        # own Core ML artifact may be (variant ``coreml-provided-mlmodel``).
        try:
            spec = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"Core ML model cannot be read: {e}") from e
        _check_model_spec(spec)
        return
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            for name in names:
                norm = posixpath.normpath(name)
                if name.startswith("/") or "\\" in name or norm.startswith(".."):
                    raise ModelLoadError(f"Core ML package has an unsafe entry {name!r}")
            bad = zf.testzip()
            if bad is not None:
                raise ModelLoadError(f"Core ML package entry {bad!r} is corrupt")
            manifests = [n for n in names
                         if n == "Manifest.json"
                         or (n.count("/") == 1 and n.endswith(".mlpackage/Manifest.json"))]
            if len(manifests) != 1:
                raise ModelLoadError("Core ML package has no (single) Manifest.json")
            prefix = manifests[0][: -len("Manifest.json")]
            manifest = json.loads(zf.read(manifests[0]))
            root_id = manifest["rootModelIdentifier"]
            spec_path = prefix + "Data/" + manifest["itemInfoEntries"][root_id]["path"]
            spec = zf.read(spec_path)
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError) as e:
        raise ModelLoadError(f"Core ML package does not parse: {type(e).__name__}: {e}") from e
    _check_model_spec(spec)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelLoadError("Core ML spec: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _check_model_spec(spec: bytes) -> None:
    """Walk the top level of a protobuf ``CoreML.Specification.Model``.

    Field 1 is ``specificationVersion``; every field must be well-formed to the end.
    """
    if not spec:
        raise ModelLoadError("Core ML spec is empty")
    pos, version = 0, None
    while pos < len(spec):
        key, pos = _varint(spec, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ModelLoadError("Core ML spec: field number 0")
        if wire == 0:
            value, pos = _varint(spec, pos)
            if field == 1:
                version = value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _varint(spec, pos)
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ModelLoadError(f"Core ML spec: unsupported wire type {wire}")
        if pos > len(spec):
            raise ModelLoadError("Core ML spec is truncated")
    if not version:
        raise ModelLoadError("Core ML spec has no specificationVersion")
