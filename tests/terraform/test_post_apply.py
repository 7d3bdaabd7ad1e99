"""terraform/scripts/post_apply.py: the .env it writes and the registration of the Prefect
deployments by a one-off ECS task (botocore's Stubber checks each request against the API)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from terraform.scripts import post_apply

from .conftest import TERRAFORM_DIR

OUTPUTS = {
    "aws_region": {"value": "eu-west-1"},
    "bucket_name": {"value": "churnops-stg-drop-1"},
    "alerts_topic_arn": {"value": "arn:aws:sns:eu-west-1:1:churnops-stg-alerts"},
    "mlflow_url": {"value": "http://lb:5000"},
    "prefect_api_url": {"value": "http://lb:4200/api"},
    "prefect_ui_url": {"value": "http://lb:4200"},
    "evidently_url": {"value": "http://lb:8000"},
    "grafana_url": {"value": "http://lb:3000"},
    "ui_urls": {"value": {"mlflow": "http://lb:5000", "grafana": "http://lb:3000"}},
    "lambda_function_name": {"value": "churnops-stg-s3-to-prefect"},
    "ecs_cluster_name": {"value": "churnops-stg"},
    "ecs_service_names": {"value": {"worker": "worker"}},
    "database_url_secret_arn": {"value": "arn:aws:secretsmanager:eu-west-1:1:secret:x"},
    "deployments_task": {
        "value": {
            "cluster": "churnops-stg",
            "task_definition": "arn:aws:ecs:eu-west-1:1:task-definition/churnops-stg-worker:3",
            "container": "worker",
            "command": ["python", "-m", "churnops.platform.deployments"],
            "subnets": ["subnet-a", "subnet-b"],
            "security_groups": ["sg-tasks"],
            "assign_public_ip": False,
        }
    },
    "db_bootstrap_task": {
        "value": {
            "cluster": "churnops-stg",
            "task_definition": "arn:aws:ecs:eu-west-1:1:task-definition/churnops-stg-db-init:1",
            "container": "db-init",
            "subnets": ["subnet-a", "subnet-b"],
            "security_groups": ["sg-db-init"],
            "assign_public_ip": False,
        }
    },
}


def write_outputs(tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(OUTPUTS))
    return path


def test_the_urls_are_printed_and_no_file_is_written(tmp_path: Path, capsys, monkeypatch) -> None:
    """No `.env`: `pipenv run` loads one into every command, so `make demo` ran against AWS."""
    outputs = write_outputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    post_apply.main(["urls", str(outputs)])
    printed = capsys.readouterr().out
    assert "http://lb:5000" in printed and ":churnops-stg-alerts" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs.json"]


TASK = OUTPUTS["deployments_task"]["value"]
BOOTSTRAP = OUTPUTS["db_bootstrap_task"]["value"]
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
