"""experiments: who paused or halted an experiment, when and why

A guardrail's halt said only its reason, and a manual pause's reason lived only in the audit
log, which only an admin may read. The experiment now carries who paused it, when and why, as
releases do since 0005. Experiments paused before this revision keep ``NULL``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("paused_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("paused_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("paused_at")
        batch_op.drop_column("paused_by")
        batch_op.drop_column("paused_reason")
