"""Retrain the model on newly labeled files and put it through the promotion gate.

:func:`retrain` is what ``churnops retrain`` and the Prefect flow ``retrain_model``
run. The challenger learns from the training file (``TRAINING_FILE``) plus the
labeled files processed since, newest ``RETRAIN_WINDOW_FILES`` (and, when set,
dropped in the last ``RETRAIN_WINDOW_DAYS``). A file is labeled when its original
in ``data/processed/<run>/`` carries the ``Churn`` column, or when it is a late
labels file: then its labelled rows (:mod:`churnops.pipeline.labels`) are learned from.

Time-aware holdout: the newest labeled file is the holdout. The challenger is
fitted on everything older; the champion is the deployed ``staging`` version
itself, scored as it is on the same rows (a refit of its configuration would only
repeat the challenger). Both go through :func:`churnops.model.registry.gate`, the
rule ``churnops train`` uses. The registered version is then refit on every row,
the holdout included, as training refits on the whole training file: the next
file it meets is newer still. Promoted or refused, the verdict is tagged on the
MLflow run and version, stored in ``model_events`` and sent as an alert.

At most one retraining runs at a time: a named lock in the metrics database (see
:meth:`~churnops.monitoring.metrics_db.MetricsStore.acquire_lock`); a second one
that starts meanwhile stops and says so.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import mlflow
import optuna
import pandas as pd
from mlflow.exceptions import MlflowException

from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET, is_bad_input
from churnops.drop import claims
from churnops.drop.keys import is_labels
from churnops.drop.storage import DropStorage, run_folders, run_key
from churnops.model import training
from churnops.model.churn_model import (
    ChurnModel,
    LoadedModel,
    configure_mlflow,
    load_aliased_model,
)
from churnops.model.registry import (
    Decision,
    TrainingOptions,
    apply_decision,
    choose_params,
    ensure_experiment,
    fit_candidate,
    gate,
    log_figures,
    log_model,
)
from churnops.model.training import Evaluation, Progress
from churnops.monitoring.alerts import Alert, AlertDeliveryError, send_alert
from churnops.monitoring.metrics_db import LockState, MetricsStore
from churnops.pipeline import labels
from churnops.settings import Settings

log = logging.getLogger(__name__)

#: The metrics database lock that keeps retrainings one at a time.
LOCK = "retrain"
#: MLflow keeps at most 36 characters of a dataset digest: a SHA-256 prefix (128 bits);
#: the whole hash is the input's ``sha256`` tag.
DIGEST_CHARS = 32
Trigger = Literal["manual", "auto"]
Status = Literal["promoted", "refused", "skipped"]


@dataclass(frozen=True)
class LabeledFile:
    """One labeled input of a retraining: where it came from and its rows."""

    name: str
    key: str
    sha256: str
    frame: pd.DataFrame
    dropped_at: datetime | None = None  # None for the training file

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class RetrainOptions:
    """What a retraining was asked to do."""

    trials: int = 0
    force: bool = False
    trigger: Trigger = "manual"
    #: The run whose low scores started this retraining: included even while its file
    #: is still finishing (in ``processing/``), so the file that asked is learned from.
    include_run: str | None = None
    #: Parameters to use as given (no search, no stored trial): for tests and experiments.
    params: dict[str, Any] | None = None


@dataclass(frozen=True)
class RetrainOutcome:
    """The verdict: ``skipped`` made no version (nothing to learn, another one running)."""

    status: Status
    reason: str
    version: str | None = None
    parent_version: str | None = None
    run_id: str | None = None
    holdout_file: str | None = None
    training_files: tuple[str, ...] = ()
    holdout_f1: float | None = None
    champion_f1: float | None = None
    alert_channels: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: what happened to which version, and why."""
        if self.status == "skipped":
            return f"retraining skipped: {self.reason}"
        parent = f" (parent version {self.parent_version})" if self.parent_version else ""
        return f"retraining {self.status} version {self.version}{parent}: {self.reason}"


# --- the data ------------------------------------------------------------------------------
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def labeled_source(storage: DropStorage, run: str) -> tuple[str | None, str]:
    """What the run has to learn from, in processed/ or still in processing/, and whose rows
    those are: its original file (its claim names it) and the run itself, or the labelled
    rows of a late labels file and the scoring run they were joined to."""
    lease = claims.latest_lease(storage, run)
    if lease is None:
        return None, run
    name, rows_of = lease.name, run
    if is_labels(lease.source_key):
        name = labels.labeled_rows_name(lease.name)
        rows_of = labels.joined_run(storage, run, lease.name) or run
    for stage in ("processed", "processing"):
        key = run_key(stage, run, name)  # type: ignore[arg-type]
        if storage.exists(key):
            return key, rows_of
    return None, rows_of


