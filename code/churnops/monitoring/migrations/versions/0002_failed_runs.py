"""Runs can end 'failed': a dependency was down, the file waits for a retry.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"

STATUSES = "('running', 'processed', 'errored', 'failed')"


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.drop_constraint("ck_pipeline_runs_status", type_="check")
        batch.create_check_constraint("ck_pipeline_runs_status", f"status IN {STATUSES}")
