"""Bring your own conversion: an engineer's ``.tflite`` or Core ML model, served as uploaded.

Nothing is converted. The artifact that ships is the uploaded file itself, byte for byte
(same sha256), and this module only finds out, inside the sandbox, whether a device could
load it and what it is:

- ``.tflite``: the file identifier ``TFL3``, then the real LiteRT interpreter loads it,
  allocates its tensors and runs it on fixed-seed inputs of its own dtypes and shapes (a
  file that fails any of that fails the job, with the runtime's reason); the reference
  latency is measured as for converted TFLite variants (server-x86_64, p50/p90, one thread).
- a zipped ``.mlpackage``: the zip is extracted under the same rules as an uploaded
  SavedModel (no absolute, ``..``, drive-letter or symlink members; the declared size
  checked against the budget and the free disk before a byte is written, and again while
  streaming), must hold exactly one ``<name>.mlpackage``, whose spec coremltools loads
  (``skip_model_load``: Core ML cannot run on Linux); an mlprogram's MIL program is rebuilt
  (type inference on every op).
- ``.mlmodel``: a single protobuf ``Model``; coremltools loads the spec and, for a
  neural network, checks its layers' shapes (``get_spec`` and ``MLModel`` refuse a
  malformed file).

The flatbuffer and protobuf parsers run on untrusted bytes, which is why this runs here
and never in the web process or the trusted worker (docs/security.md).

Fidelity: a lone provided artifact has no source to compare with, so its fidelity table
says so (``"comparison": "no source to compare"``) and it is servable once it loads —
the engineer vouches for its numbers (docs/conversion.md, "Bring your own artifact").
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _fidelity, _signature
from ._source import check_declared_signature
from .catalog import PROVIDED_FORMATS, PROVIDED_VARIANT, VARIANTS, ConversionError, VariantResult

NO_SOURCE = "no source to compare"
LATENCY_WARMUP_RUNS = 10
PROBE_SEED = 20261203  # the fixed inputs a provided TFLite is run on


class ProvidedArtifactError(ConversionError):
    """The engineer's artifact cannot be served: it does not load, or it is not what it claims."""

    code = "invalid_artifact"


def provided_format(source_path: Path) -> str | None:
    """``tflite`` / ``mlpackage`` / ``mlmodel`` for a provided artifact's file name, else None."""
    return PROVIDED_FORMATS.get(Path(source_path).suffix.lower())


def measure_provided(source_path: Path, workdir: Path, *, variants: list[str] | None, latency_runs: int,
                     max_extract_bytes: int,
                     progress: Callable[[int, int, str], None] | None = None,
                     declared: dict | None = None) -> list[VariantResult]:
    """Check and describe one provided artifact; returns its single VariantResult.

    ``declared`` is the metadata's ``{"input": [...], "output": [...]}``; it must match the
    signature read from the artifact, by the rules source models follow
    (``_source.check_declared_signature``).

    Raises:
        ProvidedArtifactError: the artifact does not load (with the runtime's reason),
            its package is unsafe or too large, or its signature cannot be read.
        ConversionError: the declared signature is not the artifact's (naming the tensor).
        ValueError: ``variants`` asks for something else than this artifact's variant.
    """
    fmt = provided_format(source_path)
    name = PROVIDED_VARIANT[fmt]
    if variants is not None and list(variants) != [name]:
        raise ValueError(f"a provided {fmt} artifact is the one variant {name!r}, not {variants}")
    if latency_runs < 1:
        raise ValueError("latency_runs must be at least 1")
    spec = VARIANTS[name]
    artifact = Path(workdir) / "variants" / spec.filename()
    artifact.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_path, artifact)  # the bytes that ship are the uploaded bytes
    result = VariantResult(name=name, format=spec.format, path=artifact, size=artifact.stat().st_size,
                           sha256=_sha256(artifact))
    if fmt == "tflite":
        result.signature, result.reference_latency_ms = check_tflite(artifact, latency_runs)
        result.fidelity = {"comparison": NO_SOURCE, "eval_source": None}
    else:
        report = check_coreml(artifact, fmt, Path(workdir) / "build", max_extract_bytes)
        result.signature = _read(_signature.coreml_signature, artifact)
        result.fidelity = {**report, "comparison": NO_SOURCE, "eval_source": None,
                           "device_measured": _fidelity.DEVICE_PENDING}
    check_declared_signature(result.signature, declared)
    result.servable, result.reason = True, None
    if progress is not None:
        progress(1, 1, name)
    return [result]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read(reader, path: Path) -> dict:
    try:
        return reader(path)
    except _signature.SignatureError as exc:
        raise ProvidedArtifactError(f"invalid_artifact: {exc}") from exc


