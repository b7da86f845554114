"""telemetry: a partial index on the events flagged ``unserved``

Served-install rows are written in batches (registry/store/_served.py); each batch clears
``unserved`` on the events of its (model, install id) pairs, so that telemetry which raced
the write still counts. The index holds only flagged events (forged or not yet served), so
it stays small and the update is an index lookup per pair.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_telemetry_unserved", "telemetry_events", ["install_id", "model"],
                    sqlite_where=sa.text("unserved"), postgresql_where=sa.text("unserved"))


def downgrade() -> None:
    op.drop_index("ix_telemetry_unserved", table_name="telemetry_events")
