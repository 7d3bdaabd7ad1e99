"""Static checks of terraform/: fmt, validate, checkov, the variables' templates (the
minimal profile of terraform/README.md among them), and the helper scripts.

The rehearsal's parts that need no deployment: how values are mapped to this machine, how a
wrong one is reported, the S3 event, the images, the Lambda's import rule (the end-to-end
rehearsal on the applied module is test_rehearsal.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from churnops.drop.keys import decode_event_key
from churnops.platform.services import free_port, terminate_groups
from terraform.scripts import rehearse
from terraform.scripts.rehearsal import checks, images, lambda_runtime
from terraform.scripts.rehearsal import iam as rehearsal_iam
from terraform.scripts.rehearsal.containers import OWN_PLACES, Local
from terraform.scripts.rehearsal.deployment import (
    Aws,
    Container,
    Database,
    Deployment,
    Function,
    Listener,
    Rule,
    Task,
    WiringError,
    secret_value,
)
from terraform.scripts.rehearsal.mapping import Mapper, Paths, command
from terraform.scripts.rehearsal.services import connect, notification_for, s3_event

from .conftest import REPO, TERRAFORM_DIR, fake_command, tf_local

SKIP_RE = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(:?)(.*)")
DECLARED = set(
    re.findall(r'^variable "([^"]+)"', (TERRAFORM_DIR / "variables.tf").read_text(), re.M)
)
MINIMAL = TERRAFORM_DIR / "vars" / "minimal.tfvars.template"


def run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)


def test_terraform_fmt(terraform_bin: str) -> None:
    result = run([terraform_bin, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_terraform_validate(terraform_bin: str, tmp_path: Path) -> None:
    # Validate a copy so that no .terraform/ is written into the working tree, with the
    # provider mirror when there is one.
    module_dir = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, module_dir, ignore=tf_local.COPY_IGNORE)
    tf_env = tf_local.emulator_env("http://127.0.0.1:1", tf_local.write_cli_config(tmp_path / "rc"))
    tf_env.pop("AWS_ENDPOINT_URL")
    tf_local.terraform(module_dir, tf_env, "init", "-backend=false", "-input=false", capture=True)
    result = run([terraform_bin, f"-chdir={module_dir}", "validate", "-json"], tf_env)
    report = json.loads(result.stdout)
    assert report["valid"], json.dumps(report["diagnostics"], indent=2)
    assert report["warning_count"] == 0, json.dumps(report["diagnostics"], indent=2)


def test_checkov_has_no_failed_check() -> None:
    checkov = Path(sys.executable).parent / "checkov"
    assert checkov.exists(), "checkov is missing from the virtualenv (pipenv install --dev)"
    flags = ["--framework", "terraform", "-o", "json", "--quiet", "--compact", "--skip-download"]
    result = run([str(checkov), "-d", str(TERRAFORM_DIR), *flags])
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']})"
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    # A check that crashes logs a traceback and counts as neither passed nor failed.
    crashed = re.findall(r"Failed to run check \S+ on \S+", result.stdout + result.stderr)
    assert not crashed, crashed
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert passed > 100, "checkov scanned suspiciously little"


def test_every_checkov_skip_gives_a_reason() -> None:
    skips = []
    for path in TERRAFORM_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            match = SKIP_RE.search(line)
            if match:
                skips.append((path.name, match.group(1), match.group(3).strip()))
    assert skips, "expected the documented checkov skips"
    unexplained = [s for s in skips if len(s[2]) < 15]
    assert not unexplained, unexplained


def test_template_documents_every_variable() -> None:
    template = (TERRAFORM_DIR / "vars" / "stg.tfvars.template").read_text()
    documented = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", template, re.M))
    assert documented >= DECLARED, sorted(DECLARED - documented)


def test_the_minimal_profile_sets_only_declared_variables() -> None:
    assigned = set(re.findall(r"^([a-z_0-9]+)\s*=", MINIMAL.read_text(), re.M))
    assert assigned and assigned <= DECLARED, sorted(assigned - DECLARED)
    assert {"service_sizes", "worker_max_count", "private_subnet_ids"} <= assigned


def test_the_readme_prices_the_minimal_sizes() -> None:
    """Each size of the template is in the README's minimal column (cpu units / 1024)."""
    readme = (TERRAFORM_DIR / "README.md").read_text()
    sizes = re.findall(
        r'^\s+"?([a-z-]+)"?\s+= \{ cpu = (\d+), memory = (\d+) \}', MINIMAL.read_text(), re.M
    )
    assert len(sizes) == 5
    for _service, cpu, memory in sizes:
        vcpu = f"{int(cpu) / 1024:g} vCPU, {int(memory) / 1024:g} GB"
        assert vcpu in readme, vcpu


