"""What happens to one dropped file: :func:`process`, the one step sequence, which the
flow runs with its steps as Prefect tasks and the CLI, reconciler and tests run plainly::

    input/<name> -> processing/<run>/<name> -> processed/<run>/ (with its predictions)
                                             -> errored/<run>/   (the file is invalid)

A late labels file (``labels/<name>``) is joined to the run that scored its rows instead
(:mod:`churnops.pipeline.labels`). Any failure that is not the file's fault leaves it in
``processing/`` for the reconciler to re-drive, up to :data:`~churnops.retry.MAX_ATTEMPTS`
attempts (failed or died); then it goes to ``errored/`` with an alert.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from churnops import retry
from churnops.data.schema import DataValidationError, is_bad_input
from churnops.drop import claims
from churnops.drop.keys import is_labels
from churnops.drop.storage import (
    DropStorage,
    FileLog,
    ObjectExists,
    brief,
    folder_key,
    name_from_key,
    name_problem,
    printable,
    run_key,
)
from churnops.model.churn_model import LoadedModel, load_aliased_model
from churnops.monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    assess,
    build_alert,
    build_gave_up_alert,
    build_labels_alert,
    build_rejection_alert,
    low_scores,
    send_alert,
)
from churnops.monitoring.attribution import attribution_drift
from churnops.monitoring.drift import Totals, reports_of, run_monitoring, withdraw
from churnops.monitoring.metrics_db import FAILED, LABELS, SCORING, MetricsStore
from churnops.pipeline import retrain_trigger
from churnops.pipeline.labels import LabelsJoin, join_labels
from churnops.pipeline.scoring import ScoredFile, predictions_of, score_file
from churnops.results import MonitoringResult
from churnops.settings import (
    AlertSettings,
    ModelSettings,
    MonitoringSettings,
    PlatformSettings,
    Settings,
)

log = logging.getLogger(__name__)

#: died: this attempt stalled past its lease and was taken over (:class:`TakenOver`).
Status = Literal["processed", "errored", "failed", "skipped", "died"]


class NotARegularFile(DataValidationError):
    """A symlink, FIFO or device in a local drop folder: never read, never followed."""


class TakenOver(Exception):
    """A later attempt took the run over while this one stalled past its lease (a stopped
    or starved process): that one closed this attempt's row, log, flow run and lease as
    died, and does its work; this one stores, alerts and moves nothing more."""


@dataclass
class FileOutcome:
    name: str
    status: Status
    message: str
    run: str | None = None
    attempt: int | None = None
    model_version: str | None = None
    predictions_key: str | None = None
    report_url: str | None = None
    alert_channels: tuple[str, ...] = ()
    run_id: str | None = None  # the metrics database row of this attempt


# --- the steps -----------------------------------------------------------------------
def monitor(
    monitoring: MonitoringSettings,
    platform: PlatformSettings,
    model: LoadedModel,
    scored: ScoredFile,
    name: str,
    run: str = "",
) -> MonitoringResult:
    """Drift on the file's sample with every row's counts and scores, and attribution drift
    (first: the report shows it); ``run`` tags the report (:func:`_withdraw_report`)."""
    rows = monitoring.attribution_sample_rows
    attribution = attribution_drift(model, scored.sample, rows) if rows else None
    result = run_monitoring(
        model.model.reference_data(),
        scored.sample,
        feature_columns=model.model.features,
        monitoring=monitoring,
        platform=platform,
        file_name=name,
        model_version=model.version,
        model_name=model.name,
        totals=Totals(scored.rows, scored.predicted_churn_rate, scored.quality),
        attribution_ndcg=attribution.ndcg if attribution else None,
        run=run,
    )
    result.attribution = attribution
    return result


def record_metrics(
    monitoring: MonitoringSettings, store: MetricsStore, run_id: str, result: MonitoringResult
) -> None:
    store.record_result(run_id, result, thresholds=monitoring.alert_thresholds)


def send_alerts(
    monitoring: MonitoringSettings,
    retraining: ModelSettings,
    alerts: AlertSettings,
    result: MonitoringResult,
    name: str,
    model: LoadedModel,
    *,
    drop: str = "",
    run: str = "",
    submit: retrain_trigger.Submit = retrain_trigger.submit_to_deployment,
) -> tuple[tuple[str, ...], str]:
    """(channels used, what happened) of alerting when a threshold is crossed; low scores
    also suggest or start a retraining (:mod:`churnops.pipeline.retrain_trigger`)."""
    assessment = assess(result, monitoring)
    if not assessment.needs_alert:
        return (), "no threshold crossed"
    alert = build_alert(name, model.name, model.version, assessment, result)
    low = assessment.low_scores
    note = retrain_trigger.on_low_scores(retraining, monitoring, low, drop, run, submit)
    return _deliver(alerts, alert, assessment.summary, note)


def _deliver(
    alerts: AlertSettings, alert: Alert, summary: str, retraining: str
) -> tuple[tuple[str, ...], str]:
    """Send ``alert`` (with the retraining note); a failed delivery is reported, not raised."""
    if retraining:
        alert = replace(alert, body=f"{alert.body}\n{retraining}\n")
    note = f"; {retraining}" if retraining else ""
    try:
        channels = send_alert(alert, alerts)
    except AlertDeliveryError as exc:
        log.warning("alert for %s: %s", alert.file_name, exc)
        return tuple(exc.delivered), f"{summary}; {exc}{note}"
    return tuple(channels), f"{summary} alert sent by {', '.join(channels)}{note}"


def record_realized(
    monitoring: MonitoringSettings,
    store: MetricsStore,
    labels_run_id: str,
    name: str,
    joined: LabelsJoin,
) -> None:
    """The realized scores, stored against the scoring run with the labels' arrival time."""
    store.record_realized(
        run_id=joined.scoring.run_id,
        labels_run_id=labels_run_id,
        labels_file=name,
        arrived_at=joined.arrived_at,
        matched_by=joined.matched_by,
        labeled_rows=joined.labeled_rows,
        scores=joined.scores,
        thresholds=monitoring.alert_thresholds,
    )


