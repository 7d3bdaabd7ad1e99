"""Train, log to MLflow, register, and gate the ``staging`` alias.

:func:`train_and_register` is what ``churnops train`` runs: it fits the model
(:mod:`churnops.training`), logs parameters, metrics, figures, the model and its
reference data to the experiment, registers a new version and moves the alias
only when the promotion gate lets it (champion against challenger).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from churnops import plots, training
from churnops.features import FEATURES, prepare_features, target
from churnops.model import (
    REFERENCE_ARTIFACT,
    XGB_ARTIFACT,
    ChurnModel,
    configure_mlflow,
    load_aliased_model,
)
from churnops.results import PREDICTION
from churnops.schema import TARGET, load_customer_file
from churnops.settings import Settings
from churnops.training import Evaluation, Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOptions:
    """What ``churnops train`` was asked to do."""

    data_file: Path
    trials: int = 0
    force: bool = False
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    #: Parameters to use as given (no search, no stored trial): for experiments.
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """The promotion gate's verdict and why."""

    promote: bool
    reason: str
    champion_version: str | None = None
    champion_f1: float | None = None


@dataclass(frozen=True)
class TrainingOutcome:
    """What a training run produced."""

    run_id: str
    version: str
    threshold: float
    params: dict[str, Any]
    train: Evaluation
    holdout: Evaluation
    decision: Decision


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def choose_params(
    settings: Settings, options: TrainingOptions, X: pd.DataFrame, y: pd.Series, progress: Progress
) -> dict[str, Any]:
    """Explicit params, else a search of ``trials`` more trials, else the best stored ones."""
    if options.params is not None:
        return dict(options.params)
    study = training.open_study(
        settings.optuna_storage_url, settings.optuna_study, settings.random_seed
    )
    if options.trials > 0:
        training.search(
            study, X, y, options.trials, settings.cv_folds, settings.random_seed, progress
        )
    return training.stored_params(study, list(X.columns)) or training.default_params()


def reference_frame(df: pd.DataFrame, model: ChurnModel) -> pd.DataFrame:
    """The training rows with target, prediction and probability (clean names)."""
    reference = df[[*model.features, TARGET]].reset_index(drop=True)
    return pd.concat([reference, model.score(reference)], axis=1)


def champion_decision(
    settings: Settings, holdout: pd.DataFrame, challenger: Evaluation, force: bool
) -> Decision:
    """Gate: minimums on holdout, then at least as good as the current alias holder."""
    minimums = {"f1": settings.gate_min_f1, "roc_auc": settings.gate_min_roc_auc}
    failing = [
        f"holdout {name} {getattr(challenger, name):.3f} < minimum {minimum:.3f}"
        for name, minimum in minimums.items()
        if getattr(challenger, name) < minimum
    ]
    champion = _current_champion(settings, holdout)
    version, champion_f1 = champion if champion else (None, None)
    if champion_f1 is not None and challenger.f1 < champion_f1:
        failing.append(
            f"holdout f1 {challenger.f1:.3f} < f1 {champion_f1:.3f} of current "
            f"{settings.model_alias} version {version}"
        )
    if failing and force:
        return Decision(True, "forced despite: " + "; ".join(failing), version, champion_f1)
    if failing:
        return Decision(False, "; ".join(failing), version, champion_f1)
    against = (
        f"f1 {challenger.f1:.3f} >= {champion_f1:.3f} of version {version}"
        if champion_f1 is not None
        else f"no version had alias '{settings.model_alias}'"
    )
    return Decision(True, f"passes minimums and {against}", version, champion_f1)


def _current_champion(settings: Settings, holdout: pd.DataFrame) -> tuple[str, float] | None:
    """The alias holder's version and F1 on the same holdout, or None."""
    try:
        champion = load_aliased_model(settings)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc).lower():
            raise
        return None
    proba = champion.model.predict_proba(holdout)
    score = training.evaluate(target(holdout).to_numpy(), proba, champion.model.threshold)
    return champion.version, score.f1


def _log_figures(prefix: str, y: np.ndarray, proba: np.ndarray, threshold: float) -> None:
    labels = (proba >= threshold).astype(int)
    for name, figure in {
        "confusion_matrix": plots.confusion_matrix(y, labels, f"{prefix} confusion matrix"),
        "roc_curve": plots.roc_curve(y, proba, f"{prefix} ROC curve"),
        "pr_curve": plots.pr_curve(y, proba, f"{prefix} precision-recall curve"),
    }.items():
        mlflow.log_figure(figure, f"plots/{prefix}_{name}.png")
        plt.close(figure)


