"""One database role per service on a real PostgreSQL cluster, made twice by
``terraform/scripts/db_init.py`` as the ECS init container runs it, on a fresh metrics
database: each role logs in with its password and may do what its service needs, no more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from churnops.monitoring.db_roles import Kind, Role, ensure_role
from churnops.monitoring.metrics_db import DASHBOARD_TABLES, MetricsStore, metadata
from tests.fixtures.postgres import NO_DRIFT, PostgresCluster, processed_run, refused
from tests.processes import run_python

SCRIPT = Path(__file__).parents[2] / "terraform" / "scripts" / "db_init.py"
SUFFIX = uuid.uuid4().hex[:6]
#: Not a dashboard table: the reader must not see it.
NOT_FOR_DASHBOARDS = "locks"


@dataclass(frozen=True)
class Platform:
    """The administrator's URL and the four services' roles. Its engines keep no pool
    (NullPool): nothing to dispose of."""

    admin: URL
    metrics: str
    roles: dict[str, Role]

    def url(self, service: str, database: str | None = None, **parts: str) -> URL:
        """The service's login, to its own database unless ``database`` is given."""
        role = self.roles[service]
        return self.admin.set(
            username=role.name, password=role.password, database=database or role.database, **parts
        )

    def login(self, service: str, database: str | None = None) -> Engine:
        return create_engine(self.url(service, database), poolclass=NullPool)


def _init(admin: URL, roles: dict[str, Role]) -> subprocess.CompletedProcess[str]:
    """The one-off bootstrap task (db-init): every role, in the order Terraform gives."""
    env = {
        **os.environ,
        "DB_HOST": admin.host or "",
        "DB_PORT": str(admin.port),
        "DB_ADMIN_DATABASE": admin.database or "",
        "DB_ADMIN_USER": admin.username or "",
        "DB_ADMIN_PASSWORD": admin.password or "",
        "DB_ROLES": json.dumps(
            [
                {"key": key, "kind": r.kind.value, "name": r.name, "database": r.database}
                for key, r in roles.items()
            ]
        ),
        **{f"DB_PASSWORD_{key.upper()}": r.password for key, r in roles.items()},
    }
    return run_python(SCRIPT.read_text(), env=env)


@pytest.fixture(scope="module")
def platform(postgres_cluster: PostgresCluster) -> Platform:
    """A fresh metrics database, then the bootstrap twice (every apply runs it)."""
    admin = make_url(postgres_cluster.new_database("metrics"))
    metrics = admin.database or ""
    roles = {
        "worker": Role(Kind.WRITER, f"flow_{SUFFIX}", "flow-pw", metrics),
        "grafana": Role(Kind.READER, f"grafana_{SUFFIX}", "grafana-pw", metrics),
        "mlflow": Role(Kind.OWNER, f"mlflow_{SUFFIX}", "mlflow-pw", f"mlflow_{SUFFIX}"),
        "prefect": Role(Kind.OWNER, f"prefect_{SUFFIX}", "prefect-pw", f"prefect_{SUFFIX}"),
    }
    for _ in range(2):
        run = _init(admin, roles)
        assert run.returncode == 0, run.stderr
        for role in roles.values():
            assert f"{role.kind} role {role.name} ready" in run.stdout
            assert role.password not in run.stdout + run.stderr
        assert admin.password not in run.stdout + run.stderr
    return Platform(admin, metrics, roles)


def _cannot_connect(engine: Engine) -> None:
    with pytest.raises(OperationalError, match="permission denied for database"):
        engine.connect()


def test_the_flow_writes_runs_and_metrics_through_metrics_store(platform: Platform) -> None:
    # its upgrade finds the schema at head: no DDL
    with closing(MetricsStore(platform.url("worker"))) as store:
        run_id = processed_run(store, "a.csv", NO_DRIFT)
        assert store.acquire_lock("retrain", "me", 60)
        store.release_lock("retrain", "me")
        assert list(store.runs()["id"]) == [run_id]


def test_the_flow_cannot_delete_change_the_schema_or_reach_other_databases(
    platform: Platform,
) -> None:
    writer = platform.login("worker")
    for statement in (
        "DELETE FROM pipeline_runs",
        "CREATE TABLE intruder (id int)",
        "DROP TABLE run_metrics",
        "ALTER TABLE pipeline_runs ADD COLUMN x int",
        "UPDATE alembic_version SET version_num = 'x'",
        "CREATE TEMP TABLE scratch (id int)",
    ):
        refused(writer, statement)
    for other in ("mlflow", "prefect"):
        _cannot_connect(platform.login("worker", platform.roles[other].database))


