"""served installs, and an ``unserved`` flag on telemetry (forged telemetry cannot halt)

Guardrails and reports count only devices the server served: ``served_installs`` records
each (model, channel, version, variant, install id) a manifest delivered, and telemetry from
an install id the server never served that model is stored with ``unserved = true``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_installs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("variant", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("install_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("counter", sa.Integer(), nullable=False),
        sa.Column("first_served_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "channel", "version", "variant", "install_id"),
    )
    with op.batch_alter_table("served_installs", schema=None) as batch_op:
        batch_op.create_index("ix_served_install_model", ["install_id", "model"], unique=False)
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unserved", sa.Boolean(), server_default=sa.false(),
                                      nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.drop_column("unserved")
    op.drop_table("served_installs")
