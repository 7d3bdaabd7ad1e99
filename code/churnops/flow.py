"""The Prefect flow ``churn_prediction_pipeline(bucket, key)``: one dropped file.

Each task is a thin wrapper around a function of :mod:`churnops.pipeline`.
An invalid file ends in ``errored/`` and the run completes (the platform did
its job); any unexpected error also moves the file to ``errored/`` but fails
the run. Either way ``logs/<file>.log`` says what happened, step by step.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, State

from churnops import pipeline
from churnops.model import LoadedModel, load_aliased_model
from churnops.results import MonitoringResult
from churnops.schema import DataValidationError
from churnops.settings import Settings, get_settings
from churnops.storage import DropStorage, FileLog, name_from_key, open_storage

# Data frames travel between tasks in memory: no caching, no input hashing.
step = task(cache_policy=NO_CACHE)


@step
def claim(storage: DropStorage, name: str) -> str | None:
    return storage.claim(name)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_model(settings: Settings) -> LoadedModel:
    return load_aliased_model(settings)


read_valid_file = step(pipeline.read_valid_file)
score = step(pipeline.score)
write_predictions = step(pipeline.write_predictions)
monitor = step(pipeline.monitor)
record_metrics = step(pipeline.record_metrics)
send_alerts = step(pipeline.send_alerts)
finish = step(pipeline.finish)


@flow(name="churn_prediction_pipeline")
def churn_prediction_pipeline(bucket: str, key: str) -> State | dict[str, Any]:
    """Score, monitor, store and alert for the file ``key`` of the drop ``bucket``.

    ``key`` is the object's real key (the trigger has already URL-decoded it).
    """
    settings = get_settings()
    outcome = process_file(settings, bucket, key)
    if outcome.status == "processed":
        return asdict(outcome)
    return Completed(message=f"{outcome.status}: {outcome.message}", data=asdict(outcome))


def process_file(settings: Settings, bucket: str, key: str) -> pipeline.FileOutcome:
    """The flow's body (runs inside the flow, so every step is a task run)."""
    logger = get_run_logger()
    storage = open_storage(settings, bucket)
    name = name_from_key(key)
    file_log = FileLog(storage, name)
    processing_key = claim(storage, name)
    if processing_key is None:
        reason = pipeline.already_handled_reason(storage, name)
        file_log.write("claim", "skipped", reason)
        logger.info("skipping %s: %s", key, reason)
        return pipeline.FileOutcome(name, "skipped", reason)
    file_log.write("claim", "ok", f"moved to {processing_key} (flow run {flow_run.id})")

    store = pipeline.open_metrics(settings)
    run_id = store.start_run(
        file_name=name, bucket=bucket, object_key=key, flow_run_id=str(flow_run.id or "")
    )
    try:
        outcome = _score_and_monitor(
            settings, storage, file_log, store, run_id, name, processing_key
        )
    except DataValidationError as exc:
        finish(storage, processing_key, name, "errored")
        file_log.write("finish", "errored", str(exc))
        store.finish_run(run_id, "errored", error=str(exc))
        logger.warning("%s is invalid, moved to errored/: %s", name, exc)
        return pipeline.FileOutcome(name, "errored", str(exc), run_id=run_id)
    except Exception as exc:
        finish(storage, processing_key, name, "errored")
        file_log.write("finish", "errored", f"unexpected error: {type(exc).__name__}: {exc}")
        store.finish_run(run_id, "errored", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()
    logger.info("%s processed: %s", name, outcome.message)
    return outcome


def _score_and_monitor(
    settings: Settings,
    storage: DropStorage,
    file_log: FileLog,
    store: pipeline.MetricsStore,
    run_id: str,
    name: str,
    processing_key: str,
) -> pipeline.FileOutcome:
    with file_log.step("load model") as record:
        model = load_model(settings)
        record.message = f"{model.name} version {model.version}"
    with file_log.step("validate") as record:
        frame = read_valid_file(storage, processing_key, name, settings)
        record.message = f"{len(frame)} rows"
    with file_log.step("predict") as record:
        scored = score(model, frame)
        record.message = f"predicted churn rate {scored['churn_prediction'].mean():.3f}"
    with file_log.step("write predictions") as record:
        predictions_key = write_predictions(storage, scored, name, model)
        record.message = predictions_key
    with file_log.step("monitor") as record:
        result: MonitoringResult = monitor(settings, model, scored, name)
        record.message = _summary(result)
    with file_log.step("store metrics"):
        record_metrics(store, run_id, result)
    with file_log.step("alert") as record:
        channels, alert_message = send_alerts(settings, result, name, model)
        record.message = alert_message
    with file_log.step("finish") as record:
        record.message = finish(storage, processing_key, name, "processed")
    store.finish_run(
        run_id,
        "processed",
        rows=len(frame),
        report_url=result.report_url,
        model_name=model.name,
        model_version=model.version,
    )
    return pipeline.FileOutcome(
        name,
        "processed",
        f"{_summary(result)}; {alert_message}",
        model_version=model.version,
        predictions_key=predictions_key,
        report_url=result.report_url,
        alert_channels=channels,
        run_id=run_id,
    )


def _summary(result: MonitoringResult) -> str:
    quality = ", ".join(f"{k} {v:.3f}" for k, v in result.quality.items()) or "unlabeled"
    return (
        f"drifted {result.drifted_count} columns (share {result.drifted_share:.2f}); "
        f"{quality}; report {result.report_url}"
    )
