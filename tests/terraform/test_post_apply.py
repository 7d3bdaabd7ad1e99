"""The scripts an operator runs on a deployment, from the terraform outputs.

terraform/scripts/post_apply.py: the .env it writes and the registration of the Prefect
deployments by a one-off ECS task (botocore's Stubber checks each request against the API).

`make tunnel SERVICE=<ui>`: the SSM target and command built from the terraform outputs
and the ECS API's answers (shaped as ECS answers for a Fargate task with ECS Exec;
moto's ECS has no runtime ids or exec agents). That the UI services run with ECS Exec
and its task-role policy is checked on the moto deployment (test_apply_moto.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from terraform.scripts import post_apply, tunnel

from .conftest import REPO, TERRAFORM_DIR

CLUSTER = "churnops-stg"
#: The outputs the scripts read, by name (outputs.json wraps each value: {"value": ...}).
OUTPUTS = {
    "aws_region": "eu-west-1",
    "bucket_name": "churnops-stg-drop-1",
    "alerts_topic_arn": "arn:aws:sns:eu-west-1:1:churnops-stg-alerts",
    "ui_urls": {"mlflow": "http://lb:5000", "grafana": "http://lb:3000"},
    "internal_urls": {
        "mlflow": "http://mlflow.churnops-stg.internal:5000",
        "prefect-server": "http://prefect-server.churnops-stg.internal:4200",
        "evidently": "http://evidently.churnops-stg.internal:8000",
        "grafana": "http://grafana.churnops-stg.internal:3000",
    },
    "ecs_cluster_name": CLUSTER,
    "ecs_service_names": {"worker": "worker"},
    "mlflow_auth_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/mlflow",
    "prefect_auth_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/prefect",
    "grafana_admin_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/grafana",
    "deployments_task": {
        "cluster": "churnops-stg",
        "task_definition": "arn:aws:ecs:eu-west-1:1:task-definition/churnops-stg-worker:3",
        "container": "worker",
        "command": ["python", "-m", "churnops.platform.deployments"],
        "subnets": ["subnet-a", "subnet-b"],
        "security_groups": ["sg-tasks"],
        "assign_public_ip": False,
    },
    "db_bootstrap_task": {
        "cluster": "churnops-stg",
        "task_definition": "arn:aws:ecs:eu-west-1:1:task-definition/churnops-stg-db-init:1",
        "container": "db-init",
        "subnets": ["subnet-a", "subnet-b"],
        "security_groups": ["sg-db-init"],
        "assign_public_ip": False,
    },
}


def write_outputs(tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({name: {"value": value} for name, value in OUTPUTS.items()}))
    return path


def test_the_urls_are_printed_and_no_file_is_written(tmp_path: Path, capsys, monkeypatch) -> None:
    """No `.env`: `pipenv run` loads one into every command, so `make demo` ran against AWS."""
    outputs = write_outputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    post_apply.main(["urls", str(outputs)])
    printed = capsys.readouterr().out
    assert "http://lb:5000" in printed and ":churnops-stg-alerts" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs.json"]


TASK = OUTPUTS["deployments_task"]
BOOTSTRAP = OUTPUTS["db_bootstrap_task"]
TASK_ARN = "arn:aws:ecs:eu-west-1:1:task/churnops-stg/0123456789abcdef"


def stubbed_ecs(exit_code: int | None, task: dict = TASK) -> tuple[object, Stubber]:
    """An ECS client whose answers are canned and whose requests botocore validates."""
    ecs = boto3.client(
        "ecs", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(ecs)
    override = {"name": task["container"], "command": task.get("command")}
    stubber.add_response(
        "run_task",
        {"tasks": [{"taskArn": TASK_ARN, "lastStatus": "PROVISIONING"}], "failures": []},
        {
            "cluster": "churnops-stg",
            "taskDefinition": task["task_definition"],
            "launchType": "FARGATE",
            "count": 1,
            "startedBy": "make-apply",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": ["subnet-a", "subnet-b"],
                    "securityGroups": task["security_groups"],
                    "assignPublicIp": "DISABLED",
                }
            },
            "overrides": {"containerOverrides": [override]} if "command" in task else {},
        },
    )
    described = {"cluster": "churnops-stg", "tasks": [TASK_ARN]}
    stubber.add_response(
        "describe_tasks", {"tasks": [{"taskArn": TASK_ARN, "lastStatus": "RUNNING"}]}, described
    )
    container = {"name": task["container"]} | ({} if exit_code is None else {"exitCode": exit_code})
    stopped = {
        "taskArn": TASK_ARN,
        "lastStatus": "STOPPED",
        "stoppedReason": "Essential container in task exited",
        "containers": [{"name": "init", "exitCode": 0}, container],
    }
    stubber.add_response("describe_tasks", {"tasks": [stopped]}, described)
    stubber.activate()
    return ecs, stubber


@pytest.mark.parametrize(
    ("step", "task", "what", "log"),
    [
        ("deployments", TASK, "registering the deployments", "worker"),
        # M3: the task db-init with its own command (no override), network and roles.
        ("database", BOOTSTRAP, "bootstrapping the database", "db-init"),
    ],
    ids=["deployments", "database"],
)
@pytest.mark.parametrize("exit_code", [0, 1, None])
def test_a_one_off_task_in_the_vpc_that_does_not_exit_0_fails_the_apply_naming_its_log(
    tmp_path: Path, capsys, step: str, task: dict, what: str, log: str, exit_code: int | None
) -> None:
    out = post_apply.load_outputs(str(write_outputs(tmp_path)))
    ecs, stubber = stubbed_ecs(exit_code, task)
    if exit_code == 0:
        assert post_apply.run_one_off(out, step, ecs=ecs, poll=0) == TASK_ARN
        stubber.assert_no_pending_responses()
        assert f"{what}: done" in capsys.readouterr().out
        return
    with pytest.raises(SystemExit, match=f"{what} failed") as failure:
        post_apply.run_one_off(out, step, ecs=ecs, poll=0)
    assert f"/ecs/churnops-stg/{log}" in str(failure.value)


def test_make_apply_bootstraps_the_database_before_it_waits_for_the_services() -> None:
    recipe = (TERRAFORM_DIR / "aws.mk").read_text().split("\npost-apply:")[1].split("\n\n")[0]
    steps = [
        line.split("post_apply.py ")[1].split()[0]
        for line in recipe.splitlines()
        if "post_apply.py" in line
    ]
    assert steps == ["urls", "database", "wait", "deployments"]


# --- make tunnel ---------------------------------------------------------------------------------
def task(number: int, exec_enabled: bool = True, agent: str = "RUNNING") -> dict[str, Any]:
    """A DescribeTasks entry of a Fargate task of the mlflow service."""
    return {
        "taskArn": f"arn:aws:ecs:eu-west-1:1:task/{CLUSTER}/task{number}",
        "enableExecuteCommand": exec_enabled,
        "containers": [
            {
                "name": "mlflow",
                "runtimeId": f"task{number}-123456",
                "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": agent}],
            }
        ],
    }


class FakeEcs:
    """list_tasks and describe_tasks as boto3's ECS client answers them."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.tasks = tasks
        self.calls: list[tuple[str, dict]] = []

    def list_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("list_tasks", kwargs))
        return {"taskArns": [t["taskArn"] for t in self.tasks]}

    def describe_tasks(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("describe_tasks", kwargs))
        return {"tasks": [t for t in self.tasks if t["taskArn"] in kwargs["tasks"]]}


