"""Generate the Grafana dashboard "Customer Churn Model Evaluation".

The JSON that Grafana loads (``dashboards/churn_model_evaluation.json``) is the
output of this module, checked in under ``code/grafana/``. Python rather than hand-edited
JSON: the metric names come from ``churnops.monitoring.metrics_db`` / ``churnops.results``,
so the dashboard cannot drift from what the pipeline writes; five stat panels
and five time series are one function each instead of copied JSON. The alert
thresholds are read by SQL from the ``threshold`` column stored with each run
(the limits that file was judged by, whatever the settings were); the
settings' defaults are only the fallback colour of a run stored without one.

    python -m devtools.grafana_dashboard          # rewrite the JSON
    python -m devtools.grafana_dashboard --check  # fail if the JSON is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from churnops.model.registry import GATE_MIN_ROC_AUC
from churnops.monitoring.metrics_db import (
    ATTRIBUTION,
    DRIFT_SCORE,
    DRIFTED_COUNT,
    DRIFTED_SHARE,
    ERRORED,
    FAILED,
    PROCESSED,
    RUNNING,
    SCORING,
)
from churnops.results import ATTRIBUTION_NDCG, QUALITY_METRICS
from churnops.settings import MonitoringSettings

HERE = Path(__file__).resolve().parents[1] / "grafana"
OUTPUT = HERE / "dashboards" / "churn_model_evaluation.json"

#: Must equal the uid in provisioning/datasources/metrics.yaml.
DATASOURCE_UID = "churnops-metrics"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID}
DASHBOARD_UID = "churnops-model-evaluation"
TITLE = "Customer Churn Model Evaluation"
#: Dashboard JSON schema of the pinned image (Dockerfile: grafana/grafana 12.0).
SCHEMA_VERSION = 41
#: Runs whose model is unknown (errored before the model was loaded).
UNKNOWN_MODEL = "unknown"

QUALITY_TITLES = {
    "f1": "F1",
    "precision": "Precision",
    "recall": "Recall",
    "accuracy": "Accuracy",
    "roc_auc": "ROC AUC",
}

# Shared SQL fragments: every panel joins a metric to its run and honours both variables.
# Runs of late labels files are not files scored: their scores are the scoring run's.
FROM_METRICS = "FROM run_metrics m\nJOIN pipeline_runs r ON r.id = m.run_id\n"
RUN_FILTER = (
    f"COALESCE(r.model_version, '{UNKNOWN_MODEL}') IN ($model_version)\n"
    "  AND r.file_name IN (${file:sqlstring})\n"
    f"  AND r.kind = '{SCORING}'"
)


def alert_minimum(metric: str) -> float:
    """The score below which the pipeline alerts (``min_<metric>`` in the settings).

    ROC AUC has no alert minimum: it is coloured by the promotion gate instead.
    """
    defaults = MonitoringSettings.model_construct()  # whatever this shell's environment says
    return defaults.score_minimums.get(metric, GATE_MIN_ROC_AUC)


def target(sql: str, fmt: str) -> dict[str, Any]:
    return {
        "refId": "A",
        "datasource": DATASOURCE,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": sql,
    }


def steps(low_color: str, limit: float, high_color: str) -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": low_color, "value": None}, {"color": high_color, "value": limit}],
    }


def latest(metric: str, column: str) -> str:
    """SQL: one column of the most recent row of ``metric`` in range."""
    return (
        f'SELECT m.recorded_at AS "time", m.{column}\n'
        f"{FROM_METRICS}"
        f"WHERE m.metric = '{metric}'\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "ORDER BY m.recorded_at DESC\n"
        "LIMIT 1"
    )


def stat_panel(metric: str) -> dict[str, Any]:
    """The latest value of one score; red below the minimum stored with that run."""
    minimum = alert_minimum(metric)
    threshold_query = target(latest(metric, "threshold"), "table") | {"refId": "B"}
    return {
        "type": "stat",
        "title": f"Latest {QUALITY_TITLES[metric]}",
        "description": "Most recent file in range; red below the alert minimum in effect "
        f"for that file (stored with its run; {minimum:g} when none was stored).",
        "targets": [target(latest(metric, "value"), "table"), threshold_query],
        # Query B's threshold becomes the red/green boundary of query A's value.
        "transformations": [
            {
                "id": "configFromData",
                "options": {
                    "configRefId": "B",
                    "mappings": [{"fieldName": "threshold", "handlerKey": "threshold1"}],
                },
            }
        ],
        "fieldConfig": {
            "defaults": {
                "unit": "percentunit",
                "decimals": 1,
                "min": 0,
                "max": 1,
                "color": {"mode": "thresholds"},
                "thresholds": steps("red", minimum, "green"),
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "/^value$/", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries_panel(
    title: str, description: str, sql: str, defaults: dict[str, Any], overrides: list[Any]
) -> dict[str, Any]:
    custom = {"drawStyle": "line", "lineWidth": 2, "showPoints": "always", "pointSize": 6}
    custom |= {"spanNulls": True, "thresholdsStyle": {"mode": "off"}}
    custom |= defaults.pop("custom", {})
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "interval": "1m",
        "targets": [target(sql, "time_series")],
        "fieldConfig": {"defaults": {"custom": custom, **defaults}, "overrides": overrides},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def threshold_line(name: str) -> dict[str, Any]:
    """The series of an alert threshold: a dashed red line without points."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.showPoints", "value": "never"},
        ],
    }


