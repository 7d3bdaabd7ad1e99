"""The one training pipeline (:func:`train_and_register`): fit a challenger, judge it beside
the champion on rows neither learned from, log, register, and move the alias if
:func:`gate` says so. ``train``: the holdout is the training file's split; ``retrain``:
the newest labeled file's rows the champion has not seen.

Rows are known by content (:func:`row_keys`), so a file dropped twice counts once and the
newest labels win. The training file's split is in no version's fit, ever. A retrained
version is refit with the newest holdout too, and the keys of every row it learned from
are logged with it (:data:`FIT_ROWS`) for the next retraining.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from mlflow.exceptions import MlflowException

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import RAW_NAMES, TARGET
from churnops.model import plots, training
from churnops.model.churn_model import (
    MODEL_CODE,
    REFERENCE_ARTIFACT,
    XGB_ARTIFACT,
    ChurnModel,
    LoadedModel,
    MlflowUnavailable,
    UnloadableVersion,
    aliased_version,
    configure_mlflow,
    load_aliased_model,
)
from churnops.model.training import Evaluation, Progress
from churnops.settings import ModelSettings, Settings

log = logging.getLogger(__name__)

#: MLflow keeps 36 characters of a digest; the whole hash is the ``sha256`` tag.
DIGEST_CHARS = 32
#: The run artifact listing the key of every row the registered version learned from.
FIT_ROWS = "lineage/fit_rows.txt"
Status = Literal["promoted", "refused", "skipped"]
#: In a promotion's reason when the new version is better but not yet good enough.
BELOW_MINIMUM = "quality still below its minimum"
EXPERIMENT = "churn-model-evaluation"
OPTUNA_STUDY = "xgboost-churn-cost"
#: What a version needs to load and score, pinned to this environment. Written, not
#: inferred: inference costs about 6 s a training and lists whatever happened to load.
MODEL_PACKAGES = (
    "churnops",
    "mlflow",
    "cloudpickle",
    "numpy",
    "pandas",
    "pandera",
    "pyarrow",
    "pydantic-settings",
    "scikit-learn",
    "scipy",
    "tenacity",
    "xgboost",
)
CV_FOLDS = 5  # tests that train often patch it lower
#: Share of the training file held out, in no version's fit ever.
HOLDOUT_FRACTION = 0.2
#: Seed of splits, folds, sampler and model: a retraining on the same rows is the same.
RANDOM_SEED = 42
#: Holdout ROC AUC a first version needs (its F1 needs MIN_F1, as the alerts).
GATE_MIN_ROC_AUC = 0.90
#: F1 a challenger must gain over the holder's: the noise of a few hundred rows.
GATE_MIN_F1_GAIN = 0.01
#: Fewest unseen rows a challenger is judged on, and fewest of each class among them:
#: an F1 of a handful of churners says nothing.
GATE_MIN_HOLDOUT_ROWS = 100
GATE_MIN_HOLDOUT_POSITIVES = 10
#: The prefix of each model's scores on each holdout among a run's metrics.
METRICS = {
    "challenger": "holdout_",
    "champion": "champion_holdout_",
    "challenger_training": "training_holdout_",
    "champion_training": "champion_training_holdout_",
}


@dataclass(frozen=True)
class TrainingOptions:
    #: The training file (default: ``TRAINING_FILE`` in ``CHURN_DATA_DIR``).
    data_file: Path | None = None
    trials: int = 0
    force: bool = False
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    params: dict[str, Any] | None = None  # as given: no search, no stored trial


@dataclass(frozen=True)
class LabeledFile:
    """One labeled input: where it came from and its rows (features and label)."""

    name: str
    key: str
    sha256: str
    frame: pd.DataFrame
    dropped_at: datetime | None = None  # None for the training file

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    champion_version: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The verdict of a training (``skipped``: no new version, and why; ``version`` then
    names the one this same fit made, if any); ``scores`` as in :data:`METRICS`: both
    models on the newest and on the training file's holdout."""

    status: Status
    reason: str
    version: str | None = None
    parent_version: str | None = None
    run_id: str | None = None
    holdout_file: str | None = None
    training_files: tuple[str, ...] = ()
    scores: dict[str, Evaluation] = field(default_factory=dict)
    threshold: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    alert_channels: tuple[str, ...] = ()

    @property
    def holdout_f1(self) -> float | None:
        return self.scores["challenger"].f1 if "challenger" in self.scores else None

    @property
    def champion_f1(self) -> float | None:
        return self.scores["champion"].f1 if "champion" in self.scores else None

    def summary(self) -> str:
        if self.status == "skipped":
            return f"skipped: {self.reason}"
        parent = f" (parent version {self.parent_version})" if self.parent_version else ""
        return f"version {self.version} {self.status}{parent}: {self.reason}"

    def score_lines(self) -> list[str]:
        """F1 and ROC AUC of both models on both holdouts, one line per holdout; once when
        they are the same rows (``train`` judges on the training file's holdout itself)."""
        lines, said = [], []
        for holdout, suffix in ((self.holdout_file, ""), ("training file's holdout", "_training")):
            pairs = [
                f"{who} f1 {s.f1:.3f} auc {s.roc_auc:.3f}"
                for who in ("challenger", "champion")
                if (s := self.scores.get(who + suffix)) is not None
            ]
            if pairs and pairs != said:
                lines.append(f"on {holdout}: {', '.join(pairs)}")
            said = pairs
        return lines


