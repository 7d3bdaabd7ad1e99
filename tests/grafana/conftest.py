"""A metrics database filled the way the pipeline fills it, for the dashboard and report tests.

:func:`run_pipeline` chains the building blocks ``churnops.pipeline.flow.process_file``
uses, without Prefect and MLflow: ``MetricsStore.start_run`` before the model
is known, validation, predictions of a small XGBoost model trained on
customer_churn_0.csv, ``run_monitoring`` against that reference,
``record_result`` and ``finish_run``. Unlike the flow it sets the clock: runs
are six hours apart so every time series has several points. The fixtures
``pipeline_sqlite_url`` / ``pipeline_postgres_url`` are the seam where the
real flow can take over.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import xgboost as xgb
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import DataValidationError
from churnops.monitoring.drift import run_monitoring
from churnops.monitoring.metrics_db import ERRORED, PROCESSED, MetricsStore
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings, get_settings

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


def started_at(index: int) -> datetime:
    return FIRST_RUN + RUN_SPACING * index


def _fit(reference: pd.DataFrame, depth: int) -> xgb.XGBClassifier:
    model = xgb.XGBClassifier(n_estimators=20, max_depth=depth, random_state=0, n_jobs=1)
    model.fit(prepare_features(reference), target(reference))
    return model


def _score(model: xgb.XGBClassifier, df: pd.DataFrame) -> pd.DataFrame:
    proba = model.predict_proba(prepare_features(df))[:, 1]
    return df.assign(**{PROBABILITY: proba, PREDICTION: (proba >= 0.5).astype(int)})


def run_pipeline(store: MetricsStore, data_dir: Path, settings: Settings) -> None:
    """Process every file of :data:`PLAN` into ``store``, as the flow does."""
    training = load_customer_file(data_dir / settings.training_file, require_target=True)
    models = {"1": _fit(training, depth=3), "2": _fit(training, depth=5)}
    for index, planned in enumerate(PLAN):
        start = started_at(index)
        run_id = store.start_run(
            file_name=planned.file_name,
            bucket=settings.drop_bucket,
            object_key=f"data/input/{planned.file_name}",
            started_at=start,
        )
        try:
            source = BROKEN_CSV if planned.errored else data_dir / planned.file_name
            current = load_customer_file(source, name=planned.file_name)
        except DataValidationError as exc:
            store.finish_run(
                run_id, ERRORED, error=str(exc), finished_at=start + timedelta(seconds=30)
            )
            continue
        model = models[planned.model_version]
        result = run_monitoring(
            _score(model, training),
            _score(model, current),
            feature_columns=FEATURES,
            settings=settings,
            file_name=planned.file_name,
            model_version=planned.model_version,
            model_name=MODEL_NAME,
        )
        store.record_result(run_id, result, recorded_at=start + timedelta(minutes=5))
        store.finish_run(
            run_id,
            PROCESSED,
            rows=result.rows,
            report_url=result.report_url,
            model_name=MODEL_NAME,
            model_version=planned.model_version,
            finished_at=start + timedelta(minutes=6),
        )


@pytest.fixture(scope="session")
def pipeline_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("churnops-home")
    return get_settings(churnops_home=home, evidently_ui_url=None, evidently_workspace=None)


@pytest.fixture(scope="session")
def pipeline_sqlite_url(data_dir: Path, pipeline_settings: Settings) -> Iterator[str]:
    """The local default: SQLite under CHURNOPS_HOME, after the planned runs."""
    url = pipeline_settings.metrics_db_url
    store = MetricsStore(url)
    run_pipeline(store, data_dir, pipeline_settings)
    store.close()
    yield url


@pytest.fixture(scope="session")
def pipeline_postgres_url(
    postgres_url: str, data_dir: Path, pipeline_settings: Settings
) -> Iterator[str]:
    """A database of its own in the throwaway cluster, after the planned runs."""
    name = f"churnops_grafana_{secrets.token_hex(4)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    store = MetricsStore(url)
    run_pipeline(store, data_dir, pipeline_settings)
    store.close()
    yield url
