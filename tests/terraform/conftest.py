"""Fixtures of the Terraform tests: the CLI config (provider mirror), a moto server."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"


def _load_tf_local():
    spec = importlib.util.spec_from_file_location(
        "churnops_tf_local", TERRAFORM_DIR / "scripts" / "tf_local.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


tf_local = _load_tf_local()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts real services (moto, terraform apply)")


@pytest.fixture(scope="session")
def terraform_bin() -> str:
    """Terraform is required (installed on CI): missing it is a failure, not a skip."""
    path = shutil.which("terraform")
    assert path, "terraform is not on PATH; install Terraform >= 1.8"
    version = subprocess.run([path, "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Terraform v1."), version.stdout
    return path


@pytest.fixture(scope="session")
def tf_cli_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CLI config using the local provider mirror when there is one."""
    return tf_local.write_cli_config(tmp_path_factory.mktemp("tfcli") / "terraform.rc")


@pytest.fixture(scope="session")
def tf_env(tf_cli_config: Path) -> dict[str, str]:
    env = tf_local.emulator_env("http://127.0.0.1:1", tf_cli_config)
    env.pop("AWS_ENDPOINT_URL")
    return env


@pytest.fixture(scope="module")
def tf_moto_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A moto server on a free loopback port, as a subprocess of the venv's moto_server."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc, endpoint = tf_local.start_moto(log)
    try:
        yield endpoint
    finally:
        tf_local.stop_process_group(proc.pid)
        proc.wait(timeout=10)