def test_no_secret_in_outputs_or_defaults() -> None:
    outputs = (TERRAFORM_DIR / "outputs.tf").read_text()
    assert "password" not in outputs.replace("admin password", "")
    for path in TERRAFORM_DIR.rglob("variables.tf"):
        assert not re.search(r'variable "[^"]*password[^"]*"', path.read_text()), path


def test_no_machine_paths_in_committed_terraform_files() -> None:
    files = [p for p in TERRAFORM_DIR.rglob("*") if p.is_file() and ".terraform" not in p.parts]
    files += [REPO / ".github" / "workflows" / "deploy.yml", TERRAFORM_DIR / "aws.mk"]
    pattern = re.compile(r"/(work|root|home|opt/tf-plugins)/")
    for path in files:
        if path.exists() and path.suffix not in {".pyc"}:
            assert not pattern.search(path.read_text()), path


def test_cli_config_uses_the_mirror_from_env_or_installs_directly(
    tmp_path: Path, monkeypatch
) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "registry.terraform.io" / "hashicorp" / "aws").mkdir(parents=True)
    monkeypatch.setenv("TF_PLUGIN_MIRROR", str(mirror))
    text = tf_local.write_cli_config(tmp_path / "cli.rc").read_text()
    assert f'path    = "{mirror}"' in text
    assert "filesystem_mirror" in text
    monkeypatch.delenv("TF_PLUGIN_MIRROR")
    monkeypatch.setattr(tf_local, "MIRROR_ROOTS", ())
    assert tf_local.find_mirror() is None
    assert "direct {}" in tf_local.cli_config_text(None)


def test_the_provider_lock_is_committed_and_pins_the_aws_provider() -> None:
    """Every init (CI, plan, apply, these tests: tf_local copies it) installs the one
    build whose hash the lock names, not the newest 5.x of the day."""
    lock = TERRAFORM_DIR / ".terraform.lock.hcl"
    tracked = run(["git", "ls-files", "--error-unmatch", str(lock)], cwd=REPO)
    assert tracked.returncode == 0, "terraform/.terraform.lock.hcl is not committed"
    ignored = run(["git", "check-ignore", "-q", str(lock)], cwd=REPO)
    assert ignored.returncode == 1, ".gitignore ignores the provider lock"
    text = lock.read_text()
    assert re.search(r'provider "registry.terraform.io/hashicorp/aws" \{\s+version\s+= "5\.', text)
    assert re.search(r'"h1:[A-Za-z0-9+/=]{44}"', text)
    assert tf_local.COPY_IGNORE(str(TERRAFORM_DIR), [lock.name]) == set()


def test_an_apply_error_but_the_emulators_retry_race_is_not_tried_again(tmp_path: Path) -> None:
    """Any other error is raised at once, its moto left running for the destroy (the race
    itself: test_apply_local_meets_the_retry_race_then_applies_on_a_fresh_moto)."""
    servers: list[subprocess.Popen] = []

    def denied(endpoint: str, attempt: str) -> str:
        raise RuntimeError("apply failed\nAccessDenied")

    try:
        with pytest.raises(RuntimeError, match="AccessDenied"):
            tf_local.on_fresh_moto(tmp_path / "moto.log", denied, servers.append)
        assert len(servers) == 1 and servers[0].poll() is None
    finally:
        terminate_groups([server.pid for server in servers], grace=5.0)


