"""The three Prefect deployments of ChurnOps, defined and registered in one place:
``churn_prediction_pipeline/churnops`` (a run per dropped file), ``reconcile/churnops``
(every :data:`RECONCILE_INTERVAL_SECONDS`) and ``retrain_model/retrain``. Warm runners
(:mod:`churnops.platform.runner`) serve them here and on ECS, so they name no work pool.

:func:`register` runs at every runner's start and once in the VPC at ``make apply``
(``python -m churnops.platform.deployments``, see terraform/scripts/post_apply.py). A
deployment that already says what this code says is left untouched: an update would
replace its schedules and delete the reconciler's scheduled runs."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.responses import DeploymentResponse
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
#: The names of the pipeline's, the reconciler's and retraining's deployments.
NAMES = (PIPELINE_DEPLOYMENT, RECONCILE_DEPLOYMENT, RETRAIN_DEPLOYMENT)
PIPELINE_DESCRIPTION = "One run per file dropped into data/input/ (started by the drop trigger)."
RECONCILE_DESCRIPTION = "Re-drives stranded files: untaken input, dead or failed runs."
RETRAIN_DESCRIPTION = "Retrains on the labeled files processed since and gates the new version."


@dataclass(frozen=True)
class Served:
    """A flow and the deployment that serves it."""

    flow: Flow
    deployment: RunnerDeployment


def name_of(deployment: str, flow: Flow) -> str:
    """``<flow>/<name>`` -> name; a ValueError when the flow part is not this flow."""
    flow_name, _, name = deployment.partition("/")
    if flow_name != flow.name or not name:
        raise ValueError(f"deployment {deployment!r} must be '{flow.name}/<name>'")
    return name


def _deployment(flow: Flow, name: str, **options: Any) -> RunnerDeployment:
    # A module path, not a file path relative to the current directory: the same
    # entrypoint wherever the code is installed, so a re-registration finds no change.
    return flow.to_deployment(
        name=name_of(name, flow), tags=TAGS, entrypoint_type=EntrypointType.MODULE_PATH, **options
    )


def deployments(
    drop: DropSettings,
    names: tuple[str, str, str] = NAMES,
    interval: float = RECONCILE_INTERVAL_SECONDS,
) -> list[Served]:
    """The one list of deployments: the per-file pipeline, the reconciler, retraining."""
    pipeline, reconciler, retrainer = names
    flows: list[tuple[Flow, RunnerDeployment]] = [
        (
            churn_prediction_pipeline,
            _deployment(churn_prediction_pipeline, pipeline, description=PIPELINE_DESCRIPTION),
        ),
        (
            reconcile_drops,
            _deployment(
                reconcile_drops,
                reconciler,
                description=RECONCILE_DESCRIPTION,
                parameters={"drop": drop.drop_uri},
                interval=timedelta(seconds=interval),
            ),
        ),
        (retrain_model, _deployment(retrain_model, retrainer, description=RETRAIN_DESCRIPTION)),
    ]
    return [Served(flow, deployment) for flow, deployment in flows]


def fingerprint(served: Served) -> dict[str, Any]:
    """What this code decides about a deployment, as it reads back from the API."""
    schema = parameter_schema(served.flow).model_dump(exclude_unset=True)
    return _facts(served.deployment, schema, served.deployment.schedules or [])


def registered_fingerprint(existing: DeploymentResponse) -> dict[str, Any]:
    """The same facts of a deployment read from the API."""
    return _facts(existing, existing.parameter_openapi_schema, existing.schedules)


def _facts(deployment: Any, schema: Any, schedules: list[Any]) -> dict[str, Any]:
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

    Against the API of the current Prefect settings (``PREFECT_API_URL``), which is
    also the one :meth:`RunnerDeployment.apply` writes to.
    """
    with get_client(sync_client=True) as client:
        return {
            _register(client, served): served.flow for served in deployments(drop, names, interval)
        }


def _register(client: SyncPrefectClient, served: Served) -> UUID:
    full_name = served.deployment.full_name
    try:
        existing = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        existing = None
    if existing is not None and registered_fingerprint(existing) == fingerprint(served):
        log.info("deployment %s is up to date (%s)", full_name, existing.id)
        return existing.id
    deployment_id = served.deployment.apply()
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
