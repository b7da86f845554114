"""Checking an uploaded eval set at upload, in the web process: numpy only, headers only.

An ``.npz`` is a zip of ``.npy`` files; each member's header says its dtype and shape, so the
arrays are never loaded (a 500 MB eval set costs a few reads). Refused (400
``invalid_eval_set`` naming the array and the problem), before anything is stored:

* a file that is not a readable ``.npz``, a member that is not a ``.npy`` array, an object
  (pickled) array, a non-numeric array, arrays whose first dimensions (N) differ;
* with inputs declared in the metadata: a declared input missing (``x`` stands for the only
  one when one is declared), an input whose dtype cannot feed the declared one or whose
  per-sample shape (the declared shape without its batch dimension; null matches any size)
  differs (arrays that name no declared input are left alone);
* labels (``y``, ``y__<output>``) that are not 1-D integers of length N, or
  ``y__<output>`` naming no declared output.

Without declared inputs only the structure is checked; the converter (which knows the
model) checks the rest in the sandbox, and a mismatch fails the job naming the array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from registry.errors import ValidationError

__all__ = ["InvalidEvalSetError", "check_eval_set"]

_MAX_MEMBERS = 256
_INT_KINDS = "iu"  # signed, unsigned integers (the converter's rules, registry/convert/_evalset.py)
_LABEL_PREFIX = "y__"


class InvalidEvalSetError(ValidationError):
    code, title = "invalid_eval_set", "Invalid eval set"


def _refuse(detail: str, array: str | None = None) -> InvalidEvalSetError:
    extra = {"array": array} if array is not None else {}
    return InvalidEvalSetError(f"eval set: {detail}", field="eval", **extra)


def read_headers(path: Path) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """name -> (numpy dtype, shape) of every array in the ``.npz``, from the headers only."""
    import numpy as np

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _refuse(f"not a readable .npz file (np.savez): {e}") from None
    out: dict[str, tuple[Any, tuple[int, ...]]] = {}
    with archive:
        members = archive.infolist()
        if len(members) > _MAX_MEMBERS:
            raise _refuse(f"{len(members)} arrays; at most {_MAX_MEMBERS}")
        for info in members:
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise _refuse(f"member {info.filename!r} is not a .npy array", info.filename)
            name = info.filename[:-4]
            try:
                with archive.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unknown .npy version {version}")
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, RuntimeError) as e:
                raise _refuse(f"array {name!r} cannot be read: {e}", name) from None
            if dtype.hasobject:
                raise _refuse(f"array {name!r} holds Python objects (a pickle); save plain "
                              "numeric arrays", name)
            if dtype.kind not in "biuf":
                raise _refuse(f"array {name!r} has dtype {dtype}; eval arrays must be numbers "
                              "or booleans", name)
            out[name] = (dtype, tuple(int(d) for d in shape))
    if not out:
        raise _refuse("the .npz holds no arrays")
    return out


def _feeds(have, declared: str) -> bool:
    """Can an array of dtype ``have`` feed a tensor declared ``declared``?"""
    kind = have.kind
    if declared in ("float32", "float16"):
        return kind in "fiu"  # integers (e.g. uint8 pixels) are cast to float
    if declared in ("int32", "int64", "int8", "uint8"):
        return kind in _INT_KINDS  # token ids, class ids: integers, not floats or bools
    if declared == "bool":
        return kind == "b"
    return False  # "string": an npz without pickles cannot hold what it would need


def check_eval_set(path: Path, metadata: dict[str, Any] | None) -> None:
    """Raise :class:`InvalidEvalSetError` unless the ``.npz`` at ``path`` fits ``metadata``."""
    arrays = read_headers(path)
    counts = {}
    for name, (_, shape) in arrays.items():
        if not shape:
            raise _refuse(f"array {name!r} is a scalar; every array needs a first dimension "
                          "(one entry per sample)", name)
        counts[name] = shape[0]
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        raise _refuse(f"arrays have different numbers of samples ({listed})")
    n = next(iter(counts.values()))
    if n == 0:
        raise _refuse("the arrays hold no samples")
    metadata = metadata or {}
    inputs = [t for t in metadata.get("input") or [] if isinstance(t, dict)]
    outputs = [t for t in metadata.get("output") or [] if isinstance(t, dict)]
    output_names = {t.get("name") for t in outputs}
    for name, (dtype, shape) in arrays.items():
        if name == "y" or name.startswith(_LABEL_PREFIX):
            if name.startswith(_LABEL_PREFIX) and outputs and name[len(_LABEL_PREFIX):] not in output_names:
                raise _refuse(f"labels {name!r} name no declared output (outputs: "
                              f"{', '.join(sorted(map(str, output_names)))})", name)
            if dtype.kind not in _INT_KINDS or len(shape) != 1:
                raise _refuse(f"labels {name!r} must be a 1-D integer array of class indices "
                              f"(N,), got {dtype} {shape}", name)
    if not inputs:
        return
    for tensor in inputs:
        name = tensor["name"]
        array = name if name in arrays else ("x" if len(inputs) == 1 and "x" in arrays else None)
        if array is None:
            hint = " (or 'x')" if len(inputs) == 1 else ""
            raise _refuse(f"the declared input {name!r} has no array named {name!r}{hint} "
                          f"(found: {', '.join(sorted(arrays))})", name)
        dtype, shape = arrays[array]
        declared_dtype = tensor.get("dtype") or "float32"
        if not _feeds(dtype, declared_dtype):
            raise _refuse(f"array {array!r} has dtype {dtype}, which cannot feed the declared "
                          f"{declared_dtype} input {name!r}", array)
        declared = list(tensor.get("shape") or [])
        sample = declared[1:]  # the declared shape includes the batch dimension
        if declared and (len(shape) - 1 != len(sample) or any(
                d is not None and d != have for d, have in zip(sample, shape[1:]))):
            want = ", ".join("any" if d is None else str(d) for d in sample)
            raise _refuse(f"array {array!r} has per-sample shape {tuple(shape[1:])}, the declared "
                          f"input {name!r} takes ({want}) (its shape without the batch "
                          "dimension)", array)
