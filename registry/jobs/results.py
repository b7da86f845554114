"""Reading what the sandboxed converter wrote, as an attacker may have written it.

The converter's ``result.json`` and artifacts are untrusted input. Every field is checked
against the catalogue and a schema (names, formats, sizes, finite numbers, short strings);
every artifact is opened without following links, must be a regular file of the stated
size, and is copied out of the sandbox's reach while it is re-hashed. A variant whose
report or file is odd fails on its own; the others still publish.

Every text that leaves the server (job and variant errors) goes through ``scrub``: no
absolute paths, nothing that looks like key or token material, one line, capped length.
The full text goes to the server log only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from registry.convert.catalog import VARIANTS, VariantResult

log = logging.getLogger("modeldrop.jobs")

MAX_RESULT_BYTES = 1 << 20  # bytes of result.json
MAX_TEXT = 400  # characters of an error or reason shown to clients
MAX_JOB_TEXT = 1000  # characters of a job's error, which may join several variants' errors
MAX_FIELDS = 32  # keys in a fidelity or latency table
MAX_FIELD_TEXT = 200  # characters of a string value in those tables
MAX_TENSORS = 64  # inputs or outputs in a signature
MAX_RANK = 8
MAX_DIM = 1 << 31  # a dimension larger than this is not a real tensor
SIGNATURE_DTYPES = ("float32", "float16", "int32", "int64", "uint8", "int8", "bool")
_SIGNATURE_ENTRY_KEYS = {"name", "dtype", "shape", "narrowed_from"}
_TENSOR_NAME = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?")  # printable ASCII, ≤ 128
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

_PEM = re.compile(r"-----BEGIN[^-]*-----.*?(-----END[^-]*-----|$)", re.S)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{40,}")
_ABS_PATH = re.compile(r"(?<![\w<>.:/~-])/(?:[^\s'\"`:,;()\[\]{}<>]+)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class InvalidResultError(ValueError):
    """The converter's report cannot be believed."""


def scrub(text: Any, work: Path | None = None, *, limit: int = MAX_TEXT) -> str:
    """Make an error safe to show to any token holder.

    Paths under the job's work directory become ``<work>/…``; every other absolute path
    becomes ``<path>``; PEM blocks and long base64/hex runs (keys, tokens, file bytes)
    become ``<redacted>``; control characters and newlines collapse to spaces.
    """
    s = str(text)
    s = _PEM.sub("<redacted>", s)
    if work is not None:
        for root in {str(work), os.path.realpath(work)}:
            s = s.replace(root.rstrip("/") + "/", "<work>/").replace(root, "<work>")
    s = _ABS_PATH.sub("<path>", s)
    s = _LONG_TOKEN.sub("<redacted>", s)
    s = _CONTROL.sub(" ", s)
    s = re.sub(r"\s+", " ", s).strip()
    if len(s) > limit:
        s = s[: limit - 1].rstrip() + "…"
    return s


def _text(value: Any, work: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidResultError("a message is not a string")
    return scrub(value[: 64 << 10], work)


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidResultError(f"{value!r} is not a finite number")
    return value


def _table(value: Any, work: Path, *, nullable: bool) -> dict | None:
    if value is None and nullable:
        return None
    if not isinstance(value, dict) or len(value) > MAX_FIELDS:
        raise InvalidResultError("a measurement table is not a small object")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not _KEY_NAME.fullmatch(key):
            raise InvalidResultError("a measurement name is not a plain identifier")
        if v is None or isinstance(v, bool):
            out[key] = v
        elif isinstance(v, str):
            out[key] = scrub(v, work, limit=MAX_FIELD_TEXT)
        else:
            out[key] = _number(v)
    return out


def _fidelity(value: Any, work: Path) -> dict:
    """A fidelity table: flat numbers and short texts, plus an optional ``outputs`` table
    of flat tables keyed by output name (one per model output)."""
    if not isinstance(value, dict):
        raise InvalidResultError("a measurement table is not a small object")
    per_output = value.get("outputs")
    out = _table({k: v for k, v in value.items() if k != "outputs"}, work, nullable=False)
    if "outputs" in value:
        if not isinstance(per_output, dict) or len(per_output) > MAX_TENSORS:
            raise InvalidResultError("per-output fidelity is not a small object")
        tables = {}
        for name, table in per_output.items():
            if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name):
                raise InvalidResultError("a per-output fidelity key is not a tensor name")
            tables[name] = _table(table, work, nullable=False)
        out["outputs"] = tables
    return out


