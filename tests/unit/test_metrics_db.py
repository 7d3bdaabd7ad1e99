"""MetricsStore against a SQLite file."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError, OperationalError

from churnops.monitoring.db_roles import grant_read_only
from churnops.monitoring.metrics_db import MetricsStore, make_engine, metadata
from churnops.results import ColumnDrift, MonitoringResult
from churnops.settings import OTHER_SCORE_MINIMUMS, get_settings
from tests.processes import run_python

COLUMNS = [
    ColumnDrift("call_failure", 0.73, "Wasserstein distance (normed)", 0.1, True),
    ColumnDrift("complains", 0.01, "Jensen-Shannon distance", 0.1, False),
    ColumnDrift("churn_prediction", 0.02, "Jensen-Shannon distance", 0.1, False),
]
QUALITY = {"f1": 0.75, "precision": 0.64, "recall": 0.9, "accuracy": 0.91, "roc_auc": 0.9}


def result(quality: dict[str, float] | None = None) -> MonitoringResult:
    return MonitoringResult(
        rows=1050,
        drifted_count=1,
        drifted_share=0.5,
        columns=COLUMNS,
        predicted_churn_rate=0.21,
        quality=QUALITY if quality is None else quality,
    )


@pytest.fixture
def store(tmp_path: Path) -> MetricsStore:
    return MetricsStore(f"sqlite:///{tmp_path / 'sub' / 'metrics.db'}")


def start(store: MetricsStore, **extra: object) -> str:
    return store.start_run(
        file_name="customer_churn_1.csv",
        bucket="churnops-drop",
        object_key="data/processing/customer_churn_1.csv",
        **extra,  # type: ignore[arg-type]
    )


def test_tables_and_indexes_are_created_on_first_use(store: MetricsStore) -> None:
    inspector = inspect(store.engine)
    tables = {"pipeline_runs", "run_metrics", "model_events", "realized_scores", "locks"}
    assert set(inspector.get_table_names()) == tables | {"alembic_version"}
    indexes = {i["name"] for i in inspector.get_indexes("run_metrics")}
    assert {"ix_run_metrics_recorded_at", "ix_run_metrics_metric_recorded_at"} <= indexes
    with store.engine.connect() as conn:  # the migrations build exactly the declared schema
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_run_lifecycle(store: MetricsStore) -> None:
    run_id = start(store, flow_run_id="f-1")
    running = store.runs().iloc[0]
    assert (running["id"], running["status"], running["finished_at"]) == (run_id, "running", None)
    store.finish_run(
        run_id,
        "processed",
        rows=1050,
        report_url="http://127.0.0.1:8000/projects/p/reports/s",
        model_name="XGBoostChurnModel",
        model_version="3",
    )
    run = store.runs().iloc[0]
    assert run["status"] == "processed"
    assert (run["rows"], run["model_version"], run["flow_run_id"]) == (1050, "3", "f-1")
    assert run["finished_at"].tzinfo is not None
    assert timedelta(0) <= run["finished_at"] - run["started_at"] < timedelta(minutes=1)
    errored = start(store)
    store.finish_run(errored, "errored", error="missing column 'churn'")
    run = store.runs().set_index("id").loc[errored]
    assert (run["status"], run["error"]) == ("errored", "missing column 'churn'")
    assert pd.isna(run["rows"])


def test_what_the_store_refuses(store: MetricsStore) -> None:
    with pytest.raises(ValueError, match="finish status"):
        store.finish_run(start(store), "running")
    with pytest.raises(KeyError, match="no pipeline run"):
        store.finish_run("nope", "processed")
    with pytest.raises(Exception, match="naive datetime"):
        start(store, started_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="need PostgreSQL"):
        grant_read_only(store.engine, "grafana_reader", "secret")
    with pytest.raises(IntegrityError):  # metrics need an existing run
        store.record_result("no-such-run", result())
    assert store.metrics().empty


def test_record_result_writes_the_long_rows(store: MetricsStore) -> None:
    run_id = start(store)
    when = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert store.record_result(run_id, result(), recorded_at=when) == 3 + 5 + 2 * len(COLUMNS)
    rows = store.metrics(run_id)
    by_metric = rows[rows["label"].isna()].set_index("metric")["value"].to_dict()
    run_level = {"drifted_share": 0.5, "drifted_count": 1.0, "predicted_churn_rate": 0.21}
    assert by_metric == run_level | QUALITY
    assert (rows["recorded_at"] == when).all()
    score = rows[(rows["metric"] == "drift_score") & (rows["label"] == "call_failure")].iloc[0]
    assert (score["value"], score["method"], score["threshold"]) == (
        0.73,
        "Wasserstein distance (normed)",
        0.1,
    )
    flags = rows[rows["metric"] == "column_drifted"].set_index("label")["value"].to_dict()
    assert flags == {"call_failure": 1.0, "complains": 0.0, "churn_prediction": 0.0}

    # The thresholds in effect are stored with their metrics: a later change of the
    # settings must not recolour what an earlier file was judged by.
    strict = get_settings(drift_share_threshold=0.25, min_f1=0.9)
    judged = start(store)
    store.record_result(judged, result(), thresholds=strict.monitoring.alert_thresholds)
    rows = store.metrics(judged)
    run_level = rows[rows["label"].isna()].set_index("metric")["threshold"]
    assert run_level["drifted_share"] == 0.25
    assert run_level["f1"] == 0.9
    assert run_level["precision"] == OTHER_SCORE_MINIMUMS["precision"]
    assert pd.isna(run_level["roc_auc"])  # no alert on ROC AUC
    assert pd.isna(run_level["predicted_churn_rate"])
    unlabeled = start(store)
    store.record_result(unlabeled, result(quality={}))
    assert not set(store.metrics(unlabeled)["metric"]) & set(QUALITY)  # none measured


def test_from_settings_uses_a_sqlite_file_under_home(tmp_path: Path) -> None:
    store = MetricsStore.from_settings(
        get_settings(churnops_home=tmp_path, database_url=None).monitoring
    )
    start(store)
    assert (tmp_path / "metrics.db").is_file()
    assert len(store.runs()) == 1


def test_a_database_from_before_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    """The first release made its tables with create_all: no alembic_version, no 'failed'."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(OLD_PIPELINE_RUNS))
        conn.execute(
            text(
                "INSERT INTO pipeline_runs (id, file_name, bucket, object_key, status, started_at)"
                " VALUES ('old', 'a.csv', 'b', 'k', 'processed', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    store = MetricsStore(url)
    run_id = start(store, run_id="20261127T000000Z-00000000.1")
    store.finish_run(run_id, "failed", error="MLflow down")
    runs = store.runs().set_index("id")
    assert runs.loc["old", "status"] == "processed"
    assert runs.loc[run_id, "status"] == "failed"
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(text("UPDATE pipeline_runs SET status = 'bogus'"))


OLD_PIPELINE_RUNS = """
CREATE TABLE pipeline_runs (
    id VARCHAR(36) NOT NULL PRIMARY KEY, flow_run_id VARCHAR(36), file_name VARCHAR(512) NOT NULL,
    bucket VARCHAR(255) NOT NULL, object_key VARCHAR(1024) NOT NULL, model_name VARCHAR(255),
    model_version VARCHAR(64), rows INTEGER, status VARCHAR(16) NOT NULL,
    started_at DATETIME NOT NULL, finished_at DATETIME, report_url TEXT, error TEXT,
    CONSTRAINT ck_pipeline_runs_status CHECK (status IN ('running', 'processed', 'errored'))
)
"""


def test_close_if_running_touches_only_running_rows(store: MetricsStore) -> None:
    dead = start(store, run_id="R.1")
    done = start(store, run_id="R.2")
    store.finish_run(done, "processed", rows=3)
    assert store.close_if_running(dead, "the attempt died")
    assert not store.close_if_running(done, "the attempt died")
    runs = store.runs().set_index("id")
    assert (runs.loc[dead, "status"], runs.loc[dead, "error"]) == ("failed", "the attempt died")
    assert runs.loc[done, "status"] == "processed" and runs.loc[done, "error"] is None
    assert store.running() == []
    assert (store.failed_with(dead), store.failed_with(done)) == ("the attempt died", None)


def test_a_bare_postgresql_url_uses_the_installed_driver() -> None:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3, which ChurnOps does not install."""
    engine = make_engine("postgresql://reader:secret@db.internal:5432/metrics")
    assert engine.dialect.driver == "psycopg2"
    engine.dispose()


def test_model_events_are_stored_in_time_order(store: MetricsStore) -> None:
    early = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    common = {"model_name": "M", "reason": "why", "trigger": "manual"}
    store.record_model_event(
        version="3", parent_version="2", event="refused", holdout_f1=0.6, champion_f1=0.7, **common
    )
    store.record_model_event(at=early, version="2", parent_version="1", event="promoted", **common)
    events = store.model_events()
    assert list(events["version"]) == ["2", "3"]
    assert list(events["event"]) == ["promoted", "refused"]
    assert events["at"].iloc[0] == early
    with pytest.raises(IntegrityError):
        store.record_model_event(version="4", event="kept", **common)


def test_a_lock_has_one_holder_until_it_is_released_or_expires(store: MetricsStore) -> None:
    assert store.lock_state("retrain") is None
    assert store.acquire_lock("retrain", "first", seconds=60)
    assert not store.acquire_lock("retrain", "second", seconds=60)
    state = store.lock_state("retrain")
    assert state is not None and state.holder == "first"
    assert state.held(datetime.now(UTC))
    store.release_lock("retrain", "second")  # not the holder: nothing changes
    assert store.lock_state("retrain").held(datetime.now(UTC))
    store.release_lock("retrain", "first")
    released = store.lock_state("retrain")
    assert not released.held(datetime.now(UTC))
    assert released.acquired_at == state.acquired_at  # the last start stays readable
    assert store.acquire_lock("retrain", "second", seconds=0.001)
    time.sleep(0.01)
    assert store.acquire_lock("retrain", "third", seconds=60)  # the second one's expired
    assert store.lock_state("retrain").holder == "third"


#: In a fresh interpreter: the first opening of ``sys.argv[1]`` killed (SIGKILL) right
#: after it created the table ``pipeline_runs``, midway through its migrations.
KILLED_MIDWAY = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "after_cursor_execute")
def die(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE TABLE PIPELINE_RUNS"):
        os.kill(os.getpid(), signal.SIGKILL)

from churnops.monitoring.metrics_db import MetricsStore
MetricsStore(sys.argv[1])
"""


def test_a_first_opening_killed_midway_leaves_a_database_the_next_one_migrates(
    tmp_path: Path,
) -> None:
    """SQLite's DDL runs in the migration's transaction: a platform killed while it made
    the database leaves nothing half made (it left tables without their version, and every
    later opening failed on "table pipeline_runs already exists")."""
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    killed = run_python(KILLED_MIDWAY, url)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    store = MetricsStore(url)
    assert store.runs().empty
    store.close()


def test_a_write_whose_commit_answer_is_lost_is_not_stored_twice(
    store: MetricsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server committed, then the connection broke before its answer arrived (found on
    Postgres behind a proxy that dropped the COMMIT's answer: the retry stored every metric
    of the file a second time under the same run). Here each write's first commit succeeds,
    then fails."""
    run_id, labels = start(store), start(store, kind="labels")
    dialect, lost = store.engine.dialect, []
    commit = dialect.do_commit

    def commit_then_lose_the_answer(dbapi_connection: object) -> None:
        commit(dbapi_connection)
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(dialect, "do_commit", commit_then_lose_the_answer)
    written = store.record_result(run_id, result())
    assert lost and len(store.metrics(run_id)) == written
    lost.clear()
    store.record_realized(
        run_id=run_id,
        labels_run_id=labels,
        labels_file="labels.csv",
        arrived_at=datetime.now(UTC),
        matched_by="rows",
        labeled_rows=10,
        scores={"f1": 0.8, "roc_auc": 0.9},
    )
    assert lost and len(store.realized(run_id)) == 2
    lost.clear()
    assert start(store, run_id="run-3") == "run-3"  # its retry found its own row
    assert lost and len(store.runs()) == 3
    with pytest.raises(IntegrityError):  # another start of that attempt: not its row
        start(store, run_id="run-3")
    lost.clear()
    verdict = {"model_name": "M", "reason": "why", "trigger": "auto", "event": "promoted"}
    store.record_model_event(version="2", mlflow_run_id="mlflow-run", **verdict)
    assert lost and len(store.model_events()) == 1
    lost.clear()
    assert store.acquire_lock("retrain", "me", 60)  # its retry found its own row: taken
    assert lost and store.lock_state("retrain").holder == "me"
    assert not store.acquire_lock("retrain", "another", 60)