SCORE_MINIMUM = "alert minimum"
DRIFT_LIMIT = "alert above"


def scores_panel() -> dict[str, Any]:
    metrics = ", ".join(f"'{m}'" for m in QUALITY_METRICS)
    sql = (
        "SELECT $__timeGroupAlias(m.recorded_at, $__interval), m.metric, avg(m.value) AS value\n"
        f"{FROM_METRICS}"
        f"WHERE m.metric IN ({metrics})\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1, 2\n"
        "UNION ALL\n"
        "SELECT $__timeGroupAlias(m.recorded_at, $__interval), "
        f"'{SCORE_MINIMUM}' AS metric, min(m.threshold) AS value\n"
        f"{FROM_METRICS}"
        f"WHERE m.metric IN ({metrics}) AND m.threshold IS NOT NULL\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1"
    )
    defaults = {"unit": "percentunit", "min": 0, "max": 1}
    return timeseries_panel(
        "Scores over time",
        "F1, precision, recall, accuracy and ROC AUC per file; dashed red line: the lowest "
        "alert minimum in effect for those files (stored with each run).",
        sql,
        defaults,
        [threshold_line(SCORE_MINIMUM)],
    )


def coloured_text(column: str, colours: dict[str, str]) -> dict[str, Any]:
    """A table override: the cells of ``column`` in the colour of their value."""
    options = {value: {"color": c, "index": i} for i, (value, c) in enumerate(colours.items())}
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [
            {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            {"id": "mappings", "value": [{"type": "value", "options": options}]},
        ],
    }


