"""MLflow's basic-auth app as the ECS task runs it (terraform/services.tf: the command
terraform/scripts/mlflow_start.py with the task's variables), and ChurnOps against it
with the worker's own login: it trains, registers a version, moves the alias and
scores; it cannot administer users or permissions, delete, or see anything but its
experiment and model; nobody without a login gets in; the health check the flow and
the load balancer use stays open; a restart sets the same user up again."""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from churnops.model import registry
from churnops.model.churn_model import load_aliased_model, wait_for_tracking_server
from churnops.model.registry import TrainingOptions, train_and_register
from churnops.settings import Settings, get_settings
from tests.fixtures.mlflow_server import MlflowServer
from tests.fixtures.model import FAST_PARAMS
from tests.processes import eventually

START_SCRIPT = Path(__file__).parents[2] / "terraform" / "scripts" / "mlflow_start.py"
SERVICES_TF = START_SCRIPT.parents[1] / "services.tf"
ADMIN = ("churnops", f"admin-{uuid.uuid4().hex}")
WORKER = ("churnops-worker", f"worker-{uuid.uuid4().hex}")
EXPERIMENT = registry.EXPERIMENT  # a name fixed in code: the worker's and the start's
MODEL = "AuthChurnModel"


class AuthServer(MlflowServer):
    """``python -c <mlflow_start.py> <mlflow server arguments>`` as the task runs it."""

    @property
    def ready(self) -> Path:
        return self.root / "worker.ready"

    def command(self) -> list[str]:
        arguments = super().command()[2:]  # the same store, port and worker count
        store = arguments.index("--backend-store-uri")
        del arguments[store : store + 2]  # the start script reads it from the variables
        return [
            sys.executable,
            "-c",
            START_SCRIPT.read_text(),
            *arguments,
            "--app-name",
            "basic-auth",
        ]

    def env(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = super().env() | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{self.root / 'mlflow.db'}",
            "MLFLOW_AUTH_CONFIG_PATH": str(self.root / "basic-auth.ini"),
            "MLFLOW_AUTH_INI": task_auth_ini(self.root / "basic-auth.db"),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            "MLFLOW_WORKER_USERNAME": WORKER[0],
            "MLFLOW_WORKER_PASSWORD": WORKER[1],
            "MLFLOW_WORKER_READY": str(self.ready),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "flask-key-of-the-test",
            # churnops' setting, which the worker reads too.
            "MODEL_NAME": MODEL,
        }
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        return env

    def wait_ready(self) -> None:
        # The ready file: what the container's health check waits for.
        log = (self.root / "server.log").read_text
        assert eventually(self.ready.exists, 120, 0.5), log()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    with AuthServer(tmp_path_factory.mktemp("mlflow-auth")) as started:
        yield started


def task_auth_ini(database: Path) -> str:
    """The task's MLFLOW_AUTH_INI (terraform/services.tf), its user store at ``database``."""
    found = re.search(r'MLFLOW_AUTH_INI\s*=\s*"(.*)"', SERVICES_TF.read_text())
    assert found, "no MLFLOW_AUTH_INI in services.tf"
    ini = found[1].encode().decode("unicode_escape")
    return re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{database}", ini)


def login(monkeypatch: pytest.MonkeyPatch, user: tuple[str, str]) -> None:
    """MLflow's client reads its login from these, as on the worker."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def worker_settings(server: AuthServer, home: Path) -> Settings:
    return get_settings(churnops_home=home, mlflow_tracking_uri=server.url, model_name=MODEL)


def test_the_set_up_process_leaves_the_server_no_zombie(server: AuthServer) -> None:
    """The set-up ran in a grandchild, not a child the server would never wait for."""
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    states = {
        child: Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        for child in children
    }
    assert "Z" not in states.values(), states


def test_the_health_check_needs_no_login(server: AuthServer, tmp_path: Path) -> None:
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=server.url)
    wait_for_tracking_server(settings.model)  # raises MlflowUnavailable when refused


@pytest.mark.parametrize("user", [None, (ADMIN[0], "wrong"), (WORKER[0], ADMIN[1])])
def test_anyone_else_is_refused(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch, user: tuple[str, str] | None
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if user:
        login(monkeypatch, user)

    with pytest.raises(MlflowException, match="401"):
        mlflow.MlflowClient(tracking_uri=server.url).search_experiments(max_results=1)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(f"{server.url}/", timeout=10)


def test_the_worker_trains_registers_moves_the_alias_and_scores(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path
) -> None:
    """The first version of the (empty) model the start created: runs, the logged model,
    the version, its tags, the alias; then the model loaded by alias, as a file's run does."""
    login(monkeypatch, WORKER)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # restored after: training sets it
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    settings = worker_settings(server, tmp_path)
    training = data_dir / "customer_churn_0.csv"

    outcome = train_and_register(settings, TrainingOptions(data_file=training, params=FAST_PARAMS))

    assert outcome.status == "promoted", outcome.reason
    loaded = load_aliased_model(settings.model)
    assert loaded.version == "1"
    rows = pd.read_csv(training, nrows=20)
    assert loaded.model.predict(None, rows).isin([0, 1]).all() and len(rows) == 20


def test_the_worker_has_edit_on_its_experiment_and_model_and_nothing_else(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    login(monkeypatch, ADMIN)
    admin = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    auth = get_app_client("basic-auth", tracking_uri=server.url)
    own = admin.get_experiment_by_name(EXPERIMENT).experiment_id
    other = admin.create_experiment(f"other-{uuid.uuid4().hex[:8]}")
    admin.create_registered_model(other_model := f"Other{uuid.uuid4().hex[:8]}")
    assert auth.get_user(WORKER[0]).is_admin is False
    assert auth.get_user_permission(WORKER[0], "experiment", own).permission == "EDIT"
    assert auth.get_user_permission(WORKER[0], "registered_model", MODEL).permission == "EDIT"

    login(monkeypatch, WORKER)
    worker = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    as_worker = get_app_client("basic-auth", tracking_uri=server.url)
    refused = pytest.raises(MlflowException, match=r"403|PERMISSION_DENIED")
    with refused:
        as_worker.create_user(f"intruder-{uuid.uuid4().hex[:8]}", "pw")
    with refused:
        as_worker.update_user_admin(WORKER[0], True)
    with refused:
        as_worker.grant_user_permission(WORKER[0], "experiment", other, "MANAGE")
    with refused:
        worker.get_experiment(other)
    with refused:
        worker.set_registered_model_alias(other_model, "staging", "1")
    with refused:
        worker.delete_registered_model(MODEL)  # EDIT: no deleting
    with refused:
        worker.delete_experiment(own)
    assert [e.name for e in worker.search_experiments()] == [EXPERIMENT]


def test_a_restart_sets_up_the_same_user_again(
    server: AuthServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Idempotent: the user store kept (on ECS it starts empty), the user exists, its
    password and grants are set again; the worker still loads its model."""
    server.stop()
    server.start()
    login(monkeypatch, WORKER)
    assert load_aliased_model(worker_settings(server, tmp_path).model).version == "1"
    assert "user churnops-worker: EDIT" in (server.root / "server.log").read_text()
