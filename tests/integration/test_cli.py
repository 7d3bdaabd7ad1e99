"""The `churnops` command as a user runs it: fetch, train, process, grant-reader."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest
from rich.console import Console
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from churnops import retry
from churnops.cli import app
from churnops.model import registry
from churnops.model.churn_model import aliased_version
from churnops.monitoring import db_roles
from churnops.platform import launch
from churnops.platform.services import free_port
from churnops.settings import get_settings
from tests.fixtures.postgres import refused
from tests.processes import LOOPBACK


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path / ".churnops"))
    for name in ("MLFLOW_TRACKING_URI", "DATABASE_URL", "DROP_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    return tmp_path


def run(*args: str, code: int = 0) -> str:
    """The command's output, once it exited with ``code``."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_fetch_train_and_process_a_file(home: Path, data_dir: Path) -> None:
    assert "data files in data" in run("data", "fetch", "--from", str(data_dir))
    output = run("train")
    assert "version 1 promoted: passes the minimums" in output
    assert "skipped: version 1 was fitted on these same rows" in run("train")  # exit 0
    output = run("process", "data/customer_churn_1.csv")
    assert "processed customer_churn_1.csv" in output
    # No platform runs: the report is where `churnops up` will serve it, and it says so.
    assert "report_url: http://127.0.0.1:8000/projects/" in output, output
    assert "(start `churnops up` to open it)" in output, output
    processed = home / ".churnops/drop/data/processed"
    (original,) = processed.glob("*/customer_churn_1.csv")
    assert original.read_bytes() == (data_dir / "customer_churn_1.csv").read_bytes()
    predictions = original.parent / "customer_churn_1_predictions_XGBoostChurnModel_v1.csv"
    assert predictions.exists()
    output = run("process", "--labels", str(predictions))  # carries Churn: its own labels
    assert "matched by rows (no identifier)" in output
    assert list(processed.glob(f"*/{predictions.name}.labeled-rows.csv"))

    invalid = home / "notes.csv"
    invalid.write_text("not,a,churn\nfile,at,all\n")
    assert "missing column" in run("process", str(invalid), code=3)
    assert "nothing to reconcile" in run("reconcile")


def test_process_exit_codes_for_skipped_and_failed(
    home: Path, moto_server: str, moto_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    assert "skipped" in run("process", f"s3://{moto_bucket}/data/input/gone.csv", code=5)
    assert "nothing to reconcile" in run("reconcile", f"s3://{moto_bucket}")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port(LOOPBACK)}")
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(retry, "RUN", retry.Backoff(3600.0, 3600.0))
    (home / "a.csv").write_text("x\n1\n")
    result = run("process", str(home / "a.csv"), code=4)
    assert "MLflow" in result and "unreachable" in result
    waiting = list((home / ".churnops/drop/data/processing").glob("*/a.csv"))
    assert len(waiting) == 1
    # Asked to reconcile before the retry is due: the file is named, with its next attempt.
    output = run("reconcile")
    assert "nothing to reconcile" not in output
    assert f"waiting a.csv (run {waiting[0].parent.name}): attempt 2 at 20" in output, output
    # The same on the bucket: `reconcile s3://...` reads the bucket, not the local drop.
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.put_object(Bucket=moto_bucket, Key="data/input/b.csv", Body=b"x\n1\n")
    run("process", f"s3://{moto_bucket}/data/input/b.csv", code=4)
    listed = s3.list_objects_v2(Bucket=moto_bucket, Prefix="data/processing/")["Contents"]
    (run_id,) = {x["Key"].split("/")[2] for x in listed if x["Key"].endswith("/b.csv")}
    # ... and a file S3 will not move in (archived) waits in input/.
    s3.put_object(
        Bucket=moto_bucket, Key="data/input/c.csv", Body=b"x\n1\n", StorageClass="GLACIER"
    )
    result = run("process", f"s3://{moto_bucket}/data/input/c.csv", code=4)
    assert "could not move it into processing/: ObjectNotInActiveTierError" in result, result
    output = run("reconcile", f"s3://{moto_bucket}")
    assert f"waiting b.csv (run {run_id}): attempt 2 at 20" in output, output
    assert "waiting c.csv (run " in output and "a.csv" not in output, output


def test_process_a_missing_file_fails_clearly(home: Path) -> None:
    assert "nope.csv is not a file" in run("process", "nope.csv", code=1)


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("s3://no-such-bucket/data/input/a.csv", "cannot list the drop bucket s3://no-such-bucket"),
        ("s3://{bucket}/a.csv", "key 'a.csv' is not a file directly in 'data/input/'"),
    ],
)
def test_process_an_s3_target_it_cannot_take_is_one_line(
    home: Path, moto_server: str, moto_bucket: str, target: str, said: str
) -> None:
    """Before: a 140-line traceback (NoSuchBucket; a ValueError for a key outside the drop
    folders)."""
    output = run("process", target.format(bucket=moto_bucket), code=1)
    assert said in output and "Traceback" not in output, output
    assert len(output.strip().splitlines()) <= 2, output