def test_the_target_is_a_running_task_whose_exec_agent_runs() -> None:
    ecs = FakeEcs([task(1, exec_enabled=False), task(2, agent="PENDING"), task(3)])

    target = tunnel.session_target(ecs, CLUSTER, "mlflow")

    assert target == f"ecs:{CLUSTER}_task3_task3-123456"
    assert ecs.calls[0] == (
        "list_tasks",
        {"cluster": CLUSTER, "serviceName": "mlflow", "desiredStatus": "RUNNING"},
    )


@pytest.mark.parametrize(
    ("tasks", "message"),
    [([], "no running task of mlflow"), ([task(1, exec_enabled=False)], "tunnel_enabled")],
)
def test_no_usable_task_is_explained(tasks: list[dict], message: str) -> None:
    with pytest.raises(tunnel.TunnelError, match=message):
        tunnel.session_target(FakeEcs(tasks), CLUSTER, "mlflow")


def test_the_port_is_the_services_own_and_unknown_uis_are_named() -> None:
    assert tunnel.service_port(OUTPUTS, "prefect-server") == 4200
    with pytest.raises(tunnel.TunnelError, match="choose one of evidently, grafana, mlflow"):
        tunnel.service_port(OUTPUTS, "worker")


def test_print_gives_the_port_forward_into_the_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = write_outputs(tmp_path)
    clients: list[tuple[str, dict]] = []

    def client(service: str, **kwargs: Any) -> FakeEcs:
        clients.append((service, kwargs))
        return FakeEcs([task(7)])

    monkeypatch.setattr("boto3.client", client)

    assert tunnel.main([str(outputs), "mlflow", "--local-port", "15000", "--print"]) == 0

    printed = capsys.readouterr().out.split()
    assert clients == [("ecs", {"region_name": "eu-west-1"})]
    assert printed[:3] == ["aws", "ssm", "start-session"]
    assert printed[printed.index("--target") + 1] == f"ecs:{CLUSTER}_task7_task7-123456"
    assert printed[printed.index("--document-name") + 1] == "AWS-StartPortForwardingSession"
    parameters = json.loads("".join(printed[printed.index("--parameters") + 1 :]))
    assert parameters == {"portNumber": ["5000"], "localPortNumber": ["15000"]}