# --- the rows ------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_labeled_file(path: Path) -> LabeledFile:
    data = path.read_bytes()
    frame = load_customer_file(data, name=path.name, require_target=True)
    return LabeledFile(path.name, path.name, sha256(data), frame[[*FEATURES, TARGET]])


def row_keys(frame: pd.DataFrame) -> pd.Series:
    """``<digest of the features>.<occurrence>``: a row's identity whatever file carries it
    (the n-th copy inside one file stays a row of its own)."""
    digests = pd.util.hash_pandas_object(frame[FEATURES], index=False).map("{:016x}".format)
    return digests + "." + digests.groupby(digests).cumcount().astype(str)


@dataclass(frozen=True)
class Split:
    fit: pd.DataFrame
    holdout: pd.DataFrame  # the newest holdout: the gate decides on it
    training_holdout: pd.DataFrame  # the training file's split: in no version's fit
    holdout_name: str
    fit_rows: dict[int, int]  # input (0: the training file, i: window[i - 1]) -> rows in the fit


def split_rows(
    training_file: LabeledFile, window: Sequence[LabeledFile], seen: set[str]
) -> Split | str:
    """Fit and holdouts, or why there is nothing honest to judge on; ``seen``: keys of the
    rows the champion learned from, left out of the newest holdout (with their copies)."""
    frame = training_file.frame
    if refusal := _too_small(frame, training_file.name, False):  # no holdout split of it can
        return refusal  # judge (nor be made: a stratified split needs 2 rows of each class)
    fit0, training_holdout = training.split_holdout(
        frame, target(frame), HOLDOUT_FRACTION, RANDOM_SEED
    )
    frames = [fit0, *(f.frame for f in window)]
    rows = pd.concat(
        [f.assign(_source=i, _key=row_keys(f)) for i, f in enumerate(frames)], ignore_index=True
    ).drop_duplicates("_key", keep="last")  # a row counts once: its newest labels win
    learned = {k.split(".")[0] for k in seen}  # a copy of a learned row is learned

    def unseen(keys: pd.Series) -> pd.Series:
        return ~keys.str.split(".").str[0].isin(learned)

    if window:
        newest = rows[(rows["_source"] == len(window)) & unseen(rows["_key"])]
        holdout_name = window[-1].name
    else:  # ``--data`` may name a file a retraining learned from: its rows judge nothing
        newest = training_holdout.assign(_key=row_keys(training_holdout))
        newest = newest[unseen(newest["_key"])]
        holdout_name = f"{training_file.name} (holdout split)"
    refusal = _too_small(newest, holdout_name, len(seen) > 0)
    if refusal:
        return refusal
    judged = {k.split(".")[0] for k in [*newest["_key"], *row_keys(training_holdout)]}
    fit = rows[~rows["_key"].str.split(".").str[0].isin(judged)]
    return Split(
        fit.drop(columns="_source"),
        newest.drop(columns="_source", errors="ignore"),
        training_holdout,
        holdout_name,
        fit["_source"].value_counts().to_dict(),
    )


def refit_rows(split: Split, retraining: bool) -> pd.DataFrame:
    """The rows the registered version learns: the fit, and after a retraining the newest
    holdout too (the next file is newer still), but for copies of the training file's split
    (a later file may repeat a customer row), which stays in no version's fit."""
    if not retraining:
        return split.fit
    held = set(row_keys(split.training_holdout).str.split(".").str[0])
    newest = split.holdout[~split.holdout["_key"].str.split(".").str[0].isin(held)]
    return pd.concat([split.fit, newest], ignore_index=True)


