"""MetricsStore and the database roles on a real PostgreSQL cluster: the read-only dashboard
role, and one role per service made twice by ``terraform/scripts/db_init.py`` as the ECS
init container runs it, on a fresh metrics database: each role logs in with its password
and may do what its service needs, no more."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import NullPool

from churnops.monitoring.db_roles import Kind, Role, ensure_role, grant_read_only
from churnops.monitoring.metrics_db import (
    DASHBOARD_TABLES,
    MetricsDatabaseUnavailable,
    MetricsStore,
    metadata,
)
from churnops.monitoring.report import NoRunsYet, write_report
from churnops.platform.services import free_port
from churnops.results import ColumnDrift, MonitoringResult
from churnops.settings import get_settings
from tests.fixtures.postgres import NO_DRIFT, PostgresCluster, processed_run, refused
from tests.processes import LOOPBACK, at_once, run_python

#: Quotes, a space, a statement separator and a comment: must all be taken literally.
NASTY_ROLE = "grafana \"reader'; DROP TABLE run_metrics; --"
NASTY_PASSWORD = "pa'ss\"word; DROP TABLE pipeline_runs; -- %s \\"


@pytest.fixture(scope="module")
def store(postgres_url: str) -> Iterator[MetricsStore]:
    with closing(MetricsStore(postgres_url)) as store:
        yield store


def test_run_and_metrics_round_trip_through_sql(store: MetricsStore) -> None:
    result = MonitoringResult(
        rows=10,
        drifted_count=1,
        drifted_share=1.0,
        columns=[ColumnDrift("call_failure", 0.7, "Wasserstein distance (normed)", 0.1, True)],
        predicted_churn_rate=0.2,
        quality={"f1": 0.8},
    )
    run_id = processed_run(store, "customer_churn_1.csv", result)
    with store.engine.connect() as conn:
        status, finished = conn.execute(
            text("SELECT status, finished_at FROM pipeline_runs WHERE id = :id"), {"id": run_id}
        ).one()
        metrics = dict(
            conn.execute(
                text("SELECT metric, value FROM run_metrics WHERE run_id = :id AND label IS NULL"),
                {"id": run_id},
            ).all()
        )
        column_type = conn.execute(
            text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_name = 'run_metrics' AND column_name = 'recorded_at'"
            )
        ).scalar()
    assert status == "processed"
    assert finished.utcoffset() is not None
    assert column_type == "timestamp with time zone"
    assert metrics == {
        "drifted_share": 1.0,
        "drifted_count": 1.0,
        "predicted_churn_rate": 0.2,
        "f1": 0.8,
    }


def test_read_only_role_with_a_nasty_name(store: MetricsStore, postgres_url: str) -> None:
    grant_read_only(store.engine, NASTY_ROLE, NASTY_PASSWORD)
    with store.engine.connect() as conn:
        roles = conn.execute(
            text("SELECT rolname FROM pg_roles WHERE rolname = :r"), {"r": NASTY_ROLE}
        ).all()
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ).scalars()
        assert list(tables) == sorted([*metadata.tables, "alembic_version"])  # none dropped
    assert roles == [(NASTY_ROLE,)]

    url = make_url(postgres_url).set(username=NASTY_ROLE, password=NASTY_PASSWORD)
    reader = create_engine(url, poolclass=NullPool)
    with reader.connect() as conn:
        for table in ("run_metrics", "pipeline_runs", "model_events"):
            count = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            assert isinstance(count, int)
    for statement in (
        "INSERT INTO pipeline_runs (id, file_name, bucket, object_key, status, started_at) "
        "VALUES ('x', 'f', 'b', 'k', 'running', now())",
        "UPDATE run_metrics SET value = 0",
        "DELETE FROM pipeline_runs",
        "CREATE TABLE intruder (id int)",
    ):
        refused(reader, statement)


def test_concurrent_starts_of_one_attempt_have_one_winner(store: MetricsStore) -> None:
    """The attempt's row id is the second line of defence behind the storage claim."""
    attempt = f"20261127T000000Z-{uuid.uuid4().hex[:8]}.1"
    start = partial(store.start_run, file_name="a.csv", bucket="b", object_key="k")
    outcomes = at_once(6, lambda _: start(run_id=attempt))
    assert outcomes.count(attempt) == 1, outcomes
    assert sum(isinstance(o, IntegrityError) for o in outcomes) == 5, outcomes
    assert (store.runs()["id"] == attempt).sum() == 1


def test_a_database_that_is_down_fails_in_seconds_with_a_clear_message() -> None:
    url = f"postgresql+psycopg2://nobody:x@127.0.0.1:{free_port(LOOPBACK)}/none"
    with pytest.raises(MetricsDatabaseUnavailable, match=r"unreachable for \d+s: "):
        MetricsStore(url, wait_seconds=1)


