"""The MLflow container's command (terraform/services.tf, as ``python -c <source>``):
MLflow's basic-auth app, and a login for the worker that can delete, grant and see nothing
but churnops' experiment and ``MODEL_NAME`` (EDIT on both, created first: a creator gets
MANAGE). The user store starts empty at every start; idempotent; no password printed.

It writes the auth config from ``MLFLOW_AUTH_INI`` and execs ``mlflow server`` with its own
arguments. The set-up runs in a grandchild (an orphan the task's init reaps: the server
would leave an ended child a zombie), which touches ``MLFLOW_WORKER_READY`` for the health
check once the user is set up."""

import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.server.auth.client import AuthServiceClient

#: What the worker does with both: runs, metrics, artifacts, logged models, versions,
#: their tags, the alias. EDIT reads and updates; deleting and granting need MANAGE.
WORKER_PERMISSION = "EDIT"
START_TIMEOUT = 300.0


def log(message: str) -> None:
    print(f"mlflow-start: {message}", flush=True)


def wait_for_server(url: str) -> None:
    """Until /health answers (it needs no login): the server is still starting."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"mlflow-start: no MLflow at {url}: {exc}") from exc
            time.sleep(1)


def set_up_worker(url: str, username: str, password: str) -> None:
    """The worker's user and its two grants, as the admin (MLflow's client reads its login
    from MLFLOW_TRACKING_USERNAME and _PASSWORD)."""
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ["MLFLOW_AUTH_ADMIN_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from churnops.model.registry import EXPERIMENT
    from churnops.settings import get_settings

    model = get_settings().model
    auth = get_app_client("basic-auth", tracking_uri=url)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    try:
        auth.create_user(username, password)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(username, password)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    try:
        client.get_registered_model(model.model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model.model_name)
    grant(auth, username, "experiment", experiment_id)
    grant(auth, username, "registered_model", model.model_name)
    log(
        f"user {username}: {WORKER_PERMISSION} on experiment {EXPERIMENT}"
        f" ({experiment_id}) and registered model {model.model_name}"
    )


def grant(auth: "AuthServiceClient", username: str, kind: str, resource: str) -> None:
    """Exactly WORKER_PERMISSION on one resource, whatever grant was there."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, kind, resource, WORKER_PERMISSION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, WORKER_PERMISSION)


def main(argv: list[str]) -> None:
    Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"]).write_text(os.environ["MLFLOW_AUTH_INI"] + "\n")
    ready = Path(os.environ["MLFLOW_WORKER_READY"])
    ready.unlink(missing_ok=True)
    child = os.fork()
    if child == 0:
        if os.fork() == 0:  # not the server's child: the task's init reaps it when it ends
            os._exit(set_up(argv, ready))
        os._exit(0)
    os.waitpid(child, 0)
    os.execvp("mlflow", ["mlflow", "server", *argv])


def set_up(argv: list[str], ready: Path) -> int:
    """The worker's user, once the server answers; touches ``ready``. The exit status."""
    port = argv[argv.index("--port") + 1] if "--port" in argv else "5000"  # mlflow's default
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url)
        set_up_worker(
            url, os.environ["MLFLOW_WORKER_USERNAME"], os.environ["MLFLOW_WORKER_PASSWORD"]
        )
        ready.touch()
    except BaseException as exc:  # the log says why; the health check fails
        log(f"the worker's user is not set up: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    main(sys.argv[1:])
