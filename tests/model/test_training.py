"""Training pieces: features, threshold choice, cross-validation, stored parameters, the
parameters a retraining fits with; and the pyfunc they make, without a tracking server:
headers it reads, config it carries."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import xgboost as xgb
from mlflow.pyfunc import PythonModelContext

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import INPUT_COLUMNS, RAW_COLUMNS, TARGET
from churnops.model import registry, training
from churnops.model.churn_model import REFERENCE_ARTIFACT, XGB_ARTIFACT, ChurnModel
from churnops.model.registry import TrainingOptions, choose_params
from churnops.results import PREDICTION
from churnops.settings import get_settings

SMALL = {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3}
SOURCE = "customer_churn_0.csv"


@pytest.fixture(scope="module")
def frame(data_dir: Path) -> pd.DataFrame:
    """The training file read as the pipeline reads it (clean names, typed)."""
    return load_customer_file(data_dir / SOURCE, require_target=True)


def test_features_are_every_input_column_in_file_order() -> None:
    assert FEATURES == INPUT_COLUMNS


def test_prepare_features_names_missing_columns(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="missing feature column\\(s\\): status"):
        prepare_features(frame.drop(columns="status"))
    assert list(prepare_features(frame).columns) == FEATURES


def test_best_threshold_maximises_f1() -> None:
    y = np.array([0, 0, 0, 1, 1])
    proba = np.array([0.1, 0.2, 0.35, 0.4, 0.9])
    threshold, f1 = training.best_threshold(y, proba)
    assert 0.35 < threshold <= 0.40
    assert f1 == 1.0


def test_evaluate_counts_the_confusion_matrix() -> None:
    y = np.array([0, 1, 1, 0])
    scores = training.evaluate(y, np.array([0.2, 0.8, 0.3, 0.7]), threshold=0.5)
    assert scores.confusion == [[1, 1], [1, 1]]
    assert scores.f1 == pytest.approx(0.5)
    assert scores.roc_auc == pytest.approx(0.75)


def test_cross_validation_reports_every_fold(frame: pd.DataFrame) -> None:
    seen: list[tuple[str, int, int]] = []
    threshold, f1 = training.cross_validate(
        SMALL, prepare_features(frame), target(frame), 3, 0, lambda *step: seen.append(step)
    )
    assert seen == [("fold", 1, 3), ("fold", 2, 3), ("fold", 3, 3)]
    assert 0.1 <= threshold <= 0.9
    assert f1 > 0.6


def trial(f1: float, trees: int, depth: int) -> optuna.trial.FrozenTrial:
    params = {"n_estimators": trees, "max_depth": depth}
    distributions = {
        "n_estimators": optuna.distributions.IntDistribution(20, 800, log=True),
        "max_depth": optuna.distributions.IntDistribution(2, 8),
    }
    return optuna.trial.create_trial(
        params=params,
        distributions=distributions,
        values=[f1, training.predict_cost(params)],
        user_attrs={"features": FEATURES},
    )


def test_the_cheapest_trial_within_the_tolerance_of_the_best_f1_is_chosen() -> None:
    best, lean, leaner, cheapest = (
        trial(0.912, 500, 8),
        trial(0.9075, 100, 4),
        trial(0.906, 60, 4),  # 0.006 below the best: out
        trial(0.85, 20, 2),
    )
    assert training.chosen_trial([best, leaner, cheapest]) == best
    assert training.chosen_trial([best, lean, leaner, cheapest]) == lean
    assert training.chosen_trial([trial(0.907, 100, 4), lean]) == lean  # same cost: better F1


def test_search_stores_threshold_and_returns_the_chosen_params(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    study = training.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s", 0)
    X = prepare_features(frame.head(300))
    chosen = training.search(study, X, target(frame.head(300)), 3, 2, 0)
    assert len(study.trials) == 3
    assert all("threshold" in t.user_attrs for t in study.trials)
    assert all(t.values[1] == training.predict_cost(t.params) for t in study.trials)
    assert chosen == training.chosen_trial(study.trials).params
    assert training.stored_params(study, FEATURES) == chosen
    assert training.stored_params(study, ["status"]) is None


def test_default_params_come_from_the_search_space() -> None:
    params = training.default_params()
    assert training.suggest_params(optuna.trial.FixedTrial(params)) == params


def test_stored_or_shipped_without_trials_a_study_of_its_own_with(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    model = get_settings(churnops_home=tmp_path).model
    rows = frame.head(300)
    X, y = prepare_features(rows, FEATURES), target(rows)
    given = {"n_estimators": 5, "max_depth": 2}
    unstored = partial(choose_params, model, X=X, y=y, stored_study=False)
    assert unstored(TrainingOptions(params=given, trials=3)) == given
    assert unstored(TrainingOptions()) == training.default_params()

    seen: list[tuple[str, int, int]] = []
    searched = unstored(TrainingOptions(trials=2), progress=lambda *step: seen.append(step))
    assert set(searched) == set(training.default_params()) and searched != given
    assert ("trial", 2, 2) in seen
    study = training.open_study(model.optuna_storage_url, registry.OPTUNA_STUDY, 42)
    assert study.trials == []  # the stored study is not mixed with retraining's rows


# --- the pyfunc -------------------------------------------------------------------------------
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
