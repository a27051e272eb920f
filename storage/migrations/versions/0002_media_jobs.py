"""Media jobs (issue 14): the task, progress, start/update times and the cancellation flag a worker polls.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("task", sa.String(32), nullable=False, server_default=""))
        batch.add_column(sa.Column("progress", sa.Float, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("started_at", sa.Float))
        batch.add_column(sa.Column("updated_at", sa.Float))
    op.create_index("ix_jobs_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in ("updated_at", "started_at", "cancel_requested", "progress", "task"):
            batch.drop_column(name)
