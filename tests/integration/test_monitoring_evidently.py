"""run_monitoring on the real customer files, stored in a real local Evidently workspace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evidently.ui.workspace import Workspace

from churnops.data.features import FEATURES
from churnops.data.reading import load_customer_file
from churnops.monitoring.drift import run_monitoring
from churnops.results import PREDICTION, PROBABILITY, QUALITY_METRICS, MonitoringResult
from churnops.settings import Settings, get_settings

pytestmark = pytest.mark.integration


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


def monitor(reference: pd.DataFrame, current: pd.DataFrame, settings: Settings, name: str):
    return run_monitoring(
        reference,
        current,
        feature_columns=FEATURES,
        settings=settings,
        file_name=name,
        model_version="7",
        model_name="XGBoostChurnModel",
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


def test_runs_land_in_one_project_with_their_tags(
    data_dir: Path, reference: pd.DataFrame, settings: Settings
) -> None:
    names = ["customer_churn_1.csv", "customer_churn_synthetic_2.csv"]
    results: list[MonitoringResult] = [
        monitor(reference, scored(data_dir / n, seed=1), settings, n) for n in names
    ]
    workspace = Workspace(str(settings.evidently_workspace_dir))
    projects = workspace.search_project(settings.evidently_project)
    assert len(projects) == 1
    project = projects[0]
    stored = {str(s) for s in workspace.list_runs(project.id)}
    assert stored == {r.snapshot_id for r in results}
    for name, result in zip(names, results, strict=True):
        snapshot = workspace.get_run(project.id, result.snapshot_id)
        assert snapshot is not None
        assert name in snapshot.tags
        assert "XGBoostChurnModel:v7" in snapshot.tags
        assert snapshot.metadata["model_version"] == "7"
        assert snapshot.name == name
        assert result.report_url == (
            f"http://{settings.platform_host}:{settings.evidently_port}"
            f"/projects/{project.id}/reports/{result.snapshot_id}"
        )
