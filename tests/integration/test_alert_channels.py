"""Alerts through real channels: SNS on a moto server (read back via SQS) and SMTP."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

import pytest

from churnops import retry
from churnops.monitoring.alerts import Alert, AlertDeliveryError, assess, build_alert, send_alert
from churnops.platform.services import free_port
from churnops.results import ColumnDrift, MonitoringResult
from churnops.settings import AlertSettings, Settings, get_settings
from tests.fixtures.moto import received_messages, sns_topic_to_queue
from tests.fixtures.smtp import SMTP_PASSWORD, SMTP_USER, Mailbox, running_mailbox
from tests.processes import LOOPBACK

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
