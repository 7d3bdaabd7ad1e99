"""The one registration of the deployments, and the S3 -> Prefect Lambda handler that
starts their runs, against the session's Prefect server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops.drop import trigger
from churnops.platform import watcher
from churnops.platform.deployments import register
from churnops.settings import get_settings

FLOW = "churn_prediction_pipeline"
REGISTERED = (FLOW, "reconcile", "retrain_model")
KEYS = {  # as S3 encodes them in events -> decoded
    "data/input/march+batch.csv": "data/input/march batch.csv",
    "data/input/a%2Bb_a%C3%B1o.csv": "data/input/a+b_año.csv",
}


@pytest.fixture
def client(prefect_server: str) -> Iterator[SyncPrefectClient]:
    with SyncPrefectClient(prefect_server) as client:
        yield client


@pytest.fixture
def names() -> tuple[str, ...]:
    """Names for the three deployments of this test only (other tests share the server)."""
    suffix = f"reg-{uuid.uuid4().hex[:8]}"
    return tuple(f"{flow}/{suffix}" for flow in REGISTERED)


def read_all(client: SyncPrefectClient, names: tuple[str, ...]) -> dict[str, DeploymentResponse]:
    """Each deployment as the server holds it, by its flow's name."""
    pairs = zip(REGISTERED, names, strict=True)
    return {flow: client.read_deployment_by_name(name) for flow, name in pairs}


def test_the_three_deployments_are_registered_as_defined_and_twice_changes_nothing(
    prefect_server: str, client: SyncPrefectClient, names: tuple[str, ...], tmp_path: Path
) -> None:
    drop = get_settings(churnops_home=tmp_path).drop
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(drop, names, interval=90.0)
        before = read_all(client, names)
        second = register(drop, names, interval=90.0)
        after = read_all(client, names)

    assert first == second
    assert set(first) == {d.id for d in before.values()}
    assert {flow.name for flow in first.values()} == set(REGISTERED)
    for deployment in after.values():
        assert deployment.work_pool_name is None  # served by the warm runners
        assert deployment.tags == ["churnops"]
    pipeline, reconciler, retrainer = after.values()
    assert pipeline.parameters == {}
    assert pipeline.parameter_openapi_schema["required"] == ["drop", "key"]
    assert pipeline.schedules == []
    assert reconciler.parameters == {"drop": drop.drop_uri}
    (schedule,) = reconciler.schedules
    assert schedule.schedule.interval.total_seconds() == 90.0 and schedule.active
    assert retrainer.parameters == {} and retrainer.schedules == []
    # The second call wrote nothing: no update, the same schedule (an update replaces it).
    for flow, deployment in after.items():
        assert deployment.updated == before[flow].updated, flow
    assert [s.id for s in reconciler.schedules] == [s.id for s in before["reconcile"].schedules]


def test_a_changed_definition_is_updated_in_place(
    prefect_server: str, client: SyncPrefectClient, names: tuple[str, ...], tmp_path: Path
) -> None:
    drop = get_settings(churnops_home=tmp_path).drop
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        first = register(drop, names, interval=60.0)
        second = register(drop, names, interval=300.0)

    assert first == second
    (schedule,) = read_all(client, names)["reconcile"].schedules
    assert schedule.schedule.interval.total_seconds() == 300.0


@pytest.fixture
def deployment(client: SyncPrefectClient) -> str:
    """A deployment of the flow, named for this test: other tests share the server."""
    name = f"lambda-{uuid.uuid4().hex[:8]}"
    client.create_deployment(flow_id=client.create_flow_from_name(FLOW), name=name)
    return name


