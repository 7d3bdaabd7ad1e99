"""The parameters a retraining fits with."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.model import registry, training
from churnops.model.registry import TrainingOptions, choose_params
from churnops.settings import get_settings


def test_stored_or_shipped_without_trials_a_study_of_its_own_with(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    model = get_settings(churnops_home=tmp_path).model
    rows = load_customer_file(data_dir / "customer_churn_0.csv", require_target=True).head(300)
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
