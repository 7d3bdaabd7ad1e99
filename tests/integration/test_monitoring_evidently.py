"""run_monitoring on the real customer files, stored in a real local Evidently workspace or
published to a real ``evidently ui`` started with EVIDENTLY_SECRET (as the ECS task is), which
takes writes from ChurnOps only when the settings carry the same secret."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from evidently.errors import EvidentlyError
from evidently.ui.workspace import Workspace

from churnops import retry
from churnops.data.features import FEATURES
from churnops.data.reading import load_customer_file
from churnops.monitoring import drift
from churnops.monitoring.drift import run_monitoring
from churnops.results import PREDICTION, PROBABILITY, QUALITY_METRICS, MonitoringResult
from churnops.settings import MonitoringSettings, Settings, get_settings
from tests.fixtures.evidently_ui import SECRET, EvidentlyUI

NOW = datetime.now(UTC)


def scored(path: Path, seed: int) -> pd.DataFrame:
    """Stand-in predictions: the label with 10% flipped, a score consistent with it."""
    df = load_customer_file(path, require_target=True)
    rng = np.random.default_rng(seed)
    flipped = rng.random(len(df)) < 0.1
    df[PREDICTION] = np.where(flipped, 1 - df["churn"], df["churn"])
    df[PROBABILITY] = df[PREDICTION] * 0.7 + rng.random(len(df)) * 0.3
    return df


@pytest.fixture(scope="module")
def reference(data_dir: Path) -> pd.DataFrame:
    return scored(data_dir / "customer_churn_0.csv", seed=0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(churnops_home=tmp_path, evidently_ui_url=None, evidently_workspace=None)


def monitor(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    settings: Settings,
    name: str,
    version: str = "7",
    **extra: object,
):
    return run_monitoring(
        reference,
        current,
        feature_columns=FEATURES,
        monitoring=settings.monitoring,
        platform=settings.platform,
        file_name=name,
        model_version=version,
        model_name="XGBoostChurnModel",
        **extra,
    )


def test_majority_drifted_file(data_dir: Path, reference: pd.DataFrame, settings: Settings) -> None:
    name = "customer_churn_2_majority_drifted.csv"
    result = monitor(reference, scored(data_dir / name, seed=1), settings, name)
    assert result.drifted_share > 0.5
    assert result.drifted_count == sum(c.drifted for c in result.columns if c.column in FEATURES)
    assert {c.column for c in result.drifted_columns} >= {"call_failure", "charge_amount"}
    assert set(result.quality) == set(QUALITY_METRICS)
    assert 0.8 < result.quality["accuracy"] < 1.0
    assert result.rows == 1050


@pytest.mark.parametrize(
    "name", ["customer_churn_synthetic_1.csv", "customer_churn_synthetic_3.csv"]
)
def test_files_from_the_training_distribution_stay_below_half(
    data_dir: Path, reference: pd.DataFrame, settings: Settings, name: str
) -> None:
    result = monitor(reference, scored(data_dir / name, seed=1), settings, name)
    assert result.drifted_share < 0.5


def test_customer_churn_1_drifts_as_far_as_the_majority_drifted_file(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    """A fact of the data, kept visible: file 1 sits below the training file as far
    as file 2 sits above it (call_failure medians 1 / 6 / 11), so Evidently's
    default tests flag the same features in both."""
    results = {
        name: monitor(reference, scored(data_dir / name, seed=1), settings, name)
        for name in ("customer_churn_1.csv", "customer_churn_2_majority_drifted.csv")
    }
    first, second = results.values()
    assert first.drifted_share == second.drifted_share > 0.5
    assert [c.column for c in first.drifted_columns] == [c.column for c in second.drifted_columns]


def test_unlabeled_file_gets_drift_only(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    current = scored(data_dir / "customer_churn_1.csv", seed=1).drop(columns="churn")
    result = monitor(reference, current, settings, "unlabeled.csv")
    assert result.quality == {}
    assert [c.column for c in result.columns] == [*FEATURES, PREDICTION]
    assert result.predicted_churn_rate == pytest.approx(current[PREDICTION].mean())


def test_a_sampled_file_s_summary_shows_the_scores_of_every_row(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    """The report sees a sample; its summary says "F1 on this file": the every-row F1 the
    alert and the metrics database have, not the sample's."""
    whole = scored(data_dir / "customer_churn_synthetic_1.csv", seed=1)
    every_row = {**dict.fromkeys(QUALITY_METRICS, 0.123), "f1": 0.456}
    totals = drift.Totals(len(whole), float(whole[PREDICTION].mean()), every_row)
    result = monitor(reference, whole.head(300), settings, "big.csv", totals=totals)
    assert result.quality == every_row
    workspace = Workspace(str(settings.monitoring.evidently_workspace_dir))
    (project,) = workspace.search_project(drift.PROJECT)
    snapshot = workspace.get_run(project.id, result.snapshot_id)
    assert snapshot is not None and snapshot.widgets[0].title == "Summary"
    counters = {c["label"]: c["value"] for c in snapshot.widgets[0].params["counters"]}
    assert counters["F1 on this file"] == "0.456"
    assert counters["ROC AUC on this file"] == "0.123"


