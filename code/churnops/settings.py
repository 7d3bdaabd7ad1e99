"""All configuration of ChurnOps, read from the environment by :func:`get_settings`.

Five groups (drop, model, monitoring, alerts, platform); a function takes the group it
reads. Each variable is its field's name in upper case, with no group prefix. The
defaults give the local platform, with all state under ``CHURNOPS_HOME``. Nothing here
reads the environment at import time. Tunables nobody should change are constants beside
the code that uses them, not settings.

Prefect's, MLflow's and boto3's clients read their own credentials and endpoints
(``PREFECT_API_AUTH_STRING``, ``MLFLOW_TRACKING_USERNAME``, ``AWS_ENDPOINT_URL``, ...);
Evidently's is passed by ChurnOps, so it is a setting here.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_type_hints

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from churnops.results import ATTRIBUTION_NDCG, DRIFTED_SHARE

#: Usual names of a customer identifier column, tried in order.
DEFAULT_ID_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "client_id",
    "account_id",
    "account_number",
    "account",
    "phone",
    "phone_number",
    "msisdn",
    "subscriber_id",
    "id",
)

#: The off switch of every library that sends usage data, as each reads it (MLflow takes
#: DO_NOT_TRACK only as "true"), for every process ChurnOps starts while USAGE_TELEMETRY is
#: off; terraform/main.tf's local.no_usage_telemetry is the same map (a test checks).
NO_USAGE_TELEMETRY: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}

#: MLflow's client reads its timeout and retries only from the environment (unset: about
#: 12 minutes per request to a dead server). Every process ChurnOps runs gets them, as it
#: gets the switches above; terraform/services.tf's local.mlflow_client_env is the same map
#: for the ECS worker (a test checks).
MLFLOW_CLIENT_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

#: The highest TCP port: a setting beyond it is refused when read, not when bound.
MAX_PORT = 65535
#: A port setting of the local platform (0: pick one).
Port = Annotated[int, Field(ge=0, le=MAX_PORT)]

#: ``scheme://user:password@``: the password of a URL quoted in a message.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


def hide_credentials(text: str) -> str:
    """``text`` with the password of every URL in it as ``***`` (as SQLAlchemy shows a
    database URL): a setting's URL may carry one (``MLFLOW_TRACKING_URI``), and libraries
    quote the URL they failed on in their errors, which become log lines and run records."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def without_credentials(url: str) -> str:
    """``url`` without its ``user:password@``, for a request that needs no login."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


#: Alert floors of a labeled file's other scores; the F1's is MIN_F1, the quality bar.
OTHER_SCORE_MINIMUMS: dict[str, float] = {"precision": 0.7, "recall": 0.7, "accuracy": 0.7}


class CommonSettings(BaseSettings):
    """What every group reads: where local state lives."""

    model_config = SettingsConfigDict(extra="ignore", protected_namespaces=(), frozen=True)

    churnops_home: Path = Field(
        Path(".churnops"), description="Folder holding all local state (git-ignored)."
    )

    @property
    def home(self) -> Path:
        return self.churnops_home.resolve()


class DropSettings(CommonSettings):
    """The drop bucket and the files dropped into it."""

    drop_storage: Literal["local", "s3"] = Field(
        "local", description="'local': a folder with the S3 layout; 's3': a bucket."
    )
    drop_bucket: str = Field(
        "churnops-drop", description="Bucket name (in events; the bucket itself on S3)."
    )
    local_drop_dir: Path | None = Field(
        None, description="Root of the local drop folder; default CHURNOPS_HOME/drop."
    )
    max_file_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Largest accepted file, as stored (checked before reading) and as decoded "
        "(gzip inflated, Parquet values; counted while reading). 2 GiB: about 20M rows of CSV, "
        "streamed in flat memory.",
    )
    id_columns: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_ID_COLUMNS,
        description="Names the customer identifier column may have, comma-separated, tried "
        "in order (case, spaces, dashes and underscores ignored); empty: no identifier.",
    )
    neutralise_formulas: bool = Field(
        True,
        description="Prefix with ' the pass-through cells of a predictions file that a "
        "spreadsheet would evaluate (text starting with =, +, -, @, tab or CR; not numbers).",
    )

    @field_validator("id_columns", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @property
    def drop_uri(self) -> str:
        return f"s3://{self.drop_bucket}" if self.drop_storage == "s3" else self.drop_dir.as_uri()

    @property
    def drop_dir(self) -> Path:
        return (self.local_drop_dir or self.home / "drop").resolve()


class ModelSettings(CommonSettings):
    """Training, the MLflow registry, and retraining."""

    churn_data_dir: Path = Field(
        Path("data"), description="Folder with the customer_churn_*.csv files."
    )
    training_file: str = Field(
        "customer_churn_0.csv", description="Default training file in CHURN_DATA_DIR."
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="Tracking server or store; default: SQLite under CHURNOPS_HOME. A login "
        "goes in MLFLOW_TRACKING_USERNAME and _PASSWORD, not in the URL: ChurnOps hides a "
        "URL's password in what it writes, but Prefect records a failed step's error as is.",
    )
    model_name: str = Field("XGBoostChurnModel", description="Registered model name.")
    model_alias: str = Field(
        "staging",
        description="Alias of the version the pipeline scores with (not 'latest' or "
        "'v<N>', which MLflow reads as versions).",
    )
    retrain_mode: Literal["off", "suggest", "auto"] = Field(
        "suggest",
        description="After a labeled file scores below a minimum: 'off' nothing, 'suggest' "
        "the alert says to run `churnops retrain`, 'auto' the alert step also starts one.",
    )
    retrain_window_files: int = Field(
        10, ge=1, description="Retrain on at most this many newest labeled processed files."
    )
    retrain_window_days: float | None = Field(
        None, gt=0, description="Retrain only on labeled files dropped in the last D days."
    )
    retrain_cooldown_minutes: float = Field(
        60.0,
        ge=0,
        description="Automatic retrainings wait this many minutes after the last verdict "
        "(promoted or refused, manual or automatic).",
    )

    @field_validator("model_alias")
    @classmethod
    def _settable_alias(cls, value: str) -> str:
        """An alias MLflow can set: it reads ``latest`` as the newest version (scored with,
        refused or not: the gate bypassed) and ``v<N>`` as version N, and refuses to set
        either, which only a training found, after registering a version."""
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            raise ValueError(f"'{value}' is reserved by MLflow for a version: name another")
        if not re.fullmatch(r"[\w\-]{1,255}", value):
            raise ValueError("an alias is 1 to 255 letters, digits, '_' or '-'")
        return value

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def optuna_database(self) -> Path:
        return self.home / "optuna.db"

    @property
    def optuna_storage_url(self) -> str:
        return f"sqlite:///{self.optuna_database}"


class MonitoringSettings(CommonSettings):
    """Evidently, the metrics database, and the thresholds that raise alerts."""

    database_url: str | None = Field(
        None, description="Metrics database, a SQLAlchemy URL; default: SQLite under CHURNOPS_HOME."
    )
    dashboard_db_password: SecretStr | None = Field(
        None,
        description="Password of the dashboards' read-only database role (`churnops "
        "grant-reader` sets the role up).",
    )
    evidently_ui_url: str | None = Field(
        None, description="Remote Evidently UI to store reports in."
    )
    evidently_secret: SecretStr | None = Field(
        None,
        description="Secret a remote Evidently UI started with EVIDENTLY_SECRET asks for on "
        "writes (the same variable); none for the local workspace.",
    )
    evidently_workspace: Path | None = Field(
        None, description="Local workspace folder; default CHURNOPS_HOME/evidently."
    )
    attribution_sample_rows: int = Field(
        500,
        ge=0,
        description="Rows of the drift sample (and of the reference) whose TreeSHAP feature "
        "attribution is compared; 0: no attribution drift. TreeSHAP costs about 0.2 ms a row "
        "(one core) with the shipped 61-tree model: 500 rows add under 0.1 s per file.",
    )
    drift_share_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Alert when the share of drifted columns is above."
    )
    min_f1: float = Field(
        0.70,
        ge=0.0,
        le=1.0,
        description="The quality bar: alert when a labeled file's F1 is below (precision, "
        "recall and accuracy alert below a fixed 0.7), and the holdout F1 a first model "
        "version needs to take the alias.",
    )
    min_attribution_ndcg: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Alert when the NDCG of the file's feature-attribution order against the "
        "reference is below. Off (None) by default: an NDCG over 13 features moves little "
        "(complains rising from 3rd to 1st gives about 0.94 with the shipped model) and how "
        "little depends on the model: pick a value from your model's NDCG history.",
    )

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        """A SQLAlchemy URL of SQLite or PostgreSQL (psycopg2), or a one-line refusal when
        the command starts (not a traceback at the first file), echoing no part of it."""
        if value is None:
            return None
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 (parsing it is the check)
        except ValueError:
            raise ValueError("its port (or host) is not valid") from None
        if parts.scheme.partition("+")[0] not in ("sqlite", "postgresql"):
            raise ValueError(
                "not a sqlite:/// or postgresql:// URL (SQLAlchemy's form: postgres:// is not)"
            )
        if parts.netloc.count("@") > 1:
            raise ValueError("an '@' in its user or password must be written %40")
        return value

    @property
    def metrics_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'metrics.db'}"

    @property
    def evidently_workspace_dir(self) -> Path:
        return (self.evidently_workspace or self.home / "evidently").resolve()

    @property
    def score_minimums(self) -> dict[str, float]:
        """Quality score -> the value below which a labeled file raises an alert."""
        return {"f1": self.min_f1, **OTHER_SCORE_MINIMUMS}

    @property
    def alert_thresholds(self) -> dict[str, float]:
        """Metric -> its alert threshold (the drifted share alerts above it, scores below)."""
        thresholds = {DRIFTED_SHARE: self.drift_share_threshold, **self.score_minimums}
        if self.min_attribution_ndcg is not None:
            thresholds[ATTRIBUTION_NDCG] = self.min_attribution_ndcg
        return thresholds


class AlertSettings(CommonSettings):
    """Where alerts go: always CHURNOPS_HOME/alerts.log, and SNS and e-mail when set."""

    alerts_topic_arn: str | None = Field(None, description="SNS topic the alerts go to.")
    smtp_host: str | None = Field(
        None, description="SMTP server for alert e-mails (with ALERT_EMAIL_TO)."
    )
    smtp_port: int = Field(25, ge=1, le=MAX_PORT, description="Its port.")
    smtp_user: str | None = Field(
        None,
        description="SMTP login user. The connection is upgraded with STARTTLS whenever the "
        "server offers it; a login without it is refused unless the server is on this "
        "machine (a password never crosses a network in the clear).",
    )
    smtp_password: SecretStr | None = Field(None, description="SMTP login password.")
    alert_email_from: str = Field("churnops@localhost", description="Sender of alert e-mails.")
    alert_email_to: str | None = Field(
        None, description="Recipients of alert e-mails, comma-separated (with SMTP_HOST)."
    )

    @model_validator(mode="after")
    def _email_needs_both(self) -> AlertSettings:
        """Half an e-mail set-up sent nothing and said nothing (found by a hunt)."""
        if bool(self.smtp_host) != bool(self.alert_email_to):
            unset = "ALERT_EMAIL_TO" if self.smtp_host else "SMTP_HOST"
            raise ValueError(f"alert e-mails need SMTP_HOST and ALERT_EMAIL_TO: {unset} is unset")
        return self

    @property
    def alert_log(self) -> Path:
        return self.home / "alerts.log"


class PlatformSettings(CommonSettings):
    """The processes that run ChurnOps: the local services, the runners, their metrics."""

    usage_telemetry: bool = Field(
        False,
        description="Let MLflow, Prefect and Evidently send their vendors usage data. Off: "
        "the `churnops` command and every process it starts run with each library's off "
        "switch (DO_NOT_TRACK, MLFLOW_DISABLE_TELEMETRY, PREFECT_SERVER_ANALYTICS_ENABLED).",
    )
    platform_host: str = Field(
        "127.0.0.1",
        description="Address the local services bind to. They have no sign-in: another "
        "address (0.0.0.0) opens Prefect's API and the Evidently UI to its whole network.",
    )
    prefect_port: Port = Field(
        4200,
        description="Local Prefect server port (0: the last `up`'s of this home while it is "
        "free, else a free one).",
    )
    mlflow_port: Port = Field(
        5000,
        description="Local MLflow server port (0: the last `up`'s of this home while it is "
        "free, else a free one).",
    )
    evidently_port: Port = Field(
        8000,
        description="Local Evidently UI port (0: the last `up`'s of this home while it is "
        "free, so stored report links keep working, else a free one; a report stored while "
        "no platform runs then has no link).",
    )
    runner_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Flow runner processes of `churnops up` (files processed at once); "
        "default: the number of cores.",
    )
    ops_metrics_namespace: str | None = Field(
        None,
        description="CloudWatch namespace of the operational metrics the alarms and the "
        "autoscaling watch (oldest file in input/ and processing/, failed flow runs, queued "
        "flow runs). Unset: nothing is published, so the local platform needs no AWS.",
    )
    ecs_agent_uri: str | None = Field(
        None,
        description="Set by ECS inside a task, not by you: the runner protects its task from "
        "scale-in and deployments while a flow run executes. Unset: no protection asked.",
    )

    def process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` as every process ChurnOps runs gets it: MLflow's client bounds where
        it sets none and, unless USAGE_TELEMETRY is on, the libraries' usage-data off
        switches (whatever it sets)."""
        switches = {} if self.usage_telemetry else NO_USAGE_TELEMETRY
        return MLFLOW_CLIENT_ENV | dict(environ) | switches


