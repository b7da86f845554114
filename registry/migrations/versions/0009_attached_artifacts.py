"""attached_artifacts: an engineer's own artifacts sent next to a source upload

``modeldrop push NAME model.keras --artifact ios.mlpackage.zip`` stores each attached file as a
blob and one row here per (version, variant): the conversion job (and every retry) turns it
into the variant ``tflite-attached`` / ``coreml-attached`` / ``coreml-attached-mlmodel``, and
``modeldrop fsck`` counts the blob as referenced even before (or without) a variant row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attached_artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("format", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("filename", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("version_id", "variant"),
    )
    with op.batch_alter_table("attached_artifacts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_attached_artifacts_version_id"), ["version_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_attached_artifacts_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("attached_artifacts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_attached_artifacts_sha256"))
        batch_op.drop_index(batch_op.f("ix_attached_artifacts_version_id"))
    op.drop_table("attached_artifacts")
