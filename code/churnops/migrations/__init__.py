"""Alembic migrations of the metrics database (run by :func:`churnops.metrics_db.upgrade`)."""
