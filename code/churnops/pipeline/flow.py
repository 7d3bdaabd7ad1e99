"""The Prefect flows: a thin shell over :mod:`churnops.pipeline.per_file` and
:mod:`churnops.pipeline.reconcile`.

``churn_prediction_pipeline(drop, key)`` processes one dropped file, each
step a Prefect task. Its run ends Completed when the file was processed, was
invalid (``errored: ...``) or was not to be taken (``skipped: ...``), and
Failed when a dependency failed: the file then waits in ``processing/`` and
the scheduled ``reconcile`` flow re-drives it once the dependency is back.

``retrain_model`` retrains through the promotion gate
(:func:`churnops.pipeline.retraining.retrain`), on demand or submitted by the alert
step of a labeled file that scored below a minimum (``RETRAIN_MODE=auto``).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from churnops.drop.storage import open_drop
from churnops.monitoring import ops_metrics
from churnops.pipeline import per_file, reconcile
from churnops.pipeline.retraining import RetrainOptions, retrain
from churnops.settings import Settings, get_settings

#: Data frames travel between tasks in memory: no caching, no input hashing.
PREFECT_STEPS = per_file.PLAIN_STEPS.wrapped(task(cache_policy=NO_CACHE))


@flow(name="churn_prediction_pipeline")
def churn_prediction_pipeline(drop: str, key: str) -> State:
    """Score, monitor, store and alert for the file ``key`` of the ``drop``.

    ``drop`` names the storage (``s3://<bucket>`` or ``file:///<folder>``), as the
    trigger saw it. ``key`` is the object's real key (already URL-decoded):
    ``data/input/<name>``, or ``data/processing/<run>/<name>`` to re-drive a run.
    """
    return outcome_state(process_key(get_settings(), drop, key))


def process_key(settings: Settings, drop: str, key: str) -> per_file.FileOutcome:
    """The flow's body: the pipeline with its steps as tasks of this flow run."""
    storage = open_drop(drop, settings)
    outcome = per_file.process(
        settings, storage, key, steps=PREFECT_STEPS, flow_run_id=str(flow_run.id or "")
    )
    logger = get_run_logger()
    logger.info("%s %s: %s", outcome.name, outcome.status, outcome.message)
    # Every run says whether it failed (0 or 1): the alarm sums them, and sees that runs happen.
    ops_metrics.publish(settings, {ops_metrics.FAILED_RUNS: float(outcome.status == "failed")})
    try:
        create_markdown_artifact(
            markdown=outcome_markdown(outcome), description=f"{outcome.name}: {outcome.status}"
        )
    except Exception as exc:  # the API hiccuped: the file's outcome stands, its summary is lost
        logger.warning("no summary artifact for %s: %s", outcome.name, exc)
    return outcome


def outcome_markdown(outcome: per_file.FileOutcome) -> str:
    """The run's summary on its Prefect page: what happened, the numbers, where to look."""
    rows = [("outcome", f"**{outcome.status}**")]
    if outcome.model_version:
        rows.append(("model version", outcome.model_version))
    rows += [("", part) for part in outcome.message.split("; ") if part]
    if outcome.alert_channels:
        rows.append(("alert sent by", ", ".join(outcome.alert_channels)))
    if outcome.predictions_key:
        rows.append(("predictions", f"`{outcome.predictions_key}`"))
    if outcome.report_url:
        rows.append(("Evidently report", f"[open]({outcome.report_url})"))
    if outcome.run:
        rows.append(("file log", f"`data/logs/{outcome.run}/{outcome.name}.log`"))
    table = "\n".join(f"| {k} | {v.replace('|', '/')} |" for k, v in rows)
    return f"### {outcome.name}\n\n| | |\n| --- | --- |\n{table}\n"


def outcome_state(outcome: per_file.FileOutcome) -> State:
    """Completed (processed, errored, skipped) or Failed, its message saying what happened."""
    data = asdict(outcome)
    message = f"{outcome.status}: {outcome.message}"
    if outcome.status == "failed":
        return Failed(message=message, data=data)
    return Completed(message=message, data=data)


@flow(name="reconcile")
def reconcile_drops(drop: str | None = None) -> list[dict[str, str]]:
    """Re-drive stranded files: untaken input, dead or failed runs (on a schedule).

    ``drop`` defaults to the settings' drop (``Settings.drop_uri``).
    """
    settings = get_settings()
    storage = open_drop(drop or settings.drop_uri, settings)
    logger = get_run_logger()
    actions = reconcile.reconcile(
        settings, storage, reconcile.submit_to_deployment(settings, storage.uri)
    )
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
    """Retrain on the labeled files processed in ``drop`` and gate the new version.

    Completed whatever the verdict (promoted, refused, skipped): a refusal is an
    answer, not a failure. ``include_run`` is the run that asked (automatic runs).
    """
    settings = get_settings()
    storage = open_drop(drop or settings.drop_uri, settings)
    options = RetrainOptions(trials=trials, force=force, trigger=trigger, include_run=include_run)
    outcome = retrain(settings, storage, options)
    get_run_logger().info("%s", outcome.summary())
    return Completed(message=outcome.summary(), data=asdict(outcome))
