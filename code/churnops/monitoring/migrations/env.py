"""Alembic environment: migrations run on the connection that churnops passes in.

``alembic upgrade head`` from the command line is not wired; the platform runs
:func:`churnops.monitoring.metrics_db.upgrade` when it first opens a database.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
