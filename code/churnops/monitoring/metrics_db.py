"""The metrics database behind the Grafana dashboards (SQLAlchemy 2; SQLite by default,
Postgres through ``DATABASE_URL``; schema by Alembic, upgraded once per process).

``pipeline_runs`` has a row per file, ``run_metrics`` a row per number (``metric``,
``label``: the column, ``method``), so a panel is one ``WHERE metric = ...`` away;
``realized_scores`` from late labels, ``model_events`` per retraining verdict, ``locks``
(not for dashboards). A write is retried for ``DEPENDENCY_WAIT_SECONDS`` while the
database is unreachable, then fails clearly: an outage is not a bad file.
"""

from __future__ import annotations

import math
import select as _select
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError

from churnops import retry
from churnops.results import ATTRIBUTION_NDCG, DRIFTED_SHARE, MonitoringResult
from churnops.settings import MonitoringSettings

RUNNING, PROCESSED, ERRORED, FAILED = "running", "processed", "errored", "failed"
#: Postgres' SQLSTATE of "permission denied".
INSUFFICIENT_PRIVILEGE = "42501"
STATUSES = (RUNNING, PROCESSED, ERRORED, FAILED)
#: Statuses that end a run; FAILED means "a dependency failed, the file waits for a retry".
FINAL_STATUSES = (PROCESSED, ERRORED, FAILED)
#: ``pipeline_runs.kind``: what the run's file was.
SCORING, LABELS = "scoring", "labels"
KINDS = (SCORING, LABELS)

#: ``run_metrics.metric`` values (and DRIFTED_SHARE and QUALITY_METRICS from results).
DRIFTED_COUNT = "drifted_count"
DRIFT_SCORE = "drift_score"
COLUMN_DRIFTED = "column_drifted"
PREDICTED_CHURN_RATE = "predicted_churn_rate"
#: Per feature (``label``): the file's mean |SHAP| and its rank (1 = most important).
ATTRIBUTION = "attribution"
ATTRIBUTION_RANK = "attribution_rank"
ATTRIBUTION_METHOD = "mean |SHAP| (TreeSHAP)"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, also on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("flow_run_id", String(36), nullable=True),
    Column("file_name", String(512), nullable=False),
    Column("bucket", String(255), nullable=False),
    Column("object_key", String(1024), nullable=False),
    Column("model_name", String(255), nullable=True),
    Column("model_version", String(64), nullable=True),
    Column("rows", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("report_url", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("kind", String(16), nullable=False, server_default=SCORING),
    CheckConstraint(f"status IN {STATUSES!r}", name="ck_pipeline_runs_status"),
    CheckConstraint(f"kind IN {KINDS!r}", name="ck_pipeline_runs_kind"),
    Index("ix_pipeline_runs_started_at", "started_at"),
    Index("ix_pipeline_runs_status_started_at", "status", "started_at"),
)

run_metrics = Table(
    "run_metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "run_id", String(36), ForeignKey("pipeline_runs.id", ondelete="CASCADE"), nullable=False
    ),
    Column("metric", String(64), nullable=False),
    Column("label", String(255), nullable=True),
    Column("value", Float, nullable=False),
    Column("method", String(128), nullable=True),
    Column("threshold", Float, nullable=True),
    Column("recorded_at", UtcDateTime, nullable=False),
    Index("ix_run_metrics_recorded_at", "recorded_at"),
    Index("ix_run_metrics_metric_recorded_at", "metric", "recorded_at"),
    Index("ix_run_metrics_run_id", "run_id"),
)

