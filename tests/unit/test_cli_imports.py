"""`churnops --help` and `churnops status` answer without loading the ML stack; an error is
one line; a password in a configured URL (``MLFLOW_TRACKING_URI=http://user:pw@host``) is
used, never written: not in a run's reason, the CLI's error line or the MLflow health probe's
host name."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from typer.testing import CliRunner

from churnops import cli, retry
from churnops.cli import _one_line, app
from churnops.drop.storage import brief
from churnops.model import registry, training
from churnops.model.churn_model import MlflowUnavailable, wait_for_tracking_server
from churnops.pipeline.per_file import FileOutcome
from churnops.platform.services import free_port
from churnops.settings import get_settings
from tests.processes import http_server, run_python

HEAVY = ("pandas", "xgboost", "mlflow", "evidently", "prefect", "sklearn", "optuna", "shap")

PROBE = """
import json, sys
from typer.testing import CliRunner
from churnops.cli import app
result = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}))
"""


@pytest.mark.parametrize(
    "command", [["--help"], ["status"], ["train", "--help"], ["retrain", "--help"]]
)
def test_light_commands_import_no_ml_library(command: list[str], tmp_path: Path) -> None:
    """A fresh interpreter per command: what this test process imported does not count.
    A home that does not exist yet (a typo, or before the first ``churnops up``) stays so."""
    env = {"CHURNOPS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    done = run_python(f"HEAVY = {HEAVY!r}\n{PROBE}", *command, env=env, check=True)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["code"] == 0, report["output"]
    assert report["loaded"] == [], report["loaded"]
    assert list(tmp_path.iterdir()) == []


def test_the_scoring_path_imports_nothing_of_training(tmp_path: Path) -> None:
    """The per-file pipeline (and the retraining trigger in it) loads no Optuna and no
    training code: the retraining lock's name lives beside the trigger."""
    probe = (
        "import json, sys\n"
        "import churnops.pipeline.per_file\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna'\n"
        "    or m in ('churnops.model.training', 'churnops.model.registry',\n"
        "             'churnops.pipeline.retraining'))))\n"
    )
    env = {"CHURNOPS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = run_python(probe, env=env, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("command", "env", "code", "said"),
    [
        (["status"], {"RETRAIN_MODE": "automatic"}, 2, "invalid setting: RETRAIN_MODE: "),
        (["up"], {"PREFECT_PORT": "70000"}, 2, "invalid setting: PREFECT_PORT: "),
        (["status"], {"SMTP_HOST": "mail"}, 2, "ALERT_EMAIL_TO is unset"),
        (["status"], {"ALERT_EMAIL_TO": "ops@example.com"}, 2, "SMTP_HOST is unset"),
        (  # S3 unreachable (or no credentials): botocore's error, one line
            ["reconcile", "s3://drop"],
            {
                "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
                "AWS_ACCESS_KEY_ID": "x",
                "AWS_SECRET_ACCESS_KEY": "x",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_MAX_ATTEMPTS": "1",
            },
            1,
            "EndpointConnectionError: Could not connect",
        ),
        (["reconcile", "ftp://x"], {}, 1, "'ftp://x' is neither s3://<bucket> nor file:///"),
        # each was a traceback at the first use of the database (report, process, a runner)
        (["report"], {"DATABASE_URL": "postgresql://u:pw@h:5432x/m"}, 2, "DATABASE_URL: "),
        (["report"], {"DATABASE_URL": "postgres://u:pw@h/m"}, 2, "not a sqlite:/// or "),
        (["report"], {"DATABASE_URL": "postgresql://u:p@w@h/m"}, 2, "must be written %40"),
        (["grant-reader"], {"DASHBOARD_DB_PASSWORD": ""}, 1, "set DASHBOARD_DB_PASSWORD"),
        (["report", "--out", "/dev/null"], {}, 1, "--out /dev/null is a file: give a folder"),
    ],
)
def test_a_bad_setting_or_argument_is_one_line_not_a_traceback(
    command: list[str], env: dict[str, str], code: int, said: str, tmp_path: Path
) -> None:
    """The installed command, as a user runs it."""
    churnops = str(Path(sys.executable).with_name("churnops"))
    env = {"CHURNOPS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **env}
    done = subprocess.run([churnops, *command], capture_output=True, text=True, env=env)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("error: ") and said in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ":pw@" not in done.stderr and ":p@w" not in done.stderr  # no password echoed


@pytest.mark.parametrize("command", ["report", "retrain"])
def test_the_metrics_database_down_is_one_line(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """MetricsDatabaseUnavailable (after the retries, shortened here) was no expected error:
    640 lines of traceback. In process: the one-line rule is the app's, as installed."""
    (tmp_path / "customer_churn_0.csv").write_text("x\n")
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.3)
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    port = free_port("127.0.0.1")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:pw@127.0.0.1:{port}/m")
    with pytest.raises(SystemExit) as ended:
        cli.app([command], prog_name="churnops")
    assert ended.value.code == 1
    said = capsys.readouterr().err
    assert said.startswith("error: MetricsDatabaseUnavailable: metrics database"), said
    assert len(said.strip().splitlines()) == 1 and ":pw@" not in said, said


def test_a_file_failed_for_want_of_the_platforms_mlflow_says_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`churnops process` on a home whose models the stopped platform serves: it printed
    MLflow's 'When an mlflow-artifacts URI was supplied, the tracking URI must be...'."""
    mlflow_says = (
        "MlflowException: When an mlflow-artifacts URI was supplied, the tracking URI must "
        "be a valid http or https URI, but it was currently set to sqlite://x/mlflow.db."
    )
    cli._print_outcome(
        FileOutcome("a.csv", "failed", mlflow_says, run="R", attempt=1), ui_running=False
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("failed a.csv: this home's models are served by the platform's")
    assert "start `churnops up`" in first


def test_a_staging_version_that_does_not_load_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version whose booster file was gone held the alias: `churnops train` and `retrain`
    were 200 lines of XGBoostError traceback (its path's 'mlflow' also drew the hint that
    the server was down); with its whole folder gone, MLflow's 'does not exist' was taken
    for 'no version has the alias' and the gate said so."""

    def broken(_: object) -> object:
        raise RuntimeError("Opening /h/mlflow/artifacts/xgb_model.json failed\n[bt] (0) 0x7f")

    settings = get_settings(churnops_home=Path("/nonexistent")).model
    monkeypatch.setattr(registry, "_holder", lambda _: None)  # no alias yet: a first model
    assert registry.deployed(settings, broken) == (None, set())
    monkeypatch.setattr(registry, "_holder", lambda _: "3")
    with pytest.raises(registry.UnloadableChampion) as raised:
        registry.deployed(settings, broken)
    said = cli._one_line(raised.value)
    assert cli._expected(raised.value)
    assert said.startswith(
        "UnloadableChampion: XGBoostChurnModel version 3 ('staging') does not load: move"
    ), said
    assert said.endswith("(RuntimeError: Opening /h/mlflow/artifacts/xgb_model.json failed)")


def test_a_stored_f1_only_study_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """`churnops train` on it was a traceback telling to set OPTUNA_STUDY, a setting no more."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="old", storage=storage, direction="maximize")
    with pytest.raises(training.StaleStudy) as raised:
        training.open_study(storage, "old", 0)
    assert cli._expected(raised.value)
    assert cli._one_line(raised.value) == (
        f"StaleStudy: Optuna study 'old' in {storage} was made by the F1-only search; the "
        "search has two objectives now: move that database aside, then train again"
    )


def test_data_fetch_copies_from_churn_data_dir_only_when_it_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Unset, its default ("data") was taken for a source: `data fetch --target DIR` said
    "data lacks customer_churn_0.csv, ..." instead of downloading."""
    from churnops.data import dataset

    asked = []
    monkeypatch.setattr(dataset, "fetch", lambda target, **how: asked.append(how) or [])
    monkeypatch.delenv("CHURN_DATA_DIR", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["data", "fetch", "--target", str(tmp_path)]).exit_code == 0
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path / "shared"))
    assert runner.invoke(app, ["data", "fetch", "--target", str(tmp_path)]).exit_code == 0
    assert [how["source_dir"] for how in asked] == [None, tmp_path / "shared"]


def test_the_hint_that_mlflow_is_down_goes_by_the_error_not_by_a_word_in_it() -> None:
    hint = "is `churnops up` running?"
    assert hint in cli._one_line(MlflowUnavailable("MLflow at http://h:5000 unreachable"))
    assert hint in cli._one_line(MlflowException("API request to http://h:5000/api failed"))
    assert hint not in cli._one_line(OSError("/home/u/mlflow/artifacts/model.json is missing"))
    missing = MlflowException("Registered Model with name=M not found", RESOURCE_DOES_NOT_EXIST)
    assert hint not in cli._one_line(missing)


@pytest.mark.parametrize(
    ("version", "code"), [(None, 5), ("3", 0)], ids=["nothing-trained", "same-fit"]
)
def test_train_exits_0_only_when_a_version_stands_for_the_fit(
    version: str | None, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`churnops train --data` on a file whose holdout split was too small trained nothing
    and exited 0, as when the same fit had made a version: `make register-model` and
    scripts went on with no model."""
    reason = "small.csv (holdout split) has 60 labeled rows, fewer than the 100 a holdout needs"
    outcome = registry.Outcome("skipped", reason, version=version)
    monkeypatch.setattr(registry, "train_and_register", lambda *_: outcome)
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    data = tmp_path / "small.csv"
    data.write_text("x\n")
    result = CliRunner().invoke(app, ["train", "--data", str(data)])
    assert result.exit_code == code, result.output
    assert f"skipped: {reason}" in result.output


# --- a password in a configured URL ---------------------------------------------------------
SECRET = "MLsecretPW"


def test_a_tracking_uri_with_a_login_passes_the_health_check(tmp_path: Path) -> None:
    """urllib took ``user:pw@127.0.0.1`` for the host: a name look-up of the password, and
    every file failed on an MLflow that was up."""
    (tmp_path / "health").write_text("OK")  # an MLflow-like /health, no login asked
    with http_server(partial(SimpleHTTPRequestHandler, directory=str(tmp_path))) as server:
        uri = f"http://mluser:{SECRET}@127.0.0.1:{server.server_port}"
        settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=uri)
        wait_for_tracking_server(settings.model)


def test_an_unreachable_tracking_server_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.2)
    uri = f"http://mluser:{SECRET}@127.0.0.1:{free_port('127.0.0.1')}"
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=uri)
    with pytest.raises(MlflowUnavailable) as raised:
        wait_for_tracking_server(settings.model)
    assert SECRET not in str(raised.value)
    assert "http://mluser:***@127.0.0.1" in str(raised.value)
    assert "Name or service not known" not in str(raised.value)


def test_a_reason_and_an_error_line_hide_a_quoted_urls_password() -> None:
    """MLflow's client quotes the URL it failed on; that text became the run's reason (its
    log, claim, database row, flow run state) and the CLI's error line."""
    exc = RuntimeError(f"API request to http://mluser:{SECRET}@10.0.0.5:5000/api/2.0 failed")
    for line in (brief(exc), _one_line(exc)):
        assert SECRET not in line
        assert "http://mluser:***@10.0.0.5:5000/api/2.0" in line
    assert brief(RuntimeError("s3://bucket/data/input/a.csv")).endswith(
        "s3://bucket/data/input/a.csv"
    )