def read_labeled(settings: Settings, storage: DropStorage, key: str) -> LabeledFile | None:
    """The file at ``key`` if it is a valid customer file with the label, else None."""
    data = storage.read(key)
    name = key.rsplit("/", 1)[-1]
    try:
        frame = load_customer_file(
            data, name=name, require_target=True, max_bytes=settings.max_file_bytes
        )
    except Exception as exc:
        if not is_bad_input(exc):
            raise
        log.info("%s is not a labeled customer file: %s", key, str(exc).splitlines()[0])
        return None
    run = key.split("/")[2]
    return LabeledFile(name, key, sha256(data), frame[[*FEATURES, TARGET]], claims.dropped_at(run))


def labeled_files(
    settings: Settings, storage: DropStorage, now: datetime, include_run: str | None = None
) -> list[LabeledFile]:
    """The window: newest ``retrain_window_files`` labeled files (within
    ``retrain_window_days`` when set), oldest first. The rows of a scoring run are
    learned once: from its newest late labels, else from its own ``Churn`` column."""
    runs = sorted({*run_folders(storage, "processed"), *([include_run] if include_run else [])})
    oldest = now - timedelta(days=settings.retrain_window_days or 0)
    found: list[LabeledFile] = []
    learned: set[str] = set()  # scoring runs whose rows are in the window already
    for run in reversed(runs):
        if len(found) >= settings.retrain_window_files:
            break
        if settings.retrain_window_days and claims.dropped_at(run) < oldest:
            break
        key, rows_of = labeled_source(storage, run)
        if key is None or rows_of in learned:
            continue
        labeled = read_labeled(settings, storage, key)
        if labeled is not None:
            found.append(labeled)
            learned.add(rows_of)
    return found[::-1]


def training_file(settings: Settings) -> LabeledFile:
    """``TRAINING_FILE`` in ``CHURN_DATA_DIR``: what every version starts from."""
    path = settings.churn_data_dir / settings.training_file
    data = path.read_bytes()
    frame = load_customer_file(data, name=path.name, require_target=True)
    return LabeledFile(path.name, path.name, sha256(data), frame[[*FEATURES, TARGET]])


# --- the champion --------------------------------------------------------------------------
@dataclass(frozen=True)
class Champion:
    """The deployed alias holder and how it scores on the holdout as it is."""

    version: str
    holdout: Evaluation
    trained_on: frozenset[str]  # digests of its logged inputs


def deployed_champion(
    settings: Settings, holdout: pd.DataFrame, load: Callable[[Settings], LoadedModel]
) -> Champion | None:
    """The ``staging`` version scored on the holdout at its own threshold; None without one."""
    try:
        loaded = load(settings)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None
    return Champion(loaded.version, score(loaded.model, holdout), _trained_on(settings, loaded))


def score(model: ChurnModel, frame: pd.DataFrame) -> Evaluation:
    return training.evaluate(target(frame).to_numpy(), model.predict_proba(frame), model.threshold)


def _trained_on(settings: Settings, loaded: LoadedModel) -> frozenset[str]:
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(loaded.name, loaded.version).run_id
    if not run_id:
        return frozenset()
    inputs = client.get_run(run_id).inputs.dataset_inputs
    return frozenset(i.dataset.digest for i in inputs)


# --- the retraining ------------------------------------------------------------------------
def retrain(
    settings: Settings,
    storage: DropStorage,
    options: RetrainOptions | None = None,
    progress: Progress = training._quiet,
    load: Callable[[Settings], LoadedModel] = load_aliased_model,
) -> RetrainOutcome:
    """Train a challenger on the window, gate it against the deployed champion, record it.

    ``load`` loads the champion: the pipeline's loader, so it is what files are scored by.
    """
    options = options or RetrainOptions()
    configure_mlflow(settings)
    store = MetricsStore.from_settings(settings)
    holder = f"{options.trigger}-{uuid.uuid4().hex[:12]}"
    try:
        waited = _why_not_now(settings, store, options.trigger)
        if waited:
            return RetrainOutcome("skipped", waited)
        if not store.acquire_lock(LOCK, holder, settings.retrain_lock_minutes * 60):
            return RetrainOutcome("skipped", _lock_holder(store.lock_state(LOCK)))
        try:
            outcome = _retrain(settings, storage, options, progress, load)
            if outcome.status != "skipped":
                outcome = _record(settings, store, options.trigger, outcome)
            return outcome
        finally:
            store.release_lock(LOCK, holder)
    finally:
        store.close()


