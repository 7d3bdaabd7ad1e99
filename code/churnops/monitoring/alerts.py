"""Decide whether a processed file needs attention (:func:`assess`), and tell someone: the
alert log always, SNS and e-mail when configured. A failed send never costs the file:
every channel is tried, then :class:`AlertDeliveryError` names those that failed.
"""

from __future__ import annotations

import ipaddress
import logging
import smtplib
import socket
import ssl
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage

from churnops import retry
from churnops.results import PREDICTION, MonitoringResult
from churnops.settings import AlertSettings, MonitoringSettings

log = logging.getLogger(__name__)

SUBJECT_MAX = 99  # SNS: "less than 100 characters"
#: How every alert's subject begins, so one mail filter catches them all.
SUBJECT_PREFIX = "[ChurnOps]"
#: Errors that another try cannot fix: bad configuration, rejected credentials.
PERMANENT_ERRORS = (ValueError, smtplib.SMTPAuthenticationError)


@dataclass(frozen=True)
class LowScore:
    metric: str
    value: float
    minimum: float


@dataclass(frozen=True)
class Assessment:
    """What crossed its threshold in one file."""

    drifted_share: float
    drift_threshold: float
    drift: bool
    low_scores: list[LowScore] = field(default_factory=list)
    attribution_minimum: float | None = None
    attribution_drift: bool = False

    @property
    def needs_alert(self) -> bool:
        return self.drift or bool(self.low_scores) or self.attribution_drift

    @property
    def summary(self) -> str:
        """``"drift + attribution drift"``, or ``"ok"`` if nothing crossed."""
        crossed = (
            ("drift", self.drift),
            ("low scores", self.low_scores),
            ("attribution drift", self.attribution_drift),
        )
        return " + ".join(p for p, on in crossed if on) or "ok"


@dataclass(frozen=True)
class Alert:
    """A message ready to send: an ASCII subject under 100 characters and a text body."""

    file_name: str
    model_name: str
    model_version: str
    subject: str
    body: str


class AlertDeliveryError(RuntimeError):
    """Some channels failed after their retries; ``failures`` maps channel -> reason."""

    def __init__(self, failures: dict[str, str], delivered: list[str]) -> None:
        self.failures = failures
        self.delivered = delivered
        reasons = "; ".join(f"{c}: {r}" for c, r in failures.items())
        done = ", ".join(delivered) or "none"
        super().__init__(f"alert not delivered by {reasons} (delivered by: {done})")


# --- assess ----------------------------------------------------------------------------
def assess(result: MonitoringResult, monitoring: MonitoringSettings) -> Assessment:
    """Drift above its share threshold, scores below ``min_<metric>``, attribution NDCG below
    ``min_attribution_ndcg`` (if set)."""
    low = low_scores(result.quality, monitoring)
    threshold = monitoring.drift_share_threshold
    ndcg_minimum = monitoring.min_attribution_ndcg
    return Assessment(
        drifted_share=result.drifted_share,
        drift_threshold=threshold,
        drift=result.drifted_share > threshold,
        low_scores=low,
        attribution_minimum=ndcg_minimum,
        attribution_drift=ndcg_minimum is not None
        and result.attribution is not None
        and result.attribution.ndcg < ndcg_minimum,
    )


def low_scores(scores: Mapping[str, float], monitoring: MonitoringSettings) -> list[LowScore]:
    """The scores below their ``min_<metric>``: of a labeled file, or realized by late labels."""
    return [
        LowScore(metric, scores[metric], minimum)
        for metric, minimum in monitoring.score_minimums.items()
        if metric in scores and scores[metric] < minimum
    ]


# --- the message -------------------------------------------------------------------------
def build_alert(
    file_name: str,
    model_name: str,
    model_version: str | int,
    assessment: Assessment,
    result: MonitoringResult,
) -> Alert:
    """The alert for a file whose assessment crossed a threshold (ValueError otherwise)."""
    if not assessment.needs_alert:
        raise ValueError(f"nothing to alert about for {file_name!r}: no threshold crossed")
    model = f"{model_name} v{model_version}"
    return Alert(
        file_name=file_name,
        model_name=model_name,
        model_version=str(model_version),
        subject=_subject(assessment.summary, file_name, model),
        body=_body(file_name, model, assessment, result),
    )


