"""The pyfunc itself, without a tracking server: headers it reads, config it carries."""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import xgboost as xgb
from mlflow.pyfunc import PythonModelContext

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import RAW_COLUMNS, TARGET
from churnops.model.churn_model import MODEL_CODE, REFERENCE_ARTIFACT, XGB_ARTIFACT, ChurnModel
from churnops.results import PREDICTION, PROBABILITY

SOURCE = "customer_churn_0.csv"


@pytest.fixture(scope="module")
def frame(data_dir: Path) -> pd.DataFrame:
    """The training file read as the pipeline reads it (clean names, typed)."""
    return load_customer_file(data_dir / SOURCE, require_target=True)


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame) -> ChurnModel:
    classifier = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0, n_jobs=1)
    classifier.fit(prepare_features(frame), target(frame))
    return ChurnModel.in_memory(list(FEATURES), 0.4, classifier)


@pytest.fixture(scope="module")
def artifacts(model: ChurnModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("artifacts")
    model.classifier.save_model(folder / "xgb_model.json")
    pd.DataFrame({"x": [1]}).to_parquet(folder / "reference.parquet")
    return {
        XGB_ARTIFACT: str(folder / "xgb_model.json"),
        REFERENCE_ARTIFACT: str(folder / "reference.parquet"),
    }


def test_predict_takes_the_raw_header_and_the_clean_names(
    model: ChurnModel, frame: pd.DataFrame, data_dir: Path
) -> None:
    raw = pd.read_csv(data_dir / SOURCE)
    assert "Call  Failure" in raw.columns
    expected = model.score(frame)
    scored = model.predict(None, raw, params={"probability": True})  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    labels = model.predict(None, frame)  # type: ignore[arg-type]
    pd.testing.assert_series_equal(labels, expected[PREDICTION], check_exact=True)


def test_predict_names_a_missing_column_by_its_header_and_refuses_two_spellings(
    model: ChurnModel, frame: pd.DataFrame, data_dir: Path
) -> None:
    raw = pd.read_csv(data_dir / SOURCE).drop(columns="Age")
    with pytest.raises(ValueError, match=r"missing column\(s\): 'Age' \(age\)"):
        model.predict(None, raw)  # type: ignore[arg-type]
    both = frame.assign(Age=frame["age"])
    with pytest.raises(ValueError, match="two spellings: age"):
        model.predict(None, both)  # type: ignore[arg-type]


def test_the_config_and_artifacts_rebuild_the_model(
    model: ChurnModel, frame: pd.DataFrame, artifacts: dict[str, str]
) -> None:
    assert model.config() == {"features": FEATURES, "threshold": 0.4}
    empty = ChurnModel()
    with pytest.raises(RuntimeError, match="not loaded"):
        _ = empty.threshold
    empty.load_context(PythonModelContext(artifacts, model.config()))
    assert (empty.features, empty.threshold) == (model.features, model.threshold)
    pd.testing.assert_frame_equal(empty.score(frame), model.score(frame), check_exact=True)
    with pytest.raises(RuntimeError, match="model_config lacks features or threshold"):
        ChurnModel().load_context(PythonModelContext(artifacts, None))


def test_a_version_pickled_before_models_from_code_still_loads(
    model: ChurnModel, frame: pd.DataFrame, artifacts: dict[str, str]
) -> None:
    """Registered versions logged by the old code are pickled instances whose state has
    ``features`` and ``threshold`` and no ``model_config``: the staging alias may hold one.
    """
    old = ChurnModel.__new__(ChurnModel)
    old.__dict__.update(
        features=list(FEATURES), threshold=0.4, _classifier=None, _reference_path=None
    )
    unpickled = pickle.loads(pickle.dumps(old))
    unpickled.load_context(PythonModelContext(artifacts, None))
    assert (unpickled.features, unpickled.threshold) == (model.features, model.threshold)
    pd.testing.assert_frame_equal(unpickled.score(frame), model.score(frame), check_exact=True)


def test_the_signature_lists_both_spellings_none_required(
    model: ChurnModel, frame: pd.DataFrame
) -> None:
    inputs = model.model_signature(frame).inputs
    raw = [name for name, clean in RAW_COLUMNS.items() if clean != TARGET]
    assert inputs.input_names() == [*raw, *FEATURES]
    assert inputs.required_input_names() == []
    types = dict(zip(inputs.input_names(), inputs.input_types(), strict=True))
    assert {types["Customer Value"].name, types["customer_value"].name} == {"double"}
    assert {types["Call  Failure"].name, types["call_failure"].name} == {"long"}


def test_saved_from_code_it_scores_a_raw_file_through_mlflow(
    model: ChurnModel,
    frame: pd.DataFrame,
    artifacts: dict[str, str],
    data_dir: Path,
    tmp_path: Path,
) -> None:
    """MLflow enforces the signature before predict: a raw header must get through it."""
    mlflow.pyfunc.save_model(
        path=tmp_path / "model",
        python_model=str(MODEL_CODE),
        model_config=model.config(),
        artifacts=artifacts,
        signature=model.model_signature(frame),
        pip_requirements=["churnops"],  # skips requirement inference (a subprocess)
    )
    assert not list((tmp_path / "model").rglob("*.pkl"))
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert isinstance(loaded.unwrap_python_model(), ChurnModel)
    expected = model.score(frame)
    raw = pd.read_csv(data_dir / SOURCE)  # with the Churn column, which MLflow drops
    scored = loaded.predict(raw, params={"probability": True})
    assert list(scored.columns) == [PREDICTION, PROBABILITY]
    pd.testing.assert_frame_equal(scored, expected, check_exact=True)
    clean = loaded.predict(frame.drop(columns=TARGET))
    assert (clean.to_numpy() == expected[PREDICTION].to_numpy()).all()
