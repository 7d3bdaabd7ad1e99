"""Idempotent database bootstrap, run as the init container of ECS tasks.

Creates the databases named in DB_INIT_DATABASES (comma separated) and, when
READONLY_USER and READONLY_PASSWORD are set, migrates the READONLY_DATABASE and
gives that login read access with churnops's own grant_read_only: the one
definition of what Grafana may read, shared with `churnops grant-reader`.

Connects with DATABASE_URL (the master user, SQLAlchemy or libpq URL). Secrets
come from the environment only and are never printed. Runs in the flow image,
which carries churnops. Terraform passes this file as `python -c <source>`.
"""

import os
import sys
import time

import psycopg2
from psycopg2 import errors, sql


def log(message: str) -> None:
    print(f"db-init: {message}", flush=True)


def libpq_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


def connect(url: str, attempts: int = 30, delay: float = 5.0):
    for attempt in range(1, attempts + 1):
        try:
            conn = psycopg2.connect(url, connect_timeout=10)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError as exc:
            log(f"database not reachable yet ({type(exc).__name__}), attempt {attempt}/{attempts}")
            time.sleep(delay)
    raise SystemExit("db-init: database unreachable")


def ensure_database(conn, name: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone():
            log(f"database {name} exists")
            return
        try:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            log(f"database {name} created")
        except errors.DuplicateDatabase:
            log(f"database {name} created concurrently")


def ensure_readonly_role(url: str, user: str, password: str, database: str) -> None:
    from churnops.monitoring.metrics_db import grant_read_only

    connect(with_database(url, database)).close()  # waits until it answers
    grant_read_only(with_database(url, database), user, password)
    log(f"read-only role {user} ready on {database}")


def main() -> int:
    url = libpq_url(os.environ["DATABASE_URL"])
    conn = connect(url)
    try:
        for name in filter(
            None, (d.strip() for d in os.environ.get("DB_INIT_DATABASES", "").split(","))
        ):
            ensure_database(conn, name)
        user = os.environ.get("READONLY_USER")
        password = os.environ.get("READONLY_PASSWORD")
        if user and password:
            ensure_readonly_role(
                url, user, password, os.environ.get("READONLY_DATABASE", "metrics")
            )
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
