"""How close a variant is to the source model, and whether that is close enough to serve.

Pure numpy on purpose: the numbers are computed from outputs produced elsewhere (the
source model in the parent, the real TFLite interpreter, coremltools' weight
decompression), so this module can be read and tested on its own.
"""

from __future__ import annotations

import numpy as np

DEVICE_PENDING = "pending device telemetry"


def top1(outputs: np.ndarray) -> np.ndarray:
    """Predicted class: argmax over the last axis (a rank-1 output counts as one class)."""
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    return outputs.argmax(axis=-1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(top1(outputs) == labels))


CLASSIFICATION = "classification"
REGRESSION = "regression"
SOFTMAX_TOLERANCE = 1e-3  # |row sum - 1| allowed for an output to count as probabilities
# Per-output keys, each null where it does not apply (docs/conversion.md).
OUTPUT_KEYS = ("task", "top1_agreement", "accuracy", "source_accuracy", "accuracy_drop",
               "max_abs_error", "mean_abs_error", "relative_rmse")
# Top-level keys, from the first output (their meaning before outputs had names).
TOP_LEVEL_KEYS = ("top1_agreement", "accuracy", "source_accuracy", "accuracy_drop",
                  "max_abs_error", "mean_abs_error")


def softmax_like(outputs: np.ndarray) -> bool:
    """Last axis longer than 1, every value non-negative, every row summing to 1."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim < 2 or values.shape[-1] < 2 or values.size == 0 or not np.isfinite(values).all():
        return False
    return bool(values.min() >= 0 and np.all(np.abs(values.sum(axis=-1) - 1.0) <= SOFTMAX_TOLERANCE))


def output_tasks(reference: dict[str, np.ndarray], declared: dict[str, str | None],
                 labelled: set[str]) -> dict[str, str]:
    """The task of each output: as declared; else classification when the eval set labels
    it or its source outputs look like probabilities (``softmax_like``); else regression."""
    tasks = {}
    for name, values in reference.items():
        task = declared.get(name)
        if task is None:
            task = CLASSIFICATION if name in labelled or softmax_like(values) else REGRESSION
        tasks[name] = task
    return tasks


def one_output_fidelity(reference: np.ndarray, candidate: np.ndarray, *, task: str,
                        labels: np.ndarray | None) -> dict:
    """``OUTPUT_KEYS`` for one output. Errors and relative RMSE are filled for every task
    (they are always defined); agreement for classification, accuracy with labels."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} differs from the source's {reference.shape}")
    ref = reference.astype(np.float64)
    diff = candidate.astype(np.float64) - ref
    rms_reference = float(np.sqrt(np.mean(ref ** 2))) if ref.size else 0.0
    rmse = float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0
    if rms_reference > 0:
        relative = rmse / rms_reference
    else:
        relative = 0.0 if rmse == 0 else None  # undefined against an all-zero reference
    result = dict.fromkeys(OUTPUT_KEYS)
    result.update(task=task, max_abs_error=float(np.abs(diff).max()) if diff.size else 0.0,
                  mean_abs_error=float(np.abs(diff).mean()) if diff.size else 0.0, relative_rmse=relative)
    if task == CLASSIFICATION:
        result["top1_agreement"] = float(np.mean(top1(candidate) == top1(reference)))
        if labels is not None:
            variant_accuracy = accuracy(candidate, labels)
            source_accuracy = accuracy(reference, labels)
            result.update(accuracy=variant_accuracy, source_accuracy=source_accuracy,
                          accuracy_drop=100.0 * (source_accuracy - variant_accuracy))
    return result


def output_fidelity(
    reference,
    candidate,
    *,
    labels=None,
    eval_source: str,
    tasks: dict[str, str] | None = None,
) -> dict:
    """Compare a variant's outputs with the source model's outputs on the same inputs.

    ``reference``/``candidate`` are dicts of output name -> array (a bare array is one
    output named ``output``); ``labels`` a dict of output name -> integer labels (or one
    array for the first output); ``tasks`` output name -> task (default: ``output_tasks``).

    Returns:
        ``outputs``: ``{name: OUTPUT_KEYS}`` per output (``one_output_fidelity``).
        ``top1_agreement``, ``accuracy``, ``source_accuracy``, ``accuracy_drop``,
        ``max_abs_error``, ``mean_abs_error``: those of the first output (as before).
        ``eval_samples``, ``eval_source``.
    """
    if not isinstance(reference, dict):
        reference, candidate = {"output": reference}, {"output": candidate}
    if labels is not None and not isinstance(labels, dict):
        labels = {next(iter(reference)): labels}
    labels = labels or {}
    if set(candidate) != set(reference):
        raise ValueError(f"the variant's outputs {sorted(candidate)} differ from the source's {sorted(reference)}")
    tasks = tasks or output_tasks(reference, {}, set(labels))
    per_output = {name: one_output_fidelity(reference[name], candidate[name], task=tasks[name],
                                            labels=labels.get(name))
                  for name in reference}
    first = per_output[next(iter(reference))]
    result = {key: first[key] for key in TOP_LEVEL_KEYS}
    result.update(eval_samples=int(next(iter(reference.values())).shape[0]), eval_source=eval_source,
                  outputs=per_output)
    return result


