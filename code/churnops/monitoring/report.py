"""``churnops report``: the Grafana dashboard's time series without Grafana, as
``report.png`` and ``report.html`` (the figure and the latest runs, with their links).
"""

from __future__ import annotations

import base64
import html
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy.engine import make_url

from churnops.monitoring.metrics_db import (
    DRIFT_SCORE,
    DRIFTED_COUNT,
    DRIFTED_SHARE,
    ERRORED,
    PROCESSED,
    SCORING,
    MetricsStore,
)
from churnops.results import QUALITY_METRICS
from churnops.settings import MonitoringSettings

PNG_NAME, HTML_NAME = "report.png", "report.html"


class NoRunsYet(LookupError):
    pass


@dataclass(frozen=True)
class ReportFiles:
    png: Path
    html: Path
    runs: int
    #: Files (late labels aside): a run's attempts (``<run>.<attempt>`` rows) are one file.
    files: int


def write_report(
    monitoring: MonitoringSettings, out: Path | None = None, latest: int = 20
) -> ReportFiles:
    """Write the PNG and the HTML page into ``out`` (default ``CHURNOPS_HOME/report``)."""
    folder = out or monitoring.home / "report"
    _check_exists(monitoring.metrics_db_url)
    with closing(MetricsStore.for_reading(monitoring)) as store:
        every_run, metrics, realized = store.runs(), store.metrics(), store.realized()
        events = store.model_events().tail(latest)
    runs = every_run[every_run["kind"] == SCORING]  # a late labels file is not a file scored
    where = make_url(monitoring.metrics_db_url).render_as_string(hide_password=True)
    if every_run.empty:  # a late labels file's run alone is listed, with its reason
        raise NoRunsYet(
            f"no pipeline runs in {where} yet: drop a customer file into the input folder "
            "and let the pipeline process it, then run the report again"
        )
    # A failed attempt's metrics stay stored; its re-drive stores the file's again.
    processed = runs[runs["status"] == PROCESSED]
    metrics = metrics.merge(
        processed[["id", "file_name", "model_version"]], left_on="run_id", right_on="id"
    )
    folder.mkdir(parents=True, exist_ok=True)
    png, page = folder / PNG_NAME, folder / HTML_NAME
    figure = build_figure(runs, metrics, monitoring, realized_scores(realized, every_run))
    figure.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(figure)
    # The table lists late labels' runs too, as the dashboard's "Latest runs" does.
    page.write_text(
        build_html(every_run.head(latest), png.read_bytes(), where, events), encoding="utf-8"
    )
    files = runs["id"].str.replace(r"\.\d+$", "", regex=True).nunique()
    return ReportFiles(png=png, html=page, runs=len(runs), files=files)


def _check_exists(url: str) -> None:
    """A look makes nothing (as ``churnops status``): a SQLite file that is not there yet
    (a CHURNOPS_HOME mistyped, or the relative default in another folder) is said, not
    created empty with its folder and then reported as having no runs."""
    parsed = make_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file and file != ":memory:" and not Path(file).exists():
        raise NoRunsYet(
            f"no pipeline runs: no metrics database at {file} (is CHURNOPS_HOME the "
            "platform's? the pipeline makes it when it processes its first file)"
        )


def _series(metrics: pd.DataFrame, metric: str, by: str | None = None) -> pd.DataFrame:
    """One metric as a wide frame indexed by time (a column per ``by`` value)."""
    rows = metrics[metrics["metric"] == metric]
    columns = by or "metric"
    return rows.pivot_table(index="recorded_at", columns=columns, values="value", aggfunc="mean")


