"""Database tables. Rows never leave ``registry.store``: the API serialises schemas instead.

Timestamps are timezone-aware UTC; ``utcnow()`` is the only clock used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint, false, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class ModelRow(SQLModel, table=True):
    __tablename__ = "models"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    description: str = ""
    accuracy_drop_threshold_pp: float | None = None
    # Servability limit for regression outputs (relative RMSE against the source); None: the
    # server's MODELDROP_MAX_RELATIVE_RMSE. An upload's own value wins over both.
    max_relative_rmse: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""


class VersionRow(SQLModel, table=True):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),
                      UniqueConstraint("model_id", "source_sha256"))
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", index=True)
    number: int
    status: str = "uploaded"  # uploaded -> converting -> ready | failed
    source_sha256: str = Field(max_length=64)
    source_size: int
    source_format: str  # keras | h5 | zip | pt2 | pt
    source_filename: str = ""
    eval_sha256: str | None = None
    metadata_json: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow)


class VariantRow(SQLModel, table=True):
    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("version_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id", index=True)
    name: str
    format: str
    sha256: str | None = Field(default=None, index=True)
    size: int | None = None
    target_path: str | None = None
    fidelity: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reference_latency_ms: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # {"inputs": [{"name", "dtype", "shape", "narrowed_from"?}], "outputs": [...]} read from the
    # artifact itself; None for variants recorded before signatures were kept (unknown).
    signature: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    servable: bool = False
    # Listed in TUF targets and downloadable without a token: set (never cleared) when a
    # release or experiment arm first makes the variant deliverable. Until then
    # ``target_path`` is only the planned path. See registry.delivery.publication.
    public: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    reason: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class AttachmentRow(SQLModel, table=True):
    """An engineer's own artifact sent next to a source upload (the ``artifact`` part): kept
    as a blob, so that the version's conversion (and any retry) makes it a variant, and so
    that fsck and GC count it as referenced whether or not a variant row names it yet."""

    __tablename__ = "attached_artifacts"
    __table_args__ = (UniqueConstraint("version_id", "variant"),)
    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="versions.id", index=True)
    variant: str  # tflite-attached | coreml-attached | coreml-attached-mlmodel
    format: str  # tflite | mlpackage | mlmodel (as a provided upload's source_format)
    sha256: str = Field(max_length=64, index=True)
    size: int
    filename: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class TokenRow(SQLModel, table=True):
    __tablename__ = "api_tokens"
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    token_hash: str = Field(index=True, unique=True, max_length=64)
    prefix: str = ""  # first characters, shown in listings so a token can be recognised
    role: str  # reader | publisher | admin
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    revoked: bool = False


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str = Field(index=True)
    target: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class JobRow(SQLModel, table=True):
    __tablename__ = "jobs"
    id: str = Field(primary_key=True, max_length=36)
    kind: str = "convert"
    version_id: int = Field(foreign_key="versions.id", index=True)
    state: str = "queued"  # queued -> running -> done | failed
    progress_done: int = 0
    progress_total: int = 0
    progress_note: str = ""
    results: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    max_attempts: int = 3
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None


class TufMetadataRow(SQLModel, table=True):
    __tablename__ = "tuf_metadata"
    name: str = Field(primary_key=True, max_length=128)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow)


class ReleaseRow(SQLModel, table=True):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("model_id", "channel", "counter"),)
    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", index=True)
    channel: str
    counter: int
    version_id: int = Field(foreign_key="versions.id")
    variant: str | None = None  # pinned variant, else chosen per device
    rollout_bp: int = 10000  # basis points of targeted devices
    rollout_seed: str = ""
    targeting: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    guardrails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    paused: bool = False
    halted_reason: str | None = Field(default=None, sa_column=Column(Text))
    # Who paused the release, when and why, on the release itself so that any reader sees it:
    # a manual pause sets all three (its reason may be ""), a guardrail halt sets who and when
    # (its reason is halted_reason); resuming clears them.
    paused_reason: str | None = Field(default=None, sa_column=Column(Text))
    paused_by: str | None = None
    paused_at: datetime | None = None
    kind: str = "promote"  # promote | rollback
    reason: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    updated_at: datetime = Field(default_factory=utcnow)


class ExperimentRow(SQLModel, table=True):
    __tablename__ = "experiments"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    model_id: int = Field(foreign_key="models.id", index=True)
    channel: str
    seed: str
    coverage_bp: int = 10000
    arms: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    targeting: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    guardrails: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = "running"  # running | paused | stopped
    halted_reason: str | None = Field(default=None, sa_column=Column(Text))
    # Who paused the experiment, when and why, as for releases: a manual pause sets all three
    # (its reason may be ""), a guardrail halt sets who and when (its reason is halted_reason);
    # resuming clears them.
    paused_reason: str | None = Field(default=None, sa_column=Column(Text))
    paused_by: str | None = None
    paused_at: datetime | None = None
    winner: str | None = None
    counter_at_start: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = ""
    stopped_at: datetime | None = None


class AssignmentRow(SQLModel, table=True):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("experiment_id", "install_id"),)
    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiments.id", index=True)
    install_id: str = Field(max_length=64)
    arm: str
    assigned_at: datetime = Field(default_factory=utcnow)


class TelemetryRow(SQLModel, table=True):
    __tablename__ = "telemetry_events"
    __table_args__ = (Index("ix_telemetry_exp_install", "experiment", "install_id"),
                      Index("ix_telemetry_model_version", "model", "version", "variant", "kind"),
                      Index("ix_telemetry_received_at", "received_at"),
                      # only the flagged events: a served row's write clears theirs
                      Index("ix_telemetry_unserved", "install_id", "model",
                            sqlite_where=text("unserved"), postgresql_where=text("unserved")))
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    kind: str
    install_id: str = Field(max_length=64)
    ts: datetime
    model: str = ""
    version: int | None = None
    variant: str | None = None
    experiment: str | None = None
    arm: str | None = None
    device_model: str | None = None
    platform: str | None = None
    latency_ms: float | None = None
    correct: bool | None = None
    bytes: int | None = Field(default=None, sa_column=Column(BigInteger))  # downloads can pass 2 GiB
    seconds: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    received_at: datetime = Field(default_factory=utcnow)
    # True when, at ingestion, the server had never served this install id a manifest or an
    # experiment arm of the event's model: stored (it may be a real device that lost its
    # state) but excluded from guardrails and reports, so forged install ids cannot halt.
    unserved: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ServedRow(SQLModel, table=True):
    """A device the server served an artifact of (model, channel, version, variant): the
    evidence that telemetry about that release comes from a device that really has it."""

    __tablename__ = "served_installs"
    __table_args__ = (UniqueConstraint("model", "channel", "version", "variant", "install_id"),
                      Index("ix_served_install_model", "install_id", "model"))
    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(max_length=64)
    channel: str = Field(max_length=64)
    version: int
    variant: str = Field(max_length=64)
    install_id: str = Field(max_length=64)
    counter: int  # the release counter it was first served under
    first_served_at: datetime = Field(default_factory=utcnow)


class DeltaRow(SQLModel, table=True):
    __tablename__ = "deltas"
    __table_args__ = (UniqueConstraint("base_sha256", "target_sha256"),)
    id: int | None = Field(default=None, primary_key=True)
    base_sha256: str = Field(max_length=64, index=True)
    target_sha256: str = Field(max_length=64, index=True)
    # None: computed but not smaller than the full artifact. A kept patch is recorded only
    # after its TUF target is published, so a row with a sha256 is a public artifact.
    sha256: str | None = None
    size: int | None = None
    target_path: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class WebSessionRow(SQLModel, table=True):
    """A dashboard sign-in: the browser's cookie holds only the session id, whose sha256 is
    stored here (like tokens), so a stolen database does not give working cookies; signing
    out deletes the row, and revoking the token ends every session made with it."""

    __tablename__ = "web_sessions"
    id_hash: str = Field(primary_key=True, max_length=64)
    token_id: int = Field(foreign_key="api_tokens.id", index=True)
    csrf: str = Field(max_length=64)  # the anti-forgery token every form of this session carries
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