# -- TFLite ---------------------------------------------------------------------------------


def probe_inputs(details: list[dict]) -> list[np.ndarray]:
    """Fixed-seed inputs for each input tensor: floats in [0, 1), integers 0 (a valid token
    id and class index), booleans False; free dimensions as 1."""
    rng = np.random.default_rng(PROBE_SEED)
    arrays = []
    for detail in details:
        shape = [1 if int(d) < 0 else int(d) for d in detail.get("shape_signature", detail["shape"])]
        dtype = np.dtype(detail["dtype"])
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.random(shape).astype(dtype))
        else:
            arrays.append(np.zeros(shape, dtype=dtype))
    return arrays


def check_tflite(path: Path, latency_runs: int) -> tuple[dict, dict]:
    """(signature, reference latency) of a provided TFLite file, or ProvidedArtifactError."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[4:8] != b"TFL3":
        raise ProvidedArtifactError("invalid_artifact: the file does not carry the TFLite identifier TFL3")
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        inputs = interpreter.get_input_details()
        for detail in inputs:
            signature = detail.get("shape_signature", detail["shape"])
            if any(int(d) < 0 for d in signature):
                interpreter.resize_tensor_input(detail["index"], [1 if int(d) < 0 else int(d) for d in signature])
        interpreter.allocate_tensors()
        inputs = interpreter.get_input_details()
        for detail, array in zip(inputs, probe_inputs(inputs)):
            interpreter.set_tensor(detail["index"], array)
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            interpreter.get_tensor(detail["index"])
    except Exception as exc:
        raise ProvidedArtifactError(
            f"invalid_artifact: the TFLite model does not load and run in the LiteRT interpreter: "
            f"{type(exc).__name__}: {exc}") from exc
    signature = _read(_signature.tflite_signature, path)
    for _ in range(LATENCY_WARMUP_RUNS):
        interpreter.invoke()
    timings = []
    for _ in range(latency_runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        timings.append((time.perf_counter_ns() - start) / 1e6)
    return signature, _fidelity.latency_summary(timings)


# -- Core ML --------------------------------------------------------------------------------


def check_coreml(path: Path, fmt: str, build_dir: Path, max_extract_bytes: int) -> dict:
    """Structural checks of a provided Core ML model; returns the report for its fidelity table."""
    import coremltools as ct

    if fmt == "mlpackage":
        from ._source import extract_zip

        dest = build_dir / "provided"
        extract_zip(path, dest, max_extract_bytes, what="Core ML package zip")
        packages = [p for p in dest.iterdir() if p.name.endswith(".mlpackage") and p.is_dir()]
        if len(packages) != 1 or len(list(dest.iterdir())) != 1:
            raise ProvidedArtifactError(
                "invalid_artifact: the zip must hold exactly one <name>.mlpackage directory and nothing else")
        model_path = packages[0]
    else:
        model_path = path
    try:
        mlmodel = ct.models.MLModel(str(model_path), skip_model_load=True)
        spec = mlmodel.get_spec()
    except Exception as exc:
        raise ProvidedArtifactError(f"invalid_artifact: coremltools cannot load the Core ML model: "
                                    f"{type(exc).__name__}: {exc}") from exc
    kind = spec.WhichOneof("Type")
    if kind is None:
        raise ProvidedArtifactError("invalid_artifact: the Core ML spec holds no model")
    if not spec.description.input or not spec.description.output:
        raise ProvidedArtifactError("invalid_artifact: the Core ML model declares no inputs or no outputs")
    report = {"spec_valid": True, "reloaded": True, "spec_version": int(spec.specificationVersion),
              "model_type": kind}
    if kind == "mlProgram":
        if fmt == "mlmodel":
            raise ProvidedArtifactError(
                "invalid_artifact: an mlprogram keeps its weights beside the spec; push it as a zipped .mlpackage")
        from ._coreml import _load_program

        try:
            _load_program(model_path)  # rebuilds the MIL program: type inference on every op
        except Exception as exc:
            raise ProvidedArtifactError(f"invalid_artifact: the Core ML program does not type-check: "
                                        f"{type(exc).__name__}: {exc}") from exc
        report["program_checked"] = True
    return report
