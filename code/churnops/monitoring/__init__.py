"""What happens after scoring: Evidently drift and quality, alerts, the metrics
database (with its Alembic migrations) and the offline report."""
