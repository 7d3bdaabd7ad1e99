"""MLflow's basic-auth app as the ECS task runs it (terraform/services.tf: the config
file written from MLFLOW_AUTH_INI, the admin from MLFLOW_AUTH_ADMIN_USERNAME and
_PASSWORD, the Flask key), and ChurnOps' MLflow client against it: the worker's
MLFLOW_TRACKING_USERNAME and _PASSWORD get in, nothing else does, and the health
check the flow and the load balancer use stays open."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from churnops.model.churn_model import wait_for_tracking_server
from churnops.platform.services import free_port, stop_group
from churnops.settings import get_settings
from tests.processes import LOOPBACK, wait_for_port

pytestmark = pytest.mark.integration

USER = "churnops"
PASSWORD = f"pw-{uuid.uuid4().hex}"
#: The task's command: write the auth config, then exec the server with its arguments.
WRITE_CONFIG_THEN_SERVE = (
    'printf \'%s\\n\' "$MLFLOW_AUTH_INI" > "$MLFLOW_AUTH_CONFIG_PATH" && exec mlflow server "$@"'
)


@pytest.fixture(scope="module")
def mlflow_with_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    port = free_port(LOOPBACK)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic-auth.ini"),
        "MLFLOW_AUTH_INI": "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{root / 'basic-auth.db'}",
        "MLFLOW_AUTH_ADMIN_USERNAME": USER,
        "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    command = ["sh", "-c", WRITE_CONFIG_THEN_SERVE, "mlflow"]
    command += ["--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--app-name", "basic-auth"]
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for_port(port, process, timeout=120)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop_group(process, 20)


def test_the_health_check_needs_no_login(mlflow_with_auth: str, tmp_path: Path) -> None:
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=mlflow_with_auth)
    wait_for_tracking_server(settings)  # raises MlflowUnavailable when refused


def test_the_workers_credentials_get_in(
    mlflow_with_auth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    client = mlflow.MlflowClient(tracking_uri=mlflow_with_auth)

    experiment = client.create_experiment(f"auth-{uuid.uuid4().hex[:8]}")

    assert client.get_experiment(experiment).experiment_id == experiment


@pytest.mark.parametrize("password", [None, "wrong"])
def test_anyone_else_is_refused(
    mlflow_with_auth: str, monkeypatch: pytest.MonkeyPatch, password: str | None
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    with pytest.raises(MlflowException, match="401"):
        mlflow.MlflowClient(tracking_uri=mlflow_with_auth).search_experiments(max_results=1)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{mlflow_with_auth}/", timeout=10)
