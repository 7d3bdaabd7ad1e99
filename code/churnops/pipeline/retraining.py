"""Retrain on newly labeled files: the retraining case of the one training pipeline.

The window is the training file plus the newest labeled files processed since
(``RETRAIN_WINDOW_FILES``, ``RETRAIN_WINDOW_DAYS``): files with ``Churn``, or the labelled
rows of late labels, each scoring run's rows once. One retraining at a time: a lock in the
metrics database, taken over at once from a dead holder on this host, else on expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from churnops.data.features import FEATURES
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET, is_bad_input
from churnops.drop import claims
from churnops.drop.keys import is_labels
from churnops.drop.storage import DropStorage, brief, run_folders, run_key
from churnops.model import training
from churnops.model.churn_model import LoadedModel, load_aliased_model
from churnops.model.registry import (
    BELOW_MINIMUM,
    DIGEST_CHARS,
    LabeledFile,
    Outcome,
    TrainingOptions,
    score,
    sha256,
    train_and_register,
)
from churnops.model.training import Progress
from churnops.monitoring.alerts import (
    SUBJECT_MAX,
    SUBJECT_PREFIX,
    Alert,
    AlertDeliveryError,
    send_alert,
)
from churnops.monitoring.metrics_db import LockState, MetricsStore
from churnops.pipeline import labels
from churnops.pipeline.retrain_trigger import LOCK, alive, cooling_down, lock_holder
from churnops.settings import AlertSettings, DropSettings, ModelSettings, Settings

log = logging.getLogger(__name__)

#: A retraining's lock expires after this (min), so a crashed holder frees it.
LOCK_MINUTES = 60.0

__all__ = ["DIGEST_CHARS", "LOCK", "RetrainOptions", "labeled_files", "retrain", "score"]
Trigger = Literal["manual", "auto"]


@dataclass(frozen=True)
class RetrainOptions:
    trials: int = 0
    force: bool = False
    trigger: Trigger = "manual"
    #: The run whose low scores started this retraining: included even while its file
    #: is still finishing (in ``processing/``), so the file that asked is learned from.
    include_run: str | None = None
    #: Parameters to use as given (no search, no stored trial): for tests and experiments.
    params: dict[str, Any] | None = None


# --- the data ------------------------------------------------------------------------------
def labeled_source(storage: DropStorage, run: str) -> tuple[str | None, str]:
    """The key a run has to learn from (processed/ or processing/) and whose rows those are:
    its original file and itself, or a labels file's labelled rows and its scoring run."""
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


def read_labeled(drop: DropSettings, storage: DropStorage, key: str) -> LabeledFile | None:
    data = storage.read(key)
    name = key.rsplit("/", 1)[-1]
    try:
        frame = load_customer_file(
            data, name=name, require_target=True, max_bytes=drop.max_file_bytes
        )
    except Exception as exc:
        if not is_bad_input(exc):
            raise
        log.info("%s is not a labeled customer file: %s", key, str(exc).splitlines()[0])
        return None
    run = key.split("/")[2]
    return LabeledFile(name, key, sha256(data), frame[[*FEATURES, TARGET]], claims.dropped_at(run))


def labeled_files(
    model: ModelSettings,
    drop: DropSettings,
    storage: DropStorage,
    now: datetime,
    include_run: str | None = None,
) -> list[LabeledFile]:
    """The window, oldest first; a scoring run's rows once: its newest labels, else its own."""
    runs = sorted({*run_folders(storage, "processed"), *([include_run] if include_run else [])})
    oldest = now - timedelta(days=model.retrain_window_days or 0)
    found: list[LabeledFile] = []
    learned: set[str] = set()  # scoring runs whose rows are in the window already
    for run in reversed(runs):
        if len(found) >= model.retrain_window_files:
            break
        if model.retrain_window_days and claims.dropped_at(run) < oldest:
            break
        key, rows_of = labeled_source(storage, run)
        if key is None or rows_of in learned:
            continue
        labeled = read_labeled(drop, storage, key)
        if labeled is not None:
            found.append(labeled)
            learned.add(rows_of)
    return found[::-1]


# --- the retraining ------------------------------------------------------------------------
def retrain(
    settings: Settings,
    storage: DropStorage,
    options: RetrainOptions | None = None,
    progress: Progress = training._quiet,
    load: Callable[[ModelSettings], LoadedModel] = load_aliased_model,
) -> Outcome:
    """Train a challenger on the window, gate it against the champion (loaded by ``load``,
    as files are scored), record it."""
    options = options or RetrainOptions()
    outcome = _retrain_locked(settings, storage, options, progress, load)
    if options.trigger == "auto" and outcome.status == "skipped":  # as a failure is told
        _tell_ended(settings.model, settings.alerts, "skipped", outcome.reason)
    return outcome


