"""Fit the churn classifier: Optuna search, cross-validated threshold, evaluation (plain
functions on frames; MLflow is :mod:`churnops.model.registry`)."""

from __future__ import annotations

import itertools
import json
import logging
import timeit
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
#: The search's objectives: cross-validated F1, :func:`predict_cost`.
OBJECTIVES = ("maximize", "minimize")
#: Rows :func:`inference_costs` times prediction and TreeSHAP on.
PREDICTED_ROWS, EXPLAINED_ROWS = 100_000, 1_000
#: Trials this close to the best cross-validated F1 count as equally good: the cheapest ships.
F1_TOLERANCE = 0.005

Progress = Callable[[str, int, int], None]  # (what, done, total): trials, folds


def _quiet(_: str, __: int, ___: int) -> None:
    return None


def default_params() -> dict[str, Any]:
    """The choice of a 50-trial search (seed 42) on the training file's 80% split: 61 trees
    of depth 5; used when no study exists yet."""
    text = resources.files("churnops.model").joinpath("default_params.json").read_text()
    return json.loads(text)


def make_classifier(params: dict[str, Any], seed: int) -> xgb.XGBClassifier:
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
    return tuple(train_test_split(df, test_size=fraction, stratify=target, random_state=seed))


def best_threshold(y: np.ndarray, proba: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises F1, and that F1."""
    scores = [metrics.f1_score(y, proba >= t, zero_division=0) for t in THRESHOLDS]
    best = int(np.argmax(scores))
    return float(THRESHOLDS[best]), float(scores[best])


def cross_validate(
    params: dict[str, Any],
    X: pd.DataFrame,
    y: pd.Series,
    folds: int,
    seed: int,
    progress: Progress = _quiet,
) -> tuple[float, float]:
    """Cross-validated (threshold, F1): the threshold is chosen out of fold too."""
    proba = np.zeros(len(y), dtype=float)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (fit_idx, val_idx) in enumerate(splitter.split(X, y), start=1):
        model = make_classifier(params, seed).fit(X.iloc[fit_idx], y.iloc[fit_idx])
        proba[val_idx] = model.predict_proba(X.iloc[val_idx])[:, 1]
        progress("fold", i, folds)
    return best_threshold(y.to_numpy(), proba)


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    """Lean models only (1M rows predicted in about a second). The floor of 50 trees and
    the learning rate's ceiling matter: below, the cheapest trial within the noise was a
    few steep trees that lost 0.03 to 0.05 F1 on later files."""
    return {
        "n_estimators": trial.suggest_int("n_estimators", 50, 300, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "max_depth": trial.suggest_int("max_depth", 3, 6),
        "min_child_weight": trial.suggest_float("min_child_weight", 0.5, 10, log=True),
        "gamma": trial.suggest_float("gamma", 1e-4, 5, log=True),
        "subsample": trial.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_alpha": trial.suggest_float("reg_alpha", 1e-4, 10, log=True),
        "reg_lambda": trial.suggest_float("reg_lambda", 1e-4, 10, log=True),
        "scale_pos_weight": trial.suggest_float("scale_pos_weight", 1.0, 6.0),
    }


def predict_cost(params: dict[str, Any]) -> int:
    """Tree nodes a row passes at most: trees x depth. Counted, not timed, so the same
    search on the same rows chooses the same model on a busy machine."""
    return int(params["n_estimators"]) * int(params["max_depth"])


class StaleStudy(RuntimeError):
    """The stored study was made by the F1-only search: its trials have one objective, the
    search two, so none of them can be reused or added to."""


def open_study(storage: str | None, name: str, seed: int) -> optuna.Study:
    """The stored study (in memory when ``storage`` is None), on two objectives: CV F1 up,
    :func:`predict_cost` down, so cheap models as good are found."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=OBJECTIVES,
        sampler=optuna.samplers.TPESampler(seed=seed),
        load_if_exists=True,
    )
    if len(study.directions) != len(OBJECTIVES):
        raise StaleStudy(
            f"Optuna study {name!r} in {storage} was made by the F1-only search; the "
            "search has two objectives now: move that database aside, then train again"
        )
    return study


def search(
    study: optuna.Study,
    X: pd.DataFrame,
    y: pd.Series,
    n_trials: int,
    folds: int,
    seed: int,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Run ``n_trials`` more trials; return the chosen parameters (:func:`stored_params`)."""
    features = list(X.columns)

    def objective(trial: optuna.Trial) -> tuple[float, int]:
        trial.set_user_attr("features", features)
        params = suggest_params(trial)
        threshold, f1 = cross_validate(params, X, y, folds, seed)
        trial.set_user_attr("threshold", threshold)
        return f1, predict_cost(params)

    done = itertools.count(1)
    report = [lambda *_: progress("trial", next(done), n_trials)]  # after each trial
    study.optimize(objective, n_trials=n_trials, callbacks=report)
    chosen = stored_params(study, features)
    if chosen is None:
        raise ValueError(f"no trial of the search completed (n_trials={n_trials})")
    return chosen


def chosen_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    """The cheapest trial within :data:`F1_TOLERANCE` of the best CV F1 (then the better F1)."""
    best = max(t.values[0] for t in trials)
    good = [t for t in trials if t.values[0] >= best - F1_TOLERANCE]
    return min(good, key=lambda t: (predict_cost(t.params), -t.values[0]))


def stored_params(study: optuna.Study, features: list[str]) -> dict[str, Any] | None:
    """The chosen parameters (:func:`chosen_trial`) of the trials on this feature set, if any."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.user_attrs.get("features") == features
    ]
    if not trials:
        return None
    return dict(chosen_trial(trials).params)


def fastest(work: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` calls: the one least disturbed by other work."""
    return min(timeit.repeat(work, number=1, repeat=repeats))


def inference_costs(
    classifier: xgb.XGBClassifier, X: pd.DataFrame, repeats: int = 3
) -> dict[str, float]:
    """Milliseconds per 1,000 rows to score and to explain (TreeSHAP), on ``X`` repeated to
    :data:`PREDICTED_ROWS` and :data:`EXPLAINED_ROWS` rows: logged with every version."""
    booster = classifier.get_booster()
    rows = X.to_numpy(dtype=np.float32)
    many = np.tile(rows, (-(-PREDICTED_ROWS // len(rows)), 1))[:PREDICTED_ROWS]
    explained = xgb.DMatrix(many[:EXPLAINED_ROWS], feature_names=list(X.columns))

    predict = fastest(lambda: booster.inplace_predict(many), repeats)
    shap = fastest(lambda: booster.predict(explained, pred_contribs=True), repeats)
    return {
        "predict_ms_per_1k_rows": predict * 1e3 * 1_000 / PREDICTED_ROWS,
        "shap_ms_per_1k_rows": shap * 1e3 * 1_000 / EXPLAINED_ROWS,
    }


@dataclass(frozen=True)
class Evaluation:
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
