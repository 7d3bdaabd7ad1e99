"""Nothing stays stuck: find stranded work and re-drive it, idempotently.

Stranded are: a dropped file no run took within :data:`GRACE_SECONDS` (at once when its
claiming attempt died); a run in ``processing/`` whose attempt died or is due a retry; a
database row still ``running`` for an ended attempt; a flow run still running for an ended
attempt. Claims make a second submission a no-op, so overlapping reconcilers are safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from churnops import pipeline
from churnops.drop import claims
from churnops.drop.keys import DROP_PREFIXES, is_folder_marker, not_a_drop
from churnops.drop.storage import DropStorage, ObjectInfo, brief, printable, run_folders, run_key
from churnops.monitoring import ops_metrics
from churnops.monitoring.metrics_db import ERRORED, FAILED, PROCESSED, RUNNING, MetricsStore
from churnops.pipeline import per_file, retrain_trigger
from churnops.settings import MonitoringSettings, PlatformSettings, Settings

log = logging.getLogger(__name__)

#: A dropped file no run took is re-driven after this (s): the trigger's retries are over.
GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Action:
    #: "trigger" (untaken input) | "redrive" (run in processing) | "close-run" | "end-flow-run"
    kind: str
    key: str
    reason: str
    #: The idempotency marker of this submission (the same work twice: one flow run).
    marker: str = ""


Submit = Callable[[Action], None]


def find_work(storage: DropStorage, now: datetime) -> list[Action]:
    runs = run_folders(storage, "processing")
    return [*stranded_runs(storage, now, runs), *_untaken_inputs(storage, now, runs)]


def stranded_runs(
    storage: DropStorage, now: datetime, runs: list[str], *, retry_now: bool = False
) -> list[Action]:
    """Of the ``runs`` in processing/, those whose attempt died, or failed and is due a retry
    (or, with ``retry_now``, failed at all: a person retrying does not wait for it)."""
    actions = []
    for run in runs:
        with _skipped_on_error(f"processing/{run}"):
            lease = claims.latest_lease(storage, run)
            if lease is None:
                log.warning("run folder processing/%s has no claim file: left alone", run)
                continue
            key = run_key("processing", run, lease.name)
            if lease.holder_gone(now, claims.LEASE_SECONDS):
                actions.append(Action("redrive", key, claims.death(lease), _next_attempt(lease)))
            elif (
                lease.retry_due(now)
                or lease.state == "done"
                or (retry_now and lease.waits_for_retry)
            ):
                why = f"attempt {lease.attempt} {lease.state}: {lease.reason}"
                actions.append(Action("redrive", key, why, _next_attempt(lease)))
    return actions


def _next_attempt(lease: claims.Lease) -> str:
    """The marker of a re-drive after ``lease``'s attempt: one flow run per attempt."""
    return f"{lease.run}#{lease.attempt + 1}"


@contextmanager
def _skipped_on_error(what: str) -> Iterator[None]:
    """A key the reconciler cannot handle is skipped with one line: it must not stop the others."""
    try:
        yield
    except Exception as exc:
        log.warning("reconcile: skipped %s: %s", printable(what), brief(exc))


