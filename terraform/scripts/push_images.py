"""`make push-images`: the three images built, then pushed to ECR under IMAGE_TAG.

  python -m terraform.scripts.push_images OUTPUTS IMAGE_TAG

OUTPUTS is the deployment's `terraform output -json` in a file (make's TF_OUTPUTS).
Every image is built before any is pushed: a failed build pushes nothing. ECR's tags are immutable
(modules/ecr): a tag once pushed stays, and a second push of it fails. So a push that
fails midway names what is in ECR and what is not, and the next run builds and pushes
only what ECR does not hold under the tag. ECR scans each image as it is pushed: make
runs image_scan.py next, which stops the deploy on a critical finding."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from terraform.scripts.post_apply import load_outputs
from terraform.scripts.rehearsal.images import IMAGES


class Stopped(RuntimeError):
    """push-images cannot go on; the message says what is in ECR and what to do."""


def docker(*args: str, stdin: str | None = None) -> bool:
    """Run docker, its output streaming (a failure's reason is docker's own error)."""
    return subprocess.run(["docker", *args], input=stdin, text=True).returncode == 0


def login(registry: str, region: str) -> None:
    """Docker logged in to ECR, before the builds: a refusal stops before minutes of them."""
    password = subprocess.run(
        ["aws", "ecr", "get-login-password", "--region", region], capture_output=True, text=True
    )
    if password.returncode != 0:
        raise Stopped(f"aws ecr get-login-password failed: {' '.join(password.stderr.split())}")
    logged_in = docker(
        "login", "--username", "AWS", "--password-stdin", registry, stdin=password.stdout
    )
    if not logged_in:
        raise Stopped(f"docker login to {registry} failed (docker's error above)")


def in_ecr(ecr: Any, url: str, tag: str) -> bool:
    """Whether ECR holds ``tag`` in the repository of ``url`` (an earlier run pushed it).
    Any other answer (no such repository, access denied) is one line, before any build."""
    from botocore.exceptions import BotoCoreError, ClientError

    repository = url.split("/", 1)[1]
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise Stopped(
            f"ECR cannot say whether {repository} holds {tag}"
            f" ({error.get('Code')}: {error.get('Message')}): nothing built or pushed"
        ) from None
    except BotoCoreError as exc:
        raise Stopped(f"ECR did not answer ({exc}): nothing built or pushed") from None
    return True


def publish(repositories: dict[str, str], tag: str, ecr: Any) -> list[str]:
    """Build every image ECR lacks under ``tag``, then push each; what was done, in a line."""
    names = [name for name in IMAGES if name in repositories]
    held = [name for name in names if in_ecr(ecr, repositories[name], tag)]
    missing = [name for name in names if name not in held]
    for name in missing:
        image = IMAGES[name]
        built = docker(
            *("build", "--platform", "linux/amd64", "--provenance=false"),
            *("-f", str(image.dockerfile), "-t", f"{repositories[name]}:{tag}"),
            str(image.context),
        )
        if not built:
            raise Stopped(f"building {name} failed (docker's error above): nothing pushed")
    for number, name in enumerate(missing):
        if not docker("push", f"{repositories[name]}:{tag}"):
            raise Stopped(
                f"pushing {name}:{tag} failed (docker's error above): in ECR under {tag}:"
                f" {', '.join(held + missing[:number]) or 'none'}; not yet:"
                f" {', '.join(missing[number:])}. make push-images IMAGE_TAG={tag} again"
                " pushes those (a tag in ECR is not pushed twice: ECR keeps it)"
            )
    already = f" (already in ECR: {', '.join(held)})" if held else ""
    return [f"pushed under {tag}: {', '.join(missing) or 'none'}{already}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs")
    parser.add_argument("tag")
    args = parser.parse_args(argv)

    import boto3

    outputs = load_outputs(args.outputs)
    repositories, region = outputs["ecr_repository_urls"], outputs["aws_region"]
    try:
        login(next(iter(repositories.values())).split("/", 1)[0], region)
        lines = publish(repositories, args.tag, boto3.client("ecr", region_name=region))
    except Stopped as exc:
        print(f"push-images: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"push-images: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
