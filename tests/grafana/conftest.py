"""A metrics database filled by the pipeline itself (``per_file.process``, the flow's
steps), for the dashboard and report tests. Two inputs differ from the flow: each model
version is a small XGBoost handed in as the ``load_model`` step (no MLflow), and the runs
are re-stamped six hours apart so every series has several points. One run's first attempt
fails after storing its metrics (its folder move) and is re-driven. Then one run's
predictions come back as late labels (their run stamped between two scoring runs), and one
retraining verdict is recorded.
"""

from __future__ import annotations

import secrets
import shutil
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import xgboost as xgb
from sqlalchemy import Connection, update

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.drop.storage import DropStorage, open_storage, run_key, stage_key
from churnops.model.churn_model import ChurnModel, LoadedModel
from churnops.model.registry import reference_frame
from churnops.monitoring.metrics_db import MetricsStore, pipeline_runs, run_metrics
from churnops.pipeline.per_file import PLAIN_STEPS, FileOutcome, Steps, process
from churnops.settings import Settings, get_settings
from tests.fixtures.postgres import PostgresCluster

MODEL_NAME = "XGBoostChurnModel"
FIRST_RUN = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
RUN_SPACING = timedelta(hours=6)
BROKEN_FILE = "customer_churn_broken.csv"
BROKEN_CSV = b"Call  Failure,Age\n1,not a number\n"


@dataclass(frozen=True)
class PlannedRun:
    """A file and the model version that scores it (an errored run never learns it)."""

    file_name: str
    model_version: str

    @property
    def errored(self) -> bool:
        return self.file_name == BROKEN_FILE


#: Two model versions over the same three files, and a file that fails validation.
PLAN = [
    PlannedRun(file_name, version)
    for version in ("1", "2")
    for file_name in (
        "customer_churn_1.csv",
        "customer_churn_2_majority_drifted.csv",
        "customer_churn_synthetic_1.csv",
        *([BROKEN_FILE] if version == "1" else []),
    )
]
LAST_RUN = FIRST_RUN + RUN_SPACING * (len(PLAN) - 1)
#: The run whose predictions come back as late labels (its file carries ``Churn``).
LABELED = 2
#: The run whose first attempt fails at its folder move, after its metrics are stored.
REDRIVEN = 5
#: The late labels file: the predictions of the :data:`LABELED` run.
LABELS_FILE = (
    f"{PLAN[LABELED].file_name.removesuffix('.csv')}_predictions_{MODEL_NAME}"
    f"_v{PLAN[LABELED].model_version}.csv"
)


def started_at(index: int) -> datetime:
    return FIRST_RUN + RUN_SPACING * index


#: When the late labels' run started: between the labeled run and the next.
LABELS_AT = started_at(LABELED) + RUN_SPACING / 2


def _fit(reference: pd.DataFrame, depth: int) -> xgb.XGBClassifier:
    model = xgb.XGBClassifier(n_estimators=20, max_depth=depth, random_state=0, n_jobs=1)
    model.fit(prepare_features(reference), target(reference))
    return model


def _models(settings: Settings, data_dir: Path) -> dict[str, LoadedModel]:
    """Version -> a model fitted on the training file, with its reference data."""
    training = load_customer_file(data_dir / settings.model.training_file, require_target=True)
    models = {}
    for version, depth in (("1", 3), ("2", 5)):
        model = ChurnModel.in_memory(FEATURES, 0.5, _fit(training, depth))
        reference = settings.home / f"reference-{version}.parquet"
        reference_frame(training, model).to_parquet(reference)
        models[version] = LoadedModel(
            MODEL_NAME, version, ChurnModel.in_memory(FEATURES, 0.5, model.classifier, reference)
        )
    return models