def alert_realized(
    monitoring: MonitoringSettings,
    retraining: ModelSettings,
    alerts: AlertSettings,
    joined: LabelsJoin,
    name: str,
    *,
    drop: str = "",
    run: str = "",
    submit: retrain_trigger.Submit = retrain_trigger.submit_to_deployment,
) -> tuple[tuple[str, ...], str]:
    """Alert when a realized score is below its minimum (and maybe retrain, as above)."""
    low = low_scores(joined.scores, monitoring)
    if not low:
        return (), "realized scores at or above their minimums"
    scoring = joined.scoring
    alert = build_labels_alert(
        name, scoring.file_name, scoring.model_name, scoring.model_version, joined.summary(), low
    )
    note = retrain_trigger.on_low_scores(retraining, monitoring, low, drop, run, submit)
    return _deliver(alerts, alert, "low realized scores", note)


def finish(storage: DropStorage, run: str, name: str, stage: str) -> str:
    """Move the run's folder to ``stage``, the original first: once it has left
    ``processing/`` the run is over (a re-drive only moves the rest)."""
    original = run_key(stage, run, name)  # type: ignore[arg-type]
    storage.move(run_key("processing", run, name), original)
    _move_outputs(storage, run, stage)
    return original


def _move_outputs(storage: DropStorage, run: str, stage: str) -> None:
    prefix = folder_key("processing", run)
    for key in storage.list_keys(prefix):
        storage.move(key, run_key(stage, run, key[len(prefix) :]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Steps:
    """The steps of :func:`process`; the flow passes them wrapped as Prefect tasks."""

    load_model: Callable[[ModelSettings], LoadedModel] = load_aliased_model
    score_file: Callable[..., ScoredFile] = score_file
    monitor: Callable[..., MonitoringResult] = monitor
    record_metrics: Callable[..., None] = record_metrics
    send_alerts: Callable[..., tuple[tuple[str, ...], str]] = send_alerts
    join_labels: Callable[..., LabelsJoin] = join_labels
    record_realized: Callable[..., None] = record_realized
    alert_realized: Callable[..., tuple[tuple[str, ...], str]] = alert_realized
    finish: Callable[..., str] = finish
    #: Marks the flow runs of dead attempts (id: why) Crashed; without Prefect, none.
    mark_crashed: Callable[[dict[str, str]], None] = lambda crashed: None

    def wrapped(self, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Steps:
        """The same steps, each passed through ``wrap`` (for example ``prefect.task``)."""
        return Steps(**{f.name: wrap(getattr(self, f.name)) for f in fields(self)})


PLAIN_STEPS = Steps()


# --- one file, start to end -------------------------------------------------------------
@dataclass
class _Attempt:
    settings: Settings
    storage: DropStorage
    claim: claims.Claim
    file_log: FileLog
    steps: Steps
    store: MetricsStore | None = None
    #: The file's monitoring result once its Evidently report is stored.
    published: MonitoringResult | None = None


def process(
    settings: Settings,
    storage: DropStorage,
    key: str,
    *,
    steps: Steps = PLAIN_STEPS,
    flow_run_id: str = "",
) -> FileOutcome:
    """Claim ``key`` (a file in input/, or a run in processing/ to re-drive) and process it."""
    not_moved: claims.MoveInFailed | None = None
    try:
        held = claims.claim(
            storage, key, lease_seconds=claims.LEASE_SECONDS, flow_run_id=flow_run_id
        )
    except claims.ClaimRefused as exc:
        log.info("skipping %s: %s", key, exc)
        return FileOutcome(key.rsplit("/", 1)[-1], "skipped", str(exc))
    except claims.MoveInFailed as exc:
        held, not_moved = exc.held, exc
    attempt = _Attempt(settings, storage, held, FileLog(storage, held.run, held.name), steps)
    lease = held.lease
    by = f" (flow run {flow_run_id})" if flow_run_id else ""
    moved = f"{printable(key)} -> {held.processing_key}{' (not moved)' if not_moved else ''}"
    _note(attempt, "claim", "ok", f"attempt {lease.attempt}: {moved}{by}")
    with claims.heartbeat(storage, lease):
        outcome = _not_moved_in(attempt, not_moved) if not_moved else _run_attempt(attempt)
    if outcome.status != "died":  # its successor ended its lease
        _release(attempt, outcome, "unmovable" if not_moved else "done")
    return outcome


def _start_row(attempt: _Attempt) -> None:
    """Open the metrics database and start this attempt's row."""
    held = attempt.claim
    attempt.store = MetricsStore.from_settings(attempt.settings.monitoring)
    attempt.store.start_run(
        run_id=held.lease.db_id,
        file_name=held.name,
        bucket=attempt.storage.bucket,
        object_key=printable(held.lease.source_key),
        flow_run_id=held.lease.flow_run_id or None,
        kind=LABELS if is_labels(held.lease.source_key) else SCORING,
    )


def _run_attempt(attempt: _Attempt) -> FileOutcome:
    held = attempt.claim
    try:
        _start_row(attempt)
        _close_dead_predecessors(attempt)
        info = attempt.storage.stat(held.processing_key)
        if info is None:
            return _complete_finish(attempt)
        if held.lease.attempt > retry.MAX_ATTEMPTS:  # the others failed or died
            last = claims.last_reason(attempt.storage, held.run, held.lease.attempt)
            return _give_up(attempt, last)
        if problem := name_problem(name_from_key(held.lease.source_key)):
            raise DataValidationError([problem], held.name)
        if not info.regular:
            problem = f"{held.name!r} is not a regular file: refused, not read"
            raise NotARegularFile([problem], held.name)
        if is_labels(held.lease.source_key):
            return _join_labels(attempt)
        return _score_and_monitor(attempt)
    except Exception as exc:
        if isinstance(exc, TakenOver) or _known(claims.taken_over, attempt.storage, held.lease):
            _withdraw_report(attempt)
            return _taken_over(attempt)
        if is_bad_input(exc):
            return _rejected(attempt, str(exc))
        if _known(_gone, attempt.storage, held.processing_key):  # deleted mid-run: never retried
            return _complete_finish(attempt)
        _withdraw_report(attempt)
        return _failed(attempt, exc)
    finally:
        if attempt.store is not None:
            attempt.store.close()


def _close_dead_predecessors(attempt: _Attempt) -> None:
    """Close the row, log and flow run of each earlier attempt that died, then end its
    lease ``died``; killed midway, the next attempt closes them again (harmless). One whose
    row it closed itself says ``failed`` did not die: it failed where its log and lease
    could not be written (a full disk), and they get its row's words."""
    held = attempt.claim
    ended: dict[claims.Lease, tuple[claims.LeaseState, str]] = {}
    for lease in claims.died(attempt.storage, held.run, held.lease.attempt):
        death = claims.death(lease)  # also the words of a row the reconciler closed
        error = attempt.store.failed_with(lease.db_id) if attempt.store is not None else None
        if error in (None, death):
            ended[lease] = ("died", death)
        else:
            ended[lease] = ("failed", f"attempt {lease.attempt} failed: {error}")
    for lease, (state, reason) in ended.items():
        _note(attempt, "finish", state, reason)
        if state == "died" and attempt.store is not None:
            attempt.store.close_if_running(lease.db_id, reason)
    crashed = {x.flow_run_id: why for x, (s, why) in ended.items() if s == "died" and x.flow_run_id}
    if crashed:
        attempt.steps.mark_crashed(crashed)
    for lease, (state, reason) in ended.items():
        claims.release(attempt.storage, lease, state, reason)


def _errored(attempt: _Attempt, reason: str, *, as_is: bool = False) -> FileOutcome:
    """To errored/ with the reason in its log (``as_is``: even if it changed meanwhile)."""
    held = attempt.claim
    try:
        _still_held(attempt)
        if not as_is and _changed(attempt):
            return _start_over(attempt)
        attempt.steps.finish(attempt.storage, held.run, held.name, "errored")
    except TakenOver:
        return _taken_over(attempt)
    except Exception as move_error:  # storage down: the file stays, the run is retried
        return _failed(attempt, move_error, cap=False)
    _note(attempt, "finish", "errored", reason)
    _close_run(attempt, "errored", error=reason)
    return _outcome(attempt, "errored", reason)


def _rejected(attempt: _Attempt, reasons: str) -> FileOutcome:
    """An invalid file: to errored/, with an alert (an upstream export failing is news)."""
    outcome = _errored(attempt, reasons)
    if outcome.status == "errored":
        held = attempt.claim
        alert = build_rejection_alert(held.name, held.run, reasons)
        outcome.alert_channels, sent = _deliver(attempt.settings.alerts, alert, "rejected file", "")
        _note(attempt, "alert", "ok", sent)
    return outcome


def _give_up(attempt: _Attempt, last_reason: str) -> FileOutcome:
    """The attempts are used up: to errored/, never retried again, and an alert says so."""
    held = attempt.claim
    outcome = _errored(attempt, _gave_up(attempt, last_reason))
    if outcome.status == "errored":
        _alert_gave_up(attempt, outcome, run_key("errored", held.run, held.name))
    return outcome


def _gave_up(attempt: _Attempt, last_reason: str) -> str:
    tried = min(attempt.claim.lease.attempt, retry.MAX_ATTEMPTS)
    return f"gave up after {tried} attempts: {last_reason}"


def _alert_gave_up(attempt: _Attempt, outcome: FileOutcome, where: str) -> FileOutcome:
    """The alert that a run was given up on (``outcome`` says why; its file is ``where``)."""
    alert = build_gave_up_alert(attempt.claim.name, outcome.message, where)
    outcome.alert_channels, outcome.message = _deliver(
        attempt.settings.alerts, alert, outcome.message, ""
    )
    return outcome


def _not_moved_in(attempt: _Attempt, exc: claims.MoveInFailed) -> FileOutcome:
    """The file would not move into processing/: it stays in input/, unchanged. The attempt
    fails as any (its row, log and lease say so; retried after ``retry.RUN``'s wait); the
    last one gives up with an alert, removes the copy a move that could not delete its
    source left in processing/, and the run's file is never claimed again."""
    held = attempt.claim
    reason = f"could not move it into processing/: {brief(exc.cause)}"
    gave_up = held.lease.attempt >= retry.MAX_ATTEMPTS
    if gave_up:
        reason = _gave_up(attempt, reason)
        _remove_copy(attempt)
    status: Status = "errored" if gave_up else "failed"
    try:
        _start_row(attempt)
        _close_dead_predecessors(attempt)
    except Exception as db_error:  # the lease and the log still tell it
        log.warning("metrics database: no row for run %s: %s", held.run, brief(db_error))
    _note(attempt, "finish", status, reason)
    _close_run(attempt, status, error=reason)
    if attempt.store is not None:
        attempt.store.close()
    outcome = _outcome(attempt, status, reason)
    if gave_up:
        return _alert_gave_up(attempt, outcome, printable(held.lease.source_key))
    log.warning("%s: attempt %s failed: %s", held.name, held.lease.attempt, reason)
    return outcome


def _remove_copy(attempt: _Attempt) -> None:
    """The file in exactly one place, its drop folder: a copy in processing/ goes (moved
    onto the original, only the copy is deleted; restored, if the original went meanwhile)."""
    held = attempt.claim
    try:
        if attempt.storage.exists(held.processing_key):
            attempt.storage.move(held.processing_key, held.lease.source_key)
    except Exception as exc:
        _note(attempt, "cleanup", "failed", f"its copy in processing/ stays: {brief(exc)}")


def _failed(attempt: _Attempt, exc: Exception, *, cap: bool = True) -> FileOutcome:
    """Not the file's fault: it stays in processing/ for a retry, ``MAX_ATTEMPTS`` in all."""
    held = attempt.claim
    reason = brief(exc)  # what the state, the database, the alert show; the log has the frames
    frames = "".join(traceback.format_tb(exc.__traceback__))
    _note(attempt, "finish", "failed", f"{reason}\n{frames}")
    if cap and held.lease.attempt >= retry.MAX_ATTEMPTS:
        return _give_up(attempt, reason)
    log.warning("%s: attempt %s failed: %s", held.name, held.lease.attempt, reason)
    _close_run(attempt, FAILED, error=reason)
    return _outcome(attempt, "failed", reason)


def _note(attempt: _Attempt, step: str, status: str, message: str) -> None:
    """A line in the file's log, on a path where storage itself may be failing."""
    try:
        attempt.file_log.write(step, status, message)
    except Exception as exc:
        log.warning("%s: could not write the log line %r: %s", attempt.claim.name, message, exc)


def _score_and_monitor(attempt: _Attempt) -> FileOutcome:
    settings, storage, steps = attempt.settings, attempt.storage, attempt.steps
    held, file_log = attempt.claim, attempt.file_log
    with file_log.step("load model") as record:
        model = steps.load_model(settings.model)
        record.message = f"{model.name} version {model.version}"
    with file_log.step("score") as record:
        scored = steps.score_file(
            settings.drop, storage, held.processing_key, held.run, held.name, model
        )
        record.message = scoring_summary(scored)
    with file_log.step("monitor") as record:
        if held.lease.attempt > 1:
            _withdraw_report(attempt, earlier=True)
        result: MonitoringResult = steps.monitor(
            settings.monitoring, settings.platform, model, scored, held.name, held.run
        )
        record.message = summary(result, timed=True)
    attempt.published = result
    _still_held(attempt)
    with file_log.step("store metrics"):
        steps.record_metrics(settings.monitoring, attempt.store, held.lease.db_id, result)
    with file_log.step("alert") as record:
        channels, alert_message = steps.send_alerts(
            *_alerting(attempt), result, held.name, model, drop=storage.uri, run=held.run
        )
        record.message = alert_message
    outcome = _processed(
        attempt,
        f"{summary(result)}; {alert_message}",
        rows=scored.rows,
        report_url=result.report_url,
        model_name=model.name,
        model_version=model.version,
    )
    if outcome.status == "processed":
        name = scored.predictions_key.rsplit("/", 1)[-1]
        outcome.predictions_key = run_key("processed", held.run, name)
        outcome.report_url, outcome.alert_channels = result.report_url, channels
    return outcome


def _withdraw_report(attempt: _Attempt, *, earlier: bool = False) -> None:
    """This attempt failed (or was taken over) after storing its Evidently report, its file
    still in processing/: the attempt that ends the run stores its own, so this one goes (a
    failure here is only logged). A file already moved to processed/ keeps it. ``earlier``:
    a re-drive withdraws every report its run has so far, also one the UI stored after an
    earlier attempt stopped waiting for its answer (a frozen UI), which it never knew."""
    monitoring, result = attempt.settings.monitoring, attempt.published
    own = [result.snapshot_id] if result is not None and result.snapshot_id else []
    try:
        run = attempt.claim.run
        for snapshot in reports_of(monitoring, run, claims.dropped_at(run)) if earlier else own:
            withdraw(monitoring, snapshot)
    except Exception as exc:
        log.warning(
            "%s: reports of run %s not withdrawn: %s", attempt.claim.name, attempt.claim.run, exc
        )


def _join_labels(attempt: _Attempt) -> FileOutcome:
    """A late labels file: join, store the realized scores, judge them, finish."""
    settings, storage, steps = attempt.settings, attempt.storage, attempt.steps
    held, file_log = attempt.claim, attempt.file_log
    with file_log.step("join labels") as record:
        joined = steps.join_labels(settings.drop, storage, held.processing_key, held.run, held.name)
        record.message = joined.summary()
    _still_held(attempt)
    with file_log.step("store metrics"):
        steps.record_realized(
            settings.monitoring, attempt.store, held.lease.db_id, held.name, joined
        )
    with file_log.step("alert") as record:
        channels, alert_message = steps.alert_realized(
            *_alerting(attempt), joined, held.name, drop=storage.uri, run=held.run
        )
        record.message = alert_message
    outcome = _processed(
        attempt,
        f"{joined.summary()}; {alert_message}",
        rows=joined.rows,
        model_name=joined.scoring.model_name,
        model_version=joined.scoring.model_version,
    )
    if outcome.status == "processed":
        outcome.alert_channels = channels
    return outcome


def _alerting(attempt: _Attempt) -> tuple[MonitoringSettings, ModelSettings, AlertSettings]:
    return attempt.settings.monitoring, attempt.settings.model, attempt.settings.alerts


def _processed(attempt: _Attempt, message: str, **values: Any) -> FileOutcome:
    """The last step of a run whose steps all went well (unless its file changed)."""
    _still_held(attempt)
    if _changed(attempt):
        return _start_over(attempt)
    held = attempt.claim
    with attempt.file_log.step("finish") as record:
        record.message = attempt.steps.finish(attempt.storage, held.run, held.name, "processed")
    _close_run(attempt, "processed", **values)
    outcome = _outcome(attempt, "processed", message)
    outcome.model_version = values["model_version"]
    return outcome


def _complete_finish(attempt: _Attempt) -> FileOutcome:
    """The original already left processing/: move what the last attempt left behind."""
    held, storage = attempt.claim, attempt.storage
    found = _ended_in(attempt)
    stage: Status = found or "errored"
    _move_outputs(storage, held.run, stage)  # the run folder closes, once
    if found:
        message = f"the previous attempt had moved the file to {stage}/: finished its move"
    else:
        message = (
            f"{held.processing_key} was deleted during its run and is in no final folder: "
            f"run closed, its outputs (if any) in {folder_key('errored', held.run)}"
        )
    _note(attempt, "finish", "ok" if stage == "processed" else stage, message)
    scored: dict[str, Any] = {}
    if stage == "processed":
        scored = _what_scored(attempt)
        if attempt.store is not None:  # the file's metrics, shown
            earlier = [f"{held.run}.{n}" for n in range(1, held.lease.attempt)]
            attempt.store.adopt_metrics(held.lease.db_id, earlier)
    _close_run(attempt, stage, error=None if stage == "processed" else message, **scored)
    outcome = _outcome(attempt, stage, message)
    outcome.model_version = scored.get("model_version")
    return outcome


def _what_scored(attempt: _Attempt) -> dict[str, Any]:
    """The model and version that scored a run found in processed/ (its predictions' name),
    and its rows and report when this attempt got that far: the attempt that moved it died,
    or failed moving the rest, before closing its row, which then named no version."""
    held, result = attempt.claim, attempt.published
    keys = attempt.storage.list_keys(folder_key("processed", held.run))
    values: dict[str, Any] = {}
    if by := next(iter(predictions_of(held.name, keys).values()), None):
        values |= {"model_name": by[0], "model_version": by[1]}
    if result is not None:
        values |= {"rows": result.rows, "report_url": result.report_url}
    return values


def _ended_in(attempt: _Attempt) -> Literal["processed", "errored"] | None:
    """The final folder the run's original is in, if it left processing/ for one."""
    held, storage = attempt.claim, attempt.storage
    stages: tuple[Literal["processed", "errored"], ...] = ("processed", "errored")
    return next((s for s in stages if storage.exists(run_key(s, held.run, held.name))), None)


def _still_held(attempt: _Attempt) -> None:
    """Before each step that stores, alerts or moves: :class:`TakenOver` if a later attempt
    took the run over (one storage look-up)."""
    if claims.taken_over(attempt.storage, attempt.claim.lease):
        raise TakenOver(attempt.claim.lease.attempt)


def _known(question: Callable[..., bool], *args: Any) -> bool:
    """A question to storage on a failure path, where storage itself may be down: not known
    (taken over, or gone) is False, and the failure is handled as such (a retry)."""
    try:
        return question(*args)
    except Exception:
        return False


def _taken_over(attempt: _Attempt) -> FileOutcome:
    """Woken after its takeover: what it wrote into the run folder since (a predictions
    file, the same bytes as its successor's) goes where the run ended, and it ends died."""
    held, storage = attempt.claim, attempt.storage
    try:
        if ended := _ended_in(attempt):
            _move_outputs(storage, held.run, ended)
    except Exception as exc:  # moved by its successor meanwhile, or storage down: re-driven
        log.info("%s: outputs of a taken-over attempt not moved: %s", held.name, brief(exc))
    n = held.lease.attempt
    message = f"attempt {n} stalled past its lease; attempt {n + 1} took over: nothing changed"
    log.warning("%s: %s", held.name, message)
    return _outcome(attempt, "died", message)


def _changed(attempt: _Attempt) -> bool:
    """The file is no longer the version this run claimed: its writer was not done."""
    held = attempt.claim
    return attempt.storage.changed(held.processing_key, held.lease.source_version)


def _start_over(attempt: _Attempt) -> FileOutcome:
    """The file changed during its run: back to its drop folder as a new drop, and this
    run closes with its stale outputs in errored/."""
    held, storage = attempt.claim, attempt.storage
    source = printable(held.lease.source_key)
    try:
        storage.move(held.processing_key, held.lease.source_key)
    except ObjectExists:  # a newer drop has its name: kept here rather than replace it
        reason = f"the file changed during its run, and {source} is another drop now: drop it again"
        return _errored(attempt, reason, as_is=True)
    _move_outputs(storage, held.run, "errored")
    message = (
        f"the file changed during its run (its writer was still writing): back in {source} "
        f"to start over as a new run; stale outputs in {folder_key('errored', held.run)}"
    )
    _note(attempt, "finish", "skipped", message)
    _close_run(attempt, FAILED, error=message)
    return _outcome(attempt, "skipped", message)


def _gone(storage: DropStorage, key: str) -> bool:
    """The file left processing/ during the attempt (deleted, or moved by its finish)."""
    return not storage.exists(key)


def _close_run(attempt: _Attempt, status: str, **values: Any) -> None:
    """Record the end in the database; when it is down, the lease still says it."""
    if attempt.store is None:
        return
    try:
        attempt.store.finish_run(attempt.claim.lease.db_id, status, **values)
    except Exception as exc:
        log.warning("metrics database: could not close run %s: %s", attempt.claim.run, exc)
        _note(attempt, "metrics", "failed", f"could not record the end: {brief(exc)}")


def _release(attempt: _Attempt, outcome: FileOutcome, ended: claims.LeaseState) -> None:
    """Close the lease (``ended`` unless the attempt failed); if storage fails here, the
    lease expires and the run is re-driven."""
    lease = attempt.claim.lease
    try:
        if outcome.status != "failed":
            claims.release(attempt.storage, lease, ended, outcome.status)
            return
        delay = retry.RUN.delay(lease.attempt)
        claims.release(attempt.storage, lease, "failed", outcome.message, retry_in=delay)
    except Exception as exc:
        log.warning(
            "%s: lease not closed (%s); it expires in %ss", lease.run, exc, claims.LEASE_SECONDS
        )
        return
    when = f"in {delay:.0f}s (attempt {lease.attempt + 1})"
    where = "its drop folder" if ended == "unmovable" else "processing/"  # it would not move
    _note(attempt, "retry", "scheduled", f"{when}: the file stays in {where} for a retry")


def _outcome(attempt: _Attempt, status: Status, message: str) -> FileOutcome:
    held = attempt.claim
    return FileOutcome(
        held.name, status, message, held.run, held.lease.attempt, run_id=held.lease.db_id
    )


def scoring_summary(scored: ScoredFile) -> str:
    """Rows, churn rate and where the time went, for the file's log."""
    times = ", ".join(f"{step} {seconds:.2f}s" for step, seconds in scored.seconds.items())
    kept = (
        "; kept the predictions an earlier attempt wrote" if scored.kept_earlier_predictions else ""
    )
    return "; ".join(
        [
            f"{scored.rows} rows in {scored.chunks} chunk(s)",
            *scored.notes,
            f"predicted churn rate {scored.predicted_churn_rate:.3f}",
            times,
            f"{scored.predictions_key}{kept}",
        ]
    )


def summary(result: MonitoringResult, *, timed: bool = False) -> str:
    """One line on drift and scores; ``timed``: with the report's and the store's seconds
    (the file's log, which the benchmark reads)."""
    quality = ", ".join(f"{k} {v:.3f}" for k, v in result.quality.items()) or "unlabeled"
    attribution = f"{result.attribution.summary(movers=2)}; " if result.attribution else ""
    times = "".join(f"{part} {s:.2f}s; " for part, s in result.seconds.items() if timed)
    return (
        f"drifted {result.drifted_count} columns (share {result.drifted_share:.2f}); "
        f"{quality}; {attribution}{times}report {result.report_where}"
    )
