"""`make tunnel SERVICE=<ui>`: the SSM target and command built from the terraform outputs
and the ECS API's answers (shaped as ECS answers for a Fargate task with ECS Exec;
moto's ECS has no runtime ids or exec agents). That the UI services run with ECS Exec
and its task-role policy is checked on the moto deployment (test_apply_moto.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from terraform.scripts import tunnel

from .conftest import REPO

CLUSTER = "churnops-stg"
OUTPUTS = {
    "aws_region": "eu-west-1",
    "ecs_cluster_name": CLUSTER,
    "internal_urls": {
        "mlflow": "http://mlflow.churnops-stg.internal:5000",
        "prefect-server": "http://prefect-server.churnops-stg.internal:4200",
        "evidently": "http://evidently.churnops-stg.internal:8000",
        "grafana": "http://grafana.churnops-stg.internal:3000",
    },
    "mlflow_auth_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/mlflow",
    "prefect_auth_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/prefect",
    "grafana_admin_secret_arn": "arn:aws:secretsmanager:eu-west-1:1:secret:churnops-stg/grafana",
}


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
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({k: {"value": v} for k, v in OUTPUTS.items()}))
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
        "terraform/scripts/tunnel.py .churnops/terraform-stg-outputs.json grafana" in result.stdout
    )