def _ensure_experiment(settings: Settings) -> None:
    """Create the experiment with a local artifact folder on the local default."""
    if mlflow.get_experiment_by_name(settings.mlflow_experiment) is None:
        location = None
        if settings.mlflow_tracking_uri is None:
            location = (settings.mlflow_artifacts_dir / settings.mlflow_experiment).as_uri()
        mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
    mlflow.set_experiment(settings.mlflow_experiment)


def train_and_register(
    settings: Settings, options: TrainingOptions, progress: Progress = training._quiet
) -> TrainingOutcome:
    """The whole ``churnops train``: fit, evaluate, log, register, gate."""
    configure_mlflow(settings)
    _ensure_experiment(settings)
    data = load_customer_file(options.data_file, require_target=True)
    train, holdout = training.split_holdout(
        data, target(data), settings.holdout_fraction, settings.random_seed
    )
    X, y = prepare_features(train, options.features), target(train)
    params = choose_params(settings, options, X, y, progress)
    threshold, cv_f1 = training.cross_validate(
        params, X, y, settings.cv_folds, settings.random_seed, progress
    )
    classifier = training.make_classifier(params, settings.random_seed).fit(X, y)
    model = ChurnModel(options.features, threshold)
    model._classifier = classifier  # fitted in memory: score without a reload

    train_proba = model.predict_proba(train)
    holdout_proba = model.predict_proba(holdout)
    train_eval = training.evaluate(y.to_numpy(), train_proba, threshold)
    holdout_eval = training.evaluate(target(holdout).to_numpy(), holdout_proba, threshold)
    decision = champion_decision(settings, holdout, holdout_eval, options.force)

    with mlflow.start_run(run_name=f"xgboost-{options.data_file.stem}") as run:
        mlflow.log_params({**params, "threshold": threshold, "features": ",".join(model.features)})
        mlflow.log_metrics(
            {"cv_f1": cv_f1, **train_eval.scores("train_"), **holdout_eval.scores("holdout_")}
        )
        mlflow.set_tags(
            {
                "dataset.name": options.data_file.name,
                "dataset.sha256": file_hash(options.data_file),
                "dataset.rows": str(len(data)),
            }
        )
        _log_figures("train", y.to_numpy(), train_proba, threshold)
        _log_figures("holdout", target(holdout).to_numpy(), holdout_proba, threshold)
        shap_figure = plots.shap_summary(classifier, X)
        mlflow.log_figure(shap_figure, "plots/shap_summary.png")
        plt.close(shap_figure)
        version = _log_model(settings, model, classifier, data, train)
        mlflow.set_tags(
            {
                "promotion.decision": "promoted" if decision.promote else "rejected",
                "promotion.reason": decision.reason,
            }
        )

    _apply_decision(settings, version, decision)
    return TrainingOutcome(
        run.info.run_id, version, threshold, params, train_eval, holdout_eval, decision
    )


def _log_model(
    settings: Settings,
    model: ChurnModel,
    classifier: Any,
    data: pd.DataFrame,
    train: pd.DataFrame,
) -> str:
    """Log the pyfunc with its booster and reference data; return the new version."""
    inputs = data[model.features]
    with tempfile.TemporaryDirectory() as tmp:
        booster_path = Path(tmp) / "xgb_model.json"
        classifier.save_model(booster_path)
        reference_path = Path(tmp) / "reference.parquet"
        reference_frame(data, model).to_parquet(reference_path, index=False)
        signature = infer_signature(
            inputs, model.score(inputs)[PREDICTION], params={"probability": False}
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model_for_logging(model),
            artifacts={XGB_ARTIFACT: str(booster_path), REFERENCE_ARTIFACT: str(reference_path)},
            signature=signature,
            input_example=inputs.head(5),
            registered_model_name=settings.model_name,
            metadata={"threshold": model.threshold, "features": model.features},
        )
    mlflow.log_input(
        mlflow.data.from_pandas(train, name="train", targets=TARGET), context="training"
    )
    return str(info.registered_model_version)


def model_for_logging(model: ChurnModel) -> ChurnModel:
    """A fresh instance without the in-memory booster (the artifact carries it)."""
    return ChurnModel(model.features, model.threshold)


def _apply_decision(settings: Settings, version: str, decision: Decision) -> None:
    client = mlflow.MlflowClient()
    client.set_model_version_tag(
        settings.model_name,
        version,
        "promotion.decision",
        "promoted" if decision.promote else "rejected",
    )
    client.set_model_version_tag(settings.model_name, version, "promotion.reason", decision.reason)
    if decision.promote:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    log.info(
        "version %s: %s (%s)",
        version,
        "promoted" if decision.promote else "kept out",
        decision.reason,
    )
