"""Source model -> device variants (TFLite, Core ML), with fidelity and reference latency.

Importing this package is cheap: the catalogue and result types come from
``catalog`` (standard library only); TensorFlow, coremltools and the TFLite runtime
are imported inside ``convert_version``, which only the job worker calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .catalog import (
    SOURCE_FORMATS,
    VARIANT_NAMES,
    VARIANTS,
    ConversionError,
    VariantResult,
    VariantSpec,
    validate_variants,
)

__all__ = [
    "SOURCE_FORMATS",
    "VARIANT_NAMES",
    "VARIANTS",
    "ConversionError",
    "VariantResult",
    "VariantSpec",
    "convert_version",
    "validate_variants",
]


def convert_version(
    source_path: Path,
    workdir: Path,
    *,
    variants: list[str] | None = None,
    eval_path: Path | None = None,
    accuracy_drop_threshold_pp: float = 1.0,
    latency_runs: int = 50,
    max_parallel: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    max_extract_bytes: int = 8 << 30,
    check_ops: bool = True,
    declared: dict | None = None,
    max_relative_rmse: float = 0.05,
    attached: list[tuple[str, Path]] | None = None,
) -> list[VariantResult]:
    """Convert one uploaded model version into device variants and measure each.

    Call this in a worker process, never in the web process. With ``max_parallel``
    above 1 it starts a pool of spawned processes, so a script calling it needs the
    usual ``if __name__ == "__main__":`` guard.

    Args:
        source_path: ``.keras``, ``.h5``, ``.zip`` (a zipped SavedModel directory
            with a ``serving_default`` signature), ``.pt2`` or ``.pt``; or a provided
            artifact (``.tflite``, ``.mlpackage`` holding a zipped package, ``.mlmodel``),
            which is checked and measured, not converted (``_provided``).
        workdir: scratch directory owned by the caller; artifacts land in
            ``workdir/variants/<variant>.<extension>``.
        variants: names from the catalogue; None builds all of them.
        eval_path: ``.npz`` with one array per input name (``x`` for a single input),
            (N, *input shape), and optional integer labels ``y`` / ``y__<output>``.
            Without it a fixed-seed synthetic set is used (agreement and errors only).
        accuracy_drop_threshold_pp: a TFLite variant whose accuracy drop (or, without
            labels, top-1 disagreement) exceeds this many percentage points is not
            servable.
        latency_runs: timed single-input inferences per TFLite variant.
        max_parallel: worker processes; default min(2, cpu count). 1 converts in
            this process.
        progress: called as ``progress(k, n, variant)`` when variant k of n is done.
        max_extract_bytes: a zipped SavedModel may not expand beyond this (bytes).
        check_ops: refuse a SavedModel whose graph reads or writes files, opens
            connections or runs Python before loading it (``_opcheck``).
        declared: the metadata's declared ``{"input": [...], "output": [...]}``
            (TensorSignature dicts: name, shape, dtype, optional task). A declared list
            that differs from the model is a ConversionError naming the tensor; an
            output's ``task`` sets how its fidelity is judged; PyTorch outputs without
            names of their own take the declared output names. For a provided artifact
            the declared lists are checked against the artifact's own signature.
        max_relative_rmse: a TFLite variant whose regression output has a relative RMSE
            against the source above this is not servable.
        attached: the engineer's own artifacts for this source, as (variant, path):
            ``tflite-attached`` (a ``.tflite``), ``coreml-attached`` (a zipped package
            named ``.mlpackage``) or ``coreml-attached-mlmodel``; each is served as those
            bytes and measured against the source (``_attached``).

    Returns:
        One VariantResult per requested variant, in catalogue order, then one per
        attached artifact. A variant that fails to build (or an attachment that does not
        load) carries ``error`` and is not servable; the others still build.

    Raises:
        ValueError: an unknown variant name or an invalid argument.
        ConversionError: the source model does not load (with the loader's message)
            or the evaluation set does not fit it.
    """
    from ._provided import measure_provided, provided_format

    if provided_format(source_path) is not None:  # an engineer's own .tflite / Core ML model
        if attached:
            raise ValueError("artifacts are attached to a source model, not to a provided artifact")
        return measure_provided(Path(source_path), Path(workdir), variants=variants, latency_runs=latency_runs,
                                max_extract_bytes=max_extract_bytes, progress=progress, declared=declared)
    from ._engine import convert_version as _convert_version

    return _convert_version(
        source_path,
        workdir,
        variants=variants,
        eval_path=eval_path,
        accuracy_drop_threshold_pp=accuracy_drop_threshold_pp,
        latency_runs=latency_runs,
        max_parallel=max_parallel,
        progress=progress,
        max_extract_bytes=max_extract_bytes,
        check_ops=check_ops,
        declared=declared,
        max_relative_rmse=max_relative_rmse,
        attached=attached,
    )
