"""An engineer's own artifact attached to a source upload: served as uploaded, judged against it.

``modeldrop push NAME model.keras --artifact ios.mlpackage.zip`` sends a source and the
engineer's own conversion of it. The source converts as usual; each attachment then becomes
one more variant (``tflite-attached``, ``coreml-attached``, ``coreml-attached-mlmodel``) whose
artifact is the attached file byte for byte. Unlike a lone provided artifact
(``_provided``), there is a source to compare with, so:

- the attachment is first checked exactly as a provided one (``_provided.check_tflite`` /
  ``check_coreml``: the LiteRT interpreter loads and runs it; the Core ML spec loads and an
  mlprogram type-checks; a zipped package extracts under the SavedModel zip rules); a file
  that fails that fails this variant only, with the runtime's reason;
- its signature must be the source's: every input and output by name, with the source's
  dtype and rank, dimensions equal where both are known. Where both models have exactly
  one input (or one output), that side pairs by position whatever the names, since a
  converter names them itself (``TFLiteConverter.from_keras_model`` calls the output
  ``output_0``); the variant's stored signature keeps the artifact's real names. A
  mismatch makes the variant not servable, with a reason naming the tensor;
- a TFLite attachment runs over the same eval set as the converted variants, against the
  source's reference outputs, and is servable by the same rules (accuracy drop, relative
  RMSE per output); its reference latency is measured the same way;
- a Core ML attachment cannot run on Linux: its fidelity table is the converted Core ML
  variants' (output fidelity pending device telemetry).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import _fidelity, _signature, _tflite
from ._provided import ProvidedArtifactError, _read, _sha256, check_coreml, check_tflite
from .catalog import ATTACHED_VARIANT, VARIANTS, ConversionError, VariantResult

# The suffix each attachment has in the converter's input folder -> its format.
_FORMATS = {v: k for k, v in ATTACHED_VARIANT.items()}
_WIDER = {"int64": ("int32",), "float64": ("float32",)}  # narrowing the converters do too
_QUANTIZED = ("int8", "uint8")  # a full-integer TFLite takes floats through its scale


def measure_attached(run, variant: str, path: Path, max_extract_bytes: int) -> VariantResult:
    """One attached artifact as a variant of ``run`` (the source's ``_engine._Run``).

    Never raises for a bad attachment: it becomes a failed or unservable variant, and the
    converted variants still publish.
    """
    spec = VARIANTS[variant]
    artifact = run.artifact_dir / spec.filename()
    artifact.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, artifact)  # the bytes that ship are the attached bytes
    result = VariantResult(name=variant, format=spec.format, path=artifact, size=artifact.stat().st_size,
                           sha256=_sha256(artifact))
    source = run.signature.as_dict()
    try:
        if spec.format == "tflite":
            signature, _ = check_tflite(artifact, 1)
            result.signature = _signature.mark_narrowed(signature, source)
            mismatch = signature_mismatch(result.signature, source, quantized_ok=True)
            if mismatch is None:
                _measure_tflite(run, result)
        else:
            report = check_coreml(artifact, _FORMATS[variant], run.build_dir / f"attached-{variant}",
                                  max_extract_bytes)
            result.signature = _signature.mark_narrowed(_read(_signature.coreml_signature, artifact), source)
            mismatch = signature_mismatch(result.signature, source, quantized_ok=False)
            result.fidelity = _fidelity.coreml_fidelity(report, [t.name for t in run.signature.outputs])
            result.servable, result.reason = mismatch is None, None
    except (ConversionError, ProvidedArtifactError) as exc:
        return _failed(variant, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bad attachment fails its own variant only
        return _failed(variant, f"invalid_artifact: {type(exc).__name__}: {exc}")
    if mismatch is not None:
        result.servable = False
        result.reason = f"not the source's signature: {mismatch}"
    return result


def _failed(variant: str, message: str) -> VariantResult:
    return VariantResult(name=variant, format=VARIANTS[variant].format, servable=False, reason=message,
                         error=message)


def _measure_tflite(run, result: VariantResult) -> None:
    outputs = _tflite.run_tflite(result.path, run.evalset.inputs, [t.name for t in run.signature.outputs],
                                 pair_single=True)
    result.fidelity = _fidelity.output_fidelity(run.reference, outputs, labels=run.labels,
                                                eval_source=run.evalset.source, tasks=run.tasks)
    result.servable, result.reason = _fidelity.tflite_servability(result.fidelity, run.threshold_pp,
                                                                  run.max_relative_rmse)
    timings = _tflite.time_tflite(result.path, run.evalset.first_sample(), run.latency_runs, pair_single=True)
    result.reference_latency_ms = _fidelity.latency_summary(timings)


def signature_mismatch(artifact: dict, source: dict, *, quantized_ok: bool) -> str | None:
    """The first way ``artifact``'s signature differs from ``source``'s, or None.

    Both are ``{"inputs": [...], "outputs": [...]}`` as ``_signature`` reads them. A side
    with one tensor on both pairs by position; otherwise names must match both ways. An
    artifact dtype may be the source's, a narrowing a converter does (int64 -> int32), or,
    with ``quantized_ok``, int8/uint8 for a float source tensor (a full-integer TFLite).
    An artifact shape of None (Core ML's "unspecified") or a None dimension matches.
    """
    for role, word in (("inputs", "input"), ("outputs", "output")):
        have, want = list(artifact[role]), list(source[role])
        if len(have) == len(want) == 1:
            pairs = [(want[0], have[0])]
        else:
            by_name = {t["name"]: t for t in have}
            for t in want:
                if t["name"] not in by_name:
                    return (f"the source's {word} {t['name']!r} is not in the attached model, whose {role} are "
                            f"{', '.join(repr(n) for n in by_name)}")
            names = {t["name"] for t in want}
            for name in by_name:
                if name not in names:
                    return f"the attached model's {word} {name!r} is not one of the source's {role}"
            pairs = [(t, by_name[t["name"]]) for t in want]
        for expected, actual in pairs:
            name = expected["name"]
            shown = name if actual["name"] == name else f"{name} (attached: {actual['name']})"
            dtype = actual["dtype"]
            if dtype != expected["dtype"] and dtype not in _WIDER.get(expected["dtype"], ()) and not (
                    quantized_ok and dtype in _QUANTIZED and expected["dtype"] in ("float32", "float16")):
                return f"{word} {shown!r} is {dtype} in the attached model but {expected['dtype']} in the source"
            shape, wanted = actual["shape"], expected["shape"]
            if shape is not None and (len(shape) != len(wanted) or any(
                    a is not None and b is not None and a != b for a, b in zip(shape, wanted))):
                return (f"{word} {shown!r} has shape {_shape(shape)} in the attached model but "
                        f"{_shape(wanted)} in the source")
    return None


def _shape(dims) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in dims) + "]"
