"""The runners' autoscaling on `terraform show -json` of a plan against moto (the emulator
apply runs a fixed runner: moto's Application Auto Scaling cannot tag a scalable target)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from churnops.platform.services import stop_group

from .conftest import tf_local

pytestmark = pytest.mark.integration

NAMESPACE = "ChurnOps/churnops-emu"


@pytest.fixture(scope="module")
def plan(terraform_bin: str) -> Iterator[dict[str, Any]]:
    """The default sizing (1 to 4 runners) planned against a moto server of its own."""
    root = Path(tempfile.mkdtemp(prefix="churnops-tf-scaling-"))
    moto, endpoint = tf_local.start_moto(root / "moto.log")
    try:
        tfvars = tf_local.emulator_tfvars(tf_local.create_network(endpoint))
        tfvars.pop("worker_max_count", None)  # the variable's default
        module_dir = tf_local.prepare_workdir(root / "work", endpoint, tfvars)
        env = tf_local.emulator_env(endpoint, tf_local.write_cli_config(root / "terraform.rc"))
        tf_local.terraform(module_dir, env, "init", "-input=false", "-no-color", capture=True)
        tf_local.terraform(
            module_dir, env, "plan", "-input=false", "-no-color", "-out=plan.bin", capture=True
        )
        yield json.loads(
            tf_local.terraform(module_dir, env, "show", "-json", "plan.bin", capture=True)
        )
    finally:
        stop_group(moto, 5)
        shutil.rmtree(root, ignore_errors=True)


def planned(plan: dict[str, Any], address: str) -> dict[str, Any]:
    (change,) = [r for r in plan["resource_changes"] if r["address"] == address]
    assert change["change"]["actions"] == ["create"], address
    return change["change"]["after"]


def references(plan: dict[str, Any], resource: str, attribute: str) -> list[str]:
    config = plan["configuration"]["root_module"]["resources"]
    (found,) = [r for r in config if r["address"] == resource]
    return found["expressions"][attribute]["references"]


def test_the_worker_service_scales_between_its_minimum_and_maximum(plan: dict) -> None:
    target = planned(plan, "aws_appautoscaling_target.runners[0]")
    assert target["service_namespace"] == "ecs"
    assert target["scalable_dimension"] == "ecs:service:DesiredCount"
    assert target["resource_id"] == "service/churnops-emu/worker"
    assert (target["min_capacity"], target["max_capacity"]) == (1, 4)


def test_queued_runs_add_tasks_and_an_idle_queue_removes_them(plan: dict) -> None:
    out = planned(plan, "aws_appautoscaling_policy.runners_out[0]")
    (config,) = out["step_scaling_policy_configuration"]
    steps = [
        (
            s["metric_interval_lower_bound"],
            s["metric_interval_upper_bound"],
            s["scaling_adjustment"],
        )
        for s in config["step_adjustment"]
    ]
    assert sorted(steps, key=lambda s: float(s[0])) == [
        ("0", "4", 1),
        ("4", "14", 2),
        ("14", "", 4),
    ]
    assert config["adjustment_type"] == "ChangeInCapacity"
    (inward,) = planned(plan, "aws_appautoscaling_policy.runners_in[0]")[
        "step_scaling_policy_configuration"
    ]
    ((step,),) = [inward["step_adjustment"]]
    assert step["scaling_adjustment"] == -1 and step["metric_interval_upper_bound"] == "0"
    assert inward["cooldown"] == 300

    queued = planned(plan, "aws_cloudwatch_metric_alarm.runs_queued[0]")
    idle = planned(plan, "aws_cloudwatch_metric_alarm.runners_idle[0]")
    for alarm in (queued, idle):
        assert (alarm["namespace"], alarm["metric_name"]) == (NAMESPACE, "QueuedFlowRuns")
        assert alarm["statistic"] == "Maximum" and alarm["period"] == 60
    assert queued["comparison_operator"] == "GreaterThanOrEqualToThreshold"
    assert queued["threshold"] == 1 and queued["evaluation_periods"] == 1
    assert idle["comparison_operator"] == "LessThanThreshold"
    assert idle["threshold"] == 1 and idle["evaluation_periods"] == 10
    assert "aws_appautoscaling_policy.runners_out[0]" in references(
        plan, "aws_cloudwatch_metric_alarm.runs_queued", "alarm_actions"
    )
    assert "aws_appautoscaling_policy.runners_in[0]" in references(
        plan, "aws_cloudwatch_metric_alarm.runners_idle", "alarm_actions"
    )
