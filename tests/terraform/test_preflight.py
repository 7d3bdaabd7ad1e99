"""The AWS targets of aws.mk without what they need (filled-in tfvars, credentials, Docker,
the AWS CLI and its plugin, an applied state, a saved plan): one line naming it, before
anything is applied, pushed or written (terraform/scripts/preflight.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from terraform.scripts import preflight
from tests.processes import LOOPBACK, http_server

from .conftest import NO_CREDENTIALS, REPO, TERRAFORM_DIR, fake_command

#: What STS answers GetCallerIdentity with credentials it takes.
IDENTITY = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/ops</Arn>"
    "<UserId>AIDAEXAMPLE</UserId><Account>123456789012</Account></GetCallerIdentityResult>"
    "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
)


def sts_refusal(code: str, message: str) -> str:
    """What STS answers (HTTP 403) to credentials it refuses."""
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error>'
        f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>1</RequestId></ErrorResponse>"
    )


@contextlib.contextmanager
def sts_endpoint(status: int, body: str) -> Iterator[str]:
    """A real endpoint on loopback answering every request with ``status`` and ``body``
    (boto3 and Terraform call it when AWS_ENDPOINT_URL_STS names it): no internet needed."""

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_: object) -> None:
            pass

    with http_server(Answer) as server:
        yield f"http://{LOOPBACK}:{server.server_port}"


def missing(*checks: str, **options: object) -> str:
    """The one-line message of the first failing check, '' when all pass."""
    args = argparse.Namespace(**{"tfvars": None, "backend": None, "plan": None} | options)
    try:
        preflight.run_checks(list(checks), args)
    except preflight.Missing as exc:
        return str(exc)
    return ""


def test_tfvars_copied_but_not_filled_in_name_the_values_left(tmp_path: Path) -> None:
    """The README's first step copies the templates; a `make plan` before filling them in
    named nothing of the kind (Terraform failed on a subnet id or the backend bucket)."""
    tfvars, backend = tmp_path / "stg.tfvars", tmp_path / "stg.backend.tfvars"
    assert missing("vars", tfvars=tfvars, backend=backend).startswith(f"missing {tfvars}: copy")
    tfvars.write_text((TERRAFORM_DIR / "vars" / "stg.tfvars.template").read_text())
    backend.write_text((TERRAFORM_DIR / "vars" / "backend.tfvars.template").read_text())
    message = missing("vars", tfvars=tfvars, backend=backend)
    assert message.startswith(f"{tfvars} still has REPLACE values: fill in vpc_id, ")
    assert "image_tag" not in message  # make gives it on the command line
    tfvars.write_text(tfvars.read_text().replace("REPLACE", "x"))
    assert missing("vars", tfvars=tfvars, backend=backend) == (
        f"{backend} still has REPLACE values: fill in bucket"
    )
    backend.write_text(backend.read_text().replace("REPLACE", "x"))
    assert missing("vars", tfvars=tfvars, backend=backend) == ""


def test_credentials_docker_the_cli_and_a_saved_plan_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_credentials: None
) -> None:
    assert missing("credentials").startswith("no AWS credentials found: set AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with sts_endpoint(200, IDENTITY) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts)
        assert missing("credentials") == ""

    fake_command(
        tmp_path / "bin", "docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert missing("docker").startswith("Docker's daemon does not answer")
    assert missing("aws-cli").startswith("aws is not on PATH")
    assert missing("session-manager-plugin").startswith("session-manager-plugin is not on PATH")

    plan = tmp_path / "stg.tfplan"
    assert missing("plan") == "PLAN=<file> is required: make plan PLAN=<file> first"
    assert missing("plan", plan=str(plan)) == f"no saved plan {plan}: make plan PLAN={plan} first"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ExpiredToken", "The security token included in the request is expired"),
        ("InvalidClientTokenId", "The security token included in the request is invalid."),
        ("SignatureDoesNotMatch", "The request signature we calculated does not match"),
    ],
)
def test_credentials_aws_refuses_are_named_before_terraform_runs(
    monkeypatch: pytest.MonkeyPatch, no_credentials: None, code: str, message: str
) -> None:
    """Credentials found but expired or revoked passed the check (boto3 only said they
    exist); Terraform's long error came after init. STS is asked who they are: a refusal
    is one line naming where the credentials came from and what to do."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with sts_endpoint(403, sts_refusal(code, message)) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts)
        assert missing("credentials") == (
            f"AWS refused the keys in AWS_ACCESS_KEY_ID ({code}: {message}): set new"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if yours"
            " are temporary)"
        )


def test_an_expired_sso_profile_names_the_login_and_no_network_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_credentials: None
) -> None:
    """A profile of SSO whose token has expired (no cached token at all here) and a
    profile that does not exist: botocore's errors, which were tracebacks. Nothing listening
    where STS should be: one line too."""
    config = tmp_path / "config"
    config.write_text(
        "[profile ops]\nsso_start_url = https://example.awsapps.com/start\n"
        "sso_region = us-east-1\nsso_account_id = 123456789012\n"
        "sso_role_name = Admin\nregion = us-east-1\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached SSO token under ~/.aws/sso
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_PROFILE", "ops")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1")
    message = missing("credentials")
    assert message.startswith("profile ops (sso) cannot be used (")
    assert message.endswith("): aws sso login --profile ops")
    assert "\n" not in message
    monkeypatch.setenv("AWS_PROFILE", "gone")  # was botocore's ProfileNotFound traceback
    assert missing("credentials") == (
        "AWS credentials cannot be read (The config profile (gone) could not be found):"
        " check AWS_PROFILE and ~/.aws/config"
    )

    monkeypatch.delenv("AWS_PROFILE")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert missing("credentials") == (
        "AWS STS did not answer to check the keys in AWS_ACCESS_KEY_ID (Could not connect to"
        ' the endpoint URL: "http://127.0.0.1:1/"): check the network (a proxy:'
        " HTTPS_PROXY) and run it again"
    )


