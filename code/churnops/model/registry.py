"""Train, log to MLflow, register, and gate the ``staging`` alias.

:func:`train_and_register` is what ``churnops train`` runs: it fits the model
(:mod:`churnops.model.training`), logs parameters, metrics, figures, the model and its
reference data to the experiment, registers a new version and moves the alias
only when the promotion gate lets it (champion against challenger).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.exceptions import MlflowException

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.model import plots, training
from churnops.model.churn_model import (
    MODEL_CODE,
    RAW_NAMES,
    REFERENCE_ARTIFACT,
    XGB_ARTIFACT,
    ChurnModel,
    configure_mlflow,
)
from churnops.model.training import Evaluation, Progress
from churnops.settings import Settings

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


@dataclass(frozen=True)
class Candidate:
    """A configuration fitted on the training split and scored on both splits."""

    classifier: Any
    train_proba: np.ndarray
    holdout_proba: np.ndarray
    train: Evaluation
    holdout: Evaluation


def fit_candidate(
    params: dict[str, Any],
    features: list[str],
    threshold: float,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    seed: int,
) -> Candidate:
    """Fit on the training split, score both splits at the threshold."""
    classifier = training.make_classifier(params, seed)
    classifier.fit(prepare_features(train, features), target(train))
    train_proba = classifier.predict_proba(prepare_features(train, features))[:, 1]
    holdout_proba = classifier.predict_proba(prepare_features(holdout, features))[:, 1]
    return Candidate(
        classifier,
        train_proba,
        holdout_proba,
        training.evaluate(target(train).to_numpy(), train_proba, threshold),
        training.evaluate(target(holdout).to_numpy(), holdout_proba, threshold),
    )


def champion_decision(
    settings: Settings,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    challenger: Evaluation,
    force: bool,
) -> Decision:
    """Training's gate: the champion is the alias holder's configuration refit on ``train``."""
    return gate(settings, challenger, _current_champion(settings, train, holdout), force)


def gate(
    settings: Settings,
    challenger: Evaluation,
    champion: tuple[str, float] | None,
    force: bool,
) -> Decision:
    """The promotion rule: minimums on holdout, then at least as good as the champion.

    ``champion`` is (version, holdout F1) of the alias holder, or None when no
    version has the alias. Training and retraining measure it differently
    (:func:`champion_decision`, :mod:`churnops.pipeline.retraining`); the rule is this one.
    """
    minimums = {"f1": settings.gate_min_f1, "roc_auc": settings.gate_min_roc_auc}
    failing = [
        f"holdout {name} {getattr(challenger, name):.3f} < minimum {minimum:.3f}"
        for name, minimum in minimums.items()
        if getattr(challenger, name) < minimum
    ]
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


def _current_champion(
    settings: Settings, train: pd.DataFrame, holdout: pd.DataFrame
) -> tuple[str, float] | None:
    """The alias holder's version and the holdout F1 of its configuration, or None.

    Registered models are refit on every training row, so the champion has seen
    the holdout. To compare like with like, its logged configuration (parameters,
    features, threshold) is fitted on the same training split as the challenger.
    """
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    info = mlflow.models.get_model_info(f"models:/{settings.model_name}/{version.version}")
    config = info.metadata or {}
    champion = fit_candidate(
        config["params"],
        config["features"],
        config["threshold"],
        train,
        holdout,
        settings.random_seed,
    )
    return str(version.version), champion.holdout.f1


def log_figures(prefix: str, y: np.ndarray, proba: np.ndarray, threshold: float) -> None:
    """The confusion matrix and curves of one split, as run artifacts (training and retraining)."""
    labels = (proba >= threshold).astype(int)
    for name, figure in {
        "confusion_matrix": plots.confusion_matrix(y, labels, f"{prefix} confusion matrix"),
        "roc_curve": plots.roc_curve(y, proba, f"{prefix} ROC curve"),
        "pr_curve": plots.pr_curve(y, proba, f"{prefix} precision-recall curve"),
    }.items():
        mlflow.log_figure(figure, f"plots/{prefix}_{name}.png")
        plt.close(figure)


def ensure_experiment(settings: Settings) -> None:
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
    """The whole ``churnops train``: fit, evaluate, log, register, gate.

    The configuration is judged on the holdout after fitting on the training
    split; the registered model is then refit on every row of the file.
    """
    configure_mlflow(settings)
    ensure_experiment(settings)
    data = load_customer_file(options.data_file, require_target=True)
    train, holdout = training.split_holdout(
        data, target(data), settings.holdout_fraction, settings.random_seed
    )
    features, seed = options.features, settings.random_seed
    X, y = prepare_features(train, features), target(train)
    params = choose_params(settings, options, X, y, progress)
    threshold, cv_f1 = training.cross_validate(params, X, y, settings.cv_folds, seed, progress)
    candidate = fit_candidate(params, features, threshold, train, holdout, seed)
    decision = champion_decision(settings, train, holdout, candidate.holdout, options.force)

    final = training.make_classifier(params, seed)
    final.fit(prepare_features(data, features), target(data))
    model = ChurnModel.in_memory(features, threshold, final)

    with mlflow.start_run(run_name=f"xgboost-{options.data_file.stem}") as run:
        # features and threshold as in the model_config, which MLflow logs as params
        # too when it logs the model: the same values, so it does not fail on a change
        mlflow.log_params({**params, **model.config()})
        mlflow.log_metrics(
            {
                "cv_f1": cv_f1,
                **candidate.train.scores("train_"),
                **candidate.holdout.scores("holdout_"),
            }
        )
        mlflow.set_tags(
            {
                "dataset.name": options.data_file.name,
                "dataset.sha256": file_hash(options.data_file),
                "dataset.rows": str(len(data)),
            }
        )
        log_figures("train", y.to_numpy(), candidate.train_proba, threshold)
        log_figures("holdout", target(holdout).to_numpy(), candidate.holdout_proba, threshold)
        shap_figure = plots.shap_summary(final, prepare_features(data, features))
        mlflow.log_figure(shap_figure, "plots/shap_summary.png")
        plt.close(shap_figure)
        version = log_model(settings, model, final, params, data, train)
        mlflow.set_tags(
            {
                "promotion.decision": "promoted" if decision.promote else "rejected",
                "promotion.reason": decision.reason,
            }
        )

    apply_decision(settings, version, decision)
    return TrainingOutcome(
        run.info.run_id, version, threshold, params, candidate.train, candidate.holdout, decision
    )


def log_model(
    settings: Settings,
    model: ChurnModel,
    classifier: Any,
    params: dict[str, Any],
    data: pd.DataFrame,
    train: pd.DataFrame,
) -> str:
    """Log the pyfunc from code with its booster and reference data; return the new version.

    The example has the raw UCI header of a customer file: it is what the model is
    shown with, and what MLflow tries through its serving path when logging.
    """
    example = data[model.features].head(5).rename(columns=RAW_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        booster_path = Path(tmp) / "xgb_model.json"
        classifier.save_model(booster_path)
        reference_path = Path(tmp) / "reference.parquet"
        reference_frame(data, model).to_parquet(reference_path, index=False)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            model_config=model.config(),
            artifacts={XGB_ARTIFACT: str(booster_path), REFERENCE_ARTIFACT: str(reference_path)},
            signature=model.model_signature(data),
            input_example=example,
            registered_model_name=settings.model_name,
            metadata={"threshold": model.threshold, "features": model.features, "params": params},
        )
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: the training
        # rows are validated, they have none (the signature above is written, not inferred)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        mlflow.log_input(
            mlflow.data.from_pandas(train, name="train", targets=TARGET), context="training"
        )
    return str(info.registered_model_version)


def apply_decision(settings: Settings, version: str, decision: Decision) -> None:
    """Tag the version with the gate's verdict and move the alias when it says so."""
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
