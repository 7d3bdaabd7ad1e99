"""Assessing a monitoring result, the alert text, and the per-run Prefect summary (markdown
artifact) of each kind of outcome, rendered as GFM (tables on) the way the Prefect UI does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from churnops import retry
from churnops.data.schema import DataValidationError
from churnops.monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    Assessment,
    LowScore,
    assess,
    build_alert,
    send_alert,
)
from churnops.pipeline.flow import outcome_markdown
from churnops.pipeline.per_file import FileOutcome
from churnops.results import NO_REPORT_LINK, ColumnDrift, MonitoringResult
from churnops.settings import Settings, get_settings

GOOD = {"f1": 0.9, "precision": 0.9, "recall": 0.9, "accuracy": 0.9, "roc_auc": 0.95}


def result(share: float = 0.0, quality: dict[str, float] | None = None) -> MonitoringResult:
    columns = [
        ColumnDrift("age", 0.001, "K-S p_value", 0.05, True),
        ColumnDrift("seconds_of_use", 0.21, "Wasserstein distance (normed)", 0.1, True),
        ColumnDrift("status", 0.6, "chi-square p_value", 0.05, False),
        ColumnDrift("churn_prediction", 0.2, "Jensen-Shannon distance", 0.1, True),
    ]
    return MonitoringResult(
        rows=1000,
        drifted_count=2,
        drifted_share=share,
        columns=columns,
        predicted_churn_rate=0.153,
        quality=GOOD if quality is None else quality,
        report_url="http://127.0.0.1:8000/projects/p/reports/r",
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(churnops_home=tmp_path)


def test_nothing_crossed(settings: Settings) -> None:
    a = assess(result(0.5), settings.monitoring)  # the share must exceed the threshold
    assert not a.needs_alert
    assert a.summary == "ok"
    with pytest.raises(ValueError, match="nothing to alert about"):
        build_alert("a.csv", "M", 1, a, result(0.5))


def test_drift_only_or_low_scores_only(settings: Settings) -> None:
    a = assess(result(0.64), settings.monitoring)
    assert a.drift and not a.low_scores
    assert a.summary == "drift"
    low = {**GOOD, "f1": 0.5, "recall": 0.69, "roc_auc": 0.1}
    a = assess(result(0.1, low), settings.monitoring)
    assert not a.drift
    assert a.low_scores == [LowScore("f1", 0.5, 0.7), LowScore("recall", 0.69, 0.7)]
    assert a.summary == "low scores"
    both = Assessment(0.9, 0.5, True, [LowScore("f1", 0.1, 0.7)])
    assert both.summary == "drift + low scores"


def test_thresholds_come_from_settings(tmp_path: Path) -> None:
    strict = get_settings(churnops_home=tmp_path, min_f1=0.95, drift_share_threshold=0.0)
    a = assess(result(0.01), strict.monitoring)
    assert a.drift
    assert a.low_scores == [LowScore("f1", GOOD["f1"], 0.95)]


def test_unlabeled_file_can_only_drift(settings: Settings) -> None:
    assert not assess(result(0.1, {}), settings.monitoring).needs_alert
    a = assess(result(0.9, {}), settings.monitoring)
    assert a.summary == "drift"
    body = build_alert("a.csv", "M", 1, a, result(0.9, {})).body
    assert "not measured (the file has no churn label)" in body


def test_message(settings: Settings) -> None:
    res = result(0.64, {**GOOD, "f1": 0.512})
    alert = build_alert(
        "customer_churn_2_majority_drifted.csv",
        "XGBoostChurnModel",
        3,
        assess(res, settings.monitoring),
        res,
    )
    assert alert.subject == (
        "[ChurnOps] drift + low scores: customer_churn_2_majority_drifted.csv"
        " (XGBoostChurnModel v3)"
    )
    body = alert.body
    assert "File:  customer_churn_2_majority_drifted.csv" in body
    assert "Model: XGBoostChurnModel v3" in body
    assert "2 of 3 features drifted (share 64.0%, alert above 50.0%) - DRIFT" in body
    assert "Prediction drift: the predictions' distribution moved too" in body
    assert "  - age: score 0.001 (method K-S p_value, threshold 0.05)" in body
    assert "  - seconds_of_use: score 0.21 (method Wasserstein distance (normed)" in body
    assert "status:" not in body
    assert "  - f1: 0.512 < minimum 0.700" in body
    assert "precision" not in body
    assert "Evidently report: http://127.0.0.1:8000/projects/p/reports/r" in body


def test_a_value_just_past_its_limit_reads_past_it(tmp_path: Path) -> None:
    """Rounded to the usual digits, both would print the same: more digits, not "0.700 <
    minimum 0.700" or a share "above" an equal-looking limit."""
    edge = get_settings(churnops_home=tmp_path, drift_share_threshold=0.5384)
    res = result(7 / 13, {**GOOD, "f1": 0.6996, "precision": 0.69999})
    body = build_alert("a.csv", "M", 1, assess(res, edge.monitoring), res).body
    assert "  - f1: 0.6996 < minimum 0.7000" in body
    assert "  - precision: 0.69999 < minimum 0.70000" in body
    assert "(share 53.85%, alert above 53.84%) - DRIFT" in body


