"""The Prefect flows: a thin shell over :mod:`.per_file`, :mod:`.reconcile` and
:mod:`.retraining`.

A file's flow run ends Completed (processed, or not to be taken), **Rejected** (the file
is invalid: a Failed-type state, so Prefect's failed-run filters show it, and its name
tells it from an outage) or Failed (a dependency was down: the reconciler re-drives it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, replace
from datetime import datetime
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed, Crashed, Failed, State

from churnops.data.schema import is_bad_input
from churnops.drop.storage import open_drop
from churnops.monitoring import ops_metrics
from churnops.pipeline import per_file, reconcile
from churnops.pipeline.retraining import RetrainOptions, retrain
from churnops.settings import Settings, get_settings

#: The state name of a run (and of its step) that rejected an invalid file.
REJECTED = "Rejected"


def as_task(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` as a Prefect task (no caching: frames travel in memory). An invalid file
    ends the task Completed-type "Rejected", not with an ERROR traceback for an expected
    outcome; the error is raised again in the flow, which routes the file to errored/."""

    @functools.wraps(step)
    def judged(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except Exception as exc:
            if not is_bad_input(exc):
                raise
            return Completed(name=REJECTED, message=str(exc), data=exc)

    run = task(cache_policy=NO_CACHE)(judged)

    @functools.wraps(step)
    def call(*args: Any, **kwargs: Any) -> Any:
        result = run(*args, **kwargs)
        if isinstance(result, State):  # the Rejected state: its data is the error
            raise result.result(raise_on_failure=False)
        return result

    return call


def without_prefect_heartbeat() -> AbstractContextManager:
    """No Prefect flow heartbeat: liveness is the leases' job, and its thread, joined at the
    end of every run, costs up to a second per file."""
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def mark_crashed(crashed: dict[str, str]) -> None:
    """Crashed, the flow runs of attempts that died (id: why): the attempt taking over marks
    them at once, not a reconcile interval later (:func:`.reconcile.end_flow_runs`)."""
    PrefectFlowRuns().end({flow_run_id: ("died", why) for flow_run_id, why in crashed.items()})


#: The state a flow run ends in, by how its attempt ended (``per_file.Status`` or died).
ENDING_STATES: dict[str, Callable[..., State]] = {
    "processed": Completed,
    "skipped": Completed,
    "errored": functools.partial(Failed, name=REJECTED),
    "failed": Failed,
    "died": Crashed,
}


class PrefectFlowRuns:
    """The pipeline's flow runs on the Prefect API (:class:`.reconcile.FlowRuns`)."""

    def unfinished(self, flow: str = reconcile.PIPELINE_FLOW) -> dict[str, datetime]:
        """Taken by a runner (Pending) or running, of ``flow``: id -> since when."""
        taken = FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=taken)),
            )
        return {str(r.id): r.state.timestamp for r in runs if r.state is not None}

    def end(self, endings: dict[str, tuple[str, str]]) -> None:
        """Each flow run (id: (status, why)) ended in its state; one already final is left
        as it is, and one that cannot be marked does not stop the others."""
        logger = _logger()
        try:
            with get_client(sync_client=True) as client:
                for flow_run_id, (status, why) in endings.items():
                    try:
                        state = client.read_flow_run(flow_run_id).state
                        if state is None or not state.is_final():
                            ending = ENDING_STATES[status](message=f"{status}: {why}")
                            client.set_flow_run_state(flow_run_id, ending, force=True)
                    except Exception as exc:  # the run is gone: the others are still marked
                        logger.warning("flow run %s not marked: %s", flow_run_id, exc)
        except Exception as exc:  # the API is down: the file's outcome stands
            logger.warning("flow runs %s not marked: %s", list(endings), exc)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (seen on its Prefect page), or this module's outside one."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


#: The flow's steps: the plain ones, and Prefect told of the attempts that died.
STEPS = replace(per_file.PLAIN_STEPS, mark_crashed=mark_crashed)
PREFECT_STEPS = STEPS.wrapped(as_task)


@flow(name="churn_prediction_pipeline")
def churn_prediction_pipeline(drop: str, key: str) -> State:
    """Process the file ``key`` (URL-decoded; a run in processing/ to re-drive it) of the
    ``drop`` the trigger saw (``s3://<bucket>`` or ``file:///<folder>``)."""
    return outcome_state(process_key(get_settings(), drop, key))


