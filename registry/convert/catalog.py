"""The variant catalogue: what ModelDrop can build from one uploaded model.

This module is imported by the web process (upload validation, API schemas,
dashboards), which must never pay for TensorFlow or coremltools. Keep it free of
anything heavier than the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import ModelDropError  # standard library only, like this module

__all__ = [
    "ATTACHED_VARIANT",
    "ATTACHED_VARIANT_NAMES",
    "ConversionError",
    "GENERAL_QUEUE",
    "TOOLCHAIN_QUEUES",
    "PROVIDED_FORMATS",
    "PROVIDED_VARIANT",
    "PROVIDED_VARIANT_NAMES",
    "SOURCE_FORMATS",
    "VARIANTS",
    "VARIANT_NAMES",
    "VariantResult",
    "VariantSpec",
    "toolchain_queue",
    "validate_variants",
]


class ConversionError(ModelDropError):
    """The uploaded inputs cannot be converted at all.

    Raised when the source model does not load (the message carries the loader's
    own message) or when the evaluation set does not fit the model. A failure of
    one variant is not a ConversionError: it is recorded on that variant's
    VariantResult and the other variants still convert. It ends the job (its ``code``
    and scrubbed message are the job's error), not a request, so its status is nominal.
    """

    code, status, title = "conversion_failed", 422, "Conversion failed"


@dataclass(frozen=True)
class VariantSpec:
    """One buildable variant.

    Attributes:
        name: stable identifier used in the API, manifests and file names.
        format: runtime family, ``"tflite"`` or ``"coreml"``.
        extension: artifact file extension without the leading dot.
        description: one line for tables and docs.
    """

    name: str
    format: str
    extension: str
    description: str

    def filename(self) -> str:
        return f"{self.name}.{self.extension}"


_TFLITE = "tflite"
_COREML = "coreml"
_COREML_EXT = "mlpackage.zip"  # an .mlpackage is a directory; it ships zipped

# Order matters: it is the order of results, tables and progress reports.
VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        VariantSpec("tflite-fp32", _TFLITE, "tflite", "TFLite, float32 weights and math"),
        VariantSpec("tflite-fp16", _TFLITE, "tflite", "TFLite, float16 weights, float32 math"),
        VariantSpec(
            "tflite-int8-dynamic", _TFLITE, "tflite",
            "TFLite, int8 weights, activations quantized on the fly",
        ),
        VariantSpec(
            "tflite-int8-full", _TFLITE, "tflite",
            "TFLite, int8 weights and activations, int8 input/output (calibrated on the eval set)",
        ),
        VariantSpec("coreml-fp32", _COREML, _COREML_EXT, "Core ML mlprogram, float32"),
        VariantSpec("coreml-fp16", _COREML, _COREML_EXT, "Core ML mlprogram, float16"),
        VariantSpec(
            "coreml-int8", _COREML, _COREML_EXT,
            "Core ML mlprogram, int8 linear (symmetric, per-channel) weights",
        ),
        VariantSpec(
            "coreml-palettized-6bit", _COREML, _COREML_EXT,
            "Core ML mlprogram, 6-bit k-means palettized weights",
        ),
        VariantSpec(
            "coreml-palettized-4bit", _COREML, _COREML_EXT,
            "Core ML mlprogram, 4-bit k-means palettized weights",
        ),
    )
}

# What the converter builds from a source model (and what ``variants`` may ask for).
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)

# An engineer's own conversion, served as uploaded (docs/conversion.md, "Bring your own
# artifact"). Never built, so not in VARIANT_NAMES; in VARIANTS so that every lookup by
# name (result checks, publication, target paths) knows their format and extension.
# ``coreml-provided-mlmodel`` is a separate name because an .mlmodel is one protobuf file,
# not a zipped package: the name fixes the file extension the device receives.
_PROVIDED = (
    VariantSpec("tflite-provided", _TFLITE, "tflite", "TFLite, the engineer's own file, served as uploaded"),
    VariantSpec("coreml-provided", _COREML, _COREML_EXT,
                "Core ML package (zipped .mlpackage), the engineer's own, served as uploaded"),
    VariantSpec("coreml-provided-mlmodel", _COREML, "mlmodel",
                "Core ML .mlmodel, the engineer's own, served as uploaded"),
)
VARIANTS.update({spec.name: spec for spec in _PROVIDED})
PROVIDED_VARIANT_NAMES: tuple[str, ...] = tuple(spec.name for spec in _PROVIDED)

# An engineer's own conversion attached to a *source* upload (``modeldrop push NAME model.pt2
# --artifact ios.mlpackage.zip``): served as uploaded next to the converted variants, and,
# unlike a lone provided artifact, measured against that source (docs/conversion.md, "Attach
# your own artifact to a source"). Distinct names from the provided ones: a version may have
# ``tflite-fp16`` and ``tflite-attached``, and a table reader knows which one was compared.
_ATTACHED = (
    VariantSpec("tflite-attached", _TFLITE, "tflite",
                "TFLite, the engineer's own file attached to the source, served as uploaded"),
    VariantSpec("coreml-attached", _COREML, _COREML_EXT,
                "Core ML package (zipped .mlpackage) attached to the source, served as uploaded"),
    VariantSpec("coreml-attached-mlmodel", _COREML, "mlmodel",
                "Core ML .mlmodel attached to the source, served as uploaded"),
)
VARIANTS.update({spec.name: spec for spec in _ATTACHED})
ATTACHED_VARIANT_NAMES: tuple[str, ...] = tuple(spec.name for spec in _ATTACHED)

# Provided-artifact upload formats (the version's ``source_format``) -> the variant they become.
PROVIDED_VARIANT: dict[str, str] = {"tflite": "tflite-provided", "mlpackage": "coreml-provided",
                                    "mlmodel": "coreml-provided-mlmodel"}
# An attachment's format (as for a provided upload) -> the variant it becomes.
ATTACHED_VARIANT: dict[str, str] = {"tflite": "tflite-attached", "mlpackage": "coreml-attached",
                                    "mlmodel": "coreml-attached-mlmodel"}
# The file name suffix each provided format has inside the converter's input folder.
PROVIDED_FORMATS: dict[str, str] = {".tflite": "tflite", ".mlpackage": "mlpackage", ".mlmodel": "mlmodel"}

# Accepted upload file extensions. ".zip" is a zipped TensorFlow SavedModel directory,
# ".pt2" a torch.export ExportedProgram (torch.export.save), ".pt" TorchScript (torch.jit.save).
# A provided artifact (".tflite", ".mlpackage.zip", ".mlmodel") is not converted.
SOURCE_FORMATS: tuple[str, ...] = (".keras", ".h5", ".zip", ".pt2", ".pt")


# Celery queue per toolchain (docs/conversion.md, "Worker queues"). A provided artifact
# needs only ai_edge_litert (TFLite) or coremltools (Core ML), both in the TensorFlow
# worker's environment, so it goes to convert-tf. Jobs that need no converter (delta
# patches) and the beat's maintenance stay on the general queue.
GENERAL_QUEUE = "modeldrop"
TOOLCHAIN_QUEUES: dict[str, str] = {"keras": "convert-tf", "h5": "convert-tf", "zip": "convert-tf",
                                    "tflite": "convert-tf", "mlpackage": "convert-tf", "mlmodel": "convert-tf",
                                    "pt2": "convert-torch", "pt": "convert-torch"}
TOOLCHAIN_NAMES: dict[str, str] = {"convert-tf": "TensorFlow (with coremltools and ai-edge-litert)",
                                   "convert-torch": "PyTorch (torch, litert-torch, coremltools)"}


def toolchain_queue(kind: str, source_format: str) -> str:
    """The Celery queue a job goes to: its source format's toolchain, or the general queue."""
    if kind != "convert":
        return GENERAL_QUEUE
    return TOOLCHAIN_QUEUES.get(source_format, "convert-tf")


def validate_variants(variants: Iterable[str] | None, *, allow_provided: bool = False) -> list[str]:
    """Normalise a requested variant list.

    Args:
        variants: names to build, or None for every variant in the catalogue.
        allow_provided: accept the provided-artifact names too (the job of a pushed
            ``.tflite``/Core ML file, which measures rather than builds them).

    Returns:
        The names in catalogue order, without duplicates.

    Raises:
        ValueError: a name is not in the catalogue (the message names it), or the
            list is empty.
    """
    if variants is None:
        return list(VARIANT_NAMES)
    if isinstance(variants, str):
        # A bare string would otherwise be iterated character by character.
        variants = [variants]
    requested = list(variants)
    attached = [name for name in requested if name in ATTACHED_VARIANT_NAMES]
    if attached:
        raise ValueError(
            f"{', '.join(repr(n) for n in attached)} cannot be built: an attached variant is the "
            "engineer's own file, sent next to the source (the 'artifact' part, modeldrop push --artifact)")
    provided = [name for name in requested if name in PROVIDED_VARIANT_NAMES]
    if provided and allow_provided:
        wanted = set(requested)
        unknown = [name for name in requested if name not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant {', '.join(repr(n) for n in unknown)}")
        return [name for name in VARIANTS if name in wanted]
    if provided:
        raise ValueError(
            f"{', '.join(repr(n) for n in provided)} cannot be built: a provided variant is the "
            "engineer's own file (push it as the model file, or attach it with --artifact)")
    unknown = [name for name in requested if name not in VARIANT_NAMES]
    if unknown:
        raise ValueError(
            f"unknown variant {', '.join(repr(n) for n in unknown)}; "
            f"known variants: {', '.join(VARIANT_NAMES)}"
        )
    if not requested:
        raise ValueError("no variants requested")
    wanted = set(requested)
    return [name for name in VARIANT_NAMES if name in wanted]


@dataclass
class VariantResult:
    """Outcome of building and measuring one variant.

    ``fidelity`` and ``reference_latency_ms`` shapes are documented in
    docs/conversion.md. A failed variant has ``error`` set, ``path`` None and
    ``servable`` False with ``reason`` equal to the error. ``signature`` is the I/O
    signature read from the built artifact (``registry.convert._signature``):
    ``{"inputs": [{"name", "dtype", "shape"[, "narrowed_from"]}], "outputs": [...]}``.
    """

    name: str
    format: str
    path: Path | None = None
    size: int | None = None  # bytes of the shipped artifact
    sha256: str | None = None  # hex digest of the shipped artifact
    fidelity: dict = field(default_factory=dict)
    reference_latency_ms: dict | None = None
    servable: bool = False
    reason: str | None = None
    error: str | None = None
    signature: dict | None = None