def realized_panel() -> dict[str, Any]:
    """Scores realized by late labels, at the time each file was scored (newest labels)."""
    metrics = ", ".join(f"'{m}'" for m in QUALITY_METRICS)
    newest = (
        "q.labels_arrived_at = (SELECT max(l.labels_arrived_at) FROM realized_scores l "
        "WHERE l.run_id = q.run_id)"
    )
    realized = (  # the labels run that finished, not an attempt that died after storing
        "FROM realized_scores q\nJOIN pipeline_runs r ON r.id = q.run_id\n"
        f"JOIN pipeline_runs lr ON lr.id = q.labels_run_id AND lr.status = '{PROCESSED}'\n"
    )
    where = (
        f"WHERE q.metric IN ({metrics}) AND {newest}\n"
        "  AND $__timeFilter(r.started_at)\n"
        f"  AND {RUN_FILTER}\n"
    )
    sql = (
        "SELECT $__timeGroupAlias(r.started_at, $__interval), q.metric, avg(q.value) AS value\n"
        f"{realized}{where}"
        "GROUP BY 1, 2\n"
        "UNION ALL\n"
        "SELECT $__timeGroupAlias(r.started_at, $__interval), "
        f"'{SCORE_MINIMUM}' AS metric, min(q.threshold) AS value\n"
        f"{realized}{where}"
        "  AND q.threshold IS NOT NULL\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1"
    )
    return timeseries_panel(
        "Realized scores (late labels)",
        "Scores of files whose churn became known later: a labels file in data/labels/ joined "
        "to the run that scored those rows, drawn at the time the file was scored (the newest "
        "labels when several arrived); dashed red line: the lowest alert minimum in effect.",
        sql,
        {"unit": "percentunit", "min": 0, "max": 1},
        [threshold_line(SCORE_MINIMUM)],
    )