def test_terraforms_errors_are_named_whether_or_not_its_output_is_captured(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`make apply-local` streams terraform's progress; the error raised must still carry
    terraform's stderr, which is what the retry-race rule reads."""
    race = "InvalidPermission.Duplicate: rule exists"
    fake_command(tmp_path, "terraform", f"echo planning\necho '{race}' >&2\nexit 1")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    for capture in (True, False):
        with pytest.raises(RuntimeError, match=f"^apply failed with 1\n(planning\n\n)?{race}\n$"):
            tf_local.terraform(tmp_path, env, "apply", capture=capture)
    shown = capfd.readouterr()
    assert (shown.out, shown.err) == ("planning\n", f"{race}\n")  # uncaptured: streamed


def test_apply_local_meets_the_retry_race_then_applies_on_a_fresh_moto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make apply-local` (tf_local.up) with a terraform whose first apply meets the race:
    that moto is stopped, the second apply runs on a new one from a clean module folder,
    and the state file names the server `down` destroys against and stops."""
    applied = tmp_path / "applied"
    fake = fake_command(
        tmp_path / "bin",
        "terraform",
        f"""[ "$2" = apply ] || exit 0
module="${{1#-chdir=}}"
echo "$AWS_ENDPOINT_URL" >> {applied}
[ -e "$module/stale" ] && exit 2
[ $(wc -l < {applied}) -gt 1 ] && exit 0
touch "$module/stale"
echo 'creating IAM Role (worker): EntityAlreadyExists: Role with name worker already exists.' >&2
exit 1""",
    )
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    workdir = tmp_path / "work"
    try:
        tf_local.up(workdir, None)
        first, second = applied.read_text().split()
        state = json.loads((workdir / "emulator.json").read_text())
        assert state["endpoint"] == second != first
        tf_local.wait_for_http(f"{second}/moto-api/", timeout=5)
        with pytest.raises(TimeoutError):
            tf_local.wait_for_http(f"{first}/moto-api/", timeout=1)
    finally:
        tf_local.stop_emulator(workdir)
    assert not (workdir / "emulator.json").exists()


@pytest.fixture
def rehearsal_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CHURN_DATA_DIR holding the two files a rehearsal reads (whatever ./data holds)."""
    data = tmp_path / "data"
    data.mkdir()
    for name in (rehearse.TRAINING_FILE, rehearse.DROPPED_FILE):
        (data / name).write_text("a\n")
    monkeypatch.setenv("CHURN_DATA_DIR", str(data))
    return data


def test_without_terraform_apply_local_and_the_rehearsal_say_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rehearsal_data: Path
) -> None:
    """`make apply-local` and `make rehearse-aws` on a machine without Terraform: one line
    naming it (not subprocess's FileNotFoundError traceback), and no moto started."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tf_local, "start_moto", lambda *_: pytest.fail("moto was started"))
    for main in (
        lambda: tf_local.main(["up", "--workdir", str(tmp_path / "local")]),
        lambda: rehearse.main(["--workdir", str(tmp_path / "rehearsal")]),
    ):
        with pytest.raises(SystemExit, match=r"^terraform is not on PATH: install Terraform"):
            main()


def test_destroy_local_and_a_reuse_rehearsal_before_any_apply_local_say_so(
    tmp_path: Path, rehearsal_data: Path
) -> None:
    """`make destroy-local` or `rehearse --reuse` on a workdir no apply-local made: one line
    naming what to run, not a FileNotFoundError traceback."""
    for main in (
        lambda: tf_local.main(["down", "--workdir", str(tmp_path)]),
        lambda: rehearse.main(["--reuse", "--workdir", str(tmp_path)]),
    ):
        with pytest.raises(
            SystemExit, match=r"holds no apply against moto: run `make apply-local`"
        ):
            main()


def test_a_rehearsal_without_the_data_says_so_before_it_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No data/ yet (`make data` not run, or CHURN_DATA_DIR elsewhere): one line, before the
    apply, not a failed training reported as a wiring error minutes later."""
    monkeypatch.setenv("CHURN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(tf_local, "up", lambda *_: pytest.fail("applied without the data"))
    with pytest.raises(SystemExit, match=r"^no customer_churn_0.csv or .* run `make data`$"):
        rehearse.main(["--workdir", str(tmp_path / "rehearsal")])


def test_a_rehearsal_without_postgres_says_so_before_it_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rehearsal_data: Path
) -> None:
    """No initdb or pg_ctl (RDS's stand-in): one line before the apply, not the throwaway
    cluster's traceback after it."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "terraform").symlink_to(shutil.which("terraform") or "/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(tf_local, "up", lambda *_: pytest.fail("applied without PostgreSQL"))
    with pytest.raises(SystemExit, match=r"^PostgreSQL binaries not on PATH: initdb, pg_ctl"):
        rehearse.main(["--workdir", str(tmp_path / "rehearsal")])


def test_a_rehearsal_whose_apply_fails_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Terraform's errors stream above; the rehearsal ended in tf_local's RuntimeError
    traceback below them."""

    def fails(*_: object) -> None:
        raise RuntimeError("apply failed with 1\nError: creating ...")

    monkeypatch.setattr(rehearse, "require_tools_and_data", lambda *_: None)
    monkeypatch.setattr(tf_local, "up", fails)
    assert rehearse.main(["--workdir", str(tmp_path / "rehearsal")]) == 1
    assert capsys.readouterr().err == "rehearsal failed: apply failed with 1, errors above\n"


@pytest.mark.parametrize("during", ["apply", "rehearsal"])
def test_ctrl_c_in_a_rehearsal_is_one_line_after_its_clean_up(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    during: str,
) -> None:
    """Ctrl-C in `make rehearse-aws` cleaned up, then printed a KeyboardInterrupt traceback.
    As apply-local's (tf_local.stopped_by): one line, once the clean-up is done; exit 130."""
    workdir = tmp_path / "rehearsal"
    cleaned: list[str] = []

    def apply(*_: object) -> None:
        (workdir / "terraform").mkdir(parents=True)
        if during == "apply":
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def cluster():
        try:
            yield SimpleNamespace(url=lambda: "postgresql://127.0.0.1:1/postgres")
        finally:
            cleaned.append("postgres")

    def rehearsal(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rehearse, "require_tools_and_data", lambda *_: None)
    monkeypatch.setattr(tf_local, "up", apply)
    monkeypatch.setattr(tf_local, "workdir_env", lambda *_: ("http://127.0.0.1:1", {}))
    monkeypatch.setattr(tf_local, "outputs", lambda *_: {})
    monkeypatch.setattr(tf_local, "stop_emulator", lambda *_: cleaned.append("moto"))
    monkeypatch.setattr(rehearse.local_postgres, "throwaway_cluster", cluster)
    monkeypatch.setattr(rehearse, "Rehearsal", rehearsal)
    assert rehearse.main(["--workdir", str(workdir)]) == 130
    assert cleaned == (["moto"] if during == "apply" else ["postgres", "moto"])
    assert not workdir.exists()
    assert capsys.readouterr().err == (
        "rehearsal stopped (interrupted): its moto server, PostgreSQL and processes are"
        " stopped, its work folder removed\n"
    )


def test_a_rehearsal_refuses_a_work_folder_in_use_and_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second `make rehearse-aws` while one ran was refused by the apply ("make
    destroy-local first", which does not apply to a rehearsal), and its clean-up then
    stopped the first rehearsal's moto server and removed its work folder."""
    workdir = tmp_path / "rehearsal"
    workdir.mkdir()
    server = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (workdir / "emulator.json").write_text(json.dumps({"moto_pid": server.pid}))
    monkeypatch.setattr(rehearse, "require_tools_and_data", lambda *_: None)
    try:
        with pytest.raises(SystemExit, match=rf"another rehearsal .*\(pid {server.pid}\)"):
            rehearse.main(["--workdir", str(workdir)])
        assert server.poll() is None, "the running rehearsal's moto server was stopped"
        assert (workdir / "emulator.json").is_file()
    finally:
        terminate_groups([server.pid], grace=5.0)
        server.wait()


def test_a_second_ctrl_c_does_not_cut_a_rehearsals_clean_up_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The clean-up after a Ctrl-C takes seconds with nothing printed (each process is let
    stop): a second Ctrl-C meanwhile interrupted it, and MLflow, the Prefect server and the
    Evidently UI ran on, orphaned, under the line saying they were stopped. As `churnops
    up`: the first signal interrupts, later ones let the clean-up finish."""
    cleaned: list[str] = []

    def ctrl_c(wait: float) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode
        time.sleep(wait)

    @contextlib.contextmanager
    def cluster():
        try:
            yield SimpleNamespace(url=lambda: "postgresql://127.0.0.1:1/postgres")
        finally:
            ctrl_c(0.2)  # the second, while the rehearsal stops its processes
            cleaned.append("postgres")

    def rehearsal(*_: object) -> None:
        ctrl_c(5)

    monkeypatch.setattr(rehearse, "require_tools_and_data", lambda *_: None)
    monkeypatch.setattr(tf_local, "workdir_env", lambda *_: ("http://127.0.0.1:1", {}))
    monkeypatch.setattr(tf_local, "outputs", lambda *_: {})
    monkeypatch.setattr(rehearse.local_postgres, "throwaway_cluster", cluster)
    monkeypatch.setattr(rehearse, "Rehearsal", rehearsal)
    handler = signal.getsignal(signal.SIGINT)
    assert rehearse.main(["--reuse", "--workdir", str(tmp_path)]) == 130
    assert cleaned == ["postgres"]
    assert signal.getsignal(signal.SIGINT) is handler
    assert capsys.readouterr().err.startswith("rehearsal stopped (interrupted)")


def test_a_destroy_that_fails_once_is_run_again(tmp_path: Path) -> None:
    """The provider's retried DeleteTargetGroup stops a loaded moto's destroy; the second
    destroy finishes it (make destroy-local and the tests alike). A second failure raises."""
    tries = tmp_path / "tries"
    fake_command(
        tmp_path,
        "terraform",
        f'[ "$2" = destroy ] || exit 0\necho x >> {tries}\n'
        f"[ $(wc -l < {tries}) -gt $FAILURES ] || {{ echo TargetGroupNotFound >&2; exit 1; }}",
    )
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAILURES": "1"}
    tf_local.destroy(tmp_path, env, capture=True)
    assert len(tries.read_text().split()) == 2
    with pytest.raises(RuntimeError, match="TargetGroupNotFound"):
        tf_local.destroy(tmp_path, {**env, "FAILURES": "5"}, capture=True)
    assert len(tries.read_text().split()) == 4


# --- the rehearsal's parts that need no deployment -----------------------------------------------
NS = "churnops-emu.internal"
DB_HOST = "churnops-emu.abc.us-east-1.rds.amazonaws.com"
ALB = "churnops-emu-1.us-east-1.elb.amazonaws.com"
MLFLOW_TG = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/mlflow/1"


def _task(service: str, ports: tuple[int, ...], target_groups: dict | None = None) -> Task:
    image = "1.dkr.ecr/x/orchestration:t"
    mappings = [{"containerPort": port} for port in ports]
    container = Container.from_api(
        service, {"name": service, "image": image, "portMappings": mappings}
    )
    return Task(service, f"arn:td/{service}:1", (container,), {}, target_groups or {}, (), None)


@pytest.fixture
def mapper() -> Mapper:
    rules = (
        Rule(("mlflow.example.org",), ("forward", MLFLOW_TG), authenticated=True),
        Rule((), ("fixed-response", "404"), authenticated=False),
    )
    deployment = Deployment(
        tasks={
            "mlflow": _task("mlflow", (5000,), {MLFLOW_TG: ("mlflow", 5000)}),
            "prefect-server": _task("prefect-server", (4200,)),
            "worker": _task("worker", ()),
        },
        discovery={f"mlflow.{NS}": "mlflow", f"prefect-server.{NS}": "prefect-server"},
        namespaces=(NS,),
        load_balancers={ALB: {443: Listener("HTTPS", rules)}},
        target_group_health={},
        database=Database(DB_HOST, 5432, "churnops", "metrics", None),
        function=Function("f", "arn:f", {}, None, "arn:role", 30.0),
        bucket="b",
    )
    return Mapper(deployment, {("mlflow", 5000): 15000, ("prefect-server", 4200): 14200}, 15432)


def test_service_names_and_the_database_become_local_ports_keeping_credentials(
    mapper: Mapper,
) -> None:
    where = "container worker/worker, variable X"
    assert mapper.value(f"http://prefect-server.{NS}:4200/api", where) == (
        "http://127.0.0.1:14200/api"
    )
    url = f"postgresql+psycopg2://churnops_flow:s3cret@{DB_HOST}:5432/metrics?sslmode=require"
    assert mapper.value(url, where) == (
        "postgresql+psycopg2://churnops_flow:s3cret@127.0.0.1:15432/metrics?sslmode=prefer"
    )
    assert mapper.variable("PGSSLMODE", "require", where, {}) == "prefer"
    # Behind the load balancer's sign-in: TLS ends there, the service speaks http.
    assert mapper.value("https://mlflow.example.org/", where) == "http://127.0.0.1:15000/"
    assert not any("s3cret" in note for note in mapper.notes)


def test_a_host_alone_and_its_port_variable_are_mapped_together(mapper: Mapper) -> None:
    mapper.bare_ports = {}
    assert mapper.value(DB_HOST, "DB_HOST") == "127.0.0.1"
    assert mapper.port_variable("5432", "DB_PORT", {}) == "15432"
    assert mapper.port_variable("60", "INTERVAL", {}) == "60"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"http://mlflw.{NS}:5000", f"mlflw.{NS} is not a name of this deployment"),
        (f"http://prefect-server.{NS}/api", "port 80 of ECS service prefect-server"),
        (f"{DB_HOST}:5433", "listens on 5432, not 5433"),
        (f"http://{ALB}:4200/api", "has no listener on port 4200"),
        (f"https://{ALB}/", "answers https://"),
    ],
)
def test_a_wrong_value_names_the_container_and_variable(
    mapper: Mapper, value: str, message: str
) -> None:
    where = "container worker/worker, variable MLFLOW_TRACKING_URI"
    with pytest.raises(WiringError) as error:
        mapper.value(value, where)
    assert str(error.value).startswith(where)
    assert message in str(error.value)


def test_commands_bind_to_loopback_and_paths_go_to_folders(mapper: Mapper, tmp_path: Path) -> None:
    argv = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
    assert command(argv, mapper, "c", {5000: 15000})[2:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "15000",
    ]
    paths = Paths({"/tmp": tmp_path / "tmp", "/mnt/evidently": tmp_path / "efs"})
    assert paths.value("/mnt/evidently/workspace") == f"{tmp_path}/efs/workspace"
    assert paths.value("sqlite:////tmp/a.db") == f"sqlite:///{tmp_path}/tmp/a.db"
    assert paths.value("/tmpfoo /var/tmp") == "/tmpfoo /var/tmp"


def test_secrets_resolve_whole_and_by_json_key(moto_server: str) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto_server)
    arn = sm.create_secret(
        Name="rehearsal-unit/db", SecretString=json.dumps({"username": "u", "password": "p"})
    )["ARN"]
    aws = Aws(moto_server)
    assert secret_value(aws, arn, "c") == json.dumps({"username": "u", "password": "p"})
    assert secret_value(aws, f"{arn}:password::", "c") == "p"
    with pytest.raises(WiringError, match=r"container w/w, secret URL: .* no JSON key 'url'"):
        secret_value(aws, f"{arn}:url::", "container w/w, secret URL")
    with pytest.raises(WiringError, match="no such secret"):
        secret_value(aws, arn[:-3] + "xyz", "c")


def test_the_event_encodes_the_key_as_s3_does() -> None:
    key = "data/input/rehearsal 1+drift é.csv"
    head = {"ContentLength": 3, "ETag": '"abc"', "VersionId": "v1"}
    (record,) = s3_event("b", key, head, "new-input-file", "us-east-1")["Records"]
    encoded = record["s3"]["object"]["key"]
    assert encoded == "data/input/rehearsal+1%2Bdrift+%C3%A9.csv"
    assert decode_event_key(encoded) == key
    assert record["eventName"] == "ObjectCreated:Put"


def test_only_a_notification_that_matches_sends_the_event() -> None:
    configs = [
        {
            "Id": "new-input-file",
            "LambdaFunctionArn": "arn:f",
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "data/input/"}]}},
        }
    ]
    assert notification_for(configs, "arn:f", "data/input/x.csv") == "new-input-file"
    with pytest.raises(ValueError, match="no notification"):
        notification_for(configs, "arn:f", "data/other/x.csv")
    with pytest.raises(ValueError, match="no notification"):
        notification_for(configs, "arn:g", "data/input/x.csv")


def test_images_are_read_from_their_dockerfiles(tmp_path: Path) -> None:
    flow = images.facts(images.IMAGES["orchestration"].dockerfile)
    assert flow.workdir == "/opt/churnops/code"
    assert flow.env["PREFECT_HOME"] == "/tmp/prefect"
    root = images.build_folder(images.IMAGES["s3-to-prefect-lambda"], tmp_path)
    assert (root / "lambda_function.py").exists()
    assert (root / "churnops" / "drop" / "trigger.py").exists()
    assert not (root / "churnops" / "settings.py").exists()
    assert images.IMAGES["grafana"].not_here


def test_the_lambda_cannot_import_what_its_image_lacks(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(
        "import pandas\ndef handle(event, context):\n    return 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", lambda_runtime.BOOTSTRAP, "handler.handle", "boto3"],
        input="{}",
        env={"LAMBDA_TASK_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "pandas is not in the Lambda image" in done.stderr


def test_a_role_that_may_not_read_a_secret_or_its_key_is_named(moto_server: str) -> None:
    aws = Aws(moto_server)
    key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    sm = aws.client("secretsmanager")
    readable = sm.create_secret(Name="rehearsal-iam/a", SecretString="x", KmsKeyId=key)["ARN"]
    other = sm.create_secret(Name="rehearsal-iam/b", SecretString="y", KmsKeyId=key)["ARN"]
    iam = aws.client("iam")
    role = iam.create_role(RoleName="rehearsal-iam-exec", AssumeRolePolicyDocument="{}")
    statement = {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": readable}
    iam.put_role_policy(
        RoleName="rehearsal-iam-exec",
        PolicyName="secrets",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    policies = rehearsal_iam.Policies(aws, role["Role"]["Arn"])
    assert rehearsal_iam.secret_problems(aws, policies, readable) == [
        f"role rehearsal-iam-exec may not kms:Decrypt with its key {key}"
    ]
    (problem, _key) = rehearsal_iam.secret_problems(aws, policies, other)
    assert problem == f"role rehearsal-iam-exec may not secretsmanager:GetSecretValue {other}"


def test_the_dashboards_login_is_built_as_grafanas_provisioning_builds_it(tmp_path: Path) -> None:
    env = {
        "METRICS_DB_HOST": "127.0.0.1:5999",
        "METRICS_DB_NAME": "metrics",
        "METRICS_DB_USER": "grafana_ro",
        "METRICS_DB_PASSWORD": "pw$1",
        "METRICS_DB_SSLMODE": "require",
    }
    container = _task("grafana", (3000,)).containers[0]
    local = Local(container, [], env, tmp_path, {}, None, Paths({}))
    assert checks.datasource_login(local) == {
        "host": "127.0.0.1",
        "port": 5999,
        "dbname": "metrics",
        "user": "grafana_ro",
        "password": "pw$1",
        "sslmode": "prefer",
    }
    del env["METRICS_DB_USER"]
    with pytest.raises(WiringError, match=r"container grafana/grafana: .* needs \$METRICS_DB_USER"):
        checks.datasource_login(local)


def test_what_a_container_writes_outside_tmp_and_its_volumes_stays_in_its_folder(
    tmp_path: Path,
) -> None:
    own = {p: tmp_path / "rootfs" / p.lstrip("/") for p in OWN_PLACES}
    paths = Paths({**own, "/var/lib/evidently": tmp_path / "efs", "/tmp": tmp_path / "tmp"})
    assert paths.value("/var/lib/evidently/x") == f"{tmp_path}/efs/x"
    assert paths.value("/var/lib/other") == f"{tmp_path}/rootfs/var/lib/other"
    assert paths.value("/usr/local/bin/python") == "/usr/local/bin/python"


def test_a_service_logging_in_as_the_master_user_is_named(mapper: Mapper, tmp_path: Path) -> None:
    def local(service: str, user: str | None) -> Local:
        url = f"postgresql+psycopg2://{user}:pw@127.0.0.1:15432/metrics"
        env = {"DATABASE_URL": url} if user else {}
        container = mapper.deployment.tasks[service].containers[0]
        return Local(container, [], env, tmp_path, {}, None, Paths({}))

    rehearsal = SimpleNamespace(
        deployment=mapper.deployment,
        mapper=mapper,
        master_users=["churnops"],
        report=SimpleNamespace(facts={}),
        local={
            "worker/worker": local("worker", "churnops_flow"),
            "mlflow/mlflow": local("mlflow", "x"),
            "prefect-server/prefect-server": local("prefect-server", None),
        },
    )
    checks.check_database_logins(rehearsal)
    assert (
        rehearsal.report.facts["database logins"]
        == "mlflow/mlflow as x, worker/worker as churnops_flow"
    )
    rehearsal.local["mlflow/mlflow"] = local("mlflow", "churnops")
    with pytest.raises(WiringError, match=r"container mlflow/mlflow logs in .* as the master user"):
        checks.check_database_logins(rehearsal)


def test_a_failed_database_login_names_user_and_database_but_never_the_password() -> None:
    url = f"postgresql+psycopg2://admin:s3cret-pw@127.0.0.1:{free_port('127.0.0.1')}/metrics"
    with pytest.raises(WiringError, match=r"^login admin to metrics failed") as error, connect(url):
        pass
    assert "s3cret-pw" not in str(error.value)
