"""Shared test set-up: the data folder and the fixture modules under tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from xdist.scheduler import LoadGroupScheduling

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


#: Test files whose module fixtures or waits take longest (``--durations``), slowest
#: first: under pytest-xdist each starts on a worker of its own at once, and the short
#: files fill the other workers meanwhile. A file not named here keeps its place.
SLOWEST_FIRST = (
    "terraform-apply",  # the xdist_group of tests/terraform/conftest.py
    "tests/integration/test_exactly_once.py",
    "tests/integration/test_platform_e2e.py",
    "tests/integration/test_private_by_default.py",
    "tests/terraform/test_policy.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a pytest-xdist worker, the slowest files and groups first (a stable sort: the
    order within each is kept)."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: n for n, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))


def _group(item: pytest.Item) -> str:
    """The item's xdist_group, else its file."""
    mark = item.get_closest_marker("xdist_group")
    return str(mark.args[0]) if mark else item.nodeid.split("::")[0]


class FileScheduling(LoadGroupScheduling):
    """pytest-xdist's ``loadgroup`` where a test outside any ``xdist_group`` goes with its
    file (as ``loadfile``): a module's fixtures (a platform, a trained model) are built
    once, on one worker, and the groups spanning files still share one worker."""

    def _split_scope(self, nodeid: str) -> str:
        scope = super()._split_scope(nodeid)
        return nodeid.split("::")[0] if scope == nodeid else scope


def pytest_xdist_make_scheduler(config: pytest.Config, log) -> FileScheduling:
    return FileScheduling(config, log)
