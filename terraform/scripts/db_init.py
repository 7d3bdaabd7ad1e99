"""Database bootstrap: the one-off ECS task db-init (`post_apply.py database`), so no
service's task sees the master secret. Idempotent; Terraform passes it as ``python -c``.

Each service gets its own login through ``churnops.monitoring.db_roles.ensure_role``
(shared with ``churnops grant-reader``): ``owner`` roles own their database (MLflow,
Prefect); ``writer`` (the flow) and ``reader`` (Grafana) get grants on the metrics
database after its migrations. Environment (passwords from Secrets Manager):
  DB_HOST, DB_PORT, DB_ADMIN_DATABASE, DB_ADMIN_USER, DB_ADMIN_PASSWORD  the master login
  DB_ROLES           JSON list, in order, of {key, kind, name, database}
  DB_PASSWORD_<KEY>  each role's password"""

import json
import os
import sys
import time

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from churnops.monitoring.db_roles import Kind, Role, ensure_role


def log(message: str) -> None:
    print(f"db-init: {message}", flush=True)


def admin_url() -> URL:
    return URL.create(
        "postgresql+psycopg2",
        username=os.environ["DB_ADMIN_USER"],
        password=os.environ["DB_ADMIN_PASSWORD"],
        host=os.environ["DB_HOST"],
        port=int(os.environ.get("DB_PORT", "5432")),
        database=os.environ["DB_ADMIN_DATABASE"],
    )


def wait_until_reachable(url: URL, attempts: int = 30, delay: float = 5.0) -> None:
    """The instance may still be starting on a first apply."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        for attempt in range(1, attempts + 1):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except OperationalError as exc:
                reason = type(exc.orig).__name__
                log(f"database not reachable yet ({reason}), attempt {attempt}/{attempts}")
                time.sleep(delay)
    finally:
        engine.dispose()
    raise SystemExit("db-init: database unreachable")


def roles() -> list[Role]:
    return [
        Role(
            kind=Kind(entry["kind"]),
            name=entry["name"],
            password=os.environ[f"DB_PASSWORD_{entry['key'].upper()}"],
            database=entry["database"],
        )
        for entry in json.loads(os.environ["DB_ROLES"])
    ]


def main() -> int:
    url = admin_url()
    wanted = roles()
    wait_until_reachable(url)
    for role in wanted:
        ensure_role(url, role)
        log(f"{role.kind} role {role.name} ready on {role.database}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