def realized_scores(realized: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The late labels' scores of each scoring run, from its newest processed labels file, at
    the time the run started (the dashboard's "Realized scores (late labels)"), with
    ``started_at`` and ``threshold``."""
    done = runs.loc[runs["status"] == PROCESSED, "id"]
    rows = realized[realized["labels_run_id"].isin(done) & realized["metric"].isin(QUALITY_METRICS)]
    rows = rows[
        rows["labels_arrived_at"] == rows.groupby("run_id")["labels_arrived_at"].transform("max")
    ]
    return rows.merge(runs[["id", "started_at"]], left_on="run_id", right_on="id")


def build_figure(
    runs: pd.DataFrame,
    metrics: pd.DataFrame,
    monitoring: MonitoringSettings,
    realized: pd.DataFrame | None = None,
) -> Figure:
    """Five panels sharing the time axis, like the dashboard's (``realized``:
    :func:`realized_scores`)."""
    figure, axes = plt.subplots(5, 1, figsize=(11, 17), sharex=True, layout="constrained")
    _scores(axes[0], metrics, monitoring)
    _drift(axes[1], metrics, monitoring)
    _feature_drift(axes[2], metrics)
    _realized(axes[3], realized if realized is not None else pd.DataFrame(), monitoring)
    _volume(axes[4], runs)  # no figure title: the page's heading is the title
    figure.autofmt_xdate()
    return figure


def _scores(ax: Axes, metrics: pd.DataFrame, monitoring: MonitoringSettings) -> None:
    frames = [s for s in (_series(metrics, m) for m in QUALITY_METRICS) if not s.empty]
    if not frames:
        ax.text(0.5, 0.5, "no labeled files yet", ha="center", transform=ax.transAxes)
    else:
        pd.concat(frames, axis=1).plot(ax=ax, marker="o")
        floor = min(monitoring.score_minimums.values())
        _limit_line(ax, _stored_limit(metrics, QUALITY_METRICS, floor), "alert minimum")
        ax.legend(loc="lower left", ncol=3, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title("Scores over time")


def _realized(ax: Axes, realized: pd.DataFrame, monitoring: MonitoringSettings) -> None:
    if realized.empty:
        ax.text(0.5, 0.5, "no late labels yet", ha="center", transform=ax.transAxes)
    else:
        scores = realized.pivot_table(index="started_at", columns="metric", values="value")
        scores.plot(ax=ax, marker="o")
        floor = min(monitoring.score_minimums.values())
        limit = realized.groupby("started_at")["threshold"].min().fillna(floor)
        _limit_line(ax, limit, "alert minimum")
        ax.legend(loc="lower left", ncol=3, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_title("Realized scores (late labels), at the time the file was scored")


def _drift(ax: Axes, metrics: pd.DataFrame, monitoring: MonitoringSettings) -> None:
    share = _series(metrics, DRIFTED_SHARE)
    count = _series(metrics, DRIFTED_COUNT)
    if not share.empty:
        share[DRIFTED_SHARE].plot(ax=ax, marker="o", label="drifted share")
    limit = _stored_limit(metrics, [DRIFTED_SHARE], monitoring.drift_share_threshold)
    _limit_line(ax, limit, "alert above")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("share of feature columns")
    right = ax.twinx()
    if not count.empty:
        right.plot(count.index, count[DRIFTED_COUNT], "s:", color="grey", label="drifted columns")
    right.set_ylabel("drifted columns")
    right.set_ylim(bottom=0)
    _legend_beside(ax, right)
    ax.set_title("Drifted columns")


def _stored_limit(metrics: pd.DataFrame, names: list[str], fallback: float) -> pd.Series:
    """The lowest threshold stored with the runs' ``names`` metrics per time: the limit each
    file was judged by, as the dashboard draws it (``fallback``, the setting, for runs
    stored without one), not the setting of the shell that draws the report."""
    rows = metrics[metrics["metric"].isin(names)]
    return rows.groupby("recorded_at")["threshold"].min().fillna(fallback)


def _limit_line(ax: Axes, limit: pd.Series, label: str) -> None:
    """The limit as a dashed red step line; none without runs (no file processed yet: pandas
    refuses to plot an empty series, and the report of only rejected files failed)."""
    if limit.empty:
        return
    style = {"markersize": 14, "drawstyle": "steps-post", "label": label}
    limit.plot(ax=ax, style="r_--", **style)  # as pandas draws the series beside it


def _legend_beside(ax: Axes, right: Axes) -> None:
    """One legend for both axes, past the right one: inside, it covered the points near 1."""
    right.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8)


def _feature_drift(ax: Axes, metrics: pd.DataFrame) -> None:
    scores = _series(metrics, DRIFT_SCORE, by="label")
    if not scores.empty:
        scores.plot(ax=ax, marker=".", colormap="tab20")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_title("Drift score per column (distance: higher drifts; p-value: lower drifts)")


def _volume(ax: Axes, runs: pd.DataFrame) -> None:
    ordered = runs.sort_values("started_at")
    processed = ordered[ordered["status"] == PROCESSED]
    ax.plot(processed["started_at"], processed["rows"], "o-", label="rows processed")
    ax.set_ylabel("rows")
    # A run whose attempt died after its move is closed by one that never read it: no rows.
    rows = pd.to_numeric(processed["rows"])
    ax.set_ylim(0, max(rows.max(), 1) * 1.15 if rows.notna().any() else 1)
    right = ax.twinx()
    errored = (ordered["status"] == ERRORED).cumsum()
    right.step(ordered["started_at"], errored, where="post", color="red", label="files errored")
    right.set_ylabel("files errored (cumulative)")
    right.set_ylim(0, max(errored.max() if len(errored) else 0, 1) * 1.15)
    _legend_beside(ax, right)
    ax.set_title("Rows processed and files errored")
    ax.set_xlabel("time (UTC)")


def _cell(value: object) -> str:
    return "" if value is None or pd.isna(value) else html.escape(str(value))


def _link(url: object) -> str:
    if not isinstance(url, str) or not url:
        return ""
    return f'<a href="{html.escape(url)}" target="_blank" rel="noopener">Evidently report</a>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of cells already escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _runs_table(runs: pd.DataFrame) -> str:
    header = ["started (UTC)", "file", "model version", "kind", "status", "rows", "report", "error"]
    rows = [
        [
            _cell(row.started_at.strftime("%Y-%m-%d %H:%M")),
            _cell(row.file_name),
            _cell(row.model_version),
            _cell(row.kind),
            f'<span class="{_cell(row.status)}">{_cell(row.status)}</span>',
            _cell(None if pd.isna(row.rows) else int(row.rows)),
            _link(row.report_url),
            _cell(row.error),
        ]
        for row in runs.itertuples()
    ]
    return _table(header, rows)


def _events_table(events: pd.DataFrame) -> str:
    """The retraining verdicts, newest first (the dashboard's "Model versions" table)."""
    if events.empty:
        return "<p>No retraining yet.</p>"
    header = ["at (UTC)", "version", "parent", "event", "trigger", "challenger f1", "reason"]
    rows = [
        [
            _cell(row.at.strftime("%Y-%m-%d %H:%M")),
            *(_cell(v) for v in (row.version, row.parent_version, row.event, row.trigger)),
            _cell(None if pd.isna(row.holdout_f1) else f"{row.holdout_f1:.3f}"),
            _cell(row.reason),
        ]
        for row in events.iloc[::-1].itertuples()
    ]
    return _table(header, rows)


def build_html(
    runs: pd.DataFrame, png: bytes, database: str, events: pd.DataFrame | None = None
) -> str:
    """A self-contained page: the figure inline, the latest runs, the retraining verdicts."""
    image = base64.b64encode(png).decode("ascii")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdicts = _events_table(events if events is not None else pd.DataFrame())
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Customer Churn Model Evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; }}
.{ERRORED} {{ color: #c00; }} .{PROCESSED} {{ color: #070; }}
</style>
</head>
<body>
<h1>Customer Churn Model Evaluation</h1>
<p>Generated {generated} from {html.escape(database)}.</p>
<img src="data:image/png;base64,{image}" alt="scores, drift and volume over time">
<h2>Latest runs</h2>
{_runs_table(runs)}
<h2>Model versions (retraining)</h2>
{verdicts}
</body>
</html>
"""
