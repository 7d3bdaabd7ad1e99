"""Operational metrics reach CloudWatch (moto): file ages from the reconciler, failed runs
from the flow, queued runs from each runner; nothing at all without a namespace."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops import retry
from churnops.drop import claims
from churnops.drop.storage import open_storage, stage_key
from churnops.monitoring import ops_metrics
from churnops.pipeline import reconcile
from churnops.pipeline.flow import churn_prediction_pipeline
from churnops.platform.runner import FlowRunner, QueueGauge, task_protection
from churnops.platform.services import free_port
from churnops.settings import Settings, get_settings
from tests.processes import LOOPBACK, eventually


@pytest.fixture
def namespace() -> str:
    return f"ChurnOpsTest/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def settings(tmp_path: Path, moto_server: str, namespace: str) -> Settings:
    """Publishing to moto: its fixture points boto3 at it (AWS_ENDPOINT_URL)."""
    return get_settings(churnops_home=tmp_path, ops_metrics_namespace=namespace)


def datapoints(endpoint: str, namespace: str, metric: str, statistic: str) -> list[float]:
    """Every value of one statistic of a metric over the last hour (per minute)."""
    now = datetime.now(UTC)
    answer = boto3.client("cloudwatch", endpoint_url=endpoint).get_metric_statistics(
        Namespace=namespace,
        MetricName=metric,
        StartTime=now - timedelta(hours=1),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=[statistic],
    )
    return [point[statistic] for point in answer["Datapoints"]]


def test_nothing_is_published_without_a_namespace(
    settings: Settings, namespace: str, moto_server: str
) -> None:
    off = settings.replace(ops_metrics_namespace=None)
    assert not ops_metrics.publish(off.platform, {ops_metrics.FAILED_RUNS: 1.0})
    assert ops_metrics.publish(settings.platform, {ops_metrics.FAILED_RUNS: 1.0})
    listing = boto3.client("cloudwatch", endpoint_url=moto_server).list_metrics(Namespace=namespace)
    assert {m["MetricName"] for m in listing["Metrics"]} == {ops_metrics.FAILED_RUNS}


def test_an_unreachable_cloudwatch_does_not_raise(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{LOOPBACK}:{free_port(LOOPBACK)}")
    assert not ops_metrics.publish(settings.platform, {ops_metrics.QUEUED_RUNS: 3.0})


def test_the_reconciler_publishes_the_oldest_waiting_and_processing_ages(
    settings: Settings, namespace: str, moto_server: str
) -> None:
    storage = open_storage(settings.drop)
    key = stage_key("input", "waiting.csv")
    storage.create(key, b"a,b\n1,2\n")
    landed = datetime.now(UTC) - timedelta(minutes=20)
    os.utime(storage.path(key), (landed.timestamp(), landed.timestamp()))
    run = claims.run_id("stuck.csv", "v1", datetime.now(UTC) - timedelta(minutes=45))
    storage.create(f"data/processing/{run}/stuck.csv", b"a,b\n1,2\n")

    ages = reconcile.oldest_ages(storage, datetime.now(UTC))
    assert 20 * 60 <= ages[ops_metrics.OLDEST_INPUT] < 21 * 60
    assert 45 * 60 <= ages[ops_metrics.OLDEST_PROCESSING] < 46 * 60

    reconcile.publish_ages(settings.platform, storage, datetime.now(UTC))
    (oldest_input,) = datapoints(moto_server, namespace, ops_metrics.OLDEST_INPUT, "Maximum")
    (oldest_processing,) = datapoints(
        moto_server, namespace, ops_metrics.OLDEST_PROCESSING, "Maximum"
    )
    assert oldest_input >= 20 * 60 and oldest_processing >= 45 * 60


def test_each_flow_run_says_whether_it_failed(
    settings: Settings,
    namespace: str,
    prefect_server: str,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow down: the run fails on a dependency (1). A key already gone: skipped (0)."""
    for name, value in {
        "CHURNOPS_HOME": str(settings.home),
        "OPS_METRICS_NAMESPACE": namespace,
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{free_port(LOOPBACK)}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.5)
    storage = open_storage(settings.drop)
    key = stage_key("input", "mlflow_down.csv")
    storage.create(key, b"a,b\n1,2\n")
    drop = settings.drop.drop_dir.as_uri()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        failed = churn_prediction_pipeline(drop=drop, key=key, return_state=True)
        skipped = churn_prediction_pipeline(
            drop=drop, key=stage_key("input", "gone.csv"), return_state=True
        )
    assert failed.is_failed() and skipped.is_completed()
    assert sum(datapoints(moto_server, namespace, ops_metrics.FAILED_RUNS, "Sum")) == 1.0
    assert sum(datapoints(moto_server, namespace, ops_metrics.FAILED_RUNS, "SampleCount")) == 2.0


def test_a_runner_publishes_the_runs_waiting_for_it(
    settings: Settings, namespace: str, prefect_server: str, moto_server: str
) -> None:
    with SyncPrefectClient(prefect_server) as client:
        flow_id = client.create_flow_from_name("churn_prediction_pipeline")
        deployment = client.create_deployment(flow_id=flow_id, name=f"gauge-{uuid.uuid4().hex[:8]}")
        for _ in range(3):
            client.create_flow_run_from_deployment(deployment)
        runner = FlowRunner(settings, client)
        runner.deployment_ids = [deployment]
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            gauge = QueueGauge(runner, every=0.2)
            gauge.start()
            try:
                queued = (moto_server, namespace, ops_metrics.QUEUED_RUNS, "Maximum")
                assert eventually(lambda: datapoints(*queued), 30, 0.2), "no queue depth published"
            finally:
                gauge.stopped.set()
                gauge.join(timeout=10)
    assert max(datapoints(*queued)) == 3.0


class AgentStub(BaseHTTPRequestHandler):
    """The ECS agent's task-protection endpoint: records each PUT body."""

    bodies: list[bytes] = []

    def do_PUT(self) -> None:
        assert self.path == "/v4/abc/task-protection/v1/state"
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        payload = b'{"protection": {"ProtectionEnabled": true}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), AgentStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    AgentStub.bodies.clear()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/v4/abc"
    finally:
        server.shutdown()


def test_a_run_protects_its_task_while_it_executes(tmp_path: Path, agent: str) -> None:
    settings = get_settings(churnops_home=tmp_path, ecs_agent_uri=agent)
    with task_protection(settings.platform):
        assert AgentStub.bodies == [b'{"ProtectionEnabled": true, "ExpiresInMinutes": 120}']
    assert AgentStub.bodies[-1] == b'{"ProtectionEnabled": false}'
    with task_protection(get_settings(churnops_home=tmp_path).platform):  # not on ECS: no call
        pass
    assert len(AgentStub.bodies) == 2
