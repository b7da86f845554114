"""API request and response models (pydantic). Table rows are converted to these in the store."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticValidationError

from registry.errors import InvalidNameError, ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CHANNEL_RE = re.compile(r"^[a-z0-9-]{1,32}$")
DTYPES = {"float32", "float16", "int8", "uint8", "int32", "int64", "bool", "string"}
#: dtypes an artifact's tensor can have in a stored signature (``VariantOut.signature``)
ARTIFACT_DTYPES = ("float32", "float16", "int32", "int64", "uint8", "int8", "bool")
ROLES = ("reader", "publisher", "admin")


def parse_as(model: type[BaseModel], data: Any, error: type[ValidationError] = ValidationError,
             what: str = "field") -> BaseModel:
    """Validate ``data`` as ``model``; the raised ``error`` names the first offending field
    (dotted path, e.g. ``accuracy.top1``) and lists every problem under ``errors``."""
    try:
        return model.model_validate(data)
    except PydanticValidationError as e:
        problems = [{"field": ".".join(str(p) for p in err["loc"]) or what, "message": err["msg"]}
                    for err in e.errors()]
        first = problems[0]
        raise error(f"{what} {first['field']!r}: {first['message']}", field=first["field"],
                    errors=problems) from e


class _Strict(BaseModel):
    # allow_inf_nan: the string "NaN" would otherwise become a float nan, stored as null.
    # strict: false is not 0.0 and "5" is not 5 (what the OpenAPI document promises).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class TensorSignature(_Strict):
    """One declared input or output of a model: its name, shape (null for a free dimension) and
    dtype; for an output, how its fidelity is measured (``task``; default: classification for
    a softmax-like output with labels, else regression)."""

    name: str = Field(min_length=1, max_length=128)
    shape: list[int | None]
    dtype: str = "float32"
    # How an output's conversion fidelity is judged (docs/conversion.md); None: inferred.
    task: Literal["classification", "regression"] | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; expected one of {sorted(DTYPES)}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int | None]) -> list[int | None]:
        if any(d is not None and d < 1 for d in v):
            raise ValueError("dimensions must be positive integers or null")
        return v


class VersionMetadata(_Strict):
    """What an engineer uploads next to the model file."""

    framework: str = "keras"
    description: str = Field(default="", max_length=10_000)
    tags: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    input: list[TensorSignature] = Field(default_factory=list)
    output: list[TensorSignature] = Field(default_factory=list)
    accuracy: dict[str, float] = Field(default_factory=dict)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    min_app_version: str | None = Field(default=None, pattern=r"^\d+(\.\d+){0,3}$")
    variants: list[str] | None = None
    accuracy_drop_threshold_pp: float | None = Field(default=None, ge=0, le=100)
    # Servability limit for regression outputs: relative RMSE of the variant against the source.
    max_relative_rmse: float | None = Field(default=None, ge=0, le=100)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("latency_ms")
    @classmethod
    def _positive_latency(cls, v: dict[str, float]) -> dict[str, float]:
        for device, ms in v.items():
            if ms <= 0:
                raise ValueError(f"latency for {device!r} must be positive")
        return v

    @field_validator("input", "output")
    @classmethod
    def _unique_names(cls, v: list[TensorSignature], info: ValidationInfo) -> list[TensorSignature]:
        seen: set[str] = set()
        for tensor in v:
            if info.field_name == "input" and tensor.task is not None:
                raise ValueError(f"input {tensor.name!r} has a task; only outputs have one")
            if tensor.name in seen:
                raise ValueError(f"the tensor name {tensor.name!r} is declared twice")
            seen.add(tensor.name)
        return v

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from registry.convert.catalog import validate_variants  # light module, no TensorFlow

        return validate_variants(v)


class MetadataPatch(_Strict):
    """Partial update; ``None`` leaves a field unchanged, dict fields are merged."""

    description: str | None = None
    tags: list[str] | None = None
    labels: list[str] | None = None
    accuracy: dict[str, float] | None = None
    latency_ms: dict[str, float] | None = None
    min_app_version: str | None = Field(default=None, pattern=r"^\d+(\.\d+){0,3}$")
    extra: dict[str, Any] | None = None


class ModelPatch(_Strict):
    """Model-wide settings; ``None`` leaves a field unchanged."""

    # Leaving it out leaves it unchanged; null is refused (it would blank a required column).
    description: str = Field(default=None, max_length=10_000)  # type: ignore[assignment]
    accuracy_drop_threshold_pp: float | None = Field(default=None, ge=0, le=100)
    max_relative_rmse: float | None = Field(default=None, ge=0, le=100)


class ArtifactTensor(BaseModel):
    """One input or output tensor as the converted artifact has it."""

    name: str
    dtype: Literal["float32", "float16", "int32", "int64", "uint8", "int8", "bool"]
    # As the artifact has it, batch dimension included; a null dimension is dynamic, a null
    # shape is one the artifact does not state (some Core ML outputs).
    shape: list[int | None] | None
    # The source tensor's dtype when a converter narrowed it (int64 -> int32, float64 -> float32).
    narrowed_from: Literal["int64", "float64"] | None = None


class VariantSignature(BaseModel):
    """The I/O signature read from a variant's artifact (the inputs and outputs a device feeds)."""

    inputs: list[ArtifactTensor]
    outputs: list[ArtifactTensor]


