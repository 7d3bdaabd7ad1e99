"""The tables as the first release created them (before migrations existed).

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("flow_run_id", sa.String(36), nullable=True),
        sa.Column("file_name", sa.String(512), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("object_key", sa.String(1024), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=True),
        sa.Column("rows", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report_url", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'processed', 'errored')", name="ck_pipeline_runs_status"
        ),
    )
    op.create_index("ix_pipeline_runs_started_at", "pipeline_runs", ["started_at"])
    op.create_index("ix_pipeline_runs_status_started_at", "pipeline_runs", ["status", "started_at"])
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id",
            sa.String(36),
            sa.ForeignKey("pipeline_runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("method", sa.String(128), nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_run_metrics_recorded_at", "run_metrics", ["recorded_at"])
    op.create_index("ix_run_metrics_metric_recorded_at", "run_metrics", ["metric", "recorded_at"])
    op.create_index("ix_run_metrics_run_id", "run_metrics", ["run_id"])
