"""The one registration of the deployments, against the session's Prefect server."""

from __future__ import annotations

import uuid
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.responses import DeploymentResponse
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops.platform.deployments import register
from churnops.settings import get_settings


def names_of_this_test() -> tuple[str, str, str]:
    """Deployment names of this test only (other tests share the server)."""
    suffix = f"reg-{uuid.uuid4().hex[:8]}"
    return (
        f"churn_prediction_pipeline/{suffix}",
        f"reconcile/{suffix}",
        f"retrain_model/{suffix}",
    )


def read_all(url: str, names: tuple[str, str, str]) -> dict[str, DeploymentResponse]:
    with SyncPrefectClient(url) as client:
        return {
            key: client.read_deployment_by_name(name)
            for key, name in zip(("pipeline", "reconcile", "retrain"), names, strict=True)
        }


def test_the_three_deployments_are_registered_as_defined_and_twice_changes_nothing(
    prefect_server: str, tmp_path: Path
) -> None:
    drop, names = get_settings(churnops_home=tmp_path).drop, names_of_this_test()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(drop, names, interval=90.0)
        before = read_all(prefect_server, names)
        second = register(drop, names, interval=90.0)
        after = read_all(prefect_server, names)

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
    assert reconciler.parameters == {"drop": drop.drop_uri}
    (schedule,) = reconciler.schedules
    assert schedule.schedule.interval.total_seconds() == 90.0 and schedule.active
    assert retrainer.parameters == {} and retrainer.schedules == []
    # The second call wrote nothing: no update, the same schedule (an update replaces it).
    for key, deployment in after.items():
        assert deployment.updated == before[key].updated, key
    assert [s.id for s in reconciler.schedules] == [s.id for s in before["reconcile"].schedules]


def test_a_changed_definition_is_updated_in_place(prefect_server: str, tmp_path: Path) -> None:
    drop, names = get_settings(churnops_home=tmp_path).drop, names_of_this_test()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(drop, names, interval=60.0)
        second = register(drop, names, interval=300.0)
        reconciler = read_all(prefect_server, names)["reconcile"]

    assert first == second
    (schedule,) = reconciler.schedules
    assert schedule.schedule.interval.total_seconds() == 300.0
