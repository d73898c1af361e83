"""job queue name

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 02:44:01.289454
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=128), nullable=True))
    # Jobs from before this revision went to the default queue.
    op.execute("UPDATE fine_tuning_jobs SET queue = 'tailor:queue' WHERE queue IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs", schema=None) as batch_op:
        batch_op.drop_column("queue")