def process_key(settings: Settings, drop: str, key: str) -> per_file.FileOutcome:
    storage = open_drop(drop)
    outcome = per_file.process(
        settings, storage, key, steps=PREFECT_STEPS, flow_run_id=str(flow_run.id or "")
    )
    logger = get_run_logger()
    logger.info("%s %s: %s", outcome.name, outcome.status, outcome.message)
    # Every run says whether it failed (0 or 1): the alarm sums them, and sees that runs happen.
    ops_metrics.publish(
        settings.platform, {ops_metrics.FAILED_RUNS: float(outcome.status == "failed")}
    )
    try:
        create_markdown_artifact(
            markdown=outcome_markdown(outcome), description=f"{outcome.name}: {outcome.status}"
        )
    except Exception as exc:  # the API hiccuped: the file's outcome stands, its summary is lost
        logger.warning("no summary artifact for %s: %s", outcome.name, exc)
    return outcome


def outcome_markdown(outcome: per_file.FileOutcome) -> str:
    """The run's summary on its Prefect page: a table of what happened and where to look,
    then the details as a list; every text is escaped, so it renders as written."""
    status = "rejected" if outcome.status == "errored" else outcome.status
    rows = [("outcome", f"**{status}**")]
    if outcome.model_version:
        rows.append(("model version", _escape(outcome.model_version)))
    if outcome.alert_channels:
        rows.append(("alert sent by", ", ".join(outcome.alert_channels)))
    if outcome.predictions_key:
        rows.append(("predictions", _code(outcome.predictions_key)))
    if outcome.report_url:
        rows.append(("Evidently report", f"[open]({outcome.report_url})"))
    if outcome.run:
        rows.append(("file log", _code(f"data/logs/{outcome.run}/{outcome.name}.log")))
    table = "\n".join("| " + k + " | " + v.replace("|", "\\|") + " |" for k, v in rows)
    details = "\n".join(f"- {_escape(line)}" for line in _detail_lines(outcome))
    return f"### {_escape(outcome.name)}\n\n| | |\n| --- | --- |\n{table}\n\n{details}\n"


def _detail_lines(outcome: per_file.FileOutcome) -> list[str]:
    """A multi-line message (a rejected file's reasons) by line; a one-line summary by '; '."""
    message = outcome.message.strip()
    if "\n" in message:
        lines = [line.strip().removeprefix("- ") for line in message.splitlines()]
    else:
        lines = message.split("; ")
    return [line for line in lines if line]


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _escape(text: str) -> str:
    """Markdown-escaped text: backslash before every character markdown gives a meaning."""
    return "".join(f"\\{c}" if c in "\\`*_{}[]<>()#+-.!~" else c for c in text)


def outcome_state(outcome: per_file.FileOutcome) -> State:
    """The flow run's end state (:data:`ENDING_STATES`), its message saying what happened."""
    message = f"{outcome.status}: {outcome.message}"
    return ENDING_STATES[outcome.status](message=message, data=asdict(outcome))


@flow(name="reconcile")
def reconcile_drops(drop: str | None = None) -> list[dict[str, str]]:
    """Re-drive stranded files and end flow runs left running (``drop``: the settings')."""
    settings = get_settings()
    storage = open_drop(drop or settings.drop.drop_uri)
    logger = get_run_logger()
    submit = reconcile.submit_to_deployment(storage.uri)
    actions = reconcile.reconcile(settings, storage, submit, PrefectFlowRuns())
    for action in actions:
        logger.info("%s %s: %s", action.kind, action.key, action.reason)
    return [asdict(a) for a in actions]


@flow(name="retrain_model")
def retrain_model(
    trigger: Literal["manual", "auto"] = "manual",
    drop: str | None = None,
    include_run: str | None = None,
    trials: int = 0,
    force: bool = False,
) -> State:
    """Retrain on the labeled files in ``drop`` and gate the new version; Completed whatever
    the verdict (a refusal is an answer). ``include_run``: the run that asked (auto)."""
    settings = get_settings()
    storage = open_drop(drop or settings.drop.drop_uri)
    options = RetrainOptions(trials=trials, force=force, trigger=trigger, include_run=include_run)
    outcome = retrain(settings, storage, options)
    get_run_logger().info("%s", outcome.summary())
    return Completed(message=outcome.summary(), data=asdict(outcome))
