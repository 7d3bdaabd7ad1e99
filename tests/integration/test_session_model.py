"""The session model as MLflow's own tools see it (logged from code, served on a raw file),
as the screenshot script finds it, and as it behaves (Made-With-ML style): directional
(what should raise churn risk does not lower it) and invariance (row and column order,
the label)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.model.churn_model import ChurnModel, LoadedModel, configure_mlflow
from churnops.results import PREDICTION
from churnops.settings import Settings, get_settings
from devtools.screenshots import ScreenshotError, Services, staging_version

SOURCE = "customer_churn_1.csv"


@pytest.fixture(scope="module")
def model(session_scoring: tuple[Settings, LoadedModel]) -> ChurnModel:
    return session_scoring[1].model


@pytest.fixture(scope="module")
def customers(data_dir: Path) -> pd.DataFrame:
    return load_customer_file(data_dir / SOURCE, require_target=True)


def test_the_version_is_logged_from_code_not_pickled(
    session_scoring: tuple[Settings, LoadedModel],
) -> None:
    settings, loaded = session_scoring
    configure_mlflow(settings.model)
    uri = f"models:/{settings.model.model_name}/{loaded.version}"
    pyfunc = mlflow.models.get_model_info(uri).flavors["python_function"]
    assert Path(pyfunc["model_code_path"]).name == "model_code.py"
    assert "python_model" not in pyfunc  # the key of python_model.pkl
    assert set(pyfunc["config"]) == {"features", "threshold"}
    assert pyfunc["config"]["threshold"] == loaded.model.threshold
    files = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(uri)}
    assert "model_code.py" in files
    assert not [name for name in files if name.endswith(".pkl")]
    assert isinstance(loaded.model, ChurnModel)


def test_mlflow_models_predict_scores_the_raw_customer_file(
    session_scoring: tuple[Settings, LoadedModel], data_dir: Path, tmp_path: Path
) -> None:
    """``mlflow models predict`` on the file as users drop it (UCI header, Churn column)."""
    settings, loaded = session_scoring
    source = data_dir / SOURCE
    assert "Call  Failure" in pd.read_csv(source, nrows=0).columns
    output = tmp_path / "predictions.json"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "predict",
        "-m",
        f"models:/{settings.model.model_name}@{settings.model.model_alias}",
        "-i",
        str(source),
        "-t",
        "csv",
        "--env-manager",
        "local",
        "-o",
        str(output),
    ]
    env = os.environ | {
        "MLFLOW_TRACKING_URI": settings.model.tracking_uri,
        # nothing of the model may need unpickling
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads(output.read_text())["predictions"]
    expected = loaded.model.score(load_customer_file(source))[PREDICTION]
    assert len(predictions) == len(expected) == 1050
    assert [row[PREDICTION] for row in predictions] == expected.tolist()


def test_the_screenshot_script_finds_the_staging_version_through_mlflows_rest_api(
    mlflow_server: str, session_model: str, tmp_path: Path
) -> None:
    services = Services("http://unused", mlflow_server, "http://unused", str(tmp_path))
    settings = get_settings(churnops_home=tmp_path, model_name=session_model)
    assert staging_version(services, settings.model) == "1"
    missing = get_settings(churnops_home=tmp_path, model_name="NoSuchModel")
    with pytest.raises(ScreenshotError, match="no NoSuchModel@staging in MLflow"):
        staging_version(services, missing.model)


def test_a_complaint_never_lowers_the_churn_risk(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    calm = model.fast_proba(customers.assign(complains=0))
    complaining = model.fast_proba(customers.assign(complains=1))
    # The trees carry no monotone constraint: allow noise, never a real drop.
    assert (complaining >= calm - 0.01).all()
    assert (complaining - calm).mean() > 0.1


def test_inactive_customers_are_riskier_on_average(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    active = model.fast_proba(customers.assign(status=1))
    inactive = model.fast_proba(customers.assign(status=2))
    assert inactive.mean() > active.mean()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c.sample(frac=1, random_state=3), id="rows shuffled"),
        pytest.param(lambda c: c.assign(**{TARGET: 1 - c[TARGET]}), id="label flipped"),
        pytest.param(lambda c: c.drop(columns=TARGET), id="label dropped"),
    ],
)
def test_neither_row_order_nor_the_label_changes_a_score(
    model: ChurnModel, customers: pd.DataFrame, change: Callable[[pd.DataFrame], pd.DataFrame]
) -> None:
    scores = model.score(change(customers)).sort_index()
    pd.testing.assert_frame_equal(scores, model.score(customers), check_exact=True)


def test_column_order_of_the_file_does_not_matter(model: ChurnModel, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / SOURCE)
    columns = list(np.random.default_rng(5).permutation(raw.columns))
    reordered = load_customer_file(raw[columns].to_csv(index=False).encode())
    original = load_customer_file(raw.to_csv(index=False).encode())
    pd.testing.assert_frame_equal(model.score(reordered), model.score(original), check_exact=True)
