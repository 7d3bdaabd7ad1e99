"""Late labels: what kind of file a run processed, and the realized scores of scoring runs.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    with op.batch_alter_table("pipeline_runs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="scoring"))
        batch.create_check_constraint("ck_pipeline_runs_kind", "kind IN ('scoring', 'labels')")
    op.create_table(
        "realized_scores",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column(
            "labels_run_id",
            sa.String(36),
            sa.ForeignKey("pipeline_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("labels_file", sa.String(512), nullable=False),
        sa.Column("labels_arrived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matched_by", sa.String(255), nullable=False),
        sa.Column("labeled_rows", sa.Integer, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=True),
    )
    op.create_index("ix_realized_scores_run_id", "realized_scores", ["run_id"])
    op.create_index("ix_realized_scores_arrived_at", "realized_scores", ["labels_arrived_at"])
