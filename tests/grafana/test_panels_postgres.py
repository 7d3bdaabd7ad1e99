"""Every panel's SQL, expanded as Grafana expands it, run as the read-only role on real Postgres."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from churnops.data.features import FEATURES
from churnops.monitoring.db_roles import grant_read_only
from churnops.monitoring.metrics_db import ATTRIBUTION_RANK, MetricsStore
from churnops.results import QUALITY_METRICS
from churnops.settings import MonitoringSettings
from tests.fixtures.postgres import NO_DRIFT, PostgresCluster, processed_run

from .conftest import (
    FIRST_RUN,
    LABELED,
    LABELS_AT,
    LABELS_FILE,
    LAST_RUN,
    PLAN,
    REDRIVEN,
    RUN_SPACING,
    started_at,
)
from .grafana_macros import ALL, Query, UnknownMacro, dashboard, expand, panel_sql

READER = "grafana_dashboard_reader"
PANELS = dashboard()["panels"]
PANEL = {p["title"]: p for p in PANELS}
VARIABLES = {v["name"]: v["query"] for v in dashboard()["templating"]["list"]}
#: Every run's file: the planned ones and the late labels.
FILES = sorted({p.file_name for p in PLAN} | {LABELS_FILE})
#: Errored runs have no model version: the dashboard shows them as "unknown".
VERSIONS = sorted({"unknown" if p.errored else p.model_version for p in PLAN})
PROCESSED_RUNS = [p for p in PLAN if not p.errored]


class Rows:
    """A result set: column names and rows."""

    def __init__(self, cursor: Any) -> None:
        self.columns = [d.name for d in cursor.description]
        self.rows = cursor.fetchall()

    def column(self, name: str) -> list[Any]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


def reader_of(database_url: str, role: str = READER) -> Any:
    """A TCP connection with the read-only role's password, as Grafana connects."""
    password = secrets.token_urlsafe(16)
    grant_read_only(database_url, role, password)
    url = make_url(database_url)
    conn = psycopg2.connect(
        host=url.host, port=url.port, dbname=url.database, user=role, password=password
    )
    conn.autocommit = True  # one statement per panel, like Grafana; a failure spoils nothing
    return conn


@pytest.fixture(scope="module")
def reader(pipeline_postgres_url: str) -> Iterator[Any]:
    with closing(reader_of(pipeline_postgres_url)) as conn:
        yield conn


def everything(**selected: list[str]) -> Query:
    """The whole data set in range, "All" selected unless ``selected`` says otherwise."""
    return Query(
        time_from=FIRST_RUN - timedelta(hours=1),
        time_to=LAST_RUN + timedelta(hours=1),
        interval=timedelta(minutes=1),
        selected={"model_version": [ALL], "file": [ALL], **selected},
        options={"model_version": VERSIONS, "file": FILES},
    )


def run(reader: Any, sql: str, query: Query) -> Rows:
    with reader.cursor() as cursor:
        cursor.execute(expand(sql, query))
        return Rows(cursor)


def drawn(reader: Any, title: str, query: Query | None = None) -> Rows:
    """What the panel called ``title`` draws (its query A), by default of everything."""
    return run(reader, panel_sql(PANEL[title]), query or everything())


