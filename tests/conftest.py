"""Shared test set-up: the data folder and the fixture modules under tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from churnops.settings import NO_USAGE_TELEMETRY

# The libraries' usage-data switches, before any of them is imported: this process's
# MLflow, Prefect and Evidently clients and every server, kernel and command a test
# starts (all inherit this environment) send nothing to their vendors.
os.environ.update(NO_USAGE_TELEMETRY)

# Every module in tests/fixtures/ is a pytest plugin: services live there.
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with the customer_churn_*.csv files (CHURN_DATA_DIR)."""
    folder = Path(os.environ.get("CHURN_DATA_DIR", "data")).resolve()
    if not (folder / "customer_churn_0.csv").exists():
        pytest.fail(
            f"no customer_churn_0.csv in {folder}: run `make data` or set CHURN_DATA_DIR",
            pytrace=False,
        )
    return folder
