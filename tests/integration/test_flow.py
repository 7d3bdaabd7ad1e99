"""The Prefect flow end to end on real parts: S3 and SNS on moto, Postgres, MLflow, the
session's Prefect server; every assertion reads the result back from the service that
holds it."""

from __future__ import annotations

import gzip
import io
import time
import zipfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import boto3
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops import retry
from churnops.data.schema import RAW_COLUMNS
from churnops.drop.storage import S3DropStorage
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline.flow import churn_prediction_pipeline
from churnops.settings import Settings, get_settings
from tests.exactly_once import check_records_agree, pipeline_runs
from tests.fixtures.model import SESSION_MODEL as MODEL
from tests.fixtures.moto import received_messages, sns_topic_to_queue


@dataclass
class Platform:
    settings: Settings
    s3: object
    bucket: str
    queue: str
    endpoint: str

    def drop(self, name: str, data: bytes):
        key = f"data/input/{name}"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        return self.trigger(key)

    def trigger(self, key: str):
        """Run the flow for ``key``; then its five records must agree (every test here)."""
        state = churn_prediction_pipeline(drop=f"s3://{self.bucket}", key=key, return_state=True)
        storage = S3DropStorage(self.bucket, self.s3)
        metrics_url = self.settings.monitoring.metrics_db_url
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
        check_records_agree(storage, metrics_url, [flow_run])
        return state

    def keys(self, stage: str) -> set[str]:
        """The file names in a stage's folders (its run folders included)."""
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"data/{stage}/")
        return {o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def log(self, outcome: dict) -> str:
        return self.read(f"data/logs/{outcome['run']}/{outcome['name']}.log").decode()

    def alerts(self) -> list[dict]:
        return received_messages(self.endpoint, self.queue)

    def runs(self) -> pd.DataFrame:
        """This bucket's rows (other modules' files share the session's database)."""
        runs = pipeline_runs(self.settings.monitoring.metrics_db_url)
        return runs[runs["bucket"] == self.bucket]

    def metrics(self, run_id: str) -> pd.DataFrame:
        with closing(MetricsStore(self.settings.monitoring.metrics_db_url)) as store:
            return store.metrics(run_id)


@pytest.fixture(scope="module")
def platform(
    mlflow_server: str,
    session_model: str,
    prefect_server: str,
    moto_server: str,
    postgres_url: str,
    data_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    s3 = boto3.client("s3", endpoint_url=moto_server)
    bucket = "flow-test-drop"
    s3.create_bucket(Bucket=bucket)
    topic, queue = sns_topic_to_queue(moto_server)
    env = {
        "CHURNOPS_HOME": str(tmp_path_factory.mktemp("flow-home")),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_NAME": MODEL,
        "DROP_STORAGE": "s3",
        "DROP_BUCKET": bucket,
        "AWS_ENDPOINT_URL": moto_server,
        "ALERTS_TOPIC_ARN": topic,
        "DATABASE_URL": postgres_url,
        "MAX_FILE_BYTES": "1000000",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr(retry, "RUN", retry.Backoff(3600.0, 3600.0))
        settings = get_settings()
        # The session's Prefect server (one per session), not a harness of its own.
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            yield Platform(settings, s3, bucket, queue, moto_server)


def test_labeled_file_is_scored_stored_and_kept(platform: Platform, data_dir: Path) -> None:
    original = (data_dir / "customer_churn_1.csv").read_bytes()
    state = platform.drop("customer_churn_1.csv", original)
    assert state.is_completed()
    outcome = state.result()
    assert outcome["status"] == "processed"

    predictions = f"customer_churn_1_predictions_{MODEL}_v1.csv"
    assert {"customer_churn_1.csv", predictions} <= platform.keys("processed")
    folder = f"data/processed/{outcome['run']}"
    assert platform.read(f"{folder}/customer_churn_1.csv") == original
    assert outcome["predictions_key"] == f"{folder}/{predictions}"
    scored = pd.read_csv(io.BytesIO(platform.read(f"{folder}/{predictions}")))
    assert list(scored.columns) == [*RAW_COLUMNS, "churn_prediction", "churn_probability"]
    assert len(scored) == 1050
    assert scored["churn_probability"].between(0, 1).all()

    log = platform.log(outcome)
    for step in ("claim", "load model", "score", "monitor", "alert", "finish"):
        assert f"| {step} | ok |" in log

    html = rendered_artifact(state)
    assert "<td>outcome</td>\n<td><strong>processed</strong></td>" in html
    assert f"<code>{folder}/{predictions}</code>" in html
    assert f'<a href="{outcome["report_url"]}">open</a>' in html

    run = platform.runs().set_index("id").loc[outcome["run_id"]]
    assert (run["status"], run["model_name"], run["model_version"]) == ("processed", MODEL, "1")
    assert run["rows"] == 1050 and run["report_url"].startswith("http")
    metrics = platform.metrics(outcome["run_id"])
    names = set(metrics["metric"])
    assert {"f1", "precision", "recall", "accuracy", "roc_auc", "drifted_share"} <= names
    assert {"drifted_count", "drift_score", "predicted_churn_rate"} <= names
    assert set(metrics.loc[metrics["metric"] == "drift_score", "label"]) >= {"call_failure"}


@pytest.mark.parametrize(
    ("name", "subject", "says"),
    [
        ("customer_churn_2_majority_drifted.csv", "drift", "call_failure"),
        ("customer_churn_synthetic_1.csv", "low scores", "< minimum 0.700"),
    ],
)
def test_a_drifted_or_low_scoring_file_raises_its_alert(
    platform: Platform, data_dir: Path, name: str, subject: str, says: str
) -> None:
    platform.alerts()  # start from an empty queue
    state = platform.drop(name, (data_dir / name).read_bytes())
    assert state.is_completed()
    [alert] = [a for a in platform.alerts() if name in a["Message"]]
    assert subject in alert["Subject"] and says in alert["Message"]
    assert state.result()["report_url"] in alert["Message"]


def test_unlabeled_file_gets_drift_only(platform: Platform, data_dir: Path) -> None:
    frame = pd.read_csv(data_dir / "customer_churn_1.csv").drop(columns="Churn")
    state = platform.drop("unlabeled.csv", frame.to_csv(index=False).encode())
    assert state.is_completed()
    outcome = state.result()
    assert outcome["status"] == "processed"
    names = set(platform.metrics(outcome["run_id"])["metric"])
    assert "drifted_share" in names and "predicted_churn_rate" in names
    assert not names & {"f1", "precision", "recall", "accuracy", "roc_auc"}


def test_special_characters_in_names(platform: Platform, data_dir: Path) -> None:
    name = "customer churn+1 é.csv"
    state = platform.drop(name, (data_dir / "customer_churn_1.csv").read_bytes())
    assert state.is_completed()
    assert name in platform.keys("processed")
    assert f"customer churn+1 é_predictions_{MODEL}_v1.csv" in platform.keys("processed")


def _good(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "customer_churn_1.csv").head(50)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _xlsx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    return out.getvalue()


#: A malformed file made from 50 good rows, and what its rejection says.
MALFORMED = {
    "empty.csv": (lambda good: b"", "file is empty"),
    "blank.csv": (lambda good: b"  \n\n", "file is empty"),
    "header_only.csv": (lambda good: _csv(good.head(0)), "header but no data rows"),
    "binary.csv": (lambda good: b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary, not a CSV"),
    "broken_quotes.csv": (lambda good: b'a,b\n1,"2\n3,4', "not a parsable CSV"),
    "excel.xlsx": (lambda good: _xlsx(), "is an Excel workbook (.xlsx)"),
    "cut.csv.gz": (lambda good: gzip.compress(_csv(good))[:200], "not a readable gzip file"),
    "broken.parquet": (lambda good: b"PAR1" + bytes(64) + b"PAR1", "not a readable Parquet file"),
    "concatenated.csv": (lambda good: _csv(good) * 2, "the header line is repeated at lines 52"),
    "missing_column.csv": (
        lambda good: _csv(good.drop(columns="Status")),
        "missing column 'status'",
    ),
    "output_column.csv": (  # other extra columns pass through (test_session_model.py)
        lambda good: _csv(good.assign(churn_probability=0.5)),
        "column 'churn_probability' takes the name of an output column",
    ),
    "text_in_numbers.csv": (
        lambda good: _csv(good.astype({"Age": object}).assign(Age="old")),
        "'age' must be numeric",
    ),
    "out_of_range.csv": (
        lambda good: _csv(good.assign(**{"Age Group": 9})),
        "'age_group' out of range",
    ),
    "missing_values.csv": (
        lambda good: _csv(good.assign(Complains=None)),
        "'complains' has 50 missing value(s)",
    ),
    "negative_counts.csv": (
        lambda good: _csv(good.assign(**{"Seconds of Use": -5})),
        "'seconds_of_use' out of range",
    ),
    "too_large.csv": (
        lambda good: _csv(pd.concat([good] * 700)),
        "over the limit of 1,000,000 bytes",
    ),
    "json.csv": (lambda good: b'{"customers": [1, 2, 3]}', "missing column"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_file_ends_in_errored_with_its_reason(
    platform: Platform, data_dir: Path, name: str
) -> None:
    make, expected = MALFORMED[name]
    state = platform.drop(name, make(_good(data_dir)))
    assert state.is_failed() and state.name == "Rejected"
    assert state.message.startswith("errored:")
    assert expected in state.message
    assert name in platform.keys("errored")
    assert name not in platform.keys("processing") | platform.keys("input")
    assert expected in platform.log(state.result(raise_on_failure=False))
    run = platform.runs().set_index("file_name").loc[name]
    assert run["status"] == "errored" and expected in run["error"]


def test_a_rejected_file_says_so_in_its_state_artifact_log_and_alert(
    platform: Platform, data_dir: Path
) -> None:
    """Rejected, not Completed; every reason in the artifact's list, read back from the
    server and rendered; no traceback in the run's log; an alert by SNS."""
    name = "pipes_and_stars.csv"
    frame = _good(data_dir).astype({"Age": object, "Status": object})
    frame = frame.assign(Age="a|b", Status="*x*")
    platform.alerts()  # start from an empty queue
    state = platform.drop(name, _csv(frame))
    assert state.is_failed() and state.name == "Rejected"
    html = rendered_artifact(state)
    assert "<td>outcome</td>\n<td><strong>rejected</strong></td>" in html
    items = [line for line in html.splitlines() if line.startswith("<li>")]
    assert any("'age' must be numeric" in item for item in items), html
    assert any("'status' must be numeric" in item for item in items), html
    assert html.count("<table>") == 1 and "|" not in html.replace("a|b", ""), html

    text = run_log(state.state_details.flow_run_id, until="Finished in state Rejected")
    assert "'age' must be numeric" in text and "Traceback" not in text, text
    [alert] = [a for a in platform.alerts() if name in a["Message"]]
    assert "rejected file" in alert["Subject"] and "'status' must be numeric" in alert["Message"]


def run_log(flow_run_id: object, until: str, wait: float = 60.0) -> str:
    """The flow run's log as the server holds it, once ``until`` has arrived (Prefect
    ships log lines in batches, after the run's end)."""
    deadline = time.monotonic() + wait
    ids = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    while True:
        with get_client(sync_client=True) as client:
            text = "\n".join(entry.message for entry in client.read_logs(log_filter=ids))
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def rendered_artifact(state) -> str:
    """The run's markdown artifact as the server holds it, rendered as the UI does (GFM)."""
    with get_client(sync_client=True) as client:
        ids = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        [artifact] = client.read_artifacts(flow_run_filter=ids)
    assert artifact.type == "markdown"
    return MarkdownIt("commonmark").enable("table").render(artifact.data)