#: Realized scores of a scoring run (``run_id``), from a labels file that arrived later.
realized_scores = Table(
    "realized_scores",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column(
        "labels_run_id",
        String(36),
        ForeignKey("pipeline_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("labels_file", String(512), nullable=False),
    Column("labels_arrived_at", UtcDateTime, nullable=False),
    Column("matched_by", String(255), nullable=False),
    Column("labeled_rows", Integer, nullable=False),
    Column("metric", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=True),
    Index("ix_realized_scores_run_id", "run_id"),
    Index("ix_realized_scores_arrived_at", "labels_arrived_at"),
)

#: ``model_events.event`` and ``model_events.trigger`` values.
MODEL_EVENTS = ("promoted", "refused")
TRIGGERS = ("manual", "auto")

model_events = Table(
    "model_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False),
    Column("model_name", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("parent_version", String(64), nullable=True),
    Column("event", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("holdout_f1", Float, nullable=True),
    Column("champion_f1", Float, nullable=True),
    Column("trigger", String(16), nullable=False),
    Column("mlflow_run_id", String(64), nullable=True),
    CheckConstraint(f"event IN {MODEL_EVENTS!r}", name="ck_model_events_event"),
    CheckConstraint(f"trigger IN {TRIGGERS!r}", name="ck_model_events_trigger"),
    Index("ix_model_events_at", "at"),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)


@dataclass(frozen=True)
class LockState:
    holder: str
    acquired_at: datetime
    expires_at: datetime

    def held(self, now: datetime) -> bool:
        return now < self.expires_at


def metric_rows(
    result: MonitoringResult, thresholds: Mapping[str, float] | None = None
) -> Iterator[dict[str, Any]]:
    """The long rows of one result, with the alert ``thresholds`` in effect, so the
    dashboards draw the limits each file was judged by."""
    limits = thresholds or {}
    yield {
        "metric": DRIFTED_SHARE,
        "value": result.drifted_share,
        "threshold": limits.get(DRIFTED_SHARE),
    }
    yield {"metric": DRIFTED_COUNT, "value": float(result.drifted_count)}
    yield {"metric": PREDICTED_CHURN_RATE, "value": result.predicted_churn_rate}
    for name, value in result.quality.items():
        yield {"metric": name, "value": value, "threshold": limits.get(name)}
    for column in result.columns:
        detail = {"label": column.column, "method": column.method, "threshold": column.threshold}
        yield {"metric": DRIFT_SCORE, "value": column.score, **detail}
        yield {"metric": COLUMN_DRIFTED, "value": float(column.drifted), **detail}
    if (attribution := result.attribution) is not None:
        minimum, method = limits.get(ATTRIBUTION_NDCG), ATTRIBUTION_METHOD
        yield {"metric": ATTRIBUTION_NDCG, "value": attribution.ndcg, "threshold": minimum}
        for feature in attribution.features:
            label = {"label": feature.feature}
            yield {"metric": ATTRIBUTION, "value": feature.importance, **label, "method": method}
            yield {"metric": ATTRIBUTION_RANK, "value": float(feature.rank), **label}


def make_engine(
    url: str | URL, timeout: float | None = None, *, all_or_nothing: bool = False
) -> Engine:
    """An engine whose every wait is bounded by ``timeout`` seconds: on Postgres the
    connection, each statement and each wait for an answer (:func:`_wait_bounded`: a frozen
    server answers nothing); SQLite's lock. A bare ``postgresql://`` means psycopg2, the driver we
    install (SQLAlchemy 2.1 would pick psycopg 3)."""
    url = make_url(url)
    timeout = retry.NETWORK_TIMEOUT_SECONDS if timeout is None else timeout
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() == "postgresql":
        import psycopg2.extensions

        psycopg2.extensions.set_wait_callback(_wait_bounded)
        seconds = max(1, math.ceil(timeout))
        bounds = {"connect_timeout": seconds, "options": f"-c statement_timeout={seconds}s"}
        return create_engine(url, pool_pre_ping=True, connect_args=bounds)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    # all_or_nothing: transactions left to SQLAlchemy, taken at once (:func:`_all_or_nothing`)
    own = {"isolation_level": None} if all_or_nothing else {}
    engine = create_engine(url, connect_args={"timeout": timeout} | own)
    event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys = ON"))
    if all_or_nothing:
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return engine


def _wait_bounded(conn: Any) -> None:
    """psycopg2's wait for an answer, bounded by the connection's ``connect_timeout`` (the
    callback is process-wide). SQLAlchemy takes the message for a lost connection."""
    import psycopg2
    from psycopg2.extensions import POLL_OK, POLL_READ, POLL_WRITE, parse_dsn

    limit = float(parse_dsn(conn.dsn).get("connect_timeout") or 0) or None
    deadline = None if limit is None else time.monotonic() + limit
    while (state := conn.poll()) != POLL_OK:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise psycopg2.OperationalError(
                f"could not receive data from server: no answer within {limit:.0f}s"
            )
        if state not in (POLL_READ, POLL_WRITE):
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        reading = [conn.fileno()] if state == POLL_READ else []
        _select.select(reading, [] if reading else [conn.fileno()], [], left)


def _any(table: Table, column: str, key: str) -> Any:
    """The query for one row of ``table`` whose ``column`` is ``key`` (is any stored?)."""
    return select(table.c.id).where(table.c[column] == key).limit(1)


def fitted(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """The row with each text cut to its column's length: a 600-character S3 key's run must
    still be recorded (as errored), not fail the insert forever."""
    cut = {}
    for name, value in row.items():
        length = getattr(table.c[name].type, "length", None)
        if isinstance(value, str) and length and len(value) > length:
            value = value[: length - 1] + "…"
        cut[name] = value
    return cut


class MetricsStore:
    """Writes and reads pipeline runs and their metrics."""

    def __init__(
        self,
        url: str | URL,
        wait_seconds: float | None = None,
        timeout: float | None = None,
        *,
        migrate: bool = True,
    ) -> None:
        self.engine = make_engine(url, timeout)
        self.wait_seconds = retry.DEPENDENCY_WAIT_SECONDS if wait_seconds is None else wait_seconds
        if migrate:
            self._retry(upgrade, self.engine)

    @classmethod
    def from_settings(cls, monitoring: MonitoringSettings) -> MetricsStore:
        return cls(monitoring.metrics_db_url)

    @classmethod
    def for_reading(cls, monitoring: MonitoringSettings) -> MetricsStore:
        """A store that only reads, migrated first when its user may: not when it is the
        dashboards' role, which reads the dashboard tables and not even alembic_version."""
        store = cls(monitoring.metrics_db_url, migrate=False)
        try:
            store._retry(upgrade, store.engine)
        except ProgrammingError as exc:
            if getattr(exc.orig, "pgcode", None) != INSUFFICIENT_PRIVILEGE:
                store.close()
                raise
        return store

    def _retry(self, function: Callable[..., Any], *args: Any) -> Any:
        retrying = retry.call(_is_unreachable, within=self.wait_seconds)
        started = time.monotonic()
        try:
            return retrying(function, *args)
        except DBAPIError as exc:
            if not _is_unreachable(exc):
                raise
            where = self.engine.url.render_as_string(hide_password=True)
            waited = time.monotonic() - started  # a frozen server: its timeouts, past the wait
            raise MetricsDatabaseUnavailable(
                f"metrics database {where} unreachable for {waited:.0f}s: "
                f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}"
            ) from exc

    def start_run(
        self,
        *,
        file_name: str,
        bucket: str,
        object_key: str,
        flow_run_id: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        started_at: datetime | None = None,
        run_id: str | None = None,
        kind: str = SCORING,
    ) -> str:
        run_id = run_id or str(uuid.uuid4())
        row = {
            "id": run_id,
            "kind": kind,
            "flow_run_id": flow_run_id,
            "file_name": file_name,
            "bucket": bucket,
            "object_key": object_key,
            "model_name": model_name,
            "model_version": model_version,
            "status": RUNNING,
            "started_at": started_at or datetime.now(UTC),
        }
        tries = []

        def insert_row() -> None:
            tries.append(1)
            try:
                self._execute(insert(pipeline_runs), fitted(pipeline_runs, row))
            except IntegrityError:
                # The row's id is one attempt's: of concurrent starts one wins. A retry that
                # finds the row this call stored (its commit's answer was lost) wins too.
                if len(tries) == 1 or self._started_at(run_id) != row["started_at"]:
                    raise

        self._retry(insert_row)
        return run_id

    def _started_at(self, run_id: str) -> datetime | None:
        query = select(pipeline_runs.c.started_at).where(pipeline_runs.c.id == run_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def _execute(self, statement: Any, rows: Any = None) -> int:
        with self.engine.begin() as conn:
            return conn.execute(statement, rows).rowcount

    def _write(self, statement: Any, rows: Any = None) -> int:
        """One transaction, retried while the database is unreachable; the rows it hit."""
        return self._retry(self._execute, statement, rows)

    def _write_once(self, table: Table, column: str, key: str, rows: list[dict]) -> int:
        """Insert ``rows`` into ``table`` unless it holds rows whose ``column`` is ``key``: a
        connection lost after the server committed but before its answer arrived fails the
        try that stored them, and the retry must not store them again. How many rows."""

        def once() -> None:
            with self.engine.begin() as conn:
                if conn.execute(_any(table, column, key)).first() is None:
                    conn.execute(insert(table), [fitted(table, row) for row in rows])

        self._retry(once)
        return len(rows)

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        rows: int | None = None,
        report_url: str | None = None,
        error: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        finished_at: datetime | None = None,
    ) -> None:
        """Close a run; unset arguments keep their value."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status must be one of {FINAL_STATUSES}, not {status!r}")
        given = {
            "rows": rows,
            "report_url": report_url,
            "error": error,
            "model_name": model_name,
            "model_version": model_version,
        }
        values = {k: v for k, v in given.items() if v is not None}
        values |= {"status": status, "finished_at": finished_at or datetime.now(UTC)}
        statement = update(pipeline_runs).where(pipeline_runs.c.id == run_id).values(values)
        if self._write(statement) != 1:
            raise KeyError(f"no pipeline run with id {run_id!r}")

    def record_result(
        self,
        run_id: str,
        result: MonitoringResult,
        *,
        thresholds: Mapping[str, float] | None = None,
        recorded_at: datetime | None = None,
    ) -> int:
        """Every number of ``result`` in one transaction, once per run (a retry after a lost
        answer stores nothing twice); return how many rows."""
        stamp = {"run_id": run_id, "recorded_at": recorded_at or datetime.now(UTC)}
        rows = [
            {"label": None, "method": None, "threshold": None, **row, **stamp}
            for row in metric_rows(result, thresholds)
        ]
        return self._write_once(run_metrics, "run_id", run_id, rows)

    def record_realized(
        self,
        *,
        run_id: str,
        labels_run_id: str,
        labels_file: str,
        arrived_at: datetime,
        matched_by: str,
        labeled_rows: int,
        scores: Mapping[str, float],
        thresholds: Mapping[str, float] | None = None,
    ) -> int:
        """The realized scores of run ``run_id`` from one labels file (its run ``labels_run_id``
        stores them once); how many rows."""
        limits = thresholds or {}
        common = {
            "run_id": run_id,
            "labels_run_id": labels_run_id,
            "labels_file": labels_file,
            "labels_arrived_at": arrived_at,
            "matched_by": matched_by,
            "labeled_rows": labeled_rows,
        }
        rows = [
            {**common, "metric": metric, "value": value, "threshold": limits.get(metric)}
            for metric, value in scores.items()
        ]
        return self._write_once(realized_scores, "labels_run_id", labels_run_id, rows)

    def realized(self, run_id: str | None = None) -> pd.DataFrame:
        """Realized scores (of one scoring run, or all), oldest labels first."""
        return self._frame(realized_scores, run_id)

    def record_model_event(self, **row: Any) -> None:
        """One retraining verdict (columns of ``model_events``; ``at`` defaults to now), once
        per MLflow run when it names one."""
        row = {"at": datetime.now(UTC), **row}
        if run := row.get("mlflow_run_id"):
            self._write_once(model_events, "mlflow_run_id", run, [row])
        else:
            self._write(insert(model_events), row)

    def last_verdict_at(self) -> datetime | None:
        """When the last retraining reached a verdict, if one did: the cooldown counts from
        it (a retraining that skipped or failed trained nothing, so it holds nothing back)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.max(model_events.c.at))).scalar()

    def model_events(self) -> pd.DataFrame:
        return self._frame(select(model_events).order_by(model_events.c.at, model_events.c.id))

    def acquire_lock(
        self, name: str, holder: str, seconds: float, take_from: str | None = None
    ) -> bool:
        """Take the lock ``name`` for ``seconds`` unless another holder has it (an expired
        one's, or ``take_from``'s, a holder known dead, is taken over by a conditional
        update): of concurrent callers exactly one gets True. ``holder``'s own row is taken
        too: an insert whose commit's answer was lost is retried and finds it."""
        now = datetime.now(UTC)
        row = {"holder": holder, "acquired_at": now, "expires_at": now + timedelta(seconds=seconds)}
        with suppress(IntegrityError):  # taken: try the takeover below
            self._write(insert(locks), {"name": name, **row})
            return True
        free = or_(locks.c.expires_at <= now, locks.c.holder == holder)
        if take_from is not None:
            free = or_(free, locks.c.holder == take_from)
        expired = update(locks).where(locks.c.name == name, free)
        return self._write(expired.values(row)) == 1

    def release_lock(self, name: str, holder: str) -> None:
        """End ``holder``'s lock now; the row keeps when it was taken (the last start)."""
        mine = update(locks).where(locks.c.name == name, locks.c.holder == holder)
        self._write(mine.values(expires_at=datetime.now(UTC)))

    def lock_state(self, name: str) -> LockState | None:
        """The lock's last holder, or None when it was never taken."""
        query = select(locks.c.holder, locks.c.acquired_at, locks.c.expires_at).where(
            locks.c.name == name
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return LockState(*row) if row else None

    def adopt_metrics(self, run_id: str, earlier: list[str]) -> int:
        """The metrics of the latest of the ``earlier`` attempts (oldest first) that stored
        any become ``run_id``'s: one that died after moving its file to processed/ is
        closed failed, and the dashboards read processed runs' metrics only. None when
        ``run_id`` stored its own (it moved the file, then failed only its row's closing)."""
        with self.engine.connect() as conn:
            if conn.execute(_any(run_metrics, "run_id", run_id)).first() is not None:
                return 0
        for attempt in reversed(earlier):
            moved = update(run_metrics).where(run_metrics.c.run_id == attempt)
            if adopted := self._write(moved.values(run_id=run_id)):
                return adopted
        return 0

    def close_if_running(self, run_id: str, error: str, status: str = FAILED) -> bool:
        """Close a run still ``running`` as ``status`` (``failed``: its attempt died; or how
        its attempt ended when only the row's closing failed); True if it was running."""
        statement = (
            update(pipeline_runs)
            .where(pipeline_runs.c.id == run_id, pipeline_runs.c.status == RUNNING)
            .values(status=status, error=error, finished_at=datetime.now(UTC))
        )
        return self._write(statement) == 1

    def failed_with(self, run_id: str) -> str | None:
        """The error of the run when its row says ``failed``, else None."""
        query = select(pipeline_runs.c.error).where(
            pipeline_runs.c.id == run_id, pipeline_runs.c.status == FAILED
        )
        with self.engine.connect() as conn:
            error = conn.execute(query).scalar_one_or_none()
        return None if error is None else str(error)

    def running(self) -> list[str]:
        """Ids of the runs still marked running (for the reconciler)."""
        query = select(pipeline_runs.c.id).where(pipeline_runs.c.status == RUNNING)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def attempts_of(self, flow_run_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Flow run id -> (row id, status) of its attempt (none if it claimed nothing)."""
        query = select(pipeline_runs.c.flow_run_id, pipeline_runs.c.id, pipeline_runs.c.status)
        query = query.where(pipeline_runs.c.flow_run_id.in_(flow_run_ids))
        with self.engine.connect() as conn:
            return {flow_run: (row, status) for flow_run, row, status in conn.execute(query)}

    def runs(self) -> pd.DataFrame:
        """All runs, newest first."""
        query = select(pipeline_runs).order_by(pipeline_runs.c.started_at.desc())
        return self._frame(query)

    def metrics(self, run_id: str | None = None) -> pd.DataFrame:
        """The metric rows of one run (or of all runs), in insertion order."""
        return self._frame(run_metrics, run_id)

    def _frame(self, query: Any, run_id: str | None = None) -> pd.DataFrame:
        """A query's rows, or a table's by id (of one run if ``run_id``)."""
        if isinstance(query, Table):
            table = query
            query = select(table).order_by(table.c.id)
            if run_id is not None:
                query = query.where(table.c.run_id == run_id)
        with self.engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.mappings().all(), columns=list(result.keys()))

    def close(self) -> None:
        self.engine.dispose()


#: What the dashboards' read-only role may read (and nothing else, e.g. ``locks``).
DASHBOARD_TABLES = (pipeline_runs, run_metrics, model_events, realized_scores)


class MetricsDatabaseUnavailable(RuntimeError):
    """The metrics database could not be reached within the wait: retry the file later."""


def _is_unreachable(exc: BaseException) -> bool:
    """Connection refused, reset or timed out: worth waiting for, unlike a bad statement."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


_upgraded: set[str] = set()
_upgrade_lock = threading.Lock()
_MIGRATIONS = Path(__file__).parent / "migrations"


def upgrade(engine: Engine) -> None:
    """``alembic upgrade head``, once per database and process. A database made before
    migrations (tables, no ``alembic_version``) is stamped at 0001, the schema it has."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    key = engine.url.render_as_string(hide_password=False)
    with _upgrade_lock:
        if key in _upgraded:
            return
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        migrating = _all_or_nothing(engine)
        try:
            with migrating.begin() as conn:
                # Postgres: this transaction waits for any other migration first. Two runners'
                # first files on a fresh database both found no tables, and the second's CREATE
                # TABLE failed on pg_type's unique index. SQLite: BEGIN IMMEDIATE does it.
                if conn.dialect.name == "postgresql":
                    lock = {"key": MIGRATION_LOCK_KEY}
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), lock)
                config.attributes["connection"] = conn
                tables = set(inspect(conn).get_table_names())
                if "alembic_version" not in tables and pipeline_runs.name in tables:
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
        finally:
            if migrating is not engine:
                migrating.dispose()
        _upgraded.add(key)


#: Postgres advisory lock of the migrations ("churnops" + 1; db_roles holds "churnops"
#: itself while it migrates, on another connection).
MIGRATION_LOCK_KEY = 0x636875726E6F7074


def _all_or_nothing(engine: Engine) -> Engine:
    """The engine to migrate with. SQLite: one whose DDL runs in the migration's one
    transaction, taken at once (``BEGIN IMMEDIATE``), so a process killed midway leaves
    nothing half made and two first openings wait their turn. pysqlite commits each DDL
    statement by itself (SQLAlchemy's pysqlite notes give this fix); Postgres' DDL is
    transactional as it is."""
    if engine.url.get_backend_name() != "sqlite":
        return engine
    return make_engine(engine.url, all_or_nothing=True)