@pytest.fixture
def handler(prefect_server: str, deployment: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The Lambda handler's module, pointed at the session's Prefect server."""
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    monkeypatch.setenv("PREFECT_DEPLOYMENT", f"{FLOW}/{deployment}")
    return trigger  # lambda_function.lambda_handler is trigger's (tests/lambda checks)


def s3_event(bucket: str, keys: list[str], sequencer: str = "0065F0A1B2C3D4E5F6") -> dict:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {"key": key, "size": 42, "sequencer": sequencer},
                },
            }
            for key in keys
        ]
    }


def runs_of(client: SyncPrefectClient, deployment: str) -> list[Any]:
    """The flow runs of the deployment now named ``deployment``."""
    found = client.read_deployment_by_name(f"{FLOW}/{deployment}")
    ids = DeploymentFilter(id=DeploymentFilterId(any_=[found.id]))
    return client.read_flow_runs(deployment_filter=ids)


def test_new_files_start_scheduled_runs_and_duplicates_do_not(
    handler: ModuleType, client: SyncPrefectClient, deployment: str
) -> None:
    bucket = f"drop-{uuid.uuid4().hex[:8]}"
    event = s3_event(bucket, [*KEYS, "data/input/"])

    first = handler.lambda_handler(event, None)["results"]
    again = handler.lambda_handler(event, None)["results"]

    assert [r["status"] for r in first] == ["created", "created", "skipped"]
    runs = {str(run.id): run for run in runs_of(client, deployment)}
    assert set(runs) == {r["flow_run_id"] for r in first[:2]}
    for outcome, key in zip(first, KEYS.values(), strict=False):
        run = runs[outcome["flow_run_id"]]
        assert run.parameters == {"drop": f"s3://{bucket}", "key": key}
        assert run.state_type == StateType.SCHEDULED
        assert run.idempotency_key.startswith(f"s3://{bucket}/{key}#")
    assert [(r["status"], r.get("flow_run_id")) for r in again[:2]] == [
        ("skipped", r["flow_run_id"]) for r in first[:2]
    ]
    assert all(r["reason"].startswith("duplicate event") for r in again[:2])
    assert len(runs_of(client, deployment)) == 2


def test_a_new_upload_under_the_same_key_starts_another_run(
    handler: ModuleType, client: SyncPrefectClient, deployment: str
) -> None:
    bucket = f"drop-{uuid.uuid4().hex[:8]}"
    key = "data/input/customer_churn_1.csv"

    first = handler.lambda_handler(s3_event(bucket, [key], "0001"), None)["results"][0]
    second = handler.lambda_handler(s3_event(bucket, [key], "0002"), None)["results"][0]

    assert (first["status"], second["status"]) == ("created", "created")
    assert len(runs_of(client, deployment)) == 2


def test_a_recreated_deployment_is_found_again(
    handler: ModuleType, client: SyncPrefectClient, deployment: str
) -> None:
    bucket = f"drop-{uuid.uuid4().hex[:8]}"
    handler.lambda_handler(s3_event(bucket, ["data/input/a.csv"]), None)  # caches the id
    old = client.read_deployment_by_name(f"{FLOW}/{deployment}").id
    client.delete_deployment(old)
    client.create_deployment(flow_id=client.create_flow_from_name(FLOW), name=deployment)

    [outcome] = handler.lambda_handler(s3_event(bucket, ["data/input/b.csv"]), None)["results"]

    assert outcome["status"] == "created"
    assert [str(run.id) for run in runs_of(client, deployment)] == [outcome["flow_run_id"]]


def test_a_missing_deployment_fails_the_record_without_raising(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_DEPLOYMENT", f"{FLOW}/does-not-exist")

    [outcome] = handler.lambda_handler(s3_event("drop", ["data/input/a.csv"]), None)["results"]

    assert outcome["status"] == "failed"
    assert f"deployment '{FLOW}/does-not-exist' not found" in outcome["reason"]


def test_the_platform_trigger_is_configured_by_arguments_not_the_environment(
    prefect_server: str, deployment: str, client: SyncPrefectClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local watcher passes the API and deployment; it never writes the environment."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # must not be used
    monkeypatch.delenv("PREFECT_DEPLOYMENT", raising=False)
    handle = watcher.trigger(prefect_server, f"{FLOW}/{deployment}")
    first = handle(s3_event("drop", ["data/input/one.csv"]), None)["results"]
    again = handle(s3_event("drop", ["data/input/one.csv"]), None)["results"]
    assert [r["status"] for r in first + again] == ["created", "skipped"]
    assert [run.parameters["key"] for run in runs_of(client, deployment)] == ["data/input/one.csv"]
    assert "PREFECT_DEPLOYMENT" not in os.environ
