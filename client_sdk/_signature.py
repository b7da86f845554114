"""A model's I/O signature against the app's :class:`ModelContract` — pure data.

The server reads each variant's signature from the artifact itself and sends it in the
manifest (and in rulesets), so a device can refuse a model its code cannot feed *before*
downloading it. After download the TFLite interpreter's own tensors are checked the same
way; a Core ML model is checked against the manifest's signature only (Core ML checks the
rest on the device).

Matching (docs/sdk.md, "Model contracts"): a :class:`TensorSpec` with a ``name`` is matched
to the model's tensor of that name; one without is matched by position (the order of the
signature, which is the interpreter's tensor order). The counts must be equal. ``dtype``
must be equal to the artifact's: a tensor a converter narrowed (``narrowed_from: "int64"``
on an int32 tensor) takes int32, and a contract asking int64 is refused, since the
interpreter refuses int64 data for it at run time; the error says the tensor was narrowed.
``shape`` must have the same rank; ``-1`` in the contract matches any size, a dynamic
dimension of the model (null in the signature, -1 in the interpreter) matches any size the
contract asks, and a shape the artifact does not state (null: some Core ML outputs) matches
any shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ._types import ModelContract, TensorSpec
from .errors import ManifestInvalidError, ModelContractError

__all__ = ["DTYPES", "IOSignature", "Tensor", "check_contract", "parse_signature", "tflite_signature"]

#: dtypes a signature may name (docs/wire-format.md, "Manifest")
DTYPES = frozenset({"float32", "float16", "int32", "int64", "uint8", "int8", "bool"})
_MAX_TENSORS = 256
_MAX_RANK = 16


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: Optional[tuple[Optional[int], ...]]  # a None dimension: dynamic; None: not stated
    narrowed_from: Optional[str] = None


@dataclass(frozen=True)
class IOSignature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


def parse_signature(value: Any, where: str = "signature") -> Optional[IOSignature]:
    """The wire signature as data, None when absent/null (unknown: nothing to check).

    Raises:
        ManifestInvalidError: present but not a signature.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"inputs", "outputs"}:
        raise ManifestInvalidError(f"{where} must be null or an object with inputs and outputs")
    sides = []
    for side in ("inputs", "outputs"):
        items = value[side]
        if not isinstance(items, list) or len(items) > _MAX_TENSORS:
            raise ManifestInvalidError(f"{where}.{side} must be a list of tensors")
        tensors = []
        for t in items:
            if not isinstance(t, Mapping) or not {"name", "dtype", "shape"} <= set(t) \
                    or not set(t) <= {"name", "dtype", "shape", "narrowed_from"}:
                raise ManifestInvalidError(f"{where}.{side}[] must have name, dtype and shape")
            name, dtype, shape = t["name"], t["dtype"], t["shape"]
            narrowed = t.get("narrowed_from")
            if not isinstance(name, str) or not name or dtype not in DTYPES:
                raise ManifestInvalidError(f"{where}.{side}[]: bad name or dtype {dtype!r}")
            if shape is not None and (not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                    for d in shape)):
                raise ManifestInvalidError(f"{where}.{side}[] {name!r}: bad shape")
            if narrowed is not None and not isinstance(narrowed, str):
                raise ManifestInvalidError(f"{where}.{side}[] {name!r}: bad narrowed_from")
            tensors.append(Tensor(name, dtype, None if shape is None else tuple(shape), narrowed))
        if len({t.name for t in tensors}) != len(tensors):
            raise ManifestInvalidError(f"{where}.{side} repeats a tensor name")
        sides.append(tuple(tensors))
    return IOSignature(inputs=sides[0], outputs=sides[1])


def check_contract(contract: Optional[ModelContract], signature: Optional[IOSignature],
                   source: str = "the model") -> None:
    """Raise :class:`ModelContractError` unless ``signature`` meets ``contract``.

    Nothing is checked without a contract or without a signature (unknown).
    """
    if contract is None or signature is None:
        return
    _side("input", contract.inputs, signature.inputs, source)
    _side("output", contract.outputs, signature.outputs, source)


def _side(kind: str, expected: Sequence[TensorSpec], actual: Sequence[Tensor], source: str) -> None:
    if not expected:
        return
    if len(actual) != len(expected):
        raise ModelContractError(
            f"the app expects {len(expected)} {kind}(s), {source} has {len(actual)} "
            f"({', '.join(t.name for t in actual) or 'none'})")
    by_name = {t.name: t for t in actual}
    for i, spec in enumerate(expected):
        name = getattr(spec, "name", None)
        if name is not None:
            tensor = by_name.get(name)
            if tensor is None:
                raise ModelContractError(
                    f"the app expects an {kind} named {name!r}, {source} has "
                    f"{', '.join(repr(t.name) for t in actual)}")
            label = f"{kind} {name!r}"
        else:
            tensor = actual[i]
            label = f"{kind} {i}"
        problem = _mismatch(spec, tensor)
        if problem is not None:
            raise ModelContractError(
                f"{label} should be {spec.dtype} {_shape(spec.shape)}, {source} has "
                f"{tensor.dtype} {_shape(tensor.shape)} (tensor {tensor.name!r}){problem}")


def _mismatch(spec: TensorSpec, tensor: Tensor) -> Optional[str]:
    """None when ``tensor`` meets ``spec``, else a (possibly empty) explanation suffix."""
    dtype_ok = spec.dtype == tensor.dtype
    want = tuple(spec.shape)
    shape_ok = tensor.shape is None or (len(want) == len(tensor.shape) and all(
        w == -1 or have is None or have == -1 or w == have for have, w in zip(tensor.shape, want)))
    if dtype_ok and shape_ok:
        return None
    if not dtype_ok and tensor.narrowed_from is not None:
        return (f" (narrowed from {tensor.narrowed_from} by the converter: feed "
                f"{tensor.dtype} and declare {tensor.dtype} in the contract)")
    return ""


def _shape(shape: Optional[Sequence[Optional[int]]]) -> str:
    """A shape as a tuple, -1 for a dimension of any size (as a TensorSpec writes it)."""
    if shape is None:
        return "(shape not stated)"
    return str(tuple(-1 if d is None else d for d in shape))


def tflite_signature(interpreter: Any) -> IOSignature:
    """The interpreter's inputs and outputs in its own order, named as the model names them:
    by its (single) SignatureDef where it has one (the names the server's signature uses,
    e.g. a Keras input's name), else by tensor name."""
    import numpy as np

    names: dict[tuple[str, int], str] = {}
    try:
        signatures = interpreter.get_signature_list()
    except Exception:  # noqa: BLE001 - a model without signatures or an old runtime
        signatures = {}
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        for side, details in (("input", runner.get_input_details()),
                              ("output", runner.get_output_details())):
            for sig_name, detail in details.items():
                names[(side, int(detail["index"]))] = sig_name

    def tensors(side: str, details: list[dict]) -> tuple[Tensor, ...]:
        out = []
        for d in details:
            shape = tuple(int(x) for x in d.get("shape_signature", d["shape"]))
            out.append(Tensor(names.get((side, int(d["index"])), str(d["name"])),
                              np.dtype(d["dtype"]).name,
                              tuple(None if x < 0 else x for x in shape)))
        return tuple(out)

    return IOSignature(inputs=tensors("input", interpreter.get_input_details()),
                     outputs=tensors("output", interpreter.get_output_details()))