def test_a_frozen_database_fails_the_call_in_bounded_time_then_works_again(
    postgres_cluster: PostgresCluster,
) -> None:
    """SIGSTOP'ed, the server answers nothing: the client's bound (NETWORK_TIMEOUT_SECONDS)
    ends the wait, the store says the database is unreachable, and it recovers on SIGCONT."""
    with closing(MetricsStore(postgres_cluster.url, wait_seconds=1, timeout=2)) as store:
        start = partial(store.start_run, bucket="b", object_key="k")
        start(file_name="warm.csv")  # a pooled connection, open when the server freezes
        # A call still blocked after the 120 s backstop fails (TimeoutError), thawed, then joined.
        with ThreadPoolExecutor(1) as worker, postgres_cluster.frozen():
            error = worker.submit(start, file_name="frozen.csv").exception(timeout=120)
        assert isinstance(error, MetricsDatabaseUnavailable), error
        said = re.search(r"unreachable for (\d+)s", str(error))
        assert said and int(said[1]) >= 2, error  # the time it waited, not the 1 s wait
        start(file_name="after.csv")


def test_concurrent_lock_takers_have_one_winner_also_after_expiry(store: MetricsStore) -> None:
    """The retraining lock: of concurrent takers, the database lets exactly one in."""
    name = f"retrain-{uuid.uuid4().hex[:8]}"

    def race(seconds: float) -> list[bool]:
        return at_once(6, lambda n: store.acquire_lock(name, f"h{n}", seconds))

    assert sorted(race(60)) == [False] * 5 + [True]  # a new row
    with store.engine.begin() as conn:  # its holder died long ago
        conn.execute(
            text("UPDATE locks SET expires_at = now() - interval '1 minute' WHERE name = :n"),
            {"n": name},
        )
    assert sorted(race(60)) == [False] * 5 + [True]  # taking over an expired one


#: A first opening in a fresh interpreter: the per-process "upgraded once" set is empty.
FIRST_OPENING = (
    "import sys\n"
    "from churnops.monitoring.metrics_db import MetricsStore\n"
    "MetricsStore(sys.argv[1], wait_seconds=0).close()\n"
)


def test_first_openings_of_a_fresh_database_at_once_all_migrate_it(
    postgres_cluster: PostgresCluster,
) -> None:
    """Runners' first files on a fresh Postgres database (locally, as its owner) migrate it
    at the same time: the second CREATE TABLE failed on pg_type's unique index. Each DDL
    statement is slowed down here, so the migrations overlap every time."""
    url = postgres_cluster.new_database("fresh")
    fresh = create_engine(url, isolation_level="AUTOCOMMIT")
    with fresh.connect() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_ddl() RETURNS event_trigger LANGUAGE plpgsql "
                "AS $$ BEGIN PERFORM pg_sleep(0.2); END $$"
            )
        )
        conn.execute(
            text("CREATE EVENT TRIGGER slow_ddl ON ddl_command_end EXECUTE FUNCTION slow_ddl()")
        )
    fresh.dispose()
    openings = at_once(3, lambda _: run_python(FIRST_OPENING, url, timeout=120))
    assert [o.returncode for o in openings] == [0, 0, 0], [o.stderr[-600:] for o in openings]
    with closing(MetricsStore(url)) as store:
        assert store.runs().empty  # the schema is whole, at its version


def test_the_report_draws_as_the_dashboards_read_only_role(
    store: MetricsStore, postgres_url: str, tmp_path: Path
) -> None:
    """`churnops report` draws the dashboards' series, so their role is the one to read them
    with; it failed on alembic_version (359 lines of traceback): it migrated before reading."""
    processed_run(store, "reported.csv", NO_DRIFT)
    grant_read_only(store.engine, "report_reader", "report-pw")
    reader = make_url(postgres_url).set(username="report_reader", password="report-pw")
    monitoring = get_settings(
        churnops_home=tmp_path, database_url=reader.render_as_string(hide_password=False)
    ).monitoring
    files = write_report(monitoring, tmp_path / "report")
    assert files.runs >= 1 and files.png.stat().st_size > 0


def test_the_report_on_a_fresh_database_says_no_runs_yet(
    postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """Its administrator's report migrates a database nothing wrote to yet, then says so."""
    url = postgres_cluster.new_database("empty")
    monitoring = get_settings(churnops_home=tmp_path, database_url=url).monitoring
    with pytest.raises(NoRunsYet, match="no pipeline runs in"):
        write_report(monitoring, tmp_path / "report")


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
