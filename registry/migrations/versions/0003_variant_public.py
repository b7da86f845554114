"""variants: public flag (sources and unreleased variants are confidential)

A variant becomes public when a release or experiment arm first makes it deliverable.
Before this revision every servable variant was listed in TUF targets right after
conversion, so existing servable variants with a target path are marked public: their
bytes and signed target entries are already out, and marking them private would leave
the database disagreeing with the signed metadata devices hold.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public", sa.Boolean(), server_default=sa.false(),
                                      nullable=False))
    variants = sa.table("variants", sa.column("public", sa.Boolean()),
                        sa.column("servable", sa.Boolean()), sa.column("sha256", sa.String()),
                        sa.column("target_path", sa.String()))
    op.execute(variants.update()
               .where(variants.c.servable == sa.true(), variants.c.sha256.is_not(None),
                      variants.c.target_path.is_not(None))
               .values(public=True))


def downgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_column("public")
