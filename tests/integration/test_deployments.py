"""The one registration of the deployments, against the session's Prefect server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.responses import DeploymentResponse
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops.platform.deployments import register
from churnops.settings import Settings, get_settings

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    """Deployment names of this test only (other tests share the server)."""
    suffix = f"reg-{uuid.uuid4().hex[:8]}"
    return get_settings(
        churnops_home=tmp_path,
        prefect_deployment=f"churn_prediction_pipeline/{suffix}",
        reconcile_deployment=f"reconcile/{suffix}",
        retrain_deployment=f"retrain_model/{suffix}",
        **overrides,
    )


def read_all(url: str, settings: Settings) -> dict[str, DeploymentResponse]:
    names = {
        "pipeline": settings.prefect_deployment,
        "reconcile": settings.reconcile_deployment,
        "retrain": settings.retrain_deployment,
    }
    with SyncPrefectClient(url) as client:
        return {key: client.read_deployment_by_name(name) for key, name in names.items()}


def test_the_three_deployments_are_registered_as_defined_and_twice_changes_nothing(
    prefect_server: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, reconcile_interval_seconds=90.0)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(settings)
        before = read_all(prefect_server, settings)
        second = register(settings)
        after = read_all(prefect_server, settings)

    assert first == second
    assert set(first) == {d.id for d in before.values()}
    assert {flow.name for flow in first.values()} == {
        "churn_prediction_pipeline",
        "reconcile",
        "retrain_model",
    }
    for deployment in after.values():
        assert deployment.work_pool_name is None  # served by the warm runners
        assert deployment.tags == ["churnops"]
    pipeline, reconciler, retrainer = after["pipeline"], after["reconcile"], after["retrain"]
    assert pipeline.parameters == {}
    assert pipeline.parameter_openapi_schema["required"] == ["drop", "key"]
    assert pipeline.schedules == []
    assert reconciler.parameters == {"drop": settings.drop_uri}
    (schedule,) = reconciler.schedules
    assert schedule.schedule.interval.total_seconds() == 90.0 and schedule.active
    assert retrainer.parameters == {} and retrainer.schedules == []
    # The second call wrote nothing: no update, the same schedule (an update replaces it).
    for key, deployment in after.items():
        assert deployment.updated == before[key].updated, key
    assert [s.id for s in reconciler.schedules] == [s.id for s in before["reconcile"].schedules]


def test_a_changed_definition_is_updated_in_place(prefect_server: str, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, reconcile_interval_seconds=60.0)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(settings)
        second = register(settings.model_copy(update={"reconcile_interval_seconds": 300.0}))
        reconciler = read_all(prefect_server, settings)["reconcile"]

    assert first == second
    (schedule,) = reconciler.schedules
    assert schedule.schedule.interval.total_seconds() == 300.0
