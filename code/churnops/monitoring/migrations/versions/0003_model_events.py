"""Model versions over time (``model_events``) and the single-flight retraining lock.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "model_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("parent_version", sa.String(64), nullable=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("holdout_f1", sa.Float, nullable=True),
        sa.Column("champion_f1", sa.Float, nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.CheckConstraint("event IN ('promoted', 'refused')", name="ck_model_events_event"),
        sa.CheckConstraint("trigger IN ('manual', 'auto')", name="ck_model_events_trigger"),
    )
    op.create_index("ix_model_events_at", "model_events", ["at"])
    op.create_table(
        "locks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