def _too_small(holdout: pd.DataFrame, name: str, seen: bool) -> str:
    """Why ``holdout`` cannot judge a challenger: too few rows, or of a class ('' if it can).
    A row and its copies count once: ten copies of 6 churners are an F1 of 6."""
    distinct = holdout.drop_duplicates([*FEATURES, TARGET])
    positives = int(target(distinct).sum()) if len(distinct) else 0
    negatives = len(distinct) - positives
    unseen = " unseen by the champion" if seen else ""
    copies = f" ({len(holdout)} with copies)" if len(holdout) > len(distinct) else ""
    if len(holdout) == 0:
        return f"no labeled rows of {name} are{unseen}: nothing new to judge a challenger on"
    if len(distinct) < GATE_MIN_HOLDOUT_ROWS:
        return (
            f"{name} has {len(distinct)} labeled rows{copies}{unseen}, fewer than the "
            f"{GATE_MIN_HOLDOUT_ROWS} a holdout needs"
        )
    if min(positives, negatives) < GATE_MIN_HOLDOUT_POSITIVES:
        return (
            f"{name} has {positives} churned and {negatives} stayed rows{copies}{unseen}: "
            f"a holdout needs {GATE_MIN_HOLDOUT_POSITIVES} of each"
        )
    return ""


# --- the champion ----------------------------------------------------------------------------
class UnloadableChampion(RuntimeError):
    """The alias names a version that does not load (its artifacts gone or broken): no
    verdict against it can be made."""


def score(model: ChurnModel, frame: pd.DataFrame) -> Evaluation:
    return training.evaluate(target(frame).to_numpy(), model.predict_proba(frame), model.threshold)


def _holder(settings: ModelSettings) -> str | None:
    """The version holding the alias; None when none does."""
    return aliased_version(settings.model_name, settings.model_alias)


def deployed(
    settings: ModelSettings, load: Callable[[ModelSettings], LoadedModel]
) -> tuple[LoadedModel | None, set[str]]:
    """The alias holder and the keys of the rows it learned from (none when not logged)."""
    try:
        loaded = load(settings)
    except MlflowUnavailable:
        raise
    except Exception as exc:  # no alias yet, or a version whose artifacts are gone or broken
        if (version := _holder(settings)) is None:
            return None, set()
        shown = exc.__cause__ if isinstance(exc, UnloadableVersion) and exc.__cause__ else exc
        raise UnloadableChampion(
            f"{settings.model_name} version {version} ('{settings.model_alias}') does not "
            "load: move the alias to a version that loads, or delete it, then train again "
            f"({type(shown).__name__}: {(str(shown).splitlines() or [''])[0]})"
        ) from exc
    run_id = mlflow.MlflowClient().get_model_version(loaded.name, loaded.version).run_id
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=FIT_ROWS)
    except (MlflowException, OSError):  # a version logged before row lineage existed
        return loaded, set()
    return loaded, set(Path(path).read_text().split())


# --- the rule ------------------------------------------------------------------------------
def gate(
    settings: Settings,
    challenger: Evaluation,
    champion: tuple[str, Evaluation] | None,
    force: bool = False,
) -> Decision:
    """The promotion rule, on the newest holdout. With a champion: promote on an F1 gain of
    :data:`GATE_MIN_F1_GAIN`, below the minimums or not (a better model serves better; the
    reason says so). Without: a first model must pass the minimums on its own."""
    below = "; ".join(
        f"holdout {name} {value:.3f} < minimum {minimum:.3f}"
        for name, value, minimum in (
            ("f1", challenger.f1, settings.monitoring.min_f1),
            ("roc_auc", challenger.roc_auc, GATE_MIN_ROC_AUC),
        )
        if value < minimum
    )
    version = champion[0] if champion else None
    if champion is None:
        promote = not below
        reason = (
            below or f"passes the minimums; no version had alias '{settings.model.model_alias}'"
        )
    else:
        gain, margin = challenger.f1 - champion[1].f1, GATE_MIN_F1_GAIN
        promote = gain > 0 and gain >= margin
        reason = (
            f"holdout f1 {challenger.f1:.3f} {'>=' if promote else '<'} "
            f"{champion[1].f1:.3f} + {margin:.3f} of current {settings.model.model_alias} "
            f"version {version} on the same rows"
        )
        if promote and below:
            reason += f"; {BELOW_MINIMUM}: {below}"
    if force and not promote:
        return Decision(True, f"forced despite: {reason}", version)
    return Decision(promote, reason, version)


def _still_champion(settings: ModelSettings, decision: Decision) -> Decision:
    """Refuse when the alias moved meanwhile (a first version too: another may have taken
    it): the challenger was judged against another. Asked last, just before the alias is
    set: logging a version takes seconds, in which another training can promote."""
    if not decision.promote:
        return decision
    if (now := _holder(settings)) == decision.champion_version:
        return decision
    was = decision.champion_version
    return replace(
        decision,
        promote=False,
        reason=f"'{settings.model_alias}' moved to {f'version {now}' if now else 'no version'} "
        f"while training against {f'version {was}' if was else 'no version'}: not promoted "
        f"({decision.reason})",
    )


