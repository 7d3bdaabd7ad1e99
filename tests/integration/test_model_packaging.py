"""The session model as MLflow's own tools see it: logged from code, served on a raw file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from churnops.data.reading import load_customer_file
from churnops.model.churn_model import ChurnModel, LoadedModel, configure_mlflow
from churnops.results import PREDICTION
from churnops.settings import Settings

SOURCE = "customer_churn_1.csv"


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