def test_runs_land_in_one_project_with_their_tags(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    names = ["customer_churn_1.csv", "customer_churn_synthetic_2.csv"]
    results: list[MonitoringResult] = [
        monitor(reference, scored(data_dir / n, seed=1), settings, n) for n in names
    ]
    workspace = Workspace(str(settings.monitoring.evidently_workspace_dir))
    (project,) = workspace.search_project(drift.PROJECT)  # one project
    stored = {str(s) for s in workspace.list_runs(project.id)}
    assert stored == {r.snapshot_id for r in results}
    for name, result in zip(names, results, strict=True):
        snapshot = workspace.get_run(project.id, result.snapshot_id)
        assert snapshot is not None
        assert name in snapshot.tags
        assert "XGBoostChurnModel:v7" in snapshot.tags
        assert snapshot.metadata["model_version"] == "7"
        assert snapshot.name == name
        # Each plot once: on the report's page, not again in each metric's stored result.
        assert snapshot.widgets and not [r for r in snapshot.metric_results.values() if r.widget]
        assert result.report_url == (
            f"http://{settings.platform.platform_host}:{settings.platform.evidently_port}"
            f"/projects/{project.id}/reports/{result.snapshot_id}"
        )


@pytest.fixture
def ui_settings(evidently_ui: EvidentlyUI, tmp_path: Path) -> Settings:
    """Settings that publish to the real ``evidently ui`` of the session."""
    return get_settings(
        churnops_home=tmp_path, evidently_ui_url=evidently_ui.url, evidently_secret=SECRET
    )


@pytest.fixture
def http() -> requests.Session:
    """A client of the UI's own API, with its secret."""
    session = requests.Session()
    session.headers["evidently-secret"] = SECRET
    return session


def _new_project(monitoring: MonitoringSettings) -> str:
    return drift.project_id(drift.open_workspace(monitoring), f"churnops-{uuid.uuid4().hex[:8]}")


def test_the_secret_in_the_settings_lets_churnops_write(ui_settings: Settings) -> None:
    name = f"churnops-{uuid.uuid4().hex[:8]}"
    created = drift.project_id(drift.open_workspace(ui_settings.monitoring), name)
    assert drift.project_id(drift.open_workspace(ui_settings.monitoring), name) == created


@pytest.mark.parametrize("secret", [None, "wrong"])
def test_without_the_secret_writes_are_refused(ui_settings: Settings, secret: str | None) -> None:
    with pytest.raises(EvidentlyError, match="Not enough permissions"):
        _new_project(ui_settings.replace(evidently_secret=secret).monitoring)


def test_a_frozen_ui_fails_the_call_in_bounded_time_then_works_again(
    ui_settings: Settings, evidently_ui: EvidentlyUI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP'ed, the UI accepts connections and answers nothing: NETWORK_TIMEOUT_SECONDS
    ends the wait (the run fails and is retried), and after SIGCONT it works."""
    monkeypatch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 1.0)
    with evidently_ui.frozen(), pytest.raises(requests.Timeout):
        drift.open_workspace(ui_settings.monitoring)
    assert _new_project(ui_settings.monitoring)


def test_a_project_lost_by_the_ui_is_made_again_with_its_dashboard(
    data_dir: Path, reference: pd.DataFrame, ui_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI restarted over a deleted workspace: the attempt that finds the project gone
    fails, and its retry makes the project again, with the dashboard's panels."""
    monkeypatch.setattr(drift, "PROJECT", "lost")  # a project of this test's own
    current = scored(data_dir / "customer_churn_1.csv", seed=1)
    monitor(reference, current, ui_settings, "before.csv")
    workspace = drift.open_workspace(ui_settings.monitoring)
    (lost,) = workspace.search_project("lost")
    workspace.delete_project(lost.id)
    with pytest.raises(EvidentlyError, match="project not found"):
        monitor(reference, current, ui_settings, "after.csv")
    monitor(reference, current, ui_settings, "after.csv")  # the re-drive
    (made,) = workspace.search_project("lost")
    assert made.id != lost.id
    titles = {p.title for p in workspace.get_dashboard(made.id).panels}
    assert {"Drifted feature share", "Rows per file"} <= titles


def test_the_ui_has_the_dashboard_panels_and_each_report_opens_with_a_summary(
    data_dir: Path,
    reference: pd.DataFrame,
    ui_settings: Settings,
    evidently_ui: EvidentlyUI,
    http: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the real ``evidently ui``: the dashboard ChurnOps defines, the series its
    panels plot (one value per file, quality per model version), and a report whose first
    widget is the summary, with one confusion matrix and no in-sample reference scores."""
    settings = ui_settings
    monkeypatch.setattr(drift, "PROJECT", "dash")  # a project of this test's own
    files = {"customer_churn_1.csv": "7", "customer_churn_synthetic_2.csv": "8"}
    results = {}
    for name, version in files.items():
        current = scored(data_dir / name, seed=1)
        results[name] = monitor(reference, current, settings, name, version, attribution_ndcg=0.9)
    [project] = [
        p for p in http.get(f"{evidently_ui.url}/api/v2/projects").json() if p["name"] == "dash"
    ]
    api = f"{evidently_ui.url}/api/v2"

    dashboard = http.get(f"{api}/dashboards/{project['id']}").json()
    panels = {p["title"]: p for p in dashboard["panels"]}
    assert set(panels) == {
        "Drifted feature share",
        "Rows per file",
        "Attribution NDCG",
        "Quality scores, XGBoostChurnModel:v7",
        "Quality scores, XGBoostChurnModel:v8",
    }
    [tab] = dashboard["tabs"]
    assert sorted(tab["panels"]) == sorted(p["id"] for p in dashboard["panels"])

    def series(panel: str) -> list[list[float | None]]:
        keys = ("tags", "metadata", "metric", "metric_labels")  # what the UI asks for
        body = {"series_filter": [{k: v[k] for k in keys} for v in panels[panel]["values"]]}
        answer = http.post(f"{api}/snapshots/{project['id']}/data_series_batch", json=body)
        answer.raise_for_status()
        return [s["values"] for s in answer.json()["series"]]

    shares = [r.drifted_share for r in results.values()]
    assert series("Drifted feature share") == [pytest.approx(shares)]
    assert series("Rows per file") == [[float(r.rows) for r in results.values()]]
    assert series("Attribution NDCG") == [[0.9, 0.9]]
    v7 = series("Quality scores, XGBoostChurnModel:v7")
    assert len(v7) == 5 and all(len(values) == 1 for values in v7)  # one file, five scores

    first = results["customer_churn_1.csv"]
    data = http.get(f"{evidently_ui.url}/api/projects/{project['id']}/{first.snapshot_id}/data")
    widgets = data.json()["widgets"]
    flat = [w for group in widgets for w in (group.get("widgets") or [group])]
    summary = flat[0]
    assert summary["title"] == "Summary"
    labels = [c["label"] for c in summary["params"]["counters"]]
    assert labels[:2] == ["rows in the file", "drifted features"]
    assert "F1 on this file" in labels and "attribution NDCG" in labels
    titles = [w["title"] for w in flat]
    assert not [t for t in titles if "(reference)" in t], titles
    figures = [w for w in flat if w["type"] == "big_graph"]  # before: 3 confusion matrices
    assert len(figures) == 2, titles  # one confusion matrix (F1's), the ROC curve
    tabs = [t["title"] for w in flat for t in w.get("tabs") or []]
    assert tabs.count("DATA DISTRIBUTION") == len(FEATURES) + 1  # and the prediction's
    assert tabs.count("DATA DRIFT") == len(FEATURES)  # values by row: numerical columns
    assert '"template"' not in data.text  # no 7.5 kB of plotly styling per figure


def test_a_report_stored_in_the_ui_is_withdrawn(
    data_dir: Path,
    reference: pd.DataFrame,
    ui_settings: Settings,
    evidently_ui: EvidentlyUI,
    http: requests.Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attempt that fails after storing its report withdraws it from the real UI too (the
    platform's and AWS' case), so its re-drive's report is the file's only one; a re-drive
    finds its run's reports there by their metadata."""
    monkeypatch.setattr(drift, "PROJECT", "withdrawn")  # a project of this test's own
    current = scored(data_dir / "customer_churn_1.csv", seed=1)
    kept, failed = (monitor(reference, current, ui_settings, n, run=n) for n in ("kept", "failed"))
    assert drift.reports_of(ui_settings.monitoring, "failed", NOW) == [failed.snapshot_id]
    drift.withdraw(ui_settings.monitoring, failed.snapshot_id)
    workspace = drift.open_workspace(ui_settings.monitoring)
    (project,) = workspace.search_project("withdrawn")
    reports = http.get(f"{evidently_ui.url}/api/projects/{project.id}/reports").json()
    assert [r["id"] for r in reports] == [kept.snapshot_id]


def test_a_redrive_reads_only_the_local_reports_stored_since_its_drop(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    """A local workspace is read report by report (3.5 ms each, every re-drive): a report
    stored over a day before the run's drop is not read, as it cannot be the run's."""
    current = scored(data_dir / "customer_churn_1.csv", seed=1)
    stored = monitor(reference, current, settings, "a.csv", run="R")
    assert drift.reports_of(settings.monitoring, "R", NOW) == [stored.snapshot_id]
    assert drift.reports_of(settings.monitoring, "R", NOW + timedelta(days=2)) == []