@pytest.mark.parametrize("command", [["reconcile", "s3://no-such-bucket"], ["status"]])
def test_a_drop_bucket_it_cannot_list_is_one_line(
    home: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Before: a traceback of some 130 lines ending in NoSuchBucket."""
    monkeypatch.setenv("DROP_STORAGE", "s3")
    monkeypatch.setenv("DROP_BUCKET", "no-such-bucket")
    output = run(*command, code=1)
    assert "cannot list the drop bucket s3://no-such-bucket" in output, output
    assert len(output.strip().splitlines()) <= 2, output


def test_train_without_data_says_what_to_do(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("CHURN_DATA_DIR", str(home / "empty"))
    assert "run `make data`" in run("train", code=1)


def test_grant_reader_on_postgres(
    home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setattr(db_roles, "DASHBOARD_ROLE", "cli reader")
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", "s3cret'pw")
    assert "role 'cli reader' can read" in run("grant-reader")
    url = make_url(postgres_url).set(username="cli reader", password="s3cret'pw")
    engine, owner = create_engine(url), create_engine(postgres_url)
    count = text("SELECT count(*) FROM pipeline_runs")
    try:
        with engine.connect() as connection, owner.connect() as as_owner:
            # The reader sees what the owner sees (a missing grant would raise instead).
            assert connection.execute(count).scalar() == as_owner.execute(count).scalar()
        refused(engine, "DELETE FROM run_metrics")
    finally:
        engine.dispose()
        owner.dispose()


def test_grant_reader_as_a_user_who_may_not_create_roles_says_so_in_one_line(
    home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATABASE_URL of the flow's own role, say: a 51-line InsufficientPrivilege traceback."""
    owner = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with owner.connect() as conn:
        conn.execute(text("DROP ROLE IF EXISTS plain_user"))
        conn.execute(text("CREATE ROLE plain_user LOGIN PASSWORD 'plain-pw'"))
        database = make_url(postgres_url).database
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO plain_user'))
    owner.dispose()
    url = make_url(postgres_url).set(username="plain_user", password="plain-pw")
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", "x")
    output = run("grant-reader", code=1)
    assert "'plain_user' may not set up database roles" in output, output
    assert "Traceback" not in output and "plain-pw" not in output


def test_retrain_prints_the_verdict_and_a_refusal_exits_0(
    home: Path,
    data_dir: Path,
    mlflow_server: str,
    session_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a copy of the session model: retraining moves aliases."""
    name = f"CliRetrain-{uuid.uuid4().hex[:8]}"
    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    copy = client.copy_model_version(f"models:/{session_model}/1", name)
    client.set_registered_model_alias(name, "staging", copy.version)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MODEL_NAME", name)
    monkeypatch.setenv("CHURN_DATA_DIR", str(data_dir))

    nothing = run("retrain", code=5)
    assert "skipped: no labeled file" in nothing

    processed = run("process", str(data_dir / "customer_churn_synthetic_1.csv"))
    assert "retraining suggested: run `churnops retrain`" in processed  # the default mode

    output = run("retrain")  # exit code 0, promoted or refused: asserted by run()
    assert "version 2 " in output and f"(parent version {copy.version})" in output
    assert f"of current staging version {copy.version} on the same rows" in output
    assert "on customer_churn_synthetic_1.csv: challenger f1" in output  # both models, both
    assert "on training file's holdout: challenger f1" in output  # holdouts
    holder = client.get_model_version_by_alias(name, "staging").version
    assert holder == ("2" if "version 2 promoted" in output else copy.version)


def test_a_service_down_is_one_line_not_a_traceback(tmp_path: Path, data_dir: Path) -> None:
    """The installed command, as a user runs it: MLflow named but not there."""
    env = {
        "PATH": os.environ["PATH"],
        "CHURNOPS_HOME": str(tmp_path / "not-yet"),
        "CHURN_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port(LOOPBACK)}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    churnops = str(Path(sys.executable).with_name("churnops"))
    done = subprocess.run([churnops, "train"], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and last.startswith("error: "), done.stderr
    assert "MLFLOW_TRACKING_URI" in last


def test_up_trains_a_model_whose_alias_was_deleted(
    home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registered model no version of which holds the alias (deleted by hand): `up`'s model
    step said "training", skipped on version 1's identical fit and stopped the platform
    ("the trained model was not promoted")."""
    monkeypatch.setenv("CHURN_DATA_DIR", str(data_dir))
    run("train")
    model = get_settings().model
    client = mlflow.MlflowClient(model.tracking_uri, model.tracking_uri)
    client.delete_registered_model_alias(model.model_name, model.model_alias)
    console = Console(file=io.StringIO(), width=200)
    launch._ensure_model(get_settings(), console)  # the step of `churnops up`
    output = console.file.getvalue()
    assert "no version has alias 'staging'" in output, output
    assert "trained and registered version 2" in output, output
    assert aliased_version(model.model_name, model.model_alias) == "2"