def coreml_fidelity(weight_report: dict, output_names=()) -> dict:
    """Core ML numbers measurable on Linux; output fidelity waits for device telemetry."""
    return {
        "outputs": {name: dict.fromkeys(OUTPUT_KEYS) for name in output_names},
        **weight_report,
        "top1_agreement": None,
        "accuracy": None,
        "source_accuracy": None,
        "accuracy_drop": None,
        "max_abs_error": None,
        "mean_abs_error": None,
        "eval_samples": None,
        "eval_source": None,
        "device_measured": DEVICE_PENDING,
    }


def tflite_servability(fidelity: dict, threshold_pp: float,
                       max_relative_rmse: float = 0.05) -> tuple[bool, str | None]:
    """Every output must pass its task's rule; the reason names the first that does not.

    Classification: the accuracy drop (without labels, top-1 disagreement stands in for
    it) within ``threshold_pp`` percentage points. Regression: relative RMSE against the
    source within ``max_relative_rmse``. With several outputs the reason starts with the
    failing output's name.
    """
    outputs = fidelity.get("outputs") or {"output": {**fidelity, "task": CLASSIFICATION}}
    several = len(outputs) > 1
    for name, figures in outputs.items():
        ok, why = _output_servable(figures, threshold_pp, max_relative_rmse, fidelity.get("eval_source"))
        if not ok:
            return False, f"output {name!r}: {why}" if several else why
    return True, None


def _output_servable(figures: dict, threshold_pp: float, max_relative_rmse: float,
                     eval_source: str | None) -> tuple[bool, str | None]:
    if figures.get("task") == REGRESSION:
        relative = figures.get("relative_rmse")
        if relative is None:
            return False, "relative RMSE is undefined (the source's outputs are all zero and the variant's are not)"
        if relative > max_relative_rmse:
            return False, f"relative RMSE {relative:.4f} exceeds max_relative_rmse {max_relative_rmse:.4f}"
        return True, None
    if figures.get("accuracy_drop") is not None:
        drop = figures["accuracy_drop"]
        if drop > threshold_pp:
            return False, f"accuracy drop {drop:.2f} pp exceeds threshold {threshold_pp:.2f} pp"
        return True, None
    disagreement = 100.0 * (1.0 - figures["top1_agreement"])
    if disagreement > threshold_pp:
        return False, (
            f"top-1 disagreement with the source {disagreement:.2f} pp exceeds threshold "
            f"{threshold_pp:.2f} pp (the {eval_source} eval set has no labels for it, "
            "so agreement stands in for accuracy)"
        )
    return True, None


def latency_summary(samples_ms: list[float]) -> dict:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "device_class": "server-x86_64",
        "p50": round(float(np.percentile(values, 50)), 4),
        "p90": round(float(np.percentile(values, 90)), 4),
        "runs": int(values.size),
    }


def relative_l2(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Relative L2 error of candidate weights against reference weights.

    ``weight_rel_error`` is ||w_q - w||_2 / ||w||_2 over all tensors concatenated;
    ``weight_rel_error_max`` is the worst single tensor (tensors with zero norm skipped).
    """
    num = 0.0
    den = 0.0
    worst = 0.0
    elements = 0
    for candidate, reference in pairs:
        c = candidate.astype(np.float64).ravel()
        r = reference.astype(np.float64).ravel()
        err = float(np.sum((c - r) ** 2))
        norm = float(np.sum(r ** 2))
        num += err
        den += norm
        elements += r.size
        if norm > 0:
            worst = max(worst, (err / norm) ** 0.5)
    return {
        "weight_rel_error": (num / den) ** 0.5 if den > 0 else 0.0,
        "weight_rel_error_max": worst,
        "weights_compared": len(pairs),
        "weight_elements": elements,
    }