def _why_not_now(settings: Settings, store: MetricsStore, trigger: Trigger) -> str:
    """Why this retraining must not start: another one runs, or an automatic one comes
    too soon after the last start (``RETRAIN_COOLDOWN_MINUTES``); '' when it may."""
    state, now = store.lock_state(LOCK), datetime.now(UTC)
    if state is not None and state.held(now):
        return _lock_holder(state)
    if trigger != "auto" or state is None:
        return ""
    ready = state.acquired_at + timedelta(minutes=settings.retrain_cooldown_minutes)
    if now >= ready:
        return ""
    return (
        f"the last retraining started at {state.acquired_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"automatic ones wait {settings.retrain_cooldown_minutes:g} minutes "
        f"(RETRAIN_COOLDOWN_MINUTES), until {ready:%H:%M:%S} UTC"
    )


def _lock_holder(state: LockState | None) -> str:
    if state is None:  # released and gone between the two reads: say it plainly
        return "another retraining held the lock; this one stops"
    return (
        f"another retraining is running since {state.acquired_at:%Y-%m-%d %H:%M:%S} UTC "
        f"({state.holder}); this one stops"
    )


def _retrain(
    settings: Settings,
    storage: DropStorage,
    options: RetrainOptions,
    progress: Progress,
    load: Callable[[Settings], LoadedModel],
) -> RetrainOutcome:
    now = datetime.now(UTC)
    window = labeled_files(settings, storage, now, options.include_run)
    if not window:
        return RetrainOutcome(
            "skipped", "no labeled file has been processed (in the window): nothing new to learn"
        )
    holdout, inputs = window[-1], [training_file(settings), *window[:-1]]
    champion = deployed_champion(settings, holdout.frame, load)
    if champion and holdout.sha256[:DIGEST_CHARS] in champion.trained_on:
        return RetrainOutcome(
            "skipped",
            f"version {champion.version} was trained on {holdout.name}, the newest labeled "
            "file: no newer labeled file to judge a challenger on",
            parent_version=champion.version,
        )
    return _challenge(settings, options, progress, inputs, holdout, champion)


def _challenge(
    settings: Settings,
    options: RetrainOptions,
    progress: Progress,
    inputs: list[LabeledFile],
    holdout: LabeledFile,
    champion: Champion | None,
) -> RetrainOutcome:
    """Fit on the inputs, judge on the holdout, refit on all, log, register, apply."""
    ensure_experiment(settings)
    train = pd.concat([f.frame for f in inputs], ignore_index=True)
    features, seed = list(FEATURES), settings.random_seed
    X, y = prepare_features(train, features), target(train)
    params = retrain_params(settings, options, X, y, progress)
    threshold, cv_f1 = training.cross_validate(params, X, y, settings.cv_folds, seed, progress)
    candidate = fit_candidate(params, features, threshold, train, holdout.frame, seed)
    against = (champion.version, champion.holdout.f1) if champion else None
    decision = _still_champion(settings, gate(settings, candidate.holdout, against, options.force))

    everything = pd.concat([train, holdout.frame], ignore_index=True)
    final = training.make_classifier(params, seed)
    final.fit(prepare_features(everything, features), target(everything))
    model = ChurnModel.in_memory(features, threshold, final)
    with mlflow.start_run(run_name=f"retrain-{holdout.name}") as run:
        mlflow.log_params({**params, **model.config()})
        metrics = {"cv_f1": cv_f1, **candidate.holdout.scores("holdout_")}
        if champion:
            metrics |= champion.holdout.scores("champion_holdout_")
        mlflow.log_metrics(metrics)
        log_figures("holdout", target(holdout.frame).to_numpy(), candidate.holdout_proba, threshold)
        _log_lineage(inputs, holdout)
        version = log_model(settings, model, final, params, everything, train)
        tags = _tags(options, decision, champion, holdout)
        mlflow.set_tags(tags)
    _tag_version(settings, version, tags)
    apply_decision(settings, version, decision)
    return RetrainOutcome(
        "promoted" if decision.promote else "refused",
        decision.reason,
        version=version,
        parent_version=champion.version if champion else None,
        run_id=run.info.run_id,
        holdout_file=holdout.name,
        training_files=tuple(f.name for f in inputs),
        holdout_f1=candidate.holdout.f1,
        champion_f1=champion.holdout.f1 if champion else None,
    )


