"""What reaches operators, through real channels. Alerts: SNS on a moto server (read back via
SQS) and SMTP. Operational metrics reach CloudWatch (moto): file ages from the reconciler,
failed runs from the flow, queued runs from each runner; nothing at all without a namespace."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import boto3
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops import retry
from churnops.drop import claims
from churnops.drop.storage import open_storage, stage_key
from churnops.monitoring import ops_metrics
from churnops.monitoring.alerts import Alert, AlertDeliveryError, assess, build_alert, send_alert
from churnops.pipeline import reconcile
from churnops.pipeline.flow import churn_prediction_pipeline
from churnops.platform.runner import FlowRunner, QueueGauge, task_protection
from churnops.platform.services import free_port
from churnops.results import ColumnDrift, MonitoringResult
from churnops.settings import AlertSettings, Settings, get_settings
from tests.fixtures.moto import received_messages, sns_topic_to_queue
from tests.fixtures.smtp import SMTP_PASSWORD, SMTP_USER, Mailbox, running_mailbox
from tests.processes import LOOPBACK, eventually, http_server

FILE = "customer_churn_2_majority_drifted.csv"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(retry, "CALL", retry.Backoff(0.05, 0.05))
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 5.0)
    return get_settings(churnops_home=tmp_path)


def mailing(settings: Settings, host: str, port: int, **changes: object) -> AlertSettings:
    """Alerts mailed to ops@example.com through ``host``:``port``, with ``changes``."""
    changes = {"alert_email_to": "ops@example.com", **changes}
    return settings.replace(smtp_host=host, smtp_port=port, **changes).alerts


@pytest.fixture
def alert(settings: Settings) -> Alert:
    res = MonitoringResult(
        rows=500,
        drifted_count=1,
        drifted_share=0.75,
        columns=[ColumnDrift("age", 0.0001, "K-S p_value", 0.05, True)],
        predicted_churn_rate=0.2,
        quality={"f1": 0.4, "precision": 0.9, "recall": 0.3, "accuracy": 0.8},
        report_url="http://127.0.0.1:8000/r/1",
    )
    return build_alert(FILE, "XGBoostChurnModel", 3, assess(res, settings.monitoring), res)


def test_sns(moto_server: str, settings: Settings, alert: Alert) -> None:
    topic, queue = sns_topic_to_queue(moto_server)
    assert send_alert(alert, settings.replace(alerts_topic_arn=topic).alerts) == ["log", "sns"]
    (envelope,) = received_messages(moto_server, queue)
    assert envelope["Subject"] == f"[ChurnOps] drift + low scores: {FILE} (XGBoostChurnModel v3)"
    assert envelope["Message"] == alert.body
    assert "  - recall: 0.300 < minimum 0.700" in envelope["Message"]


def test_sns_missing_topic_is_reported(moto_server: str, settings: Settings, alert: Alert) -> None:
    arn = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    with pytest.raises(AlertDeliveryError) as err:
        send_alert(alert, settings.replace(alerts_topic_arn=arn).alerts)
    assert list(err.value.failures) == ["sns"]
    assert err.value.delivered == ["log"]


@pytest.mark.parametrize("login", [{}, {"smtp_user": SMTP_USER, "smtp_password": SMTP_PASSWORD}])
def test_email(smtp_server: Mailbox, settings: Settings, alert: Alert, login: dict) -> None:
    to = "ops@example.com, data@example.com"
    alerts = mailing(settings, smtp_server.host, smtp_server.port, alert_email_to=to, **login)
    assert send_alert(alert, alerts) == ["log", "email"]
    (message,) = smtp_server.messages
    assert message["Subject"] == alert.subject
    assert message["From"] == "churnops@localhost"
    assert smtp_server.recipients == [["ops@example.com", "data@example.com"]]
    assert message.get_content().replace("\r\n", "\n") == alert.body  # SMTP sends CRLF
    assert smtp_server.logins == ([SMTP_USER] if login else [])


def _address_beside_loopback() -> str:
    """This machine's address on its outbound interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        return sock.getsockname()[0]


def test_a_login_to_a_server_off_this_machine_without_starttls_is_refused(
    settings: Settings, alert: Alert
) -> None:
    """A password goes in the clear only to a relay on loopback; elsewhere it is refused."""
    host = _address_beside_loopback()
    assert not ipaddress.ip_address(host).is_loopback
    with (
        running_mailbox(host) as mailbox,
        pytest.raises(AlertDeliveryError, match="offers no STARTTLS") as err,
    ):
        login = {"smtp_user": SMTP_USER, "smtp_password": SMTP_PASSWORD}
        send_alert(alert, mailing(settings, host, mailbox.port, **login))
    assert err.value.delivered == ["log"]
    assert mailbox.logins == [] and mailbox.messages == []


def test_email_wrong_password_is_reported_without_retry(
    smtp_server: Mailbox, settings: Settings, alert: Alert, caplog: pytest.LogCaptureFixture
) -> None:
    login = {"smtp_user": SMTP_USER, "smtp_password": "wrong"}
    alerts = mailing(settings, smtp_server.host, smtp_server.port, **login)
    with pytest.raises(AlertDeliveryError, match="SMTPAuthenticationError"):
        send_alert(alert, alerts)
    assert smtp_server.messages == []
    assert not [r for r in caplog.records if r.name == "churnops.monitoring.alerts.email"]


