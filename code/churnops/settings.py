"""All configuration of ChurnOps, read from the environment when asked for.

Every knob is a field below; its environment variable is the field name in
upper case (``DATABASE_URL``, ``MLFLOW_TRACKING_URI``, ...). Defaults give the
local platform: everything lives under ``CHURNOPS_HOME`` (``.churnops``).
Nothing here reads the environment at import time: call :func:`get_settings`.

Prefect's and MLflow's clients read their own credentials on AWS
(``PREFECT_API_AUTH_STRING``, ``MLFLOW_TRACKING_USERNAME`` and ``_PASSWORD``, from
the task's secrets); Evidently's is passed by ChurnOps, so it is a field here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from churnops.results import ATTRIBUTION_NDCG, DRIFTED_SHARE

#: Usual names of a customer identifier column, tried in order (case, spaces and
#: underscores ignored: 'Customer ID' is 'customer_id').
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

#: The documented off switch of every library that sends usage data, as each reads it:
#: Evidently (any DO_NOT_TRACK; its UI sends an event per request otherwise), Prefect's
#: client (DO_NOT_TRACK 1/true/yes) and server (heartbeats), MLflow (DO_NOT_TRACK "true"
#: only, or its own variable). What every process ChurnOps starts gets while
#: USAGE_TELEMETRY is off; terraform/main.tf's local.no_usage_telemetry is the same map for
#: ECS and the Lambda (tests/terraform/test_apply_moto.py checks that they agree).
NO_USAGE_TELEMETRY: dict[str, str] = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


class Settings(BaseSettings):
    """The one place where ChurnOps is configured."""

    model_config = SettingsConfigDict(extra="ignore", protected_namespaces=())

    # --- privacy ----------------------------------------------------------------
    usage_telemetry: bool = Field(
        False,
        description="Let MLflow, Prefect and Evidently send their vendors usage data. Off: "
        "the `churnops` command and every process it starts run with each library's off "
        "switch (DO_NOT_TRACK, MLFLOW_DISABLE_TELEMETRY, PREFECT_SERVER_ANALYTICS_ENABLED).",
    )

    # --- where things live -------------------------------------------------
    churnops_home: Path = Field(
        Path(".churnops"), description="Folder holding all local state (git-ignored)."
    )
    churn_data_dir: Path = Field(
        Path("data"), description="Folder with the customer_churn_*.csv files."
    )

    # --- MLflow ------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        None, description="Tracking server or store; default: SQLite under CHURNOPS_HOME."
    )
    mlflow_experiment: str = Field(
        "churn-model-evaluation", description="MLflow experiment of the training runs."
    )
    model_name: str = Field("XGBoostChurnModel", description="Registered model name.")
    model_alias: str = Field(
        "staging", description="Alias of the version the pipeline scores with."
    )

    # --- training ----------------------------------------------------------
    training_file: str = Field(
        "customer_churn_0.csv", description="Default training file in CHURN_DATA_DIR."
    )
    optuna_storage: str | None = Field(
        None, description="Optuna RDB storage URL; default: SQLite under CHURNOPS_HOME."
    )
    optuna_study: str = Field(
        "xgboost-churn-cost",
        description="Optuna study of the search (two objectives: F1 and predict cost).",
    )
    cv_folds: int = Field(5, description="Cross-validation folds of the search.")
    holdout_fraction: float = Field(
        0.2, description="Share of the training file held out: in no version's fit, ever."
    )
    random_seed: int = Field(42, description="Seed of splits, folds, sampler and model.")
    # The promotion gate is churnops.model.registry.gate (docs/model.md says why).
    gate_min_f1: float = Field(
        0.70, description="Holdout F1 a first version needs (no version holds the alias)."
    )
    gate_min_roc_auc: float = Field(
        0.90, description="Holdout ROC AUC a first version needs (no version holds the alias)."
    )
    gate_min_f1_gain: float = Field(
        0.01,
        ge=0,
        description="F1 a challenger must gain over the alias holder's on the same unseen "
        "rows to take the alias (a tie keeps the holder), below the minimums or not.",
    )
    gate_min_holdout_rows: int = Field(
        100, ge=1, description="Fewest unseen labeled rows a challenger is judged on."
    )
    gate_min_holdout_positives: int = Field(
        10, ge=1, description="Fewest churned (and as many stayed) rows in that holdout."
    )

    # --- retraining ------------------------------------------------------------
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
        description="An automatic retraining starts at most once per this many minutes.",
    )
    retrain_lock_minutes: float = Field(
        60.0,
        gt=0,
        description="A retraining's lock expires after this long (a crashed holder frees it).",
    )

    # --- file drop -----------------------------------------------------------
    drop_storage: Literal["local", "s3"] = Field(
        "local", description="'local': a folder with the S3 layout; 's3': a bucket."
    )
    drop_bucket: str = Field(
        "churnops-drop", description="Bucket name (in events; the bucket itself on S3)."
    )
    local_drop_dir: Path | None = Field(
        None, description="Root of the local drop folder; default CHURNOPS_HOME/drop."
    )
    aws_endpoint_url: str | None = Field(None, description="AWS endpoint override (emulators).")
    max_file_bytes: int = Field(
        2 * 1024**3,
        description="Largest accepted file, as stored (checked before reading) and as decoded "
        "(gzip inflated, Parquet values; counted while reading). 2 GiB: about 20M rows of CSV, "
        "streamed in flat memory.",
    )
    chunk_rows: int = Field(
        200_000, gt=0, description="Rows read, validated, scored and written at a time."
    )
    drift_sample_rows: int = Field(
        50_000,
        gt=0,
        description="Rows of a file's seeded uniform sample that drift is measured on; counts, "
        "churn rate and quality scores use every row.",
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

    # --- exactly once: leases, retries, the reconciler ------------------------------
    lease_seconds: float = Field(
        30.0, description="A run whose heartbeat is older than this is dead (s)."
    )
    retry_first_seconds: float = Field(
        30.0,
        description="Wait before re-driving a run that failed on a dependency (s), doubling.",
    )
    retry_max_seconds: float = Field(
        1800.0, description="Longest wait between re-drives of a failed run (s)."
    )
    max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts at a run (failed on a dependency, or its runner killed) before "
        "its file goes to errored/ as 'gave up after N attempts' with an alert.",
    )
    attempt_timeout_seconds: float = Field(
        3600.0,
        description="An attempt still running after this stops renewing its lease, so the "
        "reconciler re-drives its run (s): the backstop behind every network timeout.",
    )
    network_timeout_seconds: float = Field(
        30.0,
        description="Timeout of one network call (s): metrics database statements and "
        "connections, the Evidently UI, SNS and SMTP. MLflow's client takes its own from "
        "code/churnops/platform/mlflow_client.json, locally and on ECS alike.",
    )
    dependency_wait_seconds: float = Field(
        10.0, description="How long a step waits for a database or MLflow that is down (s)."
    )
    reconcile_grace_seconds: float = Field(
        60.0, description="A file in input/ older than this that no run took is re-driven (s)."
    )
    reconcile_interval_seconds: float = Field(
        60.0, description="How often the scheduled reconciler runs (s)."
    )

    # --- metrics database ------------------------------------------------------
    database_url: str | None = Field(
        None, description="Metrics database, a SQLAlchemy URL; default: SQLite under CHURNOPS_HOME."
    )
    dashboard_db_user: str = Field(
        "grafana_reader", description="Read-only database role of the dashboards."
    )
    dashboard_db_password: SecretStr | None = Field(
        None, description="Its password (`churnops grant-reader` sets the role up)."
    )

    # --- Evidently -------------------------------------------------------------
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
    evidently_project: str = Field("churnops", description="Evidently project of the reports.")
    attribution_sample_rows: int = Field(
        500,
        ge=0,
        description="Rows of the drift sample (and of the reference) whose TreeSHAP feature "
        "attribution is compared; 0: no attribution drift. TreeSHAP costs about 0.2 ms a row "
        "(one core) with the shipped 61-tree model: 500 rows add under 0.1 s per file.",
    )

    # --- alert thresholds ----------------------------------------------------
    drift_share_threshold: float = Field(
        0.5, description="Alert when the share of drifted columns is above."
    )
    min_f1: float = Field(0.70, description="Alert when a labeled file's F1 is below.")
    min_precision: float = Field(0.70, description="Alert when its precision is below.")
    min_recall: float = Field(0.70, description="Alert when its recall is below.")
    min_accuracy: float = Field(0.70, description="Alert when its accuracy is below.")
    min_attribution_ndcg: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Alert when the NDCG of the file's feature-attribution order against the "
        "reference is below. Off (None) by default: an NDCG over 13 features moves little "
        "(complains rising from 3rd to 1st gives about 0.94 with the shipped model) and how "
        "little depends on the model: pick a value from your model's NDCG history.",
    )

    alert_on_rejected: bool = Field(
        True, description="Alert when a file is rejected as invalid (moved to errored/)."
    )

    # --- alert channels --------------------------------------------------------
    alerts_topic_arn: str | None = Field(None, description="SNS topic the alerts go to.")
    smtp_host: str | None = Field(
        None, description="SMTP server for alert e-mails (with ALERT_EMAIL_TO)."
    )
    smtp_port: int = Field(25, description="Its port.")
    smtp_user: str | None = Field(None, description="SMTP login user.")
    smtp_password: SecretStr | None = Field(None, description="SMTP login password.")
    smtp_starttls: bool = Field(False, description="Use STARTTLS.")
    alert_email_from: str = Field("churnops@localhost", description="Sender of alert e-mails.")
    alert_email_to: str | None = Field(
        None, description="Recipients of alert e-mails, comma-separated."
    )
    alert_send_attempts: int = Field(3, description="Tries per alert channel before giving up.")
    alert_retry_wait: float = Field(2.0, description="First wait between tries (s), doubling.")

    # --- Prefect and the local platform -------------------------------------------
    prefect_deployment: str = Field(
        "churn_prediction_pipeline/churnops", description="Deployment the trigger starts."
    )
    reconcile_deployment: str = Field(
        "reconcile/churnops", description="The scheduled reconciler's deployment."
    )
    retrain_deployment: str = Field(
        "retrain_model/retrain", description="The retraining flow's deployment."
    )
    platform_host: str = Field("127.0.0.1", description="Address the local services bind to.")
    prefect_port: int = Field(4200, description="Local Prefect server port (0: a free one).")
    mlflow_port: int = Field(5000, description="Local MLflow server port (0: a free one).")
    evidently_port: int = Field(8000, description="Local Evidently UI port (0: a free one).")
    runner_processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Flow runner processes of `churnops up` (files processed at once); "
        "default: the number of cores.",
    )
    runner_poll_seconds: float = Field(
        0.2,
        description="How often a flow runner asks Prefect for new runs (s); "
        "terraform sets 1 on ECS.",
    )
    drop_poll_seconds: float = Field(
        5.0, description="How often the platform lists an S3 drop bucket for new files (s)."
    )

    # --- operations (AWS) ---------------------------------------------------------------
    ops_metrics_namespace: str | None = Field(
        None,
        description="CloudWatch namespace of the operational metrics the alarms and the "
        "autoscaling watch (oldest file in input/ and processing/, failed flow runs, queued "
        "flow runs). Unset: nothing is published, so the local platform needs no AWS.",
    )
    ops_metrics_seconds: float = Field(
        60.0, description="How often each runner publishes the queued flow runs (s)."
    )
    ecs_agent_uri: str | None = Field(
        None,
        description="Set by ECS inside a task: the runner protects its task from scale-in "
        "and deployments while a flow run executes. Unset: no protection asked.",
    )

    @field_validator("id_columns", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``ID_COLUMNS=customer_id,msisdn`` (an environment variable is one string)."""
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    # --- derived locations ----------------------------------------------------------
    @property
    def home(self) -> Path:
        return self.churnops_home.resolve()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def optuna_storage_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    @property
    def metrics_db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'metrics.db'}"

    @property
    def drop_uri(self) -> str:
        """The default drop: ``s3://<DROP_BUCKET>`` or ``file:///<drop folder>``."""
        return f"s3://{self.drop_bucket}" if self.drop_storage == "s3" else self.drop_dir.as_uri()

    @property
    def drop_dir(self) -> Path:
        return (self.local_drop_dir or self.home / "drop").resolve()

    @property
    def evidently_workspace_dir(self) -> Path:
        return (self.evidently_workspace or self.home / "evidently").resolve()

    @property
    def score_minimums(self) -> dict[str, float]:
        """Quality score -> the value below which a labeled file raises an alert."""
        return {
            "f1": self.min_f1,
            "precision": self.min_precision,
            "recall": self.min_recall,
            "accuracy": self.min_accuracy,
        }

    @property
    def alert_thresholds(self) -> dict[str, float]:
        """Metric -> its alert threshold: the drifted share alerts above it, the scores
        below it. Stored with every run's metrics, so dashboards show what was in effect."""
        thresholds = {DRIFTED_SHARE: self.drift_share_threshold, **self.score_minimums}
        if self.min_attribution_ndcg is not None:  # alerts below it, when set
            thresholds[ATTRIBUTION_NDCG] = self.min_attribution_ndcg
        return thresholds

    @property
    def telemetry_env(self) -> dict[str, str]:
        """Variables a process ChurnOps starts gets so that its libraries send no usage
        data; none with USAGE_TELEMETRY on."""
        return {} if self.usage_telemetry else dict(NO_USAGE_TELEMETRY)

    @property
    def alert_log(self) -> Path:
        return self.home / "alerts.log"


def get_settings(**overrides: object) -> Settings:
    """Read the settings from the environment now (explicit overrides win)."""
    return Settings(**overrides)