def validate_signature(value: Any) -> dict | None:
    """An artifact's I/O signature as the converter reported it, or InvalidResultError.

    ``{"inputs": [...], "outputs": [...]}``, each at most ``MAX_TENSORS`` entries of
    ``{"name", "dtype", "shape"}`` and optionally ``narrowed_from``: names printable ASCII
    of at most 128 characters and unique per side, dtypes from ``SIGNATURE_DTYPES``, shapes
    of rank ≤ ``MAX_RANK`` whose dimensions are positive integers or null (a shape of null:
    the artifact does not say). A signature of None (not reported) stays None.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"inputs", "outputs"}:
        raise InvalidResultError("the signature is not an object of inputs and outputs")
    out: dict[str, list] = {}
    for role in ("inputs", "outputs"):
        entries = value[role]
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_TENSORS:
            raise InvalidResultError(f"signature {role} is not a list of 1 to {MAX_TENSORS} tensors")
        checked, seen = [], set()
        for entry in entries:
            if not isinstance(entry, dict) or not {"name", "dtype", "shape"} <= set(entry) <= _SIGNATURE_ENTRY_KEYS:
                raise InvalidResultError(f"a signature {role} entry is not a name, dtype and shape")
            name, dtype, shape = entry["name"], entry["dtype"], entry["shape"]
            if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name) or name in seen:
                raise InvalidResultError(f"a signature {role} name is not a short printable unique name")
            seen.add(name)
            if not isinstance(dtype, str) or dtype not in SIGNATURE_DTYPES:
                raise InvalidResultError(f"signature tensor {name!r} has an unknown dtype")
            if shape is not None and (not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                    d is None or (isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM)
                    for d in shape)):
                raise InvalidResultError(f"signature tensor {name!r} has a shape that is not up to {MAX_RANK} "
                                         "positive dimensions or nulls")
            item = {"name": name, "dtype": dtype, "shape": None if shape is None else list(shape)}
            if "narrowed_from" in entry:
                wider = entry["narrowed_from"]
                if not isinstance(wider, str) or wider not in ("int64", "float64") or wider == dtype:
                    raise InvalidResultError(f"signature tensor {name!r} has an odd narrowed_from")
                item["narrowed_from"] = wider
            checked.append(item)
        out[role] = checked
    return out


def load_result(work: Path) -> dict:
    """Read ``result.json`` from the sandbox's directory without following links."""
    try:
        data = read_regular_file(work, "result.json", MAX_RESULT_BYTES)
    except FileNotFoundError as e:
        raise InvalidResultError("the converter wrote no result") from e
    try:
        document = json.loads(data)
    except ValueError as e:
        raise InvalidResultError("the converter's result is not JSON") from e
    if not isinstance(document, dict) or not isinstance(document.get("variants", []), list):
        raise InvalidResultError("the converter's result is not an object with a variant list")
    return document


def read_regular_file(base: Path, relative: str, max_bytes: int) -> bytes:
    fd = _open_beneath(base, relative)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidResultError(f"{relative} is larger than {max_bytes} bytes")
    return data


def _open_beneath(base: Path, relative: str) -> int:
    """Open base/relative read-only; no component may be a symlink, the file must be a
    regular file with one link (not a FIFO that would block, not a hard link to elsewhere)."""
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidResultError(f"{relative!r} is not a plain relative path")
    dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise InvalidResultError(f"{relative} cannot be opened safely ({e.strerror})") from e
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise InvalidResultError(f"{relative} is not a regular file")
    return fd


def accept_variants(document: dict, requested: list[str], work: Path, accepted: Path,
                    max_artifact_bytes: int) -> list[VariantResult]:
    """One VariantResult per requested variant, from the converter's report.

    A report entry that is missing, duplicated, malformed or whose file does not match
    its stated size and digest becomes a failed variant. Accepted artifacts are copies
    in ``accepted`` (outside the sandbox), never the sandbox's own files.
    """
    entries: dict[str, Any] = {}
    for entry in document.get("variants", []):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name in requested:
            entries[name] = None if name in entries else entry  # a duplicate is not believed
    results = []
    for name in requested:
        spec = VARIANTS[name]
        entry = entries.get(name)
        try:
            if entry is None:
                raise InvalidResultError("the converter reported this variant missing or twice")
            results.append(_accept_one(spec, entry, work, accepted, max_artifact_bytes))
        except (InvalidResultError, OSError) as e:
            log.warning("variant %s rejected: %s", name, e)
            message = f"the converter's report for this variant was rejected: {scrub(e, work)}"
            results.append(VariantResult(name=name, format=spec.format, servable=False,
                                         reason=message, error=message))
    return results


def _accept_one(spec, entry: dict, work: Path, accepted: Path, max_bytes: int) -> VariantResult:
    if entry.get("format") != spec.format:
        raise InvalidResultError("wrong format for this variant")
    error = _text(entry.get("error"), work)
    reason = _text(entry.get("reason"), work)
    fidelity = _fidelity(entry.get("fidelity") or {}, work)
    latency = _table(entry.get("reference_latency_ms"), work, nullable=True)
    if error is not None:
        return VariantResult(name=spec.name, format=spec.format, servable=False,
                             reason=reason or error, error=error, fidelity=fidelity)
    signature = validate_signature(entry.get("signature"))
    servable = entry.get("servable")
    if not isinstance(servable, bool):
        raise InvalidResultError("servable is not true or false")
    relative = f"out/variants/{spec.filename()}"
    if entry.get("file") != relative:
        raise InvalidResultError("the artifact is not where the catalogue puts it")
    size, digest = entry.get("size"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= max_bytes:
        raise InvalidResultError(f"artifact size {size!r} is not between 1 and {max_bytes} bytes")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise InvalidResultError("sha256 is not a hex digest")
    target = accepted / spec.filename()
    fd = _open_beneath(work, relative)
    h = hashlib.sha256()
    copied = 0
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            copied += len(chunk)
            if copied > size:
                break
            h.update(chunk)
            dst.write(chunk)
    if copied != size or not hmac.compare_digest(h.hexdigest(), digest):
        target.unlink(missing_ok=True)
        raise InvalidResultError("the artifact does not match its stated size and sha256")
    return VariantResult(name=spec.name, format=spec.format, path=target, size=size, sha256=digest,
                         fidelity=fidelity, reference_latency_ms=latency, servable=servable,
                         reason=reason, signature=signature)