def build_labels_alert(
    labels_file: str,
    scoring_file: str,
    model_name: str,
    model_version: str,
    detail: str,
    low: list[LowScore],
) -> Alert:
    """The alert when late labels show a scored file's realized scores below a minimum."""
    model = f"{model_name} v{model_version}"
    lines = [
        "ChurnOps alert: low realized scores (late labels)",
        "",
        f"Scored file:  {scoring_file}",
        f"Labels file:  {labels_file}",
        f"Model:        {model}",
        f"Join:         {detail}",
        "",
        "Realized scores below their minimum:",
        *(_low_line(s) for s in low),
    ]
    return Alert(
        file_name=scoring_file,
        model_name=model_name,
        model_version=str(model_version),
        subject=_subject("low realized scores", scoring_file, model),
        body="\n".join(lines) + "\n",
    )


def build_gave_up_alert(file_name: str, reason: str, where: str) -> Alert:
    """The alert when a file's attempts are used up: it went to ``where``."""
    body = f"ChurnOps gave up on {file_name}: {reason}\nThe file is in {where}.\n"
    return Alert(file_name, "", "", _subject("gave up", file_name, "no model"), body)


def build_rejection_alert(file_name: str, run: str, reasons: str) -> Alert:
    """A rejected file: an upstream export may have started failing."""
    body = (
        f"ChurnOps alert: rejected file\n\nFile:  {file_name}\n"
        f"Moved: data/errored/{run}/ (log data/logs/{run}/{file_name}.log)\n\n{reasons}\n"
    )
    return Alert(file_name, "", "", _subject("rejected file", file_name, ""), body)


def _ascii(text: str) -> str:
    """SNS subjects must be printable ASCII: 'é' -> 'e', other characters -> '?'."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(c for c in folded if not unicodedata.combining(c))
    return "".join(c if " " <= c <= "~" else "?" for c in folded)


def _subject(summary: str, file_name: str, model: str) -> str:
    head, tail = f"{SUBJECT_PREFIX} {summary}: ", f" ({_ascii(model)})" if model else ""
    name = _ascii(file_name)
    room = SUBJECT_MAX - len(head) - len(tail)
    if len(name) > room:  # keep both ends: the start names the batch, the end its type
        keep = max(room - 3, 2)
        name = name[: keep - keep // 2] + "..." + name[len(name) - keep // 2 :]
    return (head + name + tail)[:SUBJECT_MAX]


def _body(file_name: str, model: str, a: Assessment, result: MonitoringResult) -> str:
    features = sum(c.column != PREDICTION for c in result.columns)  # the prediction is none
    share, limit = apart(a.drifted_share, a.drift_threshold, 1, "%")
    lines = [
        f"ChurnOps alert: {a.summary}",
        "",
        f"File:  {file_name}",
        f"Model: {model}",
        f"Rows:  {result.rows}, predicted churn rate {result.predicted_churn_rate:.1%}",
        "",
        f"Data drift: {result.drifted_count} of {features} features drifted "
        f"(share {share}, alert above {limit})" + (" - DRIFT" if a.drift else ""),
    ]
    if any(c.column == PREDICTION and c.drifted for c in result.columns):
        lines.append("Prediction drift: the predictions' distribution moved too (not in the share)")
    lines += [
        f"  - {c.column}: score {c.score:.4g} (method {c.method}, threshold {c.threshold:.4g})"
        for c in result.drifted_columns
    ]
    lines += _attribution_lines(a, result)
    lines.append("")
    if a.low_scores:
        lines.append("Scores below their minimum:")
        lines += [_low_line(s) for s in a.low_scores]
    elif result.quality:
        lines.append("Scores: all at or above their minimum.")
    else:
        lines.append("Scores: not measured (the file has no churn label).")
    lines += ["", f"Evidently report: {result.report_where}"]
    return "\n".join(lines) + "\n"


def _low_line(score: LowScore) -> str:
    value, minimum = apart(score.value, score.minimum, 3, "f")
    return f"  - {score.metric}: {value} < minimum {minimum}"


def apart(value: float, limit: float, digits: int, kind: str) -> tuple[str, str]:
    """Both numbers with ``digits`` decimals, more when that would print them equal: an
    F1 of 0.6996 under a minimum of 0.7 reads "0.6996 < minimum 0.7000", not "0.700 <
    minimum 0.700"."""
    while True:
        shown = f"{value:.{digits}{kind}}", f"{limit:.{digits}{kind}}"
        if shown[0] != shown[1] or value == limit or digits >= 12:
            return shown
        digits += 1


