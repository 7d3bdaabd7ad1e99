"""The deploy's image-scan gate (terraform/scripts/image_scan.py) against ECR in moto:
a critical finding, or a scan that never finished, stops the deploy."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from terraform.scripts import image_scan

from .conftest import TERRAFORM_DIR, tf_local

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
