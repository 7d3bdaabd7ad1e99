"""`churnops report` on the local default: SQLite filled through the pipeline's building blocks."""

from __future__ import annotations

import html
import shutil
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from churnops.cli import app
from churnops.drop import claims
from churnops.drop.storage import DropStorage, open_storage, run_key, stage_key
from churnops.monitoring import report
from churnops.monitoring.metrics_db import MetricsStore
from churnops.monitoring.report import NoRunsYet, write_report
from churnops.pipeline.per_file import PLAIN_STEPS, process
from churnops.settings import MonitoringSettings, Settings, get_settings

from .conftest import BROKEN_FILE, LABELS_FILE, PLAN, _models


def test_report_writes_the_figure_and_the_runs_page(
    pipeline_sqlite_url: str, pipeline_settings: Settings, tmp_path: Path
) -> None:
    files = write_report(pipeline_settings.monitoring, tmp_path / "report")
    assert files.runs == len(PLAN) + 1  # the re-driven run's failed attempt too
    assert files.files == len(PLAN)  # as churnops status counts them
    assert files.png.read_bytes().startswith(b"\x89PNG")
    page = files.html.read_text()
    assert "data:image/png;base64," in page
    for planned in PLAN:
        assert planned.file_name in page
    assert f"<td>{LABELS_FILE}</td><td>1</td><td>labels</td>" in page  # the late labels' run
    with closing(MetricsStore(pipeline_sqlite_url)) as store:
        urls = store.runs()["report_url"].dropna().tolist()
    assert len(urls) == len(PLAN) - 1
    assert all(f'<a href="{url}"' in page for url in urls)
    assert "errored" in page and "missing column" in page  # the broken file's reason
    assert "challenger F1 0.81 beats champion F1 0.74" in page  # the retraining verdict


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the report draws, kept to be looked at."""
    drawn: list[Figure] = []
    build = report.build_figure

    def kept(*args: Any) -> Figure:
        drawn.append(build(*args))
        return drawn[-1]

    monkeypatch.setattr(report, "build_figure", kept)
    return drawn


def test_report_draws_each_processed_file_once_and_its_late_labels_at_its_time(
    pipeline_sqlite_url: str, pipeline_settings: Settings, tmp_path: Path, figures: list[Figure]
) -> None:
    """The re-driven run's failed attempt stored its metrics too: they are no file's. The
    dashboard's "Realized scores (late labels)": without Grafana (the SQLite default) the
    report is the only place a user sees how a model did once the labels came."""
    write_report(pipeline_settings.monitoring, tmp_path / "report")
    shares = figures[0].axes[1].lines[0]  # the drifted share, a point per file
    assert len(shares.get_xdata()) == len([p for p in PLAN if not p.errored])
    (ax,) = [a for a in figures[0].axes if a.get_title().startswith("Realized scores")]
    f1 = [line for line in ax.lines if line.get_label() == "f1"]
    assert len(f1) == 1 and len(f1[0].get_xdata()) == 1  # the one labeled run
    assert "log_loss" not in {line.get_label() for line in ax.lines}  # the dashboard's five


def test_report_draws_the_limits_each_file_was_judged_by(
    pipeline_sqlite_url: str, pipeline_settings: Settings, tmp_path: Path, figures: list[Figure]
) -> None:
    """The runs stored the defaults; a shell with other minimums draws the stored ones."""
    other = pipeline_settings.replace(min_f1=0.95, drift_share_threshold=0.2)
    write_report(other.monitoring, tmp_path / "report")
    defaults = MonitoringSettings.model_construct()
    for ax, label, stored in (
        (figures[0].axes[0], "alert minimum", defaults.min_f1),
        (figures[0].axes[1], "alert above", defaults.drift_share_threshold),
    ):
        (line,) = [x for x in ax.lines if x.get_label() == label]
        assert set(line.get_ydata()) == {stored}, label


def test_a_report_of_rejected_files_only_lists_them(tmp_path: Path) -> None:
    """No file processed yet, only rejected ones: the page lists them, with their reasons."""
    settings = get_settings(churnops_home=tmp_path, evidently_ui_url=None)
    with closing(MetricsStore.from_settings(settings.monitoring)) as store:
        run = store.start_run(file_name="renamed.csv", bucket="b", object_key="data/input/x")
        store.finish_run(run, "errored", error="missing column 'complains'")
    files = write_report(settings.monitoring)
    assert files.runs == 1 and "missing column" in html.unescape(files.html.read_text())


def test_a_report_of_a_rejected_labels_file_only_lists_it(tmp_path: Path) -> None:
    """A labels file dropped before any customer file errors ('matches no run'): the report
    said 'no pipeline runs yet', hiding the run and its reason that "Latest runs" lists."""
    settings = get_settings(churnops_home=tmp_path, evidently_ui_url=None)
    with closing(MetricsStore.from_settings(settings.monitoring)) as store:
        run = store.start_run(
            file_name="x_predictions.csv", bucket="b", object_key="data/labels/x", kind="labels"
        )
        store.finish_run(run, "errored", error="matches no run: no processed file has predictions")
    files = write_report(settings.monitoring)
    assert (files.runs, files.files) == (0, 0)
    assert "matches no run" in files.html.read_text()


def test_a_report_of_a_home_without_a_database_makes_nothing(tmp_path: Path) -> None:
    """A mistyped CHURNOPS_HOME is said, not made (with an empty database) and then said
    to have no runs."""
    home = tmp_path / "typo"
    with pytest.raises(NoRunsYet, match=r"no metrics database at .*typo"):
        write_report(get_settings(churnops_home=home).monitoring)
    assert not home.exists()


class Killed(BaseException):
    """The attempt's process dies: nothing of the pipeline's own handling runs."""


def test_a_file_whose_attempt_died_after_its_move_keeps_its_metrics(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 stores the metrics, moves the file to processed/ and dies before closing
    its row (closed failed by attempt 2, which finishes the move): the file still shows.
    Attempt 2 never read the file, so its row has no rows: the report, drawing the rows of
    processed files, stopped on 'Axis limits cannot be NaN or Inf'."""
    settings = get_settings(churnops_home=tmp_path, evidently_ui_url=None)
    storage = open_storage(settings.drop)
    model = _models(settings, data_dir)["1"]
    steps = replace(PLAIN_STEPS, load_model=lambda _settings: model)

    def dies_after_the_move(storage: DropStorage, run: str, name: str, stage: str) -> str:
        storage.move(run_key("processing", run, name), run_key(stage, run, name))
        raise Killed

    name = "customer_churn_1.csv"
    shutil.copyfile(data_dir / name, storage.path(stage_key("input", name)))
    dying = replace(steps, finish=dies_after_the_move)
    with pytest.raises(Killed):
        process(settings, storage, stage_key("input", name), steps=dying)
    monkeypatch.setattr(claims, "LEASE_SECONDS", 0.0)  # its heartbeat is old at once
    (run,) = {key.split("/")[2] for key in storage.list_keys("data/claims/")}
    outcome = process(settings, storage, run_key("processing", run, name), steps=steps)
    assert (outcome.status, outcome.attempt) == ("processed", 2)
    with closing(MetricsStore(settings.monitoring.metrics_db_url)) as store:
        metrics, runs = store.metrics(), store.runs()
    share = metrics[metrics["metric"] == "drifted_share"]
    shown = share.merge(runs, left_on="run_id", right_on="id")
    assert shown["status"].tolist() == ["processed"]
    assert runs.loc[runs["status"] == "processed", "rows"].isna().all()
    assert name in write_report(settings.monitoring).html.read_text()


def test_cli_writes_into_churnops_home_by_default(
    pipeline_sqlite_url: str, pipeline_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNOPS_HOME", str(pipeline_settings.home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    folder = pipeline_settings.home / "report"
    assert (folder / "report.png").exists()
    assert BROKEN_FILE in (folder / "report.html").read_text()


def test_no_runs_yet_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings(churnops_home=tmp_path, database_url=None)
    with pytest.raises(NoRunsYet, match="no pipeline runs"):
        write_report(settings.monitoring)
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "no pipeline runs" in result.output
    assert not (tmp_path / "out").exists()