def run_pipeline(metrics_url: str, data_dir: Path, settings: Settings) -> None:
    """Process every file of :data:`PLAN` into ``metrics_url`` as the flow does."""
    drop_dir = settings.home / secrets.token_hex(4)
    settings = settings.replace(database_url=metrics_url, local_drop_dir=drop_dir)
    storage = open_storage(settings.drop)
    models = _models(settings, data_dir)
    run_ids: list[list[str | None]] = []
    outcomes = []
    for index, planned in enumerate(PLAN):
        key = stage_key("input", planned.file_name)
        source = storage.path(key)
        if planned.errored:
            source.write_bytes(BROKEN_CSV)
        else:
            shutil.copyfile(data_dir / planned.file_name, source)
        model = models[planned.model_version]
        steps = replace(PLAIN_STEPS, load_model=lambda _settings, model=model: model)
        attempts = [process(settings, storage, key, steps=_failing_once(steps, index))]
        if attempts[0].status == "failed":  # re-driven as the reconciler does
            redrive = run_key("processing", attempts[0].run or "", planned.file_name)
            attempts.append(process(settings, storage, redrive, steps=steps))
        outcome = attempts[-1]
        assert outcome.status == ("errored" if planned.errored else "processed"), outcome
        run_ids.append([a.run_id for a in attempts])
        outcomes.append(outcome)
    _spread_in_time(metrics_url, run_ids)
    labels_run = _label_late(settings, storage, outcomes[LABELED])
    with closing(MetricsStore(metrics_url)) as store, store.engine.begin() as conn:
        _stamp(conn, labels_run, LABELS_AT)
    _record_retraining(metrics_url)


def _failing_once(steps: Steps, index: int) -> Steps:
    """The :data:`REDRIVEN` run's folder move fails once (storage down), else ``steps``."""
    if index != REDRIVEN:
        return steps
    failures = [OSError("storage unavailable")]

    def finish(*args: Any) -> str:
        if failures:
            raise failures.pop()
        return steps.finish(*args)

    return replace(steps, finish=finish)


def _label_late(settings: Settings, storage: DropStorage, scored: FileOutcome) -> str:
    """The run's predictions file, its ``Churn`` column already filled, as late labels: the
    id of their run."""
    assert scored.predictions_key is not None
    name = scored.predictions_key.rsplit("/", 1)[-1]
    assert name == LABELS_FILE
    storage.create(stage_key("labels", name), storage.read(scored.predictions_key))
    outcome = process(settings, storage, stage_key("labels", name))
    assert outcome.status == "processed" and outcome.run_id is not None, outcome
    return outcome.run_id


def _stamp(conn: Connection, run_id: str, start: datetime) -> None:
    """The run started at ``start``, done 6 min later."""
    conn.execute(
        update(pipeline_runs)
        .where(pipeline_runs.c.id == run_id)
        .values(started_at=start, finished_at=start + timedelta(minutes=6))
    )


def _record_retraining(metrics_url: str) -> None:
    with closing(MetricsStore(metrics_url)) as store:
        store.record_model_event(
            at=LAST_RUN,
            model_name=MODEL_NAME,
            version="2",
            parent_version="1",
            event="promoted",
            reason="challenger F1 0.81 beats champion F1 0.74 on customer_churn_synthetic_1.csv",
            holdout_f1=0.81,
            champion_f1=0.74,
            trigger="manual",
        )


def _spread_in_time(metrics_url: str, run_ids: list[list[str | None]]) -> None:
    """Run ``i`` started at :func:`started_at`, its metrics 5 min later, done 1 min after;
    an earlier attempt of it the same, an hour before each later one."""
    with closing(MetricsStore(metrics_url)) as store, store.engine.begin() as conn:
        for index, attempts in enumerate(run_ids):
            for before, run_id in enumerate(reversed(attempts)):
                start = started_at(index) - timedelta(hours=before)
                _stamp(conn, run_id, start)
                conn.execute(
                    update(run_metrics)
                    .where(run_metrics.c.run_id == run_id)
                    .values(recorded_at=start + timedelta(minutes=5))
                )


@pytest.fixture(scope="session")
def pipeline_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("churnops-home")
    return get_settings(churnops_home=home, evidently_ui_url=None, evidently_workspace=None)


@pytest.fixture(scope="session")
def pipeline_sqlite_url(data_dir: Path, pipeline_settings: Settings) -> str:
    """The local default: SQLite under CHURNOPS_HOME, after the planned runs."""
    url = pipeline_settings.monitoring.metrics_db_url
    run_pipeline(url, data_dir, pipeline_settings)
    return url


@pytest.fixture(scope="session")
def pipeline_postgres_url(
    postgres_cluster: PostgresCluster, data_dir: Path, pipeline_settings: Settings
) -> str:
    """A database of its own in the throwaway cluster, after the planned runs."""
    url = postgres_cluster.new_database("churnops_grafana")
    run_pipeline(url, data_dir, pipeline_settings)
    return url
