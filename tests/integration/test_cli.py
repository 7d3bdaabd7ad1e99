"""The `churnops` command as a user runs it: fetch, train, process, grant-reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from churnops.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path / ".churnops"))
    for name in ("MLFLOW_TRACKING_URI", "DATABASE_URL", "DROP_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CV_FOLDS", "2")
    return tmp_path


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_fetch_train_and_process_a_file(home: Path, data_dir: Path) -> None:
    assert "data files in data" in run("data", "fetch", "--from", str(data_dir))
    output = run("train")
    assert "XGBoostChurnModel version 1" in output
    assert "alias 'staging': promoted" in output
    output = run("process", "data/customer_churn_1.csv")
    assert "status: processed" in output
    processed = home / ".churnops/drop/data/processed"
    assert (processed / "customer_churn_1.csv").exists()
    assert (processed / "customer_churn_1_predictions_XGBoostChurnModel_v1.csv").exists()


def test_process_a_missing_file_fails_clearly(home: Path) -> None:
    result = CliRunner().invoke(app, ["process", "nope.csv"])
    assert result.exit_code == 1
    assert "nope.csv is not a file" in result.output


def test_train_without_data_says_what_to_do(home: Path, monkeypatch) -> None:
    monkeypatch.setenv("CHURN_DATA_DIR", str(home / "empty"))
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 1
    assert "run `make data`" in result.output


def test_grant_reader_on_postgres(
    home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("DASHBOARD_DB_USER", "cli reader")
    monkeypatch.setenv("DASHBOARD_DB_PASSWORD", "s3cret'pw")
    assert "role 'cli reader' can read" in run("grant-reader")
    url = make_url(postgres_url).set(username="cli reader", password="s3cret'pw")
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pipeline_runs")).scalar() >= 0
    engine.dispose()
