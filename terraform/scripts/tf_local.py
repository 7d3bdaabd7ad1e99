"""Terraform against an emulator (moto) and the provider mirror, for tests and `make apply-local`.

cli-config OUT      a Terraform CLI config using a filesystem mirror of the AWS
                    provider when one is found (TF_PLUGIN_MIRROR, usual roots)
up --workdir DIR    start moto (unless --endpoint), create a VPC and subnets, copy
                    the root module with the emulator override, init and apply
down --workdir DIR  destroy, and stop the moto server `up` started"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from churnops.platform.services import free_port, live_groups, terminate_groups

TERRAFORM_DIR = Path(__file__).resolve().parent.parent
OVERRIDE_TEMPLATE = TERRAFORM_DIR / "local" / "emulator_override.tf.tpl"
PROVIDER_PATH = Path("registry.terraform.io") / "hashicorp" / "aws"
MIRROR_ROOTS = (
    "/opt",
    "/usr/share",
    "/usr/local/share",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
)
REGION = "us-east-1"
#: A shell's exit status for a command that SIGINT (Ctrl-C) ended.
INTERRUPTED = 128 + signal.SIGINT
#: The emulator's UIs are https://<ui>.UI_DOMAIN behind a moto-made certificate.
UI_DOMAIN = "churnops-emu.example.com"
#: The committed .terraform.lock.hcl is copied: every init checks the provider against it.
COPY_IGNORE = shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", "*.tfvars")


# ----------------------------------------------------------------- provider mirror
def find_mirror() -> Path | None:
    """Directory holding registry.terraform.io/hashicorp/aws, or None: TF_PLUGIN_MIRROR, else
    a usual root or a folder up to two levels below it (<root>/tf-plugins/registry...)."""
    explicit = os.environ.get("TF_PLUGIN_MIRROR")
    if explicit:
        path = Path(explicit).expanduser()
        if not (path / PROVIDER_PATH).is_dir():
            raise SystemExit(f"TF_PLUGIN_MIRROR={explicit} holds no {PROVIDER_PATH}")
        return path
    for root in MIRROR_ROOTS:
        for below in ("", "*/", "*/*/"):
            found = sorted(Path(root).expanduser().glob(f"{below}{PROVIDER_PATH}"))
            if found:
                return found[0].parents[2]
    return None


def cli_config_text(mirror: Path | None) -> str:
    if mirror is None:
        return "provider_installation {\n  direct {}\n}\n"
    return (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {json.dumps(str(mirror))}\n"
        '    include = ["registry.terraform.io/hashicorp/aws"]\n'
        "  }\n"
        "  direct {\n"
        '    exclude = ["registry.terraform.io/hashicorp/aws"]\n'
        "  }\n"
        "}\n"
    )


def write_cli_config(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(cli_config_text(find_mirror()))
    return out


# ----------------------------------------------------------------- moto
def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which(
        "moto_server", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    )
    if not binary:
        raise SystemExit("moto_server not found (install moto[server] in the virtualenv)")
    port = free_port("127.0.0.1")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # AWS's managed policies exist in an account (the Lambda's VPC access policy).
            env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"},
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{endpoint}/moto-api/", proc)
    except BaseException:  # Ctrl-C too: no caller has its pid yet to stop it
        terminate_groups([proc.pid], grace=5.0)
        raise
    return proc, endpoint


#: What terraform says when its provider's SDK retried a create (after a transport error on
#: loopback) that a loaded moto had already carried out: the thing "already exists" (a rule:
#: InvalidPermission.Duplicate, a role: EntityAlreadyExists, a log group, a secret, ...).
#: It is in moto but in no state, so a second apply on that server fails alike; a fresh one
#: does not. On a fresh server nothing else can exist: a module that names two things alike
#: fails the second apply too, which raises.
EMULATOR_RETRY_RACE = re.compile(
    r"already exists?|Duplicate|ResourceExists|ResourceConflict|PriorityInUse", re.IGNORECASE
)

T = TypeVar("T")


def on_fresh_moto(
    log_path: Path,
    apply: Callable[[str, str], T],
    started: Callable[[subprocess.Popen], None],
) -> T:
    """``apply(endpoint, attempt)`` against a moto server of its own; once more on a fresh
    server (``attempt`` "again") when it failed with :data:`EMULATOR_RETRY_RACE` only.

    ``started`` gets each server as it starts: the caller stops the last one, which stays
    running after a success or any other failure (its state is what a destroy needs)."""
    proc, endpoint = start_moto(log_path)
    started(proc)
    try:
        return apply(endpoint, "first")
    except RuntimeError as exc:
        if not EMULATOR_RETRY_RACE.search(str(exc)):
            raise
    terminate_groups([proc.pid], grace=5.0)
    proc.wait(timeout=10)  # reaped: no zombie beside the second server
    proc, endpoint = start_moto(log_path)
    started(proc)
    return apply(endpoint, "again")


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def emulator_credentials(endpoint: str, region: str = REGION) -> dict[str, str]:
    """What points a process at the emulator: its endpoint, the region and fake keys."""
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT_URL": endpoint,
    }


def emulator_env(endpoint: str, cli_config: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env |= emulator_credentials(endpoint) | {"TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    if cli_config is not None:
        env["TF_CLI_CONFIG_FILE"] = str(cli_config)
    return env


def emulator_client(endpoint: str, service: str, region: str = REGION) -> Any:
    """A boto3 client on the emulator, with its fake credentials."""
    import boto3

    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return boto3.client(service, endpoint_url=endpoint, region_name=region, **keys)


def create_network(endpoint: str) -> dict[str, object]:
    """What an account brings: a VPC with two public and two private subnets, and
    an ACM certificate for the UIs' domain (the module requires HTTPS)."""
    ec2 = emulator_client(endpoint, "ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    network: dict[str, object] = {"vpc_id": vpc_id}
    for number, kind in enumerate(("public", "private")):
        network[f"{kind}_subnet_ids"] = [
            ec2.create_subnet(
                VpcId=vpc_id, CidrBlock=f"10.42.{2 * number + i}.0/24", AvailabilityZone=zone
            )["Subnet"]["SubnetId"]
            for i, zone in enumerate((f"{REGION}a", f"{REGION}b"))
        ]
    certificate = emulator_client(endpoint, "acm").request_certificate(
        DomainName=f"*.{UI_DOMAIN}", ValidationMethod="DNS"
    )
    return network | {"certificate_arn": certificate["CertificateArn"]}


def emulator_tfvars(network: dict[str, object]) -> dict[str, object]:
    return {
        "aws_region": REGION,
        "environment": "emu",
        "alert_email": "alerts@example.com",
        "allowed_cidr_blocks": ["203.0.113.0/24"],
        # The production path: HTTPS, a Cognito user pool with one invited user.
        "ui_domain": UI_DOMAIN,
        "ui_users": ["ui-user@example.com"],
        "image_tag": "emulator",
        "db_deletion_protection": False,
        "db_skip_final_snapshot": True,
        "bucket_force_destroy": True,
        # moto enforces the TLS-only bucket policy and it is served over plain HTTP.
        "s3_deny_insecure_transport": False,
        "secret_recovery_window_days": 0,
        "log_retention_days": 7,
        # A fixed runner: moto's Application Auto Scaling has no ListTagsForResource, which
        # the provider reads; tests/terraform/test_policy.py checks the scaling on a plan.
        "worker_max_count": 1,
        **network,
    }


# ----------------------------------------------------------------- workdir
def prepare_workdir(workdir: Path, endpoint: str, tfvars: dict[str, object]) -> Path:
    """Copy the root module into workdir, add the emulator override and the tfvars."""
    workdir.mkdir(parents=True, exist_ok=True)
    module_dir = workdir / "terraform"
    shutil.copytree(TERRAFORM_DIR, module_dir, ignore=COPY_IGNORE, dirs_exist_ok=True)
    override = OVERRIDE_TEMPLATE.read_text().replace("@ENDPOINT@", endpoint)
    (module_dir / "emulator_override.tf").write_text(override)
    (module_dir / "emulator.auto.tfvars.json").write_text(json.dumps(tfvars, indent=2))
    return module_dir


def require_terraform(env: Mapping[str, str]) -> None:
    """Terraform on the PATH, or one line saying so (not a traceback from subprocess): once,
    where a command starts (`up`, `down`, the rehearsal), not before each terraform run."""
    if shutil.which("terraform", path=env.get("PATH")) is None:
        raise SystemExit(
            "terraform is not on PATH: install Terraform >= 1.11 (terraform/README.md)"
        )


def terraform(module_dir: Path, env: dict[str, str], *args: str, capture: bool = False) -> str:
    """Run terraform; uncaptured, its progress streams and its errors are still kept: the
    error raised names them (what :func:`on_fresh_moto` reads)."""
    cmd = ["terraform", f"-chdir={module_dir}", *args]
    out = subprocess.PIPE if capture else None
    with subprocess.Popen(cmd, env=env, text=True, stdout=out, stderr=subprocess.PIPE) as proc:
        try:
            stdout, stderr = proc.communicate()
        except KeyboardInterrupt:
            # Ctrl-C reached terraform too: it stops gracefully and writes its state, which
            # `down` destroys from. subprocess.run would kill it a quarter second later.
            stdout, stderr = proc.communicate()
            sys.stderr.write(stderr)
            raise
    if not capture:
        sys.stderr.write(stderr)
    if proc.returncode != 0:
        detail = "".join(f"\n{part}" for part in (stdout, stderr) if part)
        raise RuntimeError(f"{' '.join(args[:1])} failed with {proc.returncode}{detail}")
    return stdout if capture else ""


#: What moto keeps but cannot delete (it has no DeleteFileSystemPolicy): forgotten
#: before a destroy against the emulator; the file system it belongs to is deleted.
EMULATOR_UNDELETABLE = ("aws_efs_file_system_policy.evidently",)


def destroy(module_dir: Path, env: dict[str, str], *extra: str, capture: bool = False) -> str:
    """Destroy; once more if the first fails. Under load the AWS provider retries a
    DeleteTargetGroup that moto already did and stops on its TargetGroupNotFound; a second
    destroy refreshes the state first and finishes what is left."""
    state = terraform(module_dir, env, "state", "list", capture=True).split()
    forget = [address for address in EMULATOR_UNDELETABLE if address in state]
    if forget:
        terraform(module_dir, env, "state", "rm", *forget, capture=True)
    args = ("destroy", "-auto-approve", "-input=false", "-no-color", *extra)
    try:
        return terraform(module_dir, env, *args, capture=capture)
    except RuntimeError:
        return terraform(module_dir, env, *args, capture=capture)


def up(workdir: Path, endpoint: str | None) -> None:
    """Apply against ``endpoint``, or a moto started here (:func:`on_fresh_moto`); the
    state file tells `down` what to destroy against and what to stop."""
    require_terraform(os.environ)  # before a moto server is started for nothing
    if endpoint is None:
        clear_previous(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    state: dict[str, object] = {}

    def record(**fields: object) -> None:
        state.update(fields)
        (workdir / "emulator.json").write_text(json.dumps(state))

    def apply(endpoint: str, attempt: str = "first") -> None:
        record(endpoint=endpoint)
        if attempt == "again":  # the first attempt's state names another server's resources
            shutil.rmtree(workdir / "terraform")
        env = emulator_env(endpoint, write_cli_config(workdir / "terraform.rc"))
        module_dir = prepare_workdir(workdir, endpoint, emulator_tfvars(create_network(endpoint)))
        terraform(module_dir, env, "init", "-input=false", "-no-color")
        started = time.monotonic()
        terraform(module_dir, env, "apply", "-auto-approve", "-input=false", "-no-color")
        print(f"apply took {time.monotonic() - started:.0f}s against {endpoint}")
        print(terraform(module_dir, env, "output", "-no-color", capture=True))

    if endpoint is not None:
        apply(endpoint)
    else:
        on_fresh_moto(workdir / "moto.log", apply, lambda proc: record(moto_pid=proc.pid))


def recorded_moto(workdir: Path) -> int | None:
    """The pid of the moto server an `up` on ``workdir`` started, if it records one."""
    state = workdir / "emulator.json"
    if not state.is_file():
        return None
    return json.loads(state.read_text()).get("moto_pid")


def running_moto(workdir: Path) -> int | None:
    """The pid of the moto server an `up` on ``workdir`` started, while it runs."""
    pid = recorded_moto(workdir)
    return pid if pid and live_groups([int(pid)]) else None


def clear_previous(workdir: Path) -> None:
    """Before `up` starts a moto server: one an earlier `up` left running is refused (a
    second would orphan it); the state of an earlier apply whose server is gone names
    nothing that exists, so the apply starts from none."""
    if pid := running_moto(workdir):
        raise SystemExit(
            f"{workdir} holds an apply against moto (pid {pid}): make destroy-local first"
        )
    (workdir / "emulator.json").unlink(missing_ok=True)
    shutil.rmtree(workdir / "terraform", ignore_errors=True)


def outputs(module_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    raw = json.loads(terraform(module_dir, env, "output", "-json", capture=True))
    return {name: output["value"] for name, output in raw.items()}


def workdir_env(workdir: Path) -> tuple[str, dict[str, str]]:
    """The endpoint and terraform environment of a workdir `up` applied; one line when
    there is none (`make destroy-local`, or a rehearsal's --reuse, before any apply-local)."""
    state = workdir / "emulator.json"
    if not state.is_file():
        raise SystemExit(f"{workdir} holds no apply against moto: run `make apply-local` first")
    endpoint = json.loads(state.read_text())["endpoint"]
    return endpoint, emulator_env(endpoint, workdir / "terraform.rc")


def stop_emulator(workdir: Path) -> None:
    """Stop the moto server `up` started, if it did (its state goes with it)."""
    pid = recorded_moto(workdir)
    if pid:
        terminate_groups([int(pid)], grace=5.0)
    (workdir / "emulator.json").unlink(missing_ok=True)


def down(workdir: Path) -> None:
    """Destroy, stop the moto server, and remove the module's copy: its state and
    backups describe a server that is no more. An apply-local cut short before terraform
    wrote a state (while it made the network, initialized or planned) applied nothing."""
    module_dir = workdir / "terraform"
    try:
        started = time.monotonic()
        env = workdir_env(workdir)[1]
        require_terraform(env)
        if (module_dir / "terraform.tfstate").is_file():
            destroy(module_dir, env)
            print(f"destroy took {time.monotonic() - started:.0f}s")
        else:
            print("nothing was applied: its moto server is stopped")
    finally:
        stop_emulator(workdir)
    shutil.rmtree(module_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("cli-config")
    cfg.add_argument("out", type=Path)
    up_p = sub.add_parser("up")
    up_p.add_argument("--workdir", type=Path, required=True)
    up_p.add_argument("--endpoint", help="an emulator already running (default: start moto)")
    down_p = sub.add_parser("down")
    down_p.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "cli-config":
        print(write_cli_config(args.out))
        return 0
    try:
        if args.command == "up":
            up(args.workdir, args.endpoint)
        else:
            down(args.workdir)
    except RuntimeError as exc:
        raise SystemExit(stopped(args.command, exc)) from None
    except KeyboardInterrupt as exc:  # a shell's status for Ctrl-C, as rehearse-aws's
        print(stopped(args.command, exc), file=sys.stderr)
        return INTERRUPTED
    return 0


def stopped_by(exc: BaseException) -> str:
    """A terraform run's failure in a few words: its errors were streamed above."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).splitlines()[0] + ", errors above"


def stopped(command: str, exc: BaseException) -> str:
    """One line for a failed or interrupted `up` or `down`, below Terraform's own errors:
    what is left, and what removes it (not a traceback of this script)."""
    reason = stopped_by(exc)
    if command == "up":
        return (
            f"apply-local stopped ({reason}): its moto server and what was applied are"
            " kept; make destroy-local removes them"
        )
    return f"destroy-local stopped ({reason}): its moto server is stopped all the same"


if __name__ == "__main__":
    sys.exit(main())
