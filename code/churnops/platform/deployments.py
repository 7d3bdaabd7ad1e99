"""The three Prefect deployments of ChurnOps (the per-file pipeline, the scheduled
reconciler, retraining), served by the warm runners, so with no work pool.

:func:`register` runs at every runner's start and at ``make apply``
(terraform/scripts/post_apply.py). A deployment already as defined is left untouched:
an update would replace its schedules and delete the reconciler's scheduled runs."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Any, NamedTuple
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.utilities.callables import parameter_schema

from churnops.pipeline import PIPELINE_DEPLOYMENT, RECONCILE_DEPLOYMENT, RETRAIN_DEPLOYMENT
from churnops.pipeline.flow import churn_prediction_pipeline, reconcile_drops, retrain_model
from churnops.settings import DropSettings, get_settings

log = logging.getLogger("churnops.deployments")
TAGS = ["churnops"]
#: How often the scheduled reconciler runs (s): a lost file waits about a minute more.
RECONCILE_INTERVAL_SECONDS = 60.0
NAMES = (PIPELINE_DEPLOYMENT, RECONCILE_DEPLOYMENT, RETRAIN_DEPLOYMENT)
PIPELINE_DESCRIPTION = "One run per file dropped into data/input/ (started by the drop trigger)."
RECONCILE_DESCRIPTION = "Re-drives stranded files: untaken input, dead or failed runs."
RETRAIN_DESCRIPTION = "Retrains on the labeled files processed since and gates the new version."


class Served(NamedTuple):
    flow: Flow
    deployment: RunnerDeployment


def _deployment(flow: Flow, name: str, **options: Any) -> RunnerDeployment:
    """``name`` is ``<flow>/<name>``. The entrypoint is a module path: the same wherever
    the code is installed, so a re-registration finds no change."""
    flow_name, _, short = name.partition("/")
    if flow_name != flow.name or not short:
        raise ValueError(f"deployment {name!r} must be '{flow.name}/<name>'")
    return flow.to_deployment(
        name=short, tags=TAGS, entrypoint_type=EntrypointType.MODULE_PATH, **options
    )


def deployments(
    drop: DropSettings,
    names: tuple[str, str, str] = NAMES,
    interval: float = RECONCILE_INTERVAL_SECONDS,
) -> list[Served]:
    """The one list of deployments: the per-file pipeline, the reconciler, retraining."""
    pipeline, reconciler, retrainer = names
    reconcile_options = {
        "parameters": {"drop": drop.drop_uri},
        "interval": timedelta(seconds=interval),
    }
    return [
        Served(flow, _deployment(flow, name, description=description, **options))
        for flow, name, description, options in (
            (churn_prediction_pipeline, pipeline, PIPELINE_DESCRIPTION, {}),
            (reconcile_drops, reconciler, RECONCILE_DESCRIPTION, reconcile_options),
            (retrain_model, retrainer, RETRAIN_DESCRIPTION, {}),
        )
    ]


def _facts(deployment: Any, schema: Any, schedules: list[Any]) -> dict[str, Any]:
    """What this code decides about a deployment, as it reads back from the API."""
    return {
        "description": deployment.description,
        "entrypoint": deployment.entrypoint,
        "parameters": deployment.parameters,
        "parameter_schema": schema,
        "tags": sorted(deployment.tags),
        "work_pool_name": deployment.work_pool_name,
        "schedules": _intervals(schedules),
    }


def _intervals(schedules: list[Any]) -> list[tuple[float, bool]]:
    """Each schedule's interval (s) and whether it is active. Not its anchor date: that is
    the moment the deployment object was built, different at every start."""
    return sorted(
        (getattr(s.schedule, "interval", timedelta(0)).total_seconds(), s.active is not False)
        for s in schedules
    )


def register(
    drop: DropSettings,
    names: tuple[str, str, str] = NAMES,
    interval: float = RECONCILE_INTERVAL_SECONDS,
) -> dict[UUID, Flow]:
    """Create or update each deployment unless it is already as defined; id -> its flow.
    On ``PREFECT_API_URL``'s server, where :meth:`RunnerDeployment.apply` writes too."""
    with get_client(sync_client=True) as client:
        return {
            _register(client, flow, deployment): flow
            for flow, deployment in deployments(drop, names, interval)
        }


def _register(client: SyncPrefectClient, flow: Flow, deployment: RunnerDeployment) -> UUID:
    full_name = deployment.full_name
    try:
        existing = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        existing = None
    schema = parameter_schema(flow).model_dump(exclude_unset=True)
    wanted = _facts(deployment, schema, deployment.schedules or [])
    if existing is not None and wanted == _facts(
        existing, existing.parameter_openapi_schema, existing.schedules
    ):
        log.info("deployment %s is up to date (%s)", full_name, existing.id)
        return existing.id
    deployment_id = deployment.apply()
    done = "updated" if existing else "created"
    log.info("deployment %s %s (%s)", full_name, done, deployment_id)
    return deployment_id


def main() -> int:
    """``python -m churnops.platform.deployments``: register against ``PREFECT_API_URL``."""
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s", stream=sys.stdout)
    registered = register(get_settings().drop)
    for deployment_id, flow in registered.items():
        print(f"{flow.name}: {deployment_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
