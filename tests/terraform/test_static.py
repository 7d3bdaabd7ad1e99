"""Static checks of terraform/: fmt, validate, checkov, the variables' templates (the
minimal profile of terraform/README.md among them), and the helper scripts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from churnops.platform.services import terminate_groups
from terraform.scripts import rehearse

from .conftest import REPO, TERRAFORM_DIR, tf_local

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
    fake = tmp_path / "terraform"
    race = f"{tf_local.EMULATOR_RETRY_RACE}: rule exists"
    fake.write_text(f"#!/bin/sh\necho planning\necho '{race}' >&2\nexit 1\n")
    fake.chmod(0o755)
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
    applied, fake = tmp_path / "applied", tmp_path / "bin" / "terraform"
    fake.parent.mkdir()
    fake.write_text(
        f"""#!/bin/sh
[ "$2" = apply ] || exit 0
module="${{1#-chdir=}}"
echo "$AWS_ENDPOINT_URL" >> {applied}
[ -e "$module/stale" ] && exit 2
[ $(wc -l < {applied}) -gt 1 ] && exit 0
touch "$module/stale"
echo '{tf_local.EMULATOR_RETRY_RACE}: rule exists' >&2
exit 1
"""
    )
    fake.chmod(0o755)
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


def test_a_destroy_that_fails_once_is_run_again(tmp_path: Path) -> None:
    """The provider's retried DeleteTargetGroup stops a loaded moto's destroy; the second
    destroy finishes it (make destroy-local and the tests alike). A second failure raises."""
    fake, tries = tmp_path / "terraform", tmp_path / "tries"
    fake.write_text(
        f'#!/bin/sh\n[ "$2" = destroy ] || exit 0\necho x >> {tries}\n'
        f"[ $(wc -l < {tries}) -gt $FAILURES ] || {{ echo TargetGroupNotFound >&2; exit 1; }}\n"
    )
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAILURES": "1"}
    tf_local.destroy(tmp_path, env, capture=True)
    assert len(tries.read_text().split()) == 2
    with pytest.raises(RuntimeError, match="TargetGroupNotFound"):
        tf_local.destroy(tmp_path, {**env, "FAILURES": "5"}, capture=True)
    assert len(tries.read_text().split()) == 4