def expected_columns(panel: dict[str, Any]) -> set[str]:
    """What the panel's JSON refers to: a time column, the stat field, override names."""
    if panel["type"] == "timeseries":
        return {"time"}
    if panel["type"] == "stat":
        return {panel["options"]["reduceOptions"]["fields"].strip("/^$")}
    return {
        o["matcher"]["options"]
        for o in panel["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byName"
    }


def test_variable_queries_list_versions_and_files(reader: Any) -> None:
    query = everything()
    assert [r[0] for r in run(reader, VARIABLES["model_version"], query).rows] == VERSIONS
    assert [r[0] for r in run(reader, VARIABLES["file"], query).rows] == FILES
    only_2 = everything(model_version=["2"])
    assert "customer_churn_broken.csv" not in [
        r[0] for r in run(reader, VARIABLES["file"], only_2).rows
    ]


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_panel_returns_rows_with_the_columns_it_uses(reader: Any, panel: dict[str, Any]) -> None:
    result = run(reader, panel_sql(panel), everything())
    assert result.rows, f"{panel['title']}: no rows"
    assert expected_columns(panel) <= set(result.columns), result.columns
    if panel["type"] == "timeseries":
        assert result.column("time") == sorted(result.column("time")), "not sorted by time"
        values = [c for c in result.columns if c not in ("time", "metric")]
        assert values and all(isinstance(v, float | int) for c in values for v in result.column(c))


def test_scores_have_a_point_per_processed_file_and_metric(reader: Any) -> None:
    result = drawn(reader, "Scores over time")
    assert len(result.rows) == len(PROCESSED_RUNS) * (len(QUALITY_METRICS) + 1)
    assert set(result.column("metric")) == {*QUALITY_METRICS, "alert minimum"}
    assert len(set(result.column("time"))) == len(PROCESSED_RUNS)


def test_realized_scores_are_drawn_at_the_time_the_labeled_file_was_scored(reader: Any) -> None:
    result = drawn(reader, "Realized scores (late labels)")
    assert set(result.column("metric")) == {*QUALITY_METRICS, "alert minimum"}
    assert set(result.column("time")) == {started_at(LABELED).timestamp()}
    scores = drawn(reader, "Scores over time")
    at_scoring = {
        m: v
        for t, m, v in zip(*(scores.column(c) for c in ("time", "metric", "value")), strict=True)
        if t == (started_at(LABELED) + timedelta(minutes=5)).timestamp()  # metrics recorded
    }
    assert at_scoring
    realized = dict(zip(result.column("metric"), result.column("value"), strict=True))
    assert realized == pytest.approx(at_scoring)  # the same labels, scored twice


def test_realized_scores_keep_the_processed_labels_when_later_ones_fail(
    reader: Any, pipeline_postgres_url: str
) -> None:
    """A second labels file for the same run arrives later and its run fails: the panel
    still draws the processed labels' scores (before: none, until the retry succeeded)."""
    title = "Realized scores (late labels)"
    before = drawn(reader, title).rows
    engine = create_engine(pipeline_postgres_url)
    try:
        with engine.begin() as conn:
            (scored, arrived) = conn.execute(
                text("SELECT DISTINCT run_id, labels_arrived_at FROM realized_scores")
            ).one()
            conn.execute(
                text(
                    "INSERT INTO pipeline_runs (id, file_name, bucket, object_key, status, "
                    "started_at, kind) VALUES ('later-labels.1', 'later.csv', 'local', "
                    "'data/labels/later.csv', 'failed', :at, 'labels')"
                ),
                {"at": arrived + timedelta(hours=1)},
            )
            conn.execute(
                text(
                    "INSERT INTO realized_scores (run_id, labels_run_id, labels_file, "
                    "labels_arrived_at, matched_by, labeled_rows, metric, value) VALUES "
                    "(:run, 'later-labels.1', 'later.csv', :at, 'customer_id', 9, 'f1', 0.1)"
                ),
                {"run": scored, "at": arrived + timedelta(hours=1)},
            )
        assert drawn(reader, title).rows == before
    finally:
        with engine.begin() as conn:  # its realized scores go with it (ON DELETE CASCADE)
            conn.execute(text("DELETE FROM pipeline_runs WHERE id = 'later-labels.1'"))
        engine.dispose()


def test_model_versions_list_the_retraining_verdict(reader: Any) -> None:
    result = drawn(reader, "Model versions (retraining)")
    assert result.column("event") == ["promoted"]
    assert result.column("version") == ["2"] and result.column("parent") == ["1"]


def test_stat_is_coloured_by_the_minimum_stored_with_the_latest_file(reader: Any) -> None:
    stat = PANEL["Latest F1"]
    (config,) = stat["transformations"]
    threshold_sql = panel_sql(stat, config["options"]["configRefId"])
    defaults = MonitoringSettings.model_construct()
    (latest,) = run(reader, threshold_sql, everything()).rows
    assert latest[1] == defaults.min_f1
    scores = drawn(reader, "Scores over time")
    minimum = [
        v
        for m, v in zip(scores.column("metric"), scores.column("value"), strict=True)
        if m == "alert minimum"
    ]
    assert minimum == [defaults.min_f1] * len(PROCESSED_RUNS)
    drift = drawn(reader, "Drifted columns")
    assert set(drift.column("alert above")) == {defaults.drift_share_threshold}
    (latest,) = drawn(reader, "Latest F1").rows  # the latest file
    table = drawn(reader, "Latest runs")
    newest_processed = next(
        row for row in table.rows if row[table.columns.index("status")] == "processed"
    )
    assert latest[1] == pytest.approx(newest_processed[table.columns.index("f1")])


def test_drift_share_crosses_the_line_for_the_drifted_file_and_columns_are_named(
    reader: Any,
) -> None:
    result = drawn(reader, "Drifted columns")
    shares = result.column("drifted share")
    assert max(shares) > 0.5 > min(shares)
    assert all(float(c).is_integer() for c in result.column("drifted columns"))
    result = drawn(reader, "Drift score per column")  # by column
    assert {"call_failure", "churn_prediction"} <= set(result.column("metric"))


def test_attribution_has_every_feature_ndcg_and_the_stored_rank_order(reader: Any) -> None:
    result = drawn(reader, "Feature attribution (mean |SHAP|)")
    series: dict[str, list[float]] = {}
    for metric, value in zip(result.column("metric"), result.column("value"), strict=True):
        series.setdefault(metric, []).append(value)
    assert set(series) == {*FEATURES, "NDCG vs reference"}  # no minimum set: no minimum line
    assert all(len(values) == len(PROCESSED_RUNS) for values in series.values())
    assert all(0 < v <= 1 for v in series.pop("NDCG vs reference"))
    assert all(v >= 0 for values in series.values() for v in values)
    # Each file's mean |SHAP|, in the order of the stored ranks: the first has the most.
    value = {
        (t, m): v
        for t, m, v in zip(*(result.column(c) for c in ("time", "metric", "value")), strict=True)
    }
    ranks = run(
        reader,
        "SELECT $__timeGroupAlias(recorded_at, $__interval), label, value FROM run_metrics m "
        "JOIN pipeline_runs r ON r.id = m.run_id AND r.status = 'processed' "
        f"WHERE metric = '{ATTRIBUTION_RANK}' ORDER BY 1, value",
        everything(),
    )
    by_time: dict[Any, list[str]] = {}
    for time, feature in zip(ranks.column("time"), ranks.column("label"), strict=True):
        by_time.setdefault(time, []).append(feature)
    assert set(by_time) == {t for t, _ in value} and len(by_time) == len(PROCESSED_RUNS)
    for time, order in by_time.items():
        shown = [value[(time, feature)] for feature in order]
        assert shown == sorted(shown, reverse=True), (time, order, shown)


def test_a_redriven_file_is_one_point_of_its_processed_attempt(reader: Any) -> None:
    """Its failed attempt stored the same metrics an hour before: they are no file's."""
    at = (started_at(REDRIVEN) + timedelta(minutes=5)).timestamp()
    failed_at = at - timedelta(hours=1).total_seconds()
    for title in ("Scores over time", "Drifted columns", "Feature attribution (mean |SHAP|)"):
        times = set(drawn(reader, title).column("time"))
        assert at in times and failed_at not in times, title
    one_file = everything(file=[PLAN[REDRIVEN].file_name], model_version=["2"])
    (latest,) = drawn(reader, "Latest F1", one_file).rows
    assert latest[0].timestamp() == at


def test_volume_counts_rows_and_the_errored_file(reader: Any) -> None:
    result = drawn(reader, "Rows processed and files errored")
    assert sum(result.column("files errored")) == 1
    assert sum(result.column("rows processed")) == 2 * (1050 + 1050 + 1000)


def test_table_lists_runs_newest_first_with_report_links(reader: Any) -> None:
    result = drawn(reader, "Latest runs")
    assert len(result.rows) == len(PLAN) + 2  # the re-driven run's failed attempt, the labels
    assert result.column("started") == sorted(result.column("started"), reverse=True)
    statuses = list(zip(result.column("report"), result.column("status"), strict=True))
    # no report: the errored file, the failed attempt, and the late labels (processed)
    assert sorted(s for url, s in statuses if url is None) == ["errored", "failed", "processed"]
    by_status = {url: s for url, s in statuses if url is not None}
    assert all(re.match(r"^http://.+/projects/.+/reports/.+$", url) for url in by_status)
    assert set(result.column("model version")) == set(VERSIONS)


def test_table_lists_the_late_labels_run_with_its_kind(reader: Any) -> None:
    """A labels file's run was on no panel: a failed or errored one went unseen."""
    result = drawn(reader, "Latest runs")
    kinds = dict(zip(result.column("file"), result.column("kind"), strict=True))
    assert kinds[LABELS_FILE] == "labels"
    assert {kind for file, kind in kinds.items() if file != LABELS_FILE} == {"scoring"}
    (labels,) = [row for row in result.rows if row[result.columns.index("kind")] == "labels"]
    assert labels[result.columns.index("started")] == LABELS_AT
    assert labels[result.columns.index("status")] == "processed"
    assert labels[result.columns.index("model version")] == PLAN[LABELED].model_version
    scoring_only = everything(file=sorted({p.file_name for p in PLAN}))
    assert "labels" not in drawn(reader, "Latest runs", scoring_only).column("kind")


def test_time_range_and_variables_filter(reader: Any) -> None:
    table = panel_sql(PANEL["Latest runs"])
    later = everything()
    later.time_from = FIRST_RUN + RUN_SPACING / 2
    # less the first, plus a failed attempt and the labels
    assert len(run(reader, table, later).rows) == len(PLAN) + 1
    version_2 = run(reader, table, everything(model_version=["2"]))
    assert set(version_2.column("model version")) == {"2"}
    one_file = run(reader, table, everything(file=["customer_churn_1.csv"]))
    assert set(one_file.column("file")) == {"customer_churn_1.csv"}
    assert len(one_file.rows) == 2


def test_expander_refuses_what_it_does_not_know() -> None:
    for sql in ("SELECT $__timeFilter()", "$__unknownMacro(x)", "$nope", "${file:csv}"):
        with pytest.raises(UnknownMacro):
            expand(sql, everything())


def test_a_file_named_with_quotes_is_drawn_under_all_and_alone(
    postgres_cluster: PostgresCluster,
) -> None:
    """Grafana's ${file:sqlstring} wrote a " in a file's name as \\", which Postgres keeps:
    such a file was listed by the variable but drawn by no panel, under "All" or alone."""
    url = postgres_cluster.new_database("churnops_names")
    names = ['say "hi".csv', "it's.csv", "100% ünï {x}.csv"]
    with closing(MetricsStore(url)) as store:
        for name in names:
            processed_run(store, name, replace(NO_DRIFT, quality={"f1": 0.5}))
    now = datetime.now(UTC)

    def selecting(files: list[str]) -> Query:
        return Query(
            time_from=now - timedelta(hours=1),
            time_to=now + timedelta(hours=1),
            selected={"model_version": [ALL], "file": files},
            options={"model_version": ["1"], "file": sorted(names)},
        )

    with closing(reader_of(url, f"{READER}_names")) as conn:
        assert [r[0] for r in run(conn, VARIABLES["file"], selecting([ALL])).rows] == sorted(names)
        table = panel_sql(PANEL["Latest runs"])
        assert sorted(run(conn, table, selecting([ALL])).column("file")) == sorted(names)
        for name in names:
            assert run(conn, table, selecting([name])).column("file") == [name]
            (latest,) = run(conn, panel_sql(PANEL["Latest F1"]), selecting([name])).rows
            assert latest[1] == 0.5


def test_a_database_without_runs_draws_no_data_not_an_error(
    postgres_cluster: PostgresCluster,
) -> None:
    """Before the first file both variables list nothing, and Grafana expands "All" of
    nothing to nothing: every panel said 'syntax error at or near ")"' (``IN ()``)."""
    url = postgres_cluster.new_database("churnops_empty")
    MetricsStore(url).close()  # migrated, as the platform leaves it
    with closing(reader_of(url, f"{READER}_empty")) as conn:
        nothing = Query(
            time_from=FIRST_RUN,
            time_to=LAST_RUN,
            selected={"model_version": [ALL], "file": [ALL]},
            options={"model_version": [], "file": []},
        )
        assert run(conn, VARIABLES["model_version"], nothing).rows == []
        assert run(conn, VARIABLES["file"], nothing).rows == []
        for panel in PANELS:
            for target in panel["targets"]:
                assert run(conn, target["rawSql"], nothing).rows == [], panel["title"]