def test_subject_is_short_ascii(settings: Settings) -> None:
    name = "clientes_año_" + "x" * 150 + "_final.csv"
    res = result(0.9, {**GOOD, "accuracy": 0.1})
    alert = build_alert(name, "XGBoostChurnModel", 12, assess(res, settings.monitoring), res)
    assert len(alert.subject) < 100
    assert alert.subject.isascii()
    assert alert.subject.startswith("[ChurnOps] drift + low scores: clientes_ano_x")
    assert alert.subject.endswith("x_final.csv (XGBoostChurnModel v12)")
    assert "..." in alert.subject
    assert name in alert.body


def test_log_only_when_no_channel_is_configured(settings: Settings) -> None:
    res = result(0.9)
    res.report_url = None
    alert = build_alert("a.csv", "M", 1, assess(res, settings.monitoring), res)
    assert f"Evidently report: {NO_REPORT_LINK}" in alert.body
    assert send_alert(alert, settings.alerts) == ["log"]
    assert send_alert(alert, settings.alerts) == ["log"]
    text = settings.alerts.alert_log.read_text()
    assert text.count(f" {alert.subject}\n") == 2
    assert alert.body in text


def test_bad_topic_arn_is_reported(settings: Settings) -> None:
    settings = settings.replace(alerts_topic_arn="my-topic")
    res = result(0.9)
    alert = build_alert("a.csv", "M", 1, assess(res, settings.monitoring), res)
    with pytest.raises(AlertDeliveryError, match="not an SNS topic ARN") as err:
        send_alert(alert, settings.alerts)
    assert err.value.delivered == ["log"]
    assert list(err.value.failures) == ["sns"]
    assert alert.subject in settings.alerts.alert_log.read_text()


@pytest.fixture
def trickling_server() -> Iterator[tuple[str, int]]:
    """An SMTP or HTTP server that answers a byte every 0.2 s and never a whole line (for 10 s):
    each socket read is quick, so no per-read timeout ends the wait."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            ends = time.monotonic() + 10
            while not stop.wait(0.2) and time.monotonic() < ends:
                connection.sendall(b"2")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[:2]
    stop.set()
    server.close()


@pytest.mark.parametrize("channel", ["email", "sns"])
def test_a_server_trickling_bytes_is_given_up_on(
    trickling_server: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, channel: str
) -> None:
    """Before, SNS (botocore's timeout is per read, as smtplib's) waited as long as the
    server trickled: 10 s here."""
    monkeypatch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.1)
    host, port = trickling_server
    if channel == "sns":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(name, "testing")
        where = {"alerts_topic_arn": "arn:aws:sns:us-east-1:123456789012:churn-alerts"}
    else:
        where = {"smtp_host": host, "smtp_port": port, "alert_email_to": "ops@example.com"}
    settings = get_settings(churnops_home=tmp_path, **where)
    alert = Alert("f.csv", "M", "1", "ChurnOps: drift", "body")
    with pytest.raises(AlertDeliveryError, match="did not finish within 1 s") as raised:
        send_alert(alert, settings.alerts)
    assert raised.value.delivered == ["log"]


# --- the run's summary -------------------------------------------------------------------------
def render(outcome: FileOutcome) -> str:
    return MarkdownIt("commonmark").enable("table").render(outcome_markdown(outcome))


def test_a_rejected_file_lists_every_reason_below_one_table() -> None:
    problems = ["column 'age' | out of range (line 9)", "'status' has *2* value(s) like 'x_y'"]
    error = DataValidationError(problems, source="bad_file.csv")
    html = render(FileOutcome("bad_file.csv", "errored", str(error), run="R", attempt=1))
    assert html.startswith("<h3>bad_file.csv</h3>")
    assert html.count("<table>") == 1 and html.count("<tr>") == 3  # header, outcome, log
    assert "<td>outcome</td>\n<td><strong>rejected</strong></td>" in html
    assert "<td>file log</td>\n<td><code>data/logs/R/bad_file.csv.log</code></td>" in html
    assert "<li>bad_file.csv is invalid (2 problem(s)):</li>" in html
    assert "<li>column 'age' | out of range (line 9)</li>" in html
    assert "<li>'status' has *2* value(s) like 'x_y'</li>" in html
    assert "Evidently" not in html


def test_a_processed_file_keeps_its_facts_in_the_table_and_its_summary_as_a_list() -> None:
    outcome = FileOutcome(
        "a|b.csv",
        "processed",
        "drifted 2 columns (share 0.15); f1 0.900; report http://e/r; no threshold crossed",
        run="R",
        model_version="3",
        predictions_key="data/processed/R/a|b_predictions.csv",
        report_url="http://e/r",
    )
    html = render(outcome)
    assert html.count("<table>") == 1 and html.count("<tr>") == 6
    assert "<td><code>data/processed/R/a|b_predictions.csv</code></td>" in html
    assert '<td><a href="http://e/r">open</a></td>' in html
    assert "<li>f1 0.900</li>" in html and "<li>no threshold crossed</li>" in html


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_every_other_outcome_renders_one_table(status: str) -> None:
    html = render(FileOutcome("a.csv", status, "OperationalError: db down; retry", run="R"))
    assert html.count("<table>") == 1 and f"<strong>{status}</strong>" in html
    assert "<li>OperationalError: db down</li>" in html


def test_a_skipped_trigger_has_no_run() -> None:
    html = render(FileOutcome("a.csv", "skipped", "already taken by a run"))
    assert "<strong>skipped</strong>" in html and "file log" not in html
