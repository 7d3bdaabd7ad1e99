"""Alembic migrations of the metrics database.

Run by :func:`churnops.monitoring.metrics_db.upgrade`."""