class VariantOut(BaseModel):
    name: str
    format: str
    size: int | None
    sha256: str | None
    target_path: str | None = None
    fidelity: dict[str, Any] = Field(description=(
        "measured against the source (docs/conversion.md): the first output's figures at the top "
        "level (top1_agreement, accuracy, source_accuracy, accuracy_drop or max_abs_error, "
        "mean_abs_error, relative_rmse) and, per output name under `outputs`, that output's "
        "`task` (classification | regression) and figures"))
    reference_latency_ms: dict[str, Any] | None
    signature: VariantSignature | None = Field(default=None, description=(
        "the inputs and outputs the artifact really has (read from it after conversion); "
        "null for variants recorded before signatures were kept"))
    servable: bool
    public: bool = False  # in TUF targets, tokenless download: a release made it deliverable
    reason: str | None
    url: str | None = None


class VersionOut(BaseModel):
    model: str
    version: int
    status: str
    source: dict[str, Any]
    metadata: dict[str, Any]
    variants: list[VariantOut] = Field(default_factory=list)
    error: str | None = None
    created_at: datetime
    created_by: str
    updated_at: datetime


class ModelOut(BaseModel):
    name: str
    description: str
    accuracy_drop_threshold_pp: float | None = None
    max_relative_rmse: float | None = None
    created_at: datetime
    latest_version: int | None
    version_count: int


class JobOut(BaseModel):
    id: str
    kind: str
    model: str
    version: int
    state: str
    progress: dict[str, Any]
    results: dict[str, Any]
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobQueueOut(BaseModel):
    """How the job queue looks from the database: whether workers are taking jobs."""
    queued: int
    oldest_queued_at: datetime | None  # when the longest-waiting queued job was created
    running: int
    stale_running: int  # running jobs whose worker stopped heart-beating


class TokenCreate(_Strict):
    role: Literal["reader", "publisher", "admin"]
    name: str = Field(default="", max_length=100)


class TokenOut(BaseModel):
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: str
    revoked: bool
    token: str | None = None  # only in the response that created it


class AuditOut(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


# -- delivery ---------------------------------------------------------------------------

class ReleaseOut(BaseModel):
    id: int
    model: str
    channel: str
    counter: int
    version: int
    variant: str | None
    rollout_bp: int
    rollout_percent: float
    rollout_seed: str
    targeting: dict[str, Any]
    guardrails: list[Any]
    state: str  # active | paused | halted
    paused: bool
    halted_reason: str | None
    paused_reason: str | None = None  # a manual pause's --reason ("" when none was given)
    paused_by: str | None = None  # who paused or halted it (system:guardrails for a halt)
    paused_at: datetime | None = None
    kind: str  # promote | rollback | winner
    reason: str
    current: bool = False  # the newest release of its (model, channel)
    created_at: datetime
    created_by: str
    updated_at: datetime


class ArmOut(BaseModel):
    name: str
    version: int
    variant: str | None
    weight: int
    range: list[int]  # [start, end) in basis points
    assigned: int = 0


class ExperimentOut(BaseModel):
    id: int
    name: str
    model: str
    channel: str
    seed: str
    hash_version: int = 2
    coverage_bp: int
    coverage_percent: float
    arms: list[ArmOut]
    targeting: dict[str, Any]
    guardrails: list[Any]
    status: str  # running | paused | stopped
    halted_reason: str | None
    paused_reason: str | None = None  # a manual pause's --reason ("" when none was given)
    paused_by: str | None = None  # who paused or halted it (system:guardrails for a halt)
    paused_at: datetime | None = None
    winner: str | None
    counter_at_start: int
    created_at: datetime
    created_by: str
    stopped_at: datetime | None


class DeltaOut(BaseModel):
    base_sha256: str
    target_sha256: str
    sha256: str | None
    size: int | None
    target_path: str | None


def validate_name(name: str, what: str = "model name") -> str:
    """``name`` if it is a valid model or experiment name, else ``InvalidNameError``."""
    if not NAME_RE.fullmatch(name or ""):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-64 characters [a-z0-9._-], starting with a letter or digit",
            field="name")
    return name