@pytest.mark.parametrize(
    ("terraform", "message"),
    [
        (
            'echo "Error: Backend initialization required, please run \\"terraform init\\"" >&2;'
            " echo 'more lines of the box' >&2; exit 1",
            'terraform output failed (Backend initialization required, please run "terraform'
            ' init"): run make plan or make apply first',
        ),
        ("echo '{}'", "the state holds no deployment (no outputs): make apply first"),
    ],
)
def test_no_readable_deployment_writes_no_outputs_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terraform: str, message: str
) -> None:
    """`make post-apply`, `push-images` and `tunnel` wrote `terraform output`'s stdout to
    their outputs file whatever it was: an empty file was left behind."""
    fake_command(tmp_path / "bin", "terraform", terraform)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    out = tmp_path / "churnops" / "outputs.json"
    assert missing("outputs", outputs=out) == message
    assert not out.exists()
    fake_command(tmp_path / "bin", "terraform", """echo '{"aws_region": {"value": "x"}}'""")
    assert missing("outputs", outputs=out) == ""
    assert '"aws_region"' in out.read_text()


def run_make(tmp_path: Path, *args: str, credentials: bool) -> subprocess.CompletedProcess:
    """make TARGET as a user runs it, with filled-in tfvars of tmp_path, its outputs and
    Lambda switch in tmp_path, and a terraform of tmp_path/bin when there is one (it
    records its calls in tmp_path/calls and has an empty state); STS is a local endpoint
    that takes any credentials."""
    fake_command(
        tmp_path / "bin",
        "terraform",
        f'echo "$@" >> {tmp_path / "calls"}; case "$*" in *" output "*) echo "{{}}";; esac',
    )
    vars_dir = tmp_path / "vars"
    vars_dir.mkdir(exist_ok=True)
    (vars_dir / "stg.tfvars").write_text('vpc_id = "vpc-1"\n')
    (vars_dir / "stg.backend.tfvars").write_text('bucket = "state"\n')
    # A make of its own, as a user's: not a child of the lane's `make -j` (its jobserver
    # warning and "make[2]:" lines are not what a user sees).
    parent_make = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in parent_make}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")} | NO_CREDENTIALS
    env["PATH"] = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    with sts_endpoint(200, IDENTITY) as sts:  # takes the keys; no call leaves loopback
        return subprocess.run(
            [
                *("make", "--no-print-directory", "-C", str(REPO), *args),
                f"TF_VARS_FILE={vars_dir / 'stg.tfvars'}",
                f"TF_BACKEND_CONFIG={vars_dir / 'stg.backend.tfvars'}",
                f"TF_OUTPUTS={tmp_path / 'outputs.json'}",
                f"TF_LAMBDA_SWITCH={tmp_path / 'stg.lambda.tfvars'}",
            ],
            env=env | {"AWS_ENDPOINT_URL_STS": sts},
            capture_output=True,
            text=True,
            timeout=120,
        )


def said(result: subprocess.CompletedProcess) -> list[str]:
    """What a failed make printed besides its own 'make: ***' line."""
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line and not line.startswith("make: ***")]


@pytest.mark.parametrize("target", ["plan", "apply", "post-apply", "push-images", "destroy"])
def test_an_aws_target_without_credentials_says_so_in_one_line(tmp_path: Path, target: str) -> None:
    """Through make: one line, no terraform run, and no outputs file written."""
    assert said(run_make(tmp_path, target, credentials=False)) == [
        "error: no AWS credentials found: set AWS_PROFILE (aws sso login --profile ...) or"
        " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    ]
    assert not (tmp_path / "calls").exists()
    assert not (tmp_path / "outputs.json").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("apply-plan", "PLAN=gone.tfplan"), "error: no saved plan gone.tfplan: make plan"),
        (("apply",), "error: Docker's daemon does not answer"),
    ],
)
def test_a_missing_plan_or_docker_is_named_before_terraform_init(
    tmp_path: Path, args: tuple[str, ...], line: str
) -> None:
    """apply-plan ran terraform init before it looked for the plan file; apply looked for
    Docker after init (and, before the preflight, after ECR was applied)."""
    fake_command(tmp_path / "bin", "docker", "exit 1")  # no daemon answers `docker info`
    result = run_make(tmp_path, *args, credentials=True)
    assert [text[: len(line)] for text in said(result)] == [line]
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("target", ["disable-lambda", "enable-lambda"])
def test_the_lambda_switch_needs_a_deployment(tmp_path: Path, target: str) -> None:
    """Before any apply, the switch was written (a later make apply would take it) and a
    targeted apply of the bucket's notification ran with an empty image tag: Terraform
    applies a target's dependencies too, the bucket and the Lambda among them."""
    result = run_make(tmp_path, target, credentials=True)
    assert said(result)[-1] == "error: the state holds no deployment (no outputs): make apply first"
    assert not (tmp_path / "stg.lambda.tfvars").exists()
    assert " apply " not in (tmp_path / "calls").read_text()