def model_events_panel() -> dict[str, Any]:
    """Every retraining verdict: which version was promoted or refused, why."""
    sql = (
        'SELECT e.at AS "time", e.version AS "version", e.parent_version AS "parent",\n'
        '  e.event, e.trigger, e.holdout_f1 AS "challenger f1",\n'
        '  e.champion_f1 AS "champion f1", e.reason\n'
        "FROM model_events e\n"
        "WHERE $__timeFilter(e.at)\n"
        "ORDER BY e.at DESC\n"
        "LIMIT 50"
    )
    event_colors = coloured_text("event", {"promoted": "green", "refused": "orange"})
    f1_unit = {
        "matcher": {"id": "byRegexp", "options": "/f1$/"},
        "properties": [{"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1}],
    }
    return {
        "type": "table",
        "title": "Model versions (retraining)",
        "description": "Newest first: each retraining's challenger, promoted to staging or "
        "refused by the gate, with both F1 scores on the newest labeled file and the reason.",
        "targets": [target(sql, "table")],
        "fieldConfig": {"defaults": {}, "overrides": [event_colors, f1_unit]},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    }


def drift_panel() -> dict[str, Any]:
    sql = (
        "SELECT $__timeGroupAlias(m.recorded_at, $__interval),\n"
        f"  avg(m.value) FILTER (WHERE m.metric = '{DRIFTED_SHARE}') AS \"drifted share\",\n"
        f"  avg(m.threshold) FILTER (WHERE m.metric = '{DRIFTED_SHARE}') AS \"{DRIFT_LIMIT}\",\n"
        f"  avg(m.value) FILTER (WHERE m.metric = '{DRIFTED_COUNT}') AS \"drifted columns\"\n"
        f"{FROM_METRICS}"
        f"WHERE m.metric IN ('{DRIFTED_SHARE}', '{DRIFTED_COUNT}')\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    defaults = {"unit": "percentunit", "min": 0, "max": 1}
    count_axis = {
        "matcher": {"id": "byName", "options": "drifted columns"},
        "properties": [
            {"id": "unit", "value": "none"},
            {"id": "min", "value": 0},
            {"id": "max"},
            {"id": "custom.axisPlacement", "value": "right"},
        ],
    }
    return timeseries_panel(
        "Drifted columns",
        "Share (left) and number (right) of feature columns that drifted; dashed red line: "
        "the alert threshold in effect for those files (stored with each run).",
        sql,
        defaults,
        [count_axis, threshold_line(DRIFT_LIMIT)],
    )


def feature_drift_panel() -> dict[str, Any]:
    sql = (
        "SELECT $__timeGroupAlias(m.recorded_at, $__interval), m.label AS metric, "
        "avg(m.value) AS value\n"
        f"{FROM_METRICS}"
        f"WHERE m.metric = '{DRIFT_SCORE}'\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1"
    )
    return timeseries_panel(
        "Drift score per column",
        "Evidently's drift score of each column (the method is per column: a distance, "
        "higher is more drift, or a p-value, lower is more drift).",
        sql,
        {"unit": "none", "min": 0},
        [],
    )


ATTRIBUTION_TITLE = "Feature attribution (mean |SHAP|)"
NDCG_SERIES = "NDCG vs reference"
NDCG_MINIMUM = "NDCG alert minimum"


def attribution_panel() -> dict[str, Any]:
    """Each feature's mean |SHAP| per file (left) and the NDCG of its order (right)."""
    sql = (
        _grouped_by_series("m.label AS metric, avg(m.value) AS value", ATTRIBUTION)
        + "UNION ALL\n"
        + _grouped_by_series(f"'{NDCG_SERIES}' AS metric, avg(m.value) AS value", ATTRIBUTION_NDCG)
        + "UNION ALL\n"
        + _grouped_by_series(
            f"'{NDCG_MINIMUM}' AS metric, min(m.threshold) AS value",
            ATTRIBUTION_NDCG,
            " AND m.threshold IS NOT NULL",
        )
        + "ORDER BY 1"
    )
    ndcg_axis = {
        "matcher": {"id": "byRegexp", "options": f"/^({NDCG_SERIES}|{NDCG_MINIMUM})$/"},
        "properties": [
            {"id": "unit", "value": "none"},
            {"id": "decimals", "value": 3},
            {"id": "min"},
            {"id": "max", "value": 1},
            {"id": "custom.axisPlacement", "value": "right"},
        ],
    }
    return timeseries_panel(
        ATTRIBUTION_TITLE,
        "Left: each feature's mean absolute SHAP value (TreeSHAP, log-odds) on a sample of "
        "the file. Right: the NDCG of the file's importance order against the model's "
        "reference data (1: the same order); dashed red line: the NDCG alert minimum in "
        "effect for those files, when one is set.",
        sql,
        {"unit": "none", "min": 0},
        [ndcg_axis, threshold_line(NDCG_MINIMUM)],
    )


def _grouped_by_series(columns: str, metric: str, extra: str = "") -> str:
    """SQL: ``columns`` of one metric in range, grouped by time and series (no ORDER BY)."""
    return (
        f"SELECT $__timeGroupAlias(m.recorded_at, $__interval), {columns}\n"
        f"{FROM_METRICS}"
        f"WHERE m.metric = '{metric}'{extra}\n"
        "  AND $__timeFilter(m.recorded_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1, 2\n"
    )


def volume_panel() -> dict[str, Any]:
    sql = (
        "SELECT $__timeGroupAlias(r.started_at, $__interval),\n"
        f"  COALESCE(sum(r.rows) FILTER (WHERE r.status = '{PROCESSED}'), 0) "
        'AS "rows processed",\n'
        f"  count(*) FILTER (WHERE r.status = '{ERRORED}') AS \"files errored\"\n"
        "FROM pipeline_runs r\n"
        "WHERE $__timeFilter(r.started_at)\n"
        f"  AND {RUN_FILTER}\n"
        "GROUP BY 1\n"
        "ORDER BY 1"
    )
    errored_axis = {
        "matcher": {"id": "byName", "options": "files errored"},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ],
    }
    defaults = {"unit": "none", "min": 0, "custom": {"drawStyle": "bars", "fillOpacity": 60}}
    return timeseries_panel(
        "Rows processed and files errored",
        "Rows of the processed files (left) and files moved to errored (right).",
        sql,
        defaults,
        [errored_axis],
    )


def runs_table_panel() -> dict[str, Any]:
    sql = (
        'SELECT r.started_at AS "started", r.file_name AS "file",\n'
        f"  COALESCE(r.model_version, '{UNKNOWN_MODEL}') AS \"model version\",\n"
        "  r.status, r.rows,\n"
        f"  (SELECT s.value FROM run_metrics s WHERE s.run_id = r.id AND s.metric = "
        f"'{DRIFTED_SHARE}' LIMIT 1) AS \"drifted share\",\n"
        "  (SELECT s.value FROM run_metrics s WHERE s.run_id = r.id AND s.metric = 'f1' "
        'LIMIT 1) AS "f1",\n'
        '  r.report_url AS "report", r.error\n'
        "FROM pipeline_runs r\n"
        "WHERE $__timeFilter(r.started_at)\n"
        f"  AND {RUN_FILTER}\n"
        "ORDER BY r.started_at DESC\n"
        "LIMIT 50"
    )
    report_link = {
        "matcher": {"id": "byName", "options": "report"},
        "properties": [
            {
                "id": "links",
                "value": [
                    {"title": "Evidently report", "url": "${__value.raw}", "targetBlank": True}
                ],
            },
            {"id": "mappings", "value": [_open_report_mapping()]},
        ],
    }
    status_colors = coloured_text(
        "status", {PROCESSED: "green", ERRORED: "red", FAILED: "orange", RUNNING: "blue"}
    )
    share_unit = {
        "matcher": {"id": "byRegexp", "options": "/^(drifted share|f1)$/"},
        "properties": [{"id": "unit", "value": "percentunit"}, {"id": "decimals", "value": 1}],
    }
    return {
        "type": "table",
        "title": "Latest runs",
        "description": "Newest first; the report column links to the file's Evidently report.",
        "targets": [target(sql, "table")],
        "fieldConfig": {"defaults": {}, "overrides": [report_link, status_colors, share_unit]},
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
    }


def _open_report_mapping() -> dict[str, Any]:
    """Show "open report" instead of the long URL (the link keeps the raw value)."""
    return {
        "type": "regex",
        "options": {"pattern": "^https?://.*", "result": {"text": "open report", "index": 0}},
    }


def variable(name: str, label: str, sql: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": sql,
        "definition": sql,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def layout(panels: list[tuple[dict[str, Any], int, int, int, int]]) -> list[dict[str, Any]]:
    """Number the panels and place them: (panel, x, y, width, height)."""
    placed = []
    for panel_id, (panel, x, y, w, h) in enumerate(panels, start=1):
        panel = {"id": panel_id, "datasource": DATASOURCE, **panel}
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        placed.append(panel)
    return placed


def dashboard() -> dict[str, Any]:
    widths = [5, 5, 5, 5, 4]
    stats = [
        (stat_panel(m), sum(widths[:i]), 0, widths[i], 4) for i, m in enumerate(QUALITY_METRICS)
    ]
    panels = layout(
        [
            *stats,
            (scores_panel(), 0, 4, 24, 8),
            (drift_panel(), 0, 12, 12, 8),
            (feature_drift_panel(), 12, 12, 12, 8),
            (attribution_panel(), 0, 20, 24, 9),
            (realized_panel(), 0, 29, 12, 8),
            (model_events_panel(), 12, 29, 12, 8),
            (volume_panel(), 0, 37, 24, 7),
            (runs_table_panel(), 0, 44, 24, 10),
        ]
    )
    model_sql = (
        f"SELECT DISTINCT COALESCE(model_version, '{UNKNOWN_MODEL}') FROM pipeline_runs\n"
        f"WHERE kind = '{SCORING}'\nORDER BY 1"
    )
    file_sql = (
        "SELECT DISTINCT file_name FROM pipeline_runs\n"
        f"WHERE COALESCE(model_version, '{UNKNOWN_MODEL}') IN ($model_version)\n"
        f"  AND kind = '{SCORING}'\nORDER BY 1"
    )
    return {
        "id": None,
        "uid": DASHBOARD_UID,
        "title": TITLE,
        "description": "Drift and quality of every customer file the ChurnOps pipeline scored.",
        "tags": ["churnops", "evidently"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                variable("model_version", "Model version", model_sql),
                variable("file", "File", file_sql),
            ]
        },
        "links": [],
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.name} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