# --- the pipeline --------------------------------------------------------------------------
def choose_params(
    settings: ModelSettings,
    options: TrainingOptions,
    X: pd.DataFrame,
    y: pd.Series,
    progress: Progress = training._quiet,
    stored_study: bool = True,
) -> dict[str, Any]:
    """Explicit params; else the search's choice with ``trials``; else the stored study's or
    the shipped ones. A retraining (``stored_study`` False) searches in memory: its F1s are
    on other rows than the stored study's."""
    if options.params is not None:
        return dict(options.params)
    memory = options.trials > 0 and not stored_study
    url, name = (None, "retrain") if memory else (settings.optuna_storage_url, OPTUNA_STUDY)
    study = training.open_study(url, name, RANDOM_SEED)
    if options.trials > 0:
        chosen = training.search(study, X, y, options.trials, CV_FOLDS, RANDOM_SEED, progress)
        if memory:
            return chosen
    return training.stored_params(study, list(X.columns)) or training.default_params()


def fit_digest(keys: pd.Series, params: dict[str, Any], features: list[str]) -> str:
    """What makes a version: fit rows, parameters, features (unchanged: no new one)."""
    text = json.dumps([sorted(keys), params, features], sort_keys=True, default=str)
    return sha256(text.encode())


def _same_fit(settings: ModelSettings, digest: str) -> str | None:
    """The version this fit already made. Asked only while a version holds the alias: with
    none holding it (deleted), `up` said "training", skipped on version 1's fit, and stopped
    ("not promoted"); the fit is made and gated again instead."""
    found = mlflow.MlflowClient().search_model_versions(
        f"name = '{settings.model_name}' and tags.`lineage.fit_digest` = '{digest}'"
    )
    return str(found[0].version) if found else None


def train_and_register(
    settings: Settings,
    options: TrainingOptions,
    progress: Progress = training._quiet,
    window: Sequence[LabeledFile] = (),
    load: Callable[[ModelSettings], LoadedModel] = load_aliased_model,
) -> Outcome:
    """``churnops train`` without ``window``, a retraining with the labeled files since.
    ``load``: the pipeline's loader, so the champion is what files are scored by."""
    settings.home.mkdir(parents=True, exist_ok=True)  # a first run: the local stores live here
    configure_mlflow(settings.model)
    ensure_experiment(settings.model)
    training_file = read_labeled_file(
        options.data_file or settings.model.churn_data_dir / settings.model.training_file
    )
    champion, seen = deployed(settings.model, load)
    parent = champion.version if champion else None
    split = split_rows(training_file, window, seen)
    if isinstance(split, str):
        return Outcome("skipped", split, parent_version=parent)
    features, seed = options.features, RANDOM_SEED
    X, y = prepare_features(split.fit, features), target(split.fit)
    params = choose_params(settings.model, options, X, y, progress, stored_study=not window)
    final = refit_rows(split, bool(window))
    digest = fit_digest(final["_key"], params, features)
    same = None if options.force or champion is None else _same_fit(settings.model, digest)
    if same:
        reason = f"version {same} was fitted on these same rows with these parameters"
        return Outcome("skipped", reason, version=same, parent_version=parent)
    threshold, cv_f1 = training.cross_validate(params, X, y, CV_FOLDS, seed, progress)
    classifier = training.make_classifier(params, seed).fit(X, y)
    candidate = ChurnModel.in_memory(features, threshold, classifier)
    scores = {"challenger": score(candidate, split.holdout)}
    scores["challenger_training"] = score(candidate, split.training_holdout)
    if champion:
        scores["champion"] = score(champion.model, split.holdout)
        scores["champion_training"] = score(champion.model, split.training_holdout)
    against = (champion.version, scores["champion"]) if champion else None
    decision = gate(settings, scores["challenger"], against, options.force)
    if window:  # the registered version learns the newest holdout too (X: the final rows)
        X, y = prepare_features(final, features), target(final)
        classifier = training.make_classifier(params, seed).fit(X, y)
    model = ChurnModel.in_memory(features, threshold, classifier)
    tags = {
        "lineage.parent_version": parent or "",
        "lineage.holdout": split.holdout_name,
        "lineage.fit_digest": digest,
    }
    name = f"{'retrain' if window else 'train'}-{Path((window or [training_file])[-1].name).stem}"
    with mlflow.start_run(run_name=name) as run:
        # as in the model_config, which MLflow logs as params too: the same values
        mlflow.log_params({**params, **model.config()})
        mlflow.log_metrics(
            {"cv_f1": cv_f1}
            | {k: v for name, s in scores.items() for k, v in s.scores(METRICS[name]).items()}
            | training.inference_costs(classifier, X)
        )
        log_figures("holdout", target(split.holdout).to_numpy(), candidate, split.holdout)
        shap_figure = plots.shap_summary(classifier, X)
        mlflow.log_figure(shap_figure, "plots/shap_summary.png")
        plt.close(shap_figure)
        _log_lineage(training_file, window, split)
        mlflow.log_text("\n".join(sorted(final["_key"])), FIT_ROWS)
        version = log_model(settings.model, model, classifier, params, final.drop(columns="_key"))
        decision = _still_champion(settings.model, decision)
        status: Status = "promoted" if decision.promote else "refused"
        tags |= {"promotion.decision": status, "promotion.reason": decision.reason}
        mlflow.set_tags(tags)
    apply_decision(settings.model, version, decision, tags)
    return Outcome(
        status,
        decision.reason,
        version=version,
        parent_version=parent,
        run_id=run.info.run_id,
        holdout_file=split.holdout_name,
        training_files=tuple(
            f.name for i, f in enumerate([training_file, *window]) if split.fit_rows.get(i)
        ),
        scores=scores,
        threshold=threshold,
        params=params,
    )


