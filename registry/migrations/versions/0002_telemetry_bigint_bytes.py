"""telemetry: BIGINT bytes (downloads past 2 GiB) and an index on received_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.alter_column("bytes", existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=True)
        batch_op.create_index("ix_telemetry_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry_events", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_received_at")
        batch_op.alter_column("bytes", existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=True)