def _attribution_lines(a: Assessment, result: MonitoringResult, movers: int = 3) -> list[str]:
    drift = result.attribution
    if drift is None:
        return []
    limit = "no alert minimum set"
    if a.attribution_minimum is not None:
        limit = f"alert below {a.attribution_minimum:.3f}"
    lines = [
        f"Feature attribution: NDCG {drift.ndcg:.3f} of the importance order against the "
        f"reference ({limit})" + (" - ATTRIBUTION DRIFT" if a.attribution_drift else "")
    ]
    lines += [
        f"  - {f.describe()} (mean |SHAP| {f.reference_importance:.3g} -> {f.importance:.3g})"
        for f in drift.movers[:movers]
    ]
    return lines


# --- sending -------------------------------------------------------------------------------
def send_alert(alert: Alert, alerts: AlertSettings) -> list[str]:
    """Append to the alert log, then send by SNS / e-mail when configured; return the
    channels used. Each is retried (once for :data:`PERMANENT_ERRORS`); one failing does
    not stop the others, and :class:`AlertDeliveryError` is raised at the end."""
    channels: dict[str, Callable[[], None]] = {"log": lambda: _append_log(alert, alerts)}
    if alerts.alerts_topic_arn:
        channels["sns"] = lambda: _within("SNS", lambda: _publish_sns(alert, alerts))
    if alerts.smtp_host:  # with its recipients (the settings refuse one alone)
        channels["email"] = lambda: _within("the SMTP server", lambda: _send_email(alert, alerts))
    delivered: list[str] = []
    failures: dict[str, str] = {}
    for channel, send in channels.items():
        retrying = retry.call(
            lambda exc: not isinstance(exc, PERMANENT_ERRORS),
            log=logging.getLogger(f"{__name__}.{channel}"),
        )
        try:
            retrying(send)
        except Exception as exc:
            log.error("alert %r: %s failed after retries: %s", alert.subject, channel, exc)
            failures[channel] = f"{type(exc).__name__}: {exc}"
        else:
            delivered.append(channel)
    if failures:
        raise AlertDeliveryError(failures, delivered)
    return delivered


def _append_log(alert: Alert, alerts: AlertSettings) -> None:
    path = alerts.alert_log
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with path.open("a", encoding="utf-8") as out:
        out.write(f"===== {stamp} {alert.subject}\n{alert.body}\n")


def _publish_sns(alert: Alert, alerts: AlertSettings) -> None:
    import boto3
    from botocore.config import Config

    arn = alerts.alerts_topic_arn or ""
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "sns":
        raise ValueError(f"ALERTS_TOPIC_ARN {arn!r} is not an SNS topic ARN")
    timeout = retry.NETWORK_TIMEOUT_SECONDS
    client = boto3.client(
        "sns",
        region_name=parts[3],  # a topic is published to in its own region
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
    )
    client.publish(TopicArn=arn, Subject=alert.subject, Message=alert.body)


def _within(server: str, send: Callable[[], None]) -> None:
    """``send()`` given up after ``retry.NETWORK_TIMEOUT_SECONDS`` in all. smtplib's and
    botocore's timeouts are per socket call, so a server trickling a byte at a time would
    hold the alert step for ever; its daemon thread is left to end with that connection."""
    seconds = retry.NETWORK_TIMEOUT_SECONDS
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            send()
        except BaseException as exc:  # handed to the caller
            ended.append(exc)
        else:
            ended.append(None)

    thread = threading.Thread(target=run, name="alert-send", daemon=True)
    thread.start()
    thread.join(seconds)
    if not ended:
        raise TimeoutError(f"{server} did not finish within {seconds:g} s")
    if ended[0] is not None:
        raise ended[0]


def _send_email(alert: Alert, alerts: AlertSettings) -> None:
    message = EmailMessage()
    message["Subject"] = alert.subject
    message["From"] = alerts.alert_email_from
    recipients = (alerts.alert_email_to or "").split(",")
    message["To"] = ", ".join(r.strip() for r in recipients if r.strip())
    message.set_content(alert.body)
    host = alerts.smtp_host or ""
    with smtplib.SMTP(host, alerts.smtp_port, timeout=retry.NETWORK_TIMEOUT_SECONDS) as smtp:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
        elif alerts.smtp_user and not _on_this_machine(host):
            raise ValueError(f"SMTP server {host} offers no STARTTLS: no password in the clear")
        if alerts.smtp_user:
            password = alerts.smtp_password.get_secret_value() if alerts.smtp_password else ""
            smtp.login(alerts.smtp_user, password)
        smtp.send_message(message)


def _on_this_machine(host: str) -> bool:
    """A loopback relay: a login needs no TLS there."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:
        return False
