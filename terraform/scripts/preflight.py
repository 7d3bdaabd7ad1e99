"""What an AWS target of aws.mk needs, checked before it changes anything: the first
thing missing is named in one line (exit 1), not found by Terraform, Docker or the AWS
CLI halfway through, after ECR was applied or an image pushed.

  preflight.py CHECK... [--tfvars F] [--backend F] [--plan F] [--outputs F]

CHECK is one of: vars (the tfvars and backend files exist, REPLACE values filled in),
credentials (AWS credentials are found, and AWS takes them: STS GetCallerIdentity), docker
(its daemon answers), aws-cli, session-manager-plugin, plan (the saved plan file exists),
outputs (`terraform output -json` of the deployment, written to --outputs only when the
state holds one: no empty outputs file is left behind)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

TERRAFORM_DIR = Path(__file__).resolve().parent.parent
#: What the templates put where a value must be filled in (a comment may still say REPLACE).
PLACEHOLDER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=[^#\n]*REPLACE", re.MULTILINE)
#: Given by every target on the command line (-var=image_tag=$(IMAGE_TAG)), whatever the file says.
GIVEN_BY_MAKE = {"image_tag"}


class Missing(RuntimeError):
    """A target cannot run; the message says what is missing and what to do."""


def check_vars_file(path: Path, template: str) -> None:
    if not path.is_file():
        raise Missing(f"missing {path}: copy terraform/vars/{template} and fill it in")
    unfilled = [name for name in PLACEHOLDER.findall(path.read_text()) if name not in GIVEN_BY_MAKE]
    if unfilled:
        raise Missing(f"{path} still has REPLACE values: fill in {', '.join(unfilled)}")


def check_credentials() -> None:
    """The chain Terraform's provider also reads (environment, profile, SSO, web identity,
    instance role); boto3 gives up on the instance metadata after a second."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.Session()
        credentials = session.get_credentials()
    except BotoCoreError as exc:  # AWS_PROFILE names no profile, a config file is broken
        raise Missing(
            f"AWS credentials cannot be read ({one_line(exc)}): check AWS_PROFILE and ~/.aws/config"
        ) from None
    if credentials is None:
        raise Missing(
            "no AWS credentials found: set AWS_PROFILE (aws sso login --profile ...) or"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    check_identity(session, credentials.method)


#: How boto3 found the credentials (Credentials.method) -> what renews them.
RENEWAL = {
    "env": "set new AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if"
    " yours are temporary)",
    "sso": "aws sso login --profile {profile}",
    "shared-credentials-file": "new keys in profile {profile}: aws configure --profile {profile}",
    "config-file": "new keys in profile {profile}: aws configure --profile {profile}",
}


def check_identity(session: Any, method: str) -> None:
    """Found is not enough: expired or revoked credentials (an SSO session ends after hours)
    failed in Terraform's long error, after init. STS GetCallerIdentity needs no permission
    and is the cheapest call: AWS says whether it takes them. Only the targets that talk to
    AWS run this check (the local ones and the rehearsal never call preflight)."""
    from botocore import exceptions as aws_errors
    from botocore.config import Config

    profile = session.profile_name
    source = "the keys in AWS_ACCESS_KEY_ID" if method == "env" else f"profile {profile} ({method})"
    renewal = RENEWAL.get(method, "renew the credentials of profile {profile}").format(
        profile=profile
    )
    # Any region answers; the global endpoint's when none is configured (Terraform's comes
    # from the tfvars). A second attempt for a blip, no more: one line soon, not retries.
    config = Config(retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=10)
    sts = session.client("sts", region_name=session.region_name or "us-east-1", config=config)
    try:
        sts.get_caller_identity()
    except aws_errors.ClientError as exc:  # ExpiredToken, InvalidClientTokenId, ...
        error = exc.response.get("Error", {})
        reason = f"{error.get('Code')}: {error.get('Message')}"
        raise Missing(f"AWS refused {source} ({reason}): {renewal}") from None
    except (aws_errors.ConnectionError, aws_errors.HTTPClientError) as exc:
        raise Missing(
            f"AWS STS did not answer to check {source} ({one_line(exc)}): check the network"
            " (a proxy: HTTPS_PROXY) and run it again"
        ) from None
    except aws_errors.BotoCoreError as exc:  # an SSO token expired, a credential process failed
        raise Missing(f"{source} cannot be used ({one_line(exc)}): {renewal}") from None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_command(name: str, what: str) -> None:
    if shutil.which(name) is None:
        raise Missing(f"{name} is not on PATH: {what}")


def check_docker() -> None:
    check_command("docker", "push-images builds the three images with Docker")
    answer = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if answer.returncode != 0:
        raise Missing(
            "Docker's daemon does not answer (docker info failed): start Docker, or make apply"
            " SKIP_IMAGES=1 when the images of IMAGE_TAG are already in ECR"
        )


def check_plan(plan: str | None) -> None:
    if not plan:
        raise Missing("PLAN=<file> is required: make plan PLAN=<file> first")
    if not Path(plan).is_file():
        raise Missing(f"no saved plan {plan}: make plan PLAN={plan} first")


def write_outputs(out: Path) -> None:
    """The deployment's outputs into ``out``; Missing when Terraform cannot read its state
    (not initialized, no credentials) or the state holds nothing (no apply yet)."""
    answer = subprocess.run(
        ["terraform", f"-chdir={TERRAFORM_DIR}", "output", "-json", "-no-color"],
        capture_output=True,
        text=True,
    )
    if answer.returncode != 0:
        errors = re.findall(r"Error: (.+)", answer.stderr)
        reason = errors[0].strip() if errors else f"exit {answer.returncode}"
        raise Missing(f"terraform output failed ({reason}): run make plan or make apply first")
    if not json.loads(answer.stdout or "{}"):
        raise Missing("the state holds no deployment (no outputs): make apply first")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(answer.stdout)


def run_checks(checks: list[str], args: argparse.Namespace) -> None:
    """In the order given: a target lists its cheap checks first."""
    for check in checks:
        if check == "vars":
            check_vars_file(args.tfvars, "stg.tfvars.template")
            check_vars_file(args.backend, "backend.tfvars.template")
        elif check == "credentials":
            check_credentials()
        elif check == "docker":
            check_docker()
        elif check == "aws-cli":
            check_command("aws", "install the AWS CLI (it logs Docker in to ECR, opens tunnels)")
        elif check == "session-manager-plugin":
            check_command("session-manager-plugin", "install the AWS CLI's Session Manager plugin")
        elif check == "plan":
            check_plan(args.plan)
        elif check == "outputs":
            write_outputs(args.outputs)
        else:
            raise SystemExit(f"preflight: unknown check {check!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checks", nargs="+")
    parser.add_argument("--tfvars", type=Path)
    parser.add_argument("--backend", type=Path)
    parser.add_argument("--plan")
    parser.add_argument("--outputs", type=Path)
    args = parser.parse_args(argv)
    try:
        run_checks(args.checks, args)
    except Missing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
