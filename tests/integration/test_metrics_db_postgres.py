"""MetricsStore and the read-only dashboard role against a real PostgreSQL cluster."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from churnops.monitoring.db_roles import grant_read_only
from churnops.monitoring.metrics_db import MetricsDatabaseUnavailable, MetricsStore
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
        expected = [
            "alembic_version",
            "locks",
            "model_events",
            "pipeline_runs",
            "realized_scores",
            "run_metrics",
        ]
        assert list(tables) == expected  # none dropped
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
        outcome: list[Exception] = []

        def frozen_call() -> None:
            try:
                start(file_name="frozen.csv")
            except Exception as exc:
                outcome.append(exc)

        with postgres_cluster.frozen():
            worker = threading.Thread(target=frozen_call)
            worker.start()
            worker.join(timeout=120)  # a generous backstop: unbounded would hang forever
            assert not worker.is_alive(), "a frozen database blocked the call"
        assert isinstance(outcome[0], MetricsDatabaseUnavailable), outcome
        said = re.search(r"unreachable for (\d+)s", str(outcome[0]))
        assert said and int(said[1]) >= 2, outcome  # the time it waited, not the 1 s wait
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
