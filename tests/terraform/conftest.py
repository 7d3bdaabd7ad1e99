"""Fixtures of the Terraform tests: terraform itself, and the deployment of the whole
root module against moto, applied early in the background."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from churnops.platform.services import stop_group
from terraform.scripts import tf_local

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    """Terraform is required (installed on CI): missing it is a failure, not a skip."""
    path = shutil.which("terraform")
    assert path, "terraform is not on PATH; install Terraform >= 1.8"
    version = subprocess.run([path, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Terraform v1."), version.stdout
    return path


def fake_command(bin_dir: Path, name: str, script: str) -> Path:
    """An executable shell script ``bin_dir/name`` standing in for a tool (terraform, docker)."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


#: Nothing an AWS SDK could find credentials in: no keys, no profile files, no instance role.
NO_CREDENTIALS = {
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS_* variable in this process's environment but :data:`NO_CREDENTIALS`."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in NO_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


#: An override that leaves the variable at its default (the emulator's tfvars set it).
DEFAULT: Any = object()


class Deployment:
    """The root module in a work folder, with the emulator's variables and ``overrides``
    (:data:`DEFAULT`: the variable's default), against the moto server at ``endpoint``."""

    def __init__(
        self, endpoint: str, workdir: Path, cli_config: Path, overrides: dict[str, Any]
    ) -> None:
        self.endpoint = endpoint
        tfvars = {**tf_local.emulator_tfvars(tf_local.create_network(endpoint)), **overrides}
        self.tfvars = {name: value for name, value in tfvars.items() if value is not DEFAULT}
        self.module_dir = tf_local.prepare_workdir(workdir, endpoint, self.tfvars)
        self.env = tf_local.emulator_env(endpoint, cli_config)
        self.destroyed = False
        self.outputs: dict = {}

    def tf(self, *args: str) -> str:
        return tf_local.terraform(self.module_dir, self.env, *args, capture=True)

    def apply(self, *extra: str) -> None:
        self.tf("apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=20", *extra)
        self.outputs = tf_local.outputs(self.module_dir, self.env)

    def destroy(self) -> None:
        tf_local.destroy(self.module_dir, self.env, "-parallelism=20", capture=True)
        self.destroyed = True

    def client(self, service: str):
        return tf_local.emulator_client(self.endpoint, service)


class _EarlyApply:
    """``terraform init`` and ``apply`` on a moto server of their own, in a thread.

    The AWS provider's waiters sleep about 100 s here (the RDS instance, the load
    balancer, the bucket lifecycle) although moto answers at once: begun when
    collection finds the apply tests, that wait overlaps the rest of the suite.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="churnops-tf-apply-"))
        self.moto: subprocess.Popen | None = None
        self.executor = ThreadPoolExecutor(1)
        self.future: Future[Deployment] = self.executor.submit(self._apply)
        self.destroyed: Future[Deployment] | None = None

    def destroy(self) -> Future[Deployment]:
        """``terraform destroy`` in the thread (its waiters sleep about 75 s too), begun once."""
        if self.destroyed is None:
            self.destroyed = self.executor.submit(self._destroy)
        return self.destroyed

    def _destroy(self) -> Deployment:
        deployment = self.future.result()
        deployment.destroy()
        return deployment

    def _apply(self) -> Deployment:
        """Apply on a moto server of its own (a fresh one after the emulator's retry race)."""
        cli_config = tf_local.write_cli_config(self.root / "terraform.rc")

        def apply(endpoint: str, attempt: str) -> Deployment:
            deployment = Deployment(endpoint, self.root / attempt, cli_config, {})
            deployment.tf("init", "-input=false", "-no-color")
            deployment.apply()
            return deployment

        def started(proc: subprocess.Popen) -> None:
            self.moto = proc

        return tf_local.on_fresh_moto(self.root / "moto.log", apply, started)

    def close(self) -> None:
        """Wait for the destroy (begun here if no test did), stop moto."""
        with contextlib.suppress(Exception):  # a failed apply or destroy: a test reported it
            self.destroy().result()
        if self.moto is not None:
            stop_group(self.moto, 5)
            self.moto.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


_EARLY: _EarlyApply | None = None


#: Test modules that use the early apply: collecting one of them starts it.
USES_APPLY = ("test_apply_moto.py", "test_rehearsal.py")


def pytest_collection_finish(session: pytest.Session) -> None:
    global _EARLY
    if any(item.path.name in USES_APPLY for item in session.items):
        _EARLY = _EarlyApply()


#: The apply checks run after this module (about 100 s into the lane, when the
#: background apply is done), so the destroy that follows them overlaps the rest.
RUN_CHECKS_AFTER = "test_platform_supervisor.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Apply checks mid-suite, the destroy check last: no test waits for the provider.

    The rehearsal (test_rehearsal.py) goes first among them: it leaves the deployment
    as it found it, while the last apply check changes the bucket's notification."""
    destroy = [i for i in items if i.name == "test_destroy_leaves_nothing_behind"]
    checks = [i for i in items if i.path.name in USES_APPLY and i not in destroy]
    checks.sort(key=lambda i: i.path.name != "test_rehearsal.py")
    rest = [i for i in items if i not in destroy and i not in checks]
    anchor = [n for n, i in enumerate(rest) if i.path.name == RUN_CHECKS_AFTER]
    at = anchor[-1] + 1 if anchor else len(rest)
    items[:] = rest[:at] + checks + rest[at:] + destroy


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _EARLY is not None:
        _EARLY.close()


def early() -> _EarlyApply:
    """The apply begun in the background; ``.future`` is the deployment once applied."""
    assert _EARLY is not None, f"the apply begins when collection selects one of {USES_APPLY}"
    return _EARLY