@pytest.mark.usefixtures("no_credentials")
def test_without_credentials_or_the_cli_the_tunnel_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tunnel.py on saved outputs (someone given only the operator policy): without
    credentials it ended in botocore's NoCredentialsError traceback, and without the AWS
    CLI it asked ECS first."""
    outputs = write_outputs(tmp_path)
    # boto3's default session keeps the credentials an earlier test's client resolved
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setattr(tunnel.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert tunnel.main([str(outputs), "mlflow"]) == 1
    assert capsys.readouterr().err == (
        "tunnel: cannot find a task of mlflow: Unable to locate credentials\n"
    )
    monkeypatch.setattr(tunnel.shutil, "which", lambda name: None)
    monkeypatch.setattr("boto3.client", lambda *_, **__: pytest.fail("asked ECS without the CLI"))
    assert tunnel.main([str(outputs), "mlflow"]) == 1
    assert capsys.readouterr().err == (
        "tunnel: needs the AWS CLI and its Session Manager plugin on PATH\n"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("Error: no state", "Expecting value"),
        ("{}", "no deployment (no internal_urls)"),
    ],
)
def test_outputs_missing_or_not_a_deployments_say_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, reason: str
) -> None:
    """The README's `python -m terraform.scripts.tunnel outputs.json SERVICE` with no such
    file, a file holding terraform's error instead of JSON, or the `{}` of a state without a
    deployment ended in a FileNotFoundError, JSONDecodeError or KeyError traceback."""
    outputs = tmp_path / "outputs.json"
    if content is not None:
        outputs.write_text(content)
    assert tunnel.main([str(outputs), "mlflow", "--print"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tunnel: ") and reason in err and err.count("\n") == 1, err


def test_the_hint_names_the_secret_not_its_value() -> None:
    text = tunnel.hint(OUTPUTS, "prefect-server", 4200)
    assert "http://localhost:4200" in text
    assert OUTPUTS["prefect_auth_secret_arn"] in text


def test_make_tunnel_needs_a_service() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "tunnel", "SERVICE=grafana", "TF_PREREQ="],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "-m terraform.scripts.tunnel .churnops/terraform-stg-outputs.json grafana" in result.stdout
    )