def _log_lineage(training_file: LabeledFile, window: Sequence[LabeledFile], split: Split) -> None:
    """Each input as an MLflow dataset: the fit's files, and the holdout's rows with their
    own digest (a file can be both)."""
    holdout = split.holdout.drop(columns="_key", errors="ignore")
    digest = sha256("\n".join(row_keys(holdout)).encode())
    held_out = replace(window[-1] if window else training_file, frame=holdout, sha256=digest)
    files = [
        (f, "training", split.fit_rows.get(i, 0)) for i, f in enumerate([training_file, *window])
    ]
    for file, context, rows in [*files, (held_out, "holdout", len(holdout))]:
        if not rows:
            continue
        dataset = mlflow.data.from_pandas(
            file.frame, name=file.name, digest=file.sha256[:DIGEST_CHARS], targets=TARGET
        )
        tags = {"sha256": file.sha256, "rows": str(rows), "key": file.key}
        with warnings.catch_warnings():
            # validated rows have no missing values to warn about
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            mlflow.log_input(dataset, context=context, tags=tags)


# --- MLflow --------------------------------------------------------------------------------
def reference_frame(df: pd.DataFrame, model: ChurnModel) -> pd.DataFrame:
    """The training rows with target, prediction and probability."""
    reference = df[[*model.features, TARGET]].reset_index(drop=True)
    return pd.concat([reference, model.score(reference)], axis=1)


def log_figures(prefix: str, y: np.ndarray, model: ChurnModel, frame: pd.DataFrame) -> None:
    proba = model.predict_proba(frame)
    labels = (proba >= model.threshold).astype(int)
    for name, figure in {
        "confusion_matrix": plots.confusion_matrix(y, labels, f"{prefix} confusion matrix"),
        "roc_curve": plots.roc_curve(y, proba, f"{prefix} ROC curve"),
        "pr_curve": plots.pr_curve(y, proba, f"{prefix} precision-recall curve"),
    }.items():
        mlflow.log_figure(figure, f"plots/{prefix}_{name}.png")
        plt.close(figure)


def ensure_experiment(settings: ModelSettings) -> None:
    """Create the experiment with a local artifact folder on the local default."""
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        location = None
        if settings.mlflow_tracking_uri is None:
            location = (settings.mlflow_artifacts_dir / EXPERIMENT).as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    mlflow.set_experiment(EXPERIMENT)


def log_model(
    settings: ModelSettings,
    model: ChurnModel,
    classifier: Any,
    params: dict[str, Any],
    data: pd.DataFrame,
) -> str:
    """Log the pyfunc from code, booster and reference data; return the new version. The
    example has a customer file's raw header: what the model is shown."""
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
            pip_requirements=[f"{n}=={importlib.metadata.version(n)}" for n in MODEL_PACKAGES],
            registered_model_name=settings.model_name,
            metadata={"threshold": model.threshold, "features": model.features, "params": params},
        )
    return str(info.registered_model_version)


def apply_decision(
    settings: ModelSettings, version: str, decision: Decision, tags: dict[str, str]
) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    if decision.promote:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, version)
    log.info("version %s: %s", version, decision.reason)