def _untaken_inputs(storage: DropStorage, now: datetime, runs: list[str]) -> list[Action]:
    """Dropped files no run took; ``runs`` (in processing/) take their dropped copy (left by
    a move-in cut short) themselves."""
    actions: list[Action] = []
    ignored: list[str] = []
    for prefix, key in _dropped_keys(storage, ignored):
        with _skipped_on_error(key):
            info = storage.stat(key)
            if info is None:
                continue
            run, latest = _run_of(storage, prefix, key, info)
            lease = latest if run not in runs else None
            if lease and lease.holder_gone(now, claims.LEASE_SECONDS):
                # Its trigger came and the attempt died claiming it: nothing is on its way.
                actions.append(Action("trigger", key, claims.death(lease), _next_attempt(lease)))
                continue
            if lease and lease.state in ("failed", "unmovable"):  # it would not move in
                if lease.retry_due(now):
                    why = f"attempt {lease.attempt} failed: {lease.reason}"
                    actions.append(Action("trigger", key, why, _next_attempt(lease)))
                continue
            age = (now - info.modified).total_seconds()
            # Taken by a run, being claimed right now, or its trigger may still be on its way.
            if run in runs or (lease and not lease.ended(now, claims.LEASE_SECONDS)):
                continue
            if age >= GRACE_SECONDS:
                folder = prefix.rstrip("/").rsplit("/", 1)[-1]
                why = f"waited {age:.0f}s in {folder}/ and no run took it"
                actions.append(Action("trigger", key, why, f"{run}#{folder}"))
    if ignored:
        shown = ", ".join(ascii(k) for k in ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        what = "subfolders, hidden or partial files"
        log.info("reconcile: ignored %d key(s) (%s): %s", len(ignored), what, shown)
    return actions


def _dropped_keys(storage: DropStorage, ignored: list[str] | None = None) -> list[tuple[str, str]]:
    """(folder, key) of the files directly in a drop folder, not hidden or partial; the
    other keys are added to ``ignored``."""
    found = []
    for prefix in DROP_PREFIXES:
        for key in storage.list_keys(prefix):
            if not_a_drop(key) is None:
                found.append((prefix, key))
            elif ignored is not None and not is_folder_marker(key):
                ignored.append(key)
    return found


def _run_of(
    storage: DropStorage, prefix: str, key: str, info: ObjectInfo
) -> tuple[str, claims.Lease | None]:
    """The run a dropped file's claim would take (its name, version and time), with its
    latest lease."""
    return claims.drop_run(storage, key[len(prefix) :], info)


def waiting_for_retry(storage: DropStorage) -> list[claims.Lease]:
    """The failed attempts whose run waits for its retry: in processing/, or still in its
    drop folder (it would not move in)."""
    latest = [claims.latest_lease(storage, run) for run in run_folders(storage, "processing")]
    for prefix, key in _dropped_keys(storage):
        if (info := storage.stat(key)) is not None:
            latest.append(_run_of(storage, prefix, key, info)[1])
    return [x for x in latest if x is not None and x.waits_for_retry]


def close_dead_runs(store: MetricsStore, storage: DropStorage, now: datetime) -> list[Action]:
    """Database rows still ``running`` whose attempt has ended or died: close them."""
    actions = []
    for row_id in store.running():
        run, _, attempt = row_id.rpartition(".")
        lease = claims.lease(storage, run, int(attempt)) if run and attempt.isdigit() else None
        if lease is None or not lease.ended(now, claims.LEASE_SECONDS):
            continue
        status, why = _row_ending(lease)
        if store.close_if_running(row_id, why, status):
            actions.append(Action("close-run", row_id, why))
    return actions


def _row_ending(lease: claims.Lease) -> tuple[str, str]:
    """(status, why) of the row of an ended attempt: as its lease says when it finished its
    file (the database failed only the row's closing: the file is in processed/ or errored/,
    its metrics stored), else failed."""
    if lease.state == "running":
        return FAILED, claims.death(lease)
    why = f"attempt ended ({lease.state}: {lease.reason}) but its row was not closed"
    finished = lease.state == "done" and lease.reason in (PROCESSED, ERRORED)
    return (lease.reason if finished else FAILED), why


#: The flows whose runs :func:`end_flow_runs` and :func:`end_retrainings` end.
PIPELINE_FLOW = pipeline.PIPELINE_DEPLOYMENT.partition("/")[0]
RETRAIN_FLOW = pipeline.RETRAIN_DEPLOYMENT.partition("/")[0]


class FlowRuns(Protocol):
    """The pipeline's flow runs (:class:`churnops.pipeline.flow.PrefectFlowRuns` says what
    each method does): the unfinished ones (of ``flow``), and ending them as their attempts
    ended."""

    def unfinished(self, flow: str = PIPELINE_FLOW) -> dict[str, datetime]: ...

    def end(self, endings: dict[str, tuple[str, str]]) -> None: ...


def end_flow_runs(
    store: MetricsStore, storage: DropStorage, now: datetime, flow_runs: FlowRuns
) -> list[Action]:
    """Flow runs still running whose attempt has ended (its process died after the file's
    outcome was stored, so no later attempt marks them), or that claimed nothing within
    ``MAX_ATTEMPT_SECONDS``: ended as their records say."""
    unfinished = flow_runs.unfinished()
    if not unfinished:
        return []
    attempts = store.attempts_of(list(unfinished))
    endings = {}
    for flow_run_id, started in unfinished.items():
        with _skipped_on_error(f"flow run {flow_run_id}"):
            if ending := _ending(storage, now, attempts.get(flow_run_id), started):
                endings[flow_run_id] = ending
    if endings:
        flow_runs.end(endings)
    return [
        Action("end-flow-run", run, f"{status}: {why}") for run, (status, why) in endings.items()
    ]


def end_retrainings(store: MetricsStore, now: datetime, flow_runs: FlowRuns) -> list[Action]:
    """Retraining flow runs left running by a process that died (its runner killed: the OOM
    killer, a stop's grace passed): a live retraining holds the lock from its first moments,
    so with no live holder one running for LEASE_SECONDS is dead; not within LEASE_SECONDS
    of the lock's release either (the retraining that released it reports its end at once)."""
    lock = store.lock_state(retrain_trigger.LOCK)
    if lock is not None and (
        retrain_trigger.alive(lock.holder)
        if lock.held(now)
        else (now - lock.expires_at).total_seconds() < claims.LEASE_SECONDS
    ):
        return []
    running = flow_runs.unfinished(RETRAIN_FLOW).items()
    why = "its process died (no live retraining holds the lock)"
    endings = {
        flow_run_id: ("died", why)
        for flow_run_id, since in running
        if (now - since).total_seconds() >= claims.LEASE_SECONDS
    }
    if endings:
        flow_runs.end(endings)
    return [Action("end-flow-run", flow_run_id, f"died: {why}") for flow_run_id in endings]


def _ending(
    storage: DropStorage, now: datetime, attempt: tuple[str, str] | None, started: datetime
) -> tuple[str, str] | None:
    """(status, why) of a running flow run whose attempt has ended (a :data:`per_file.Status`
    or "died"); None while it may still work, or when the attempt taking over will mark it."""
    if attempt is None:
        if (now - started).total_seconds() < claims.MAX_ATTEMPT_SECONDS:
            return None
        return "died", f"it claimed no file in {claims.MAX_ATTEMPT_SECONDS:.0f} s"
    row_id, status = attempt
    run, _, number = row_id.rpartition(".")
    lease = claims.lease(storage, run, int(number))
    if lease is None or not lease.ended(now, claims.LEASE_SECONDS):
        return None
    if lease.state == "running":  # its holder is gone
        if status not in (PROCESSED, ERRORED):
            return None  # its file waits in processing/: the next attempt marks it
        why = f"attempt {lease.attempt} {status} its file, then died before ending its lease"
        claims.release(storage, lease, "done", why)
        return status, why
    # Ended: its flow run reports at once, unless its process died (gone from this host,
    # or silent for LEASE_SECONDS).
    ended = datetime.fromisoformat(lease.heartbeat)
    if not lease.process_gone() and (now - ended).total_seconds() < claims.LEASE_SECONDS:
        return None
    if lease.state in ("died", "failed"):
        return lease.state, lease.reason
    if status == RUNNING:
        return None  # its row is closed first (close_dead_runs), then its flow run
    # done: processed, rejected, or started over as a new run (its row failed)
    outcome = "skipped" if status == FAILED else status
    return outcome, f"attempt {lease.attempt} ended, unreported"


def reconcile(
    settings: Settings, storage: DropStorage, submit: Submit, flow_runs: FlowRuns | None = None
) -> list[Action]:
    """Close dead rows, submit every stranded file, end the ``flow_runs`` left running."""
    now = datetime.now(UTC)
    store = _open_store(settings.monitoring)
    try:
        closed = _checked("metrics database not checked", close_dead_runs, store, storage, now)
        work = find_work(storage, now)
        for action in work:
            log.info("reconcile: %s %s: %s", action.kind, printable(action.key), action.reason)
            with _skipped_on_error(action.key):  # one submission failing leaves the others
                if printable(action.key) == action.key:
                    submit(action)
                else:  # no event or flow run carries a name that is not UTF-8: refused here
                    per_file.process(settings, storage, action.key)
        ended = []
        if flow_runs is not None:
            ended = _checked("flow runs not checked", end_flow_runs, store, storage, now, flow_runs)
            ended += _checked("retrainings not checked", end_retrainings, store, now, flow_runs)
    finally:
        if store is not None:
            store.close()
    publish_ages(settings.platform, storage, now)
    return [*closed, *work, *ended]


def _open_store(monitoring: MonitoringSettings) -> MetricsStore | None:
    """The metrics database for one pass (opened once: down, it costs one wait), or None."""
    try:
        return MetricsStore.from_settings(monitoring)
    except Exception as exc:  # the database down must not stop the files from moving
        log.warning("reconcile: metrics database not checked: %s", brief(exc))
        return None


def _checked(
    what: str, check: Callable[..., list[Action]], store: MetricsStore | None, *args: object
) -> list[Action]:
    """What ``check`` did; nothing, said in one line, when the database is down or it fails."""
    if store is None:
        return []
    try:
        return check(store, *args)
    except Exception as exc:
        log.warning("reconcile: %s: %s", what, brief(exc))
        return []


def publish_ages(platform: PlatformSettings, storage: DropStorage, now: datetime) -> None:
    """The file-age metrics the alarms watch, when they are on (``OPS_METRICS_NAMESPACE``)."""
    if not platform.ops_metrics_namespace:
        return
    try:
        ages = oldest_ages(storage, now)
    except Exception as exc:  # the listing failed: the alarm sees no data, not a crash
        log.warning("reconcile: file ages not measured: %s", exc)
        return
    ops_metrics.publish(platform, ages)


def oldest_ages(storage: DropStorage, now: datetime) -> dict[str, float]:
    """Seconds since the oldest file waiting in a drop folder landed, and since the oldest
    run in processing/ was dropped (not its last attempt); 0 when there is none."""
    stats = (storage.stat(key) for _, key in _dropped_keys(storage))
    landed = [info.modified for info in stats if info is not None]
    dropped = [claims.dropped_at(run) for run in run_folders(storage, "processing")]
    return {
        ops_metrics.OLDEST_INPUT: _age(landed, now),
        ops_metrics.OLDEST_PROCESSING: _age(dropped, now),
    }


def _age(moments: list[datetime], now: datetime) -> float:
    return max(0.0, (now - min(moments)).total_seconds()) if moments else 0.0


#: A marker whose flow run has ended gets a new one at most this often (s).
RESUBMIT_SECONDS = 60.0


def submit_to_deployment(drop: str, deployment: str = pipeline.PIPELINE_DEPLOYMENT) -> Submit:
    """Submit a flow run of the pipeline deployment (one per marker) for a file of ``drop``,
    for one pass of the reconciler (made before it reads the claims).

    A marker names the attempt its run is to claim; its flow run ended before this pass with
    the file still stranded failed before claiming (a full disk, a storage error writing the
    claim file): Prefect would answer the same ended run for ever, so a new one is made,
    one per marker and :data:`RESUBMIT_SECONDS` (overlapping reconcilers share it). One
    that ended during this pass may have moved the file on: left alone."""
    from prefect.deployments import run_deployment

    started = datetime.now(UTC)

    def submit(action: Action) -> None:
        def run(key: str) -> Any:
            return run_deployment(
                deployment,
                parameters={"drop": drop, "key": action.key},
                timeout=0,
                as_subflow=False,
                idempotency_key=key,
                flow_run_name=f"{action.key.rsplit('/', 1)[-1]} (reconciled)",
            )

        state = run(f"reconcile:{action.marker}").state
        if state is not None and state.is_final() and state.timestamp < started:
            run(f"reconcile:{action.marker}@{time.time() // RESUBMIT_SECONDS:.0f}")

    return submit
