"""releases: who paused a release, when and why

A manual pause's reason lived only in the audit log, which only an admin may read, so
``modeldrop releases`` could not say why a release is paused to a reader or publisher. The
release now carries it. Releases paused before this revision keep ``NULL`` (the audit log
still has their reason).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("paused_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column("paused_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("paused_at")
        batch_op.drop_column("paused_by")
        batch_op.drop_column("paused_reason")