@dataclass(frozen=True)
class Settings:
    """The five groups, read together."""

    drop: DropSettings
    model: ModelSettings
    monitoring: MonitoringSettings
    alerts: AlertSettings
    platform: PlatformSettings

    @property
    def home(self) -> Path:
        return self.platform.home

    def replace(self, **changes: object) -> Settings:
        """These settings with some values changed, by their flat names (validated)."""
        groups = {}
        for attribute, group in GROUPS.items():
            current: CommonSettings = getattr(self, attribute)
            mine = {k: v for k, v in changes.items() if k in group.model_fields}
            groups[attribute] = (
                group.model_validate(current.model_dump() | mine) if mine else current
            )
        _refuse_unknown(changes)
        return Settings(**groups)


#: The groups, by their attribute on :class:`Settings`.
GROUPS: dict[str, type[CommonSettings]] = get_type_hints(Settings)


def _refuse_unknown(names: dict[str, object]) -> None:
    known = {name for group in GROUPS.values() for name in group.model_fields}
    if unknown := sorted(set(names) - known):
        raise TypeError(f"no such setting: {', '.join(unknown)}")


def get_settings(**overrides: object) -> Settings:
    """The settings, read now; overrides by flat name: ``get_settings(min_f1=0.9)``."""
    _refuse_unknown(overrides)
    return Settings(
        **{
            attribute: group(**{k: v for k, v in overrides.items() if k in group.model_fields})
            for attribute, group in GROUPS.items()
        }
    )
