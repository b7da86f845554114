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


def output_fidelity(
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    labels: np.ndarray | None,
    eval_source: str,
) -> dict:
    """Compare a variant's outputs with the source model's outputs on the same inputs.

    Returns:
        ``top1_agreement``: fraction of samples where both pick the same class.
        ``accuracy`` / ``source_accuracy``: fraction correct vs labels (None without labels).
        ``accuracy_drop``: source minus variant accuracy in percentage points (None without labels).
        ``max_abs_error`` / ``mean_abs_error``: over every output element, in output units.
        ``eval_samples``, ``eval_source``.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} differs from the source's {reference.shape}")
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    result = {
        "top1_agreement": float(np.mean(top1(candidate) == top1(reference))),
        "accuracy": None,
        "source_accuracy": None,
        "accuracy_drop": None,
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "eval_samples": int(reference.shape[0]),
        "eval_source": eval_source,
    }
    if labels is not None:
        variant_accuracy = accuracy(candidate, labels)
        source_accuracy = accuracy(reference, labels)
        result["accuracy"] = variant_accuracy
        result["source_accuracy"] = source_accuracy
        result["accuracy_drop"] = 100.0 * (source_accuracy - variant_accuracy)
    return result


def coreml_fidelity(weight_report: dict) -> dict:
    """Core ML numbers measurable on Linux; output fidelity waits for device telemetry."""
    return {
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


def tflite_servability(fidelity: dict, threshold_pp: float) -> tuple[bool, str | None]:
    """Apply the accuracy-drop rule; without labels, top-1 disagreement stands in for it."""
    if fidelity.get("accuracy_drop") is not None:
        drop = fidelity["accuracy_drop"]
        if drop > threshold_pp:
            return False, f"accuracy drop {drop:.2f} pp exceeds threshold {threshold_pp:.2f} pp"
        return True, None
    disagreement = 100.0 * (1.0 - fidelity["top1_agreement"])
    if disagreement > threshold_pp:
        return False, (
            f"top-1 disagreement with the source {disagreement:.2f} pp exceeds threshold "
            f"{threshold_pp:.2f} pp (the {fidelity['eval_source']} eval set has no labels, "
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