def retrain_params(
    settings: Settings,
    options: RetrainOptions,
    X: pd.DataFrame,
    y: pd.Series,
    progress: Progress = training._quiet,
) -> dict[str, Any]:
    """Explicit params; else with ``trials`` the best of a short search on these rows; else
    the best stored training trial or the shipped parameters (as ``churnops train``).

    The search has a study of its own, in memory: its cross-validated F1s are measured
    on other rows than the stored study's, and the best of a mix would not mean much.
    """
    if options.params is not None or options.trials <= 0:
        chosen = TrainingOptions(data_file=Path(settings.training_file), params=options.params)
        return choose_params(settings, chosen, X, y, progress)
    sampler = optuna.samplers.TPESampler(seed=settings.random_seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    training.search(study, X, y, options.trials, settings.cv_folds, settings.random_seed, progress)
    return dict(study.best_params)


def _still_champion(settings: Settings, decision: Decision) -> Decision:
    """Refuse when the alias moved while this retraining worked (``churnops train``, say):
    the challenger was judged against a version that no longer serves."""
    if not decision.promote or decision.champion_version is None:
        return decision
    try:
        now = mlflow.MlflowClient().get_model_version_by_alias(
            settings.model_name, settings.model_alias
        )
    except MlflowException:
        now = None
    if now is not None and str(now.version) == decision.champion_version:
        return decision
    moved = f"version {now.version}" if now else "no version"
    return replace(
        decision,
        promote=False,
        reason=f"'{settings.model_alias}' moved to {moved} while retraining against "
        f"version {decision.champion_version}: not promoted ({decision.reason})",
    )


def _log_lineage(inputs: list[LabeledFile], holdout: LabeledFile) -> None:
    """Each input file as an MLflow dataset: its name, content hash and rows."""
    for labeled, context in [*((f, "training") for f in inputs), (holdout, "holdout")]:
        dataset = mlflow.data.from_pandas(
            labeled.frame,
            name=labeled.name,
            digest=labeled.sha256[:DIGEST_CHARS],
            targets=TARGET,
        )
        tags = {"sha256": labeled.sha256, "rows": str(labeled.rows), "key": labeled.key}
        with warnings.catch_warnings():
            # integer columns: validated rows have no missing values (see registry.log_model)
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
            mlflow.log_input(dataset, context=context, tags=tags)


def _tags(
    options: RetrainOptions, decision: Decision, champion: Champion | None, holdout: LabeledFile
) -> dict[str, str]:
    return {
        "retrain.trigger": options.trigger,
        "retrain.parent_version": champion.version if champion else "",
        "retrain.holdout_file": holdout.name,
        "promotion.decision": "promoted" if decision.promote else "rejected",
        "promotion.reason": decision.reason,
    }


def _tag_version(settings: Settings, version: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key in ("retrain.trigger", "retrain.parent_version", "retrain.holdout_file"):
        client.set_model_version_tag(settings.model_name, version, key, tags[key])


# --- telling people ------------------------------------------------------------------------
def _record(
    settings: Settings, store: MetricsStore, trigger: Trigger, outcome: RetrainOutcome
) -> RetrainOutcome:
    """The verdict in ``model_events`` (dashboards) and as an alert (people)."""
    store.record_model_event(
        model_name=settings.model_name,
        version=outcome.version,
        parent_version=outcome.parent_version,
        event=outcome.status,
        reason=outcome.reason,
        holdout_f1=outcome.holdout_f1,
        champion_f1=outcome.champion_f1,
        trigger=trigger,
        mlflow_run_id=outcome.run_id,
    )
    alert = retrain_alert(settings, outcome)
    try:
        channels = send_alert(alert, settings)
    except AlertDeliveryError as exc:  # the verdict stands; it is in MLflow and the database
        log.warning("retraining alert: %s", exc)
        channels = exc.delivered
    return replace(outcome, alert_channels=tuple(channels))


def retrain_alert(settings: Settings, outcome: RetrainOutcome) -> Alert:
    """``ChurnOps: retraining promoted version 3`` (or refused), with the figures."""
    champion = (
        f"{outcome.champion_f1:.3f} (version {outcome.parent_version})"
        if outcome.champion_f1 is not None
        else f"none (no version had alias '{settings.model_alias}')"
    )
    body = "\n".join(
        [
            f"ChurnOps retraining: version {outcome.version} {outcome.status}",
            "",
            f"Model:    {settings.model_name}",
            f"Reason:   {outcome.reason}",
            f"Holdout:  {outcome.holdout_file} (the newest labeled file)",
            f"F1 on it: challenger {outcome.holdout_f1:.3f}, champion {champion}",
            f"Trained on: {', '.join(outcome.training_files)}",
            f"MLflow run: {outcome.run_id}",
        ]
    )
    return Alert(
        file_name=outcome.holdout_file or "",
        model_name=settings.model_name,
        model_version=outcome.version or "",
        subject=f"ChurnOps: retraining {outcome.status} version {outcome.version}"[:99],
        body=body + "\n",
    )
