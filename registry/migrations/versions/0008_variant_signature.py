"""variants: the I/O signature each artifact really has; models: a relative-RMSE limit

``variants.signature`` is the inputs and outputs (name, dtype, shape) read from the converted
artifact, served in the API, the manifest and rulesets so that a device can refuse a model
whose tensors its code cannot feed before downloading it. Variants recorded before this
revision keep ``NULL`` (served as ``signature: null``: unknown, checked only after download).

``models.max_relative_rmse`` is the model-wide servability limit for regression outputs, as
``accuracy_drop_threshold_pp`` is for classification outputs; ``NULL`` means the server's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signature", sa.JSON(), nullable=True))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_relative_rmse", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("max_relative_rmse")
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_column("signature")