def _retrain_locked(
    settings: Settings,
    storage: DropStorage,
    options: RetrainOptions,
    progress: Progress,
    load: Callable[[ModelSettings], LoadedModel],
) -> Outcome:
    store = MetricsStore.from_settings(settings.monitoring)
    holder = lock_holder(options.trigger)
    try:
        state = store.lock_state(LOCK)
        waited = _why_not_now(settings.model, state, options.trigger, store.last_verdict_at())
        if waited:
            return Outcome("skipped", waited)
        dead = state.holder if state is not None and not alive(state.holder) else None
        if not store.acquire_lock(LOCK, holder, LOCK_MINUTES * 60, take_from=dead):
            return Outcome("skipped", _lock_holder(store.lock_state(LOCK)))
        try:
            window = labeled_files(
                settings.model, settings.drop, storage, datetime.now(UTC), options.include_run
            )
            if not window:
                nothing = "no labeled file has been processed (in the window): nothing to learn"
                return Outcome("skipped", nothing)
            chosen = TrainingOptions(
                trials=options.trials, force=options.force, params=options.params
            )
            try:
                outcome = train_and_register(settings, chosen, progress, window, load)
            except Exception as exc:
                if options.trigger == "auto":  # a file's alert said it started: say it ended
                    _tell_ended(settings.model, settings.alerts, "failed", brief(exc))
                raise
            if outcome.status != "skipped":
                outcome = _record(settings.model, settings.alerts, store, options.trigger, outcome)
            return outcome
        finally:
            store.release_lock(LOCK, holder)
    finally:
        store.close()


def _why_not_now(
    model: ModelSettings, state: LockState | None, trigger: Trigger, last: datetime | None
) -> str:
    """Why this retraining must not start (another runs; or an automatic one, submitted
    when ``RETRAIN_MODE`` was 'auto' and queued across a restart that changed it, or within
    the cooldown of the ``last`` verdict); '' when it may."""
    now = datetime.now(UTC)
    if state is not None and state.held(now) and alive(state.holder):
        return _lock_holder(state)
    if trigger == "auto" and model.retrain_mode != "auto":
        return f"RETRAIN_MODE is '{model.retrain_mode}' now: automatic retrainings do not run"
    if trigger != "auto" or not cooling_down(last, now, model.retrain_cooldown_minutes):
        return ""
    ready = last + timedelta(minutes=model.retrain_cooldown_minutes)
    return (
        f"the last retraining ended at {last:%Y-%m-%d %H:%M:%S} UTC; "
        f"automatic ones wait {model.retrain_cooldown_minutes:g} minutes "
        f"(RETRAIN_COOLDOWN_MINUTES), until {ready:%H:%M:%S} UTC"
    )


def _lock_holder(state: LockState | None) -> str:
    if state is None:  # released and gone between the two reads: say it plainly
        return "another retraining held the lock; this one stops"
    return (
        f"another retraining is running since {state.acquired_at:%Y-%m-%d %H:%M:%S} UTC "
        f"({state.holder}); this one stops"
    )


# --- telling people ------------------------------------------------------------------------
def _record(
    model: ModelSettings,
    alerts: AlertSettings,
    store: MetricsStore,
    trigger: Trigger,
    outcome: Outcome,
) -> Outcome:
    """The verdict in ``model_events`` (dashboards) and as an alert (people). The alias has
    moved already: a database that fails the record must not also keep people from hearing
    of it (the alert says what was not recorded)."""
    alert = retrain_alert(model, outcome)
    try:
        store.record_model_event(
            model_name=model.model_name,
            version=outcome.version,
            parent_version=outcome.parent_version,
            event=outcome.status,
            reason=outcome.reason,
            holdout_f1=outcome.holdout_f1,
            champion_f1=outcome.champion_f1,
            trigger=trigger,
            mlflow_run_id=outcome.run_id,
        )
    except Exception as exc:
        missing = f"Not recorded in the metrics database (dashboards, cooldown): {brief(exc)}"
        log.warning("retraining verdict: %s", missing)
        alert = replace(alert, body=f"{alert.body}{missing}\n")
    return replace(outcome, alert_channels=_send(alert, alerts))


def _send(alert: Alert, alerts: AlertSettings) -> tuple[str, ...]:
    """The channels that took it; a failed delivery is logged: what it tells stands."""
    try:
        return tuple(send_alert(alert, alerts))
    except AlertDeliveryError as exc:
        log.warning("retraining alert: %s", exc)
        return tuple(exc.delivered)


def _tell_ended(model: ModelSettings, alerts: AlertSettings, ended: str, reason: str) -> None:
    """An automatic retraining that ended with no verdict (``failed`` or ``skipped``), told
    as its verdict would be (else only its Prefect flow run said so, after an alert had said
    it started)."""
    more = "\nIts flow run has the traceback.\n" if ended == "failed" else ""
    alert = Alert(
        file_name="",
        model_name=model.model_name,
        model_version="",
        subject=f"{SUBJECT_PREFIX} retraining {ended}: {reason}"[:SUBJECT_MAX],
        body=f"ChurnOps retraining (auto) {ended}:\n\n{reason}\n{more}",
    )
    _send(alert, alerts)


def retrain_alert(model: ModelSettings, outcome: Outcome) -> Alert:
    """``[ChurnOps] retraining promoted version 3`` (or refused), with the figures."""
    below = "; quality still below minimum" if BELOW_MINIMUM in outcome.reason else ""
    body = "\n".join(
        [
            f"ChurnOps retraining: version {outcome.version} {outcome.status}",
            "",
            f"Model:    {model.model_name}",
            f"Reason:   {outcome.reason}",
            f"Holdout:  {outcome.holdout_file} (the newest labeled rows)",
            *(f"F1 {line}" for line in outcome.score_lines()),
            f"Trained on: {', '.join(outcome.training_files)}",
            f"MLflow run: {outcome.run_id}",
        ]
    )
    subject = f"{SUBJECT_PREFIX} retraining {outcome.status} version {outcome.version}{below}"
    return Alert(
        file_name=outcome.holdout_file or "",
        model_name=model.model_name,
        model_version=outcome.version or "",
        subject=subject[:SUBJECT_MAX],
        body=body + "\n",
    )