def test_grafana_reads_the_dashboard_tables_and_nothing_else(platform: Platform) -> None:
    """SELECT on DASHBOARD_TABLES only: not on another table, nor on one made later."""
    with create_engine(platform.admin, poolclass=NullPool).begin() as conn:
        conn.execute(text("CREATE TABLE later_metrics (value float)"))
    reader = platform.login("grafana")
    with reader.connect() as conn:
        for table in DASHBOARD_TABLES:
            conn.execute(text(f"SELECT count(*) FROM {table.name}")).scalar()
    assert NOT_FOR_DASHBOARDS in metadata.tables
    assert NOT_FOR_DASHBOARDS not in {t.name for t in DASHBOARD_TABLES}
    for statement in (
        f"SELECT * FROM {NOT_FOR_DASHBOARDS}",
        "SELECT * FROM later_metrics",
        "SELECT * FROM alembic_version",
        "INSERT INTO run_metrics (run_id, metric, value, recorded_at) VALUES ('x', 'm', 1, now())",
        "UPDATE pipeline_runs SET status = 'failed'",
        "DELETE FROM run_metrics",
        "CREATE TABLE intruder (id int)",
    ):
        refused(reader, statement)
    _cannot_connect(platform.login("grafana", platform.roles["mlflow"].database))


def test_mlflow_and_prefect_own_their_database_and_reach_no_other(platform: Platform) -> None:
    for service, other in (("mlflow", "prefect"), ("prefect", "mlflow")):
        owner = platform.login(service)
        with owner.begin() as conn:  # what their servers' migrations do
            conn.execute(text("CREATE TABLE experiments (id serial PRIMARY KEY, name text)"))
            conn.execute(text("INSERT INTO experiments (name) VALUES ('churn')"))
            conn.execute(text("DROP TABLE experiments"))
        _cannot_connect(platform.login(service, platform.roles[other].database))
        _cannot_connect(platform.login(service, platform.metrics))


def test_prefect_and_mlflow_migrate_their_own_database_as_their_role(
    platform: Platform, tmp_path: Path
) -> None:
    """What the servers do at their first start, with the URL their secret holds."""
    prefect = platform.roles["prefect"]
    as_prefect = platform.url("prefect", drivername="postgresql+asyncpg")
    as_mlflow = platform.url("mlflow", drivername="postgresql+psycopg2")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": as_prefect.render_as_string(False),
    }
    for command in (
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        [sys.executable, "-m", "mlflow", "db", "upgrade", as_mlflow.render_as_string(False)],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    as_admin = platform.admin.set(database=prefect.database)
    with create_engine(as_admin, poolclass=NullPool).connect() as conn:
        owners = conn.execute(
            text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        assert list(owners) == [prefect.name]


def test_a_password_from_a_new_secret_replaces_the_old_one(platform: Platform) -> None:
    role = platform.roles["grafana"]
    renewed = Role(role.kind, role.name, "rotated-pw", role.database)
    ensure_role(platform.admin, renewed)
    try:
        with pytest.raises(OperationalError, match="password authentication failed"):
            platform.login("grafana").connect()
        url = platform.admin.set(username=role.name, password="rotated-pw")
        with create_engine(url, poolclass=NullPool).connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == role.name
    finally:
        ensure_role(platform.admin, role)


def test_no_password_is_sent_as_text(platform: Platform) -> None:
    """The server keeps a SCRAM verifier computed by the client, not the password."""
    with create_engine(platform.admin, poolclass=NullPool).connect() as conn:
        stored = conn.execute(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :r"),
            {"r": platform.roles["worker"].name},
        ).scalar()
    assert stored.startswith("SCRAM-SHA-256$")


def test_a_superuser_or_the_administrator_is_never_turned_into_a_service_role(
    platform: Platform,
) -> None:
    admin_name = platform.admin.username or ""
    with pytest.raises(ValueError, match="superuser or the administrator"):
        ensure_role(platform.admin, Role(Kind.READER, admin_name, "x", platform.metrics))


def test_a_role_made_before_loses_what_its_kind_does_not_need(platform: Platform) -> None:
    """An existing role was given its password and grants but kept its attributes and the
    roles it was a member of: a reader made by hand with pg_write_all_data (or CREATEROLE)
    could still write, and `churnops grant-reader` said it could only read."""
    role = Role(Kind.READER, f"made_by_hand_{SUFFIX}", "hand-pw", platform.metrics)
    admin = create_engine(platform.admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role.name} LOGIN CREATEDB CREATEROLE"))
        conn.execute(text(f"GRANT pg_read_all_data, pg_write_all_data TO {role.name}"))
    for _ in range(2):  # and again: idempotent
        ensure_role(platform.admin, role)
    with admin.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT rolcreatedb, rolcreaterole, (SELECT count(*) FROM pg_auth_members m "
                "WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = :r"
            ),
            {"r": role.name},
        ).one()
        conn.execute(text(f"ALTER ROLE {role.name} REPLICATION"))
    assert tuple(kept) == (False, False, 0)
    reader = create_engine(
        platform.admin.set(username=role.name, password=role.password), poolclass=NullPool
    )
    refused(reader, "DELETE FROM run_metrics")
    refused(reader, f"SELECT * FROM {NOT_FOR_DASHBOARDS}")
    with pytest.raises(ValueError, match="may replicate"):
        ensure_role(platform.admin, role)
