"""Training pieces: features, threshold choice, cross-validation, stored parameters, and
the parameters a retraining fits with."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import INPUT_COLUMNS
from churnops.model import registry, training
from churnops.model.registry import TrainingOptions, choose_params
from churnops.settings import get_settings

SMALL = {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3}


@pytest.fixture(scope="module")
def train_frame(data_dir: Path) -> pd.DataFrame:
    return load_customer_file(data_dir / "customer_churn_0.csv", require_target=True)


def test_features_are_every_input_column_in_file_order() -> None:
    assert FEATURES == INPUT_COLUMNS


def test_prepare_features_names_missing_columns(train_frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="missing feature column\\(s\\): status"):
        prepare_features(train_frame.drop(columns="status"))
    assert list(prepare_features(train_frame).columns) == FEATURES


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


def test_cross_validation_reports_every_fold(train_frame: pd.DataFrame) -> None:
    seen: list[tuple[str, int, int]] = []
    threshold, f1 = training.cross_validate(
        SMALL,
        prepare_features(train_frame),
        target(train_frame),
        3,
        0,
        lambda *step: seen.append(step),
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
    train_frame: pd.DataFrame, tmp_path: Path
) -> None:
    study = training.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s", 0)
    X = prepare_features(train_frame.head(300))
    chosen = training.search(study, X, target(train_frame.head(300)), 3, 2, 0)
    assert len(study.trials) == 3
    assert all("threshold" in t.user_attrs for t in study.trials)
    assert all(t.values[1] == training.predict_cost(t.params) for t in study.trials)
    assert chosen == training.chosen_trial(study.trials).params
    assert training.stored_params(study, FEATURES) == chosen
    assert training.stored_params(study, ["status"]) is None


def test_a_stored_f1_only_study_is_refused_by_name(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="old", storage=storage, direction="maximize")
    with pytest.raises(ValueError, match=r"study 'old' .* F1-only search.*OPTUNA_STUDY"):
        training.open_study(storage, "old", 0)


def test_inference_costs_are_milliseconds_per_thousand_rows(train_frame: pd.DataFrame) -> None:
    X = prepare_features(train_frame)
    small = training.make_classifier(SMALL, 0).fit(X, target(train_frame))
    costs = training.inference_costs(small, X, repeats=1)
    assert set(costs) == {"predict_ms_per_1k_rows", "shap_ms_per_1k_rows"}
    assert all(value > 0 for value in costs.values())


def test_default_params_come_from_the_search_space() -> None:
    params = training.default_params()
    assert training.suggest_params(optuna.trial.FixedTrial(params)) == params


def test_stored_or_shipped_without_trials_a_study_of_its_own_with(
    train_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    model = get_settings(churnops_home=tmp_path).model
    rows = train_frame.head(300)
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