def test_retries_then_reports_and_keeps_the_log(
    settings: Settings, alert: Alert, caplog: pytest.LogCaptureFixture
) -> None:
    alerts = mailing(settings, LOOPBACK, free_port(LOOPBACK))  # nothing listens there
    with (
        caplog.at_level(logging.WARNING, logger="churnops.monitoring.alerts"),
        pytest.raises(AlertDeliveryError) as err,
    ):
        send_alert(alert, alerts)
    assert err.value.delivered == ["log"]
    assert "ConnectionRefusedError" in err.value.failures["email"]
    retries = [r for r in caplog.records if r.name == "churnops.monitoring.alerts.email"]
    assert retries  # tried again while the wait lasted (churnops.retry.call)
    assert any("email failed after retries" in r.getMessage() for r in caplog.records)
    assert alert.body in alerts.alert_log.read_text()


@pytest.fixture
def namespace() -> str:
    return f"ChurnOpsTest/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def metered(tmp_path: Path, moto_server: str, namespace: str) -> Settings:
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
    metered: Settings, namespace: str, moto_server: str
) -> None:
    off = metered.replace(ops_metrics_namespace=None)
    assert not ops_metrics.publish(off.platform, {ops_metrics.FAILED_RUNS: 1.0})
    assert ops_metrics.publish(metered.platform, {ops_metrics.FAILED_RUNS: 1.0})
    listing = boto3.client("cloudwatch", endpoint_url=moto_server).list_metrics(Namespace=namespace)
    assert {m["MetricName"] for m in listing["Metrics"]} == {ops_metrics.FAILED_RUNS}


def test_an_unreachable_cloudwatch_does_not_raise(
    metered: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{LOOPBACK}:{free_port(LOOPBACK)}")
    assert not ops_metrics.publish(metered.platform, {ops_metrics.QUEUED_RUNS: 3.0})


def test_the_reconciler_publishes_the_oldest_waiting_and_processing_ages(
    metered: Settings, namespace: str, moto_server: str
) -> None:
    storage = open_storage(metered.drop)
    key = stage_key("input", "waiting.csv")
    storage.create(key, b"a,b\n1,2\n")
    landed = datetime.now(UTC) - timedelta(minutes=20)
    os.utime(storage.path(key), (landed.timestamp(), landed.timestamp()))
    run = claims.run_id("stuck.csv", "v1", datetime.now(UTC) - timedelta(minutes=45))
    storage.create(f"data/processing/{run}/stuck.csv", b"a,b\n1,2\n")

    ages = reconcile.oldest_ages(storage, datetime.now(UTC))
    assert 20 * 60 <= ages[ops_metrics.OLDEST_INPUT] < 21 * 60
    assert 45 * 60 <= ages[ops_metrics.OLDEST_PROCESSING] < 46 * 60

    reconcile.publish_ages(metered.platform, storage, datetime.now(UTC))
    (oldest_input,) = datapoints(moto_server, namespace, ops_metrics.OLDEST_INPUT, "Maximum")
    (oldest_processing,) = datapoints(
        moto_server, namespace, ops_metrics.OLDEST_PROCESSING, "Maximum"
    )
    assert oldest_input >= 20 * 60 and oldest_processing >= 45 * 60


def test_each_flow_run_says_whether_it_failed(
    metered: Settings,
    namespace: str,
    prefect_server: str,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow down: the run fails on a dependency (1). A key already gone: skipped (0)."""
    monkeypatch.setenv("CHURNOPS_HOME", str(metered.home))
    monkeypatch.setenv("OPS_METRICS_NAMESPACE", namespace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://{LOOPBACK}:{free_port(LOOPBACK)}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.5)
    storage = open_storage(metered.drop)
    key = stage_key("input", "mlflow_down.csv")
    storage.create(key, b"a,b\n1,2\n")
    drop = metered.drop.drop_dir.as_uri()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        failed = churn_prediction_pipeline(drop=drop, key=key, return_state=True)
        skipped = churn_prediction_pipeline(
            drop=drop, key=stage_key("input", "gone.csv"), return_state=True
        )
    assert failed.is_failed() and skipped.is_completed()
    assert sum(datapoints(moto_server, namespace, ops_metrics.FAILED_RUNS, "Sum")) == 1.0
    assert sum(datapoints(moto_server, namespace, ops_metrics.FAILED_RUNS, "SampleCount")) == 2.0


def test_a_runner_publishes_the_runs_waiting_for_it(
    metered: Settings, namespace: str, prefect_server: str, moto_server: str
) -> None:
    with SyncPrefectClient(prefect_server) as client:
        flow_id = client.create_flow_from_name("churn_prediction_pipeline")
        deployment = client.create_deployment(flow_id=flow_id, name=f"gauge-{uuid.uuid4().hex[:8]}")
        for _ in range(3):
            client.create_flow_run_from_deployment(deployment)
        runner = FlowRunner(metered, client)
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
    AgentStub.bodies.clear()
    with http_server(AgentStub) as server:
        yield f"http://{LOOPBACK}:{server.server_port}/v4/abc"


def test_a_run_protects_its_task_while_it_executes(tmp_path: Path, agent: str) -> None:
    settings = get_settings(churnops_home=tmp_path, ecs_agent_uri=agent)
    with task_protection(settings.platform):
        assert AgentStub.bodies == [b'{"ProtectionEnabled": true, "ExpiresInMinutes": 120}']
    assert AgentStub.bodies[-1] == b'{"ProtectionEnabled": false}'
    with task_protection(get_settings(churnops_home=tmp_path).platform):  # not on ECS: no call
        pass
    assert len(AgentStub.bodies) == 2
