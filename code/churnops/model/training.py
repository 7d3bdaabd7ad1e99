"""Fit the churn classifier: Optuna search, cross-validated threshold, evaluation.

Plain functions on frames; MLflow logging and registration live in
:mod:`churnops.model.registry`, the command in :mod:`churnops.cli`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import optuna
import pandas as pd
import xgboost as xgb
from sklearn import metrics
from sklearn.model_selection import StratifiedKFold, train_test_split

log = logging.getLogger(__name__)

#: Candidate thresholds searched on out-of-fold probabilities.
THRESHOLDS = np.round(np.arange(0.10, 0.91, 0.01), 2)

Progress = Callable[[str, int, int], None]
"""Callback ``(what, done, total)`` for visible progress (trials, folds)."""


def _quiet(_: str, __: int, ___: int) -> None:
    return None


def default_params() -> dict[str, Any]:
    """The best parameters found by a long search, shipped with the package.

    ``churnops train --trials N`` searches again; the fast default path reuses
    the best stored trial, or these when no study exists yet.
    """
    text = resources.files("churnops.model").joinpath("default_params.json").read_text()
    return json.loads(text)


def make_classifier(params: dict[str, Any], seed: int) -> xgb.XGBClassifier:
    """An XGBoost classifier with fixed, reproducible settings around ``params``."""
    return xgb.XGBClassifier(
        **params,
        objective="binary:logistic",
        eval_metric="logloss",
        tree_method="hist",
        random_state=seed,
        n_jobs=2,
    )


def split_holdout(
    df: pd.DataFrame, target: pd.Series, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified train/holdout split of the training file."""
    train, holdout = train_test_split(df, test_size=fraction, stratify=target, random_state=seed)
    return train, holdout


def best_threshold(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises F1 on these probabilities, and that F1."""
    scores = [metrics.f1_score(y, proba >= t, zero_division=0) for t in THRESHOLDS]
    best = int(np.argmax(scores))
    return float(THRESHOLDS[best]), float(scores[best])


def out_of_fold_proba(
    params: dict[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    folds: int,
    seed: int,
    progress: Progress = _quiet,
) -> np.ndarray:
    """Stratified k-fold probabilities for every training row."""
    proba = np.zeros(len(y), dtype=float)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (fit_idx, val_idx) in enumerate(splitter.split(X, y), start=1):
        model = make_classifier(params, seed).fit(X.iloc[fit_idx], y.iloc[fit_idx])
        proba[val_idx] = model.predict_proba(X.iloc[val_idx])[:, 1]
        progress("fold", i, folds)
    return proba


def cross_validate(
    params: dict[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    folds: int,
    seed: int,
    progress: Progress = _quiet,
) -> tuple[float, float]:
    """Cross-validated (threshold, F1): the threshold is chosen out of fold too."""
    proba = out_of_fold_proba(params, X, y, folds, seed, progress)
    return best_threshold(y.to_numpy(), proba)


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """The search space (ranges around what worked on this data)."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 100, 800),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
        "max_depth": trial.suggest_int("max_depth", 2, 8),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 10, log=True),
        "gamma": trial.suggest_float("gamma", 1e-4, 5, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-4, 10, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-4, 10, log=True),
        "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, 6.0),
    }


def open_study(storage: str, name: str, seed: int) -> optuna.Study:
    """The persistent study (SQLite by default, so optuna-dashboard can open it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )


def search(
    study: optuna.Study,
    X: pd.DataFrame,
    y: pd.Series,
    n_trials: int,
    folds: int,
    seed: int,
    progress: Progress = _quiet,
) -> None:
    """Run ``n_trials`` more trials; each stores its CV threshold as an attribute."""
    features = list(X.columns)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("features", features)
        threshold, f1 = cross_validate(suggest_params(trial), X, y, folds, seed)
        trial.set_user_attr("threshold", threshold)
        return f1

    done = 0

    def callback(_: optuna.Study, __: optuna.trial.FrozenTrial) -> None:
        nonlocal done
        done += 1
        progress("trial", done, n_trials)

    study.optimize(objective, n_trials=n_trials, callbacks=[callback])


def stored_params(study: optuna.Study, features: list[str]) -> dict[str, Any] | None:
    """Best parameters of a completed trial on this feature set, if any."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.user_attrs.get("features") == features
    ]
    if not trials:
        return None
    return dict(max(trials, key=lambda t: t.value or 0.0).params)


@dataclass(frozen=True)
class Evaluation:
    """Scores of a model on one labeled frame at its decision threshold."""

    f1: float
    precision: float
    recall: float
    accuracy: float
    roc_auc: float
    pr_auc: float
    log_loss: float
    confusion: list[list[int]]

    def scores(self, prefix: str = "") -> dict[str, float]:
        values = {k: v for k, v in vars(self).items() if k != "confusion"}
        return {f"{prefix}{k}": float(v) for k, v in values.items()}


def evaluate(y: np.ndarray, proba: np.ndarray, threshold: float) -> Evaluation:
    """Every score the model is judged by."""
    labels = (proba >= threshold).astype(int)
    return Evaluation(
        f1=metrics.f1_score(y, labels, zero_division=0),
        precision=metrics.precision_score(y, labels, zero_division=0),
        recall=metrics.recall_score(y, labels, zero_division=0),
        accuracy=metrics.accuracy_score(y, labels),
        roc_auc=metrics.roc_auc_score(y, proba),
        pr_auc=metrics.average_precision_score(y, proba),
        log_loss=metrics.log_loss(y, proba, labels=[0, 1]),
        confusion=metrics.confusion_matrix(y, labels, labels=[0, 1]).tolist(),
    )
