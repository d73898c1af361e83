"""admin keys and checkpoint permissions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:07:17.915272
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=512), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["fine_tuned_models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkpoint_permissions_model_id"), ["model_id"], unique=False)
        batch_op.create_index("ux_checkpoint_permissions_model_project", ["model_id", "project_id"], unique=True)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("admin", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("admin")

    with op.batch_alter_table("checkpoint_permissions", schema=None) as batch_op:
        batch_op.drop_index("ux_checkpoint_permissions_model_project")
        batch_op.drop_index(batch_op.f("ix_checkpoint_permissions_model_id"))

    op.drop_table("checkpoint_permissions")
