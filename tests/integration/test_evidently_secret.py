"""EVIDENTLY_SECRET: a real ``evidently ui`` started with it (as the ECS task is) takes
writes from ChurnOps only when the settings carry the same secret."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from evidently.errors import EvidentlyError

from churnops.monitoring.drift import open_workspace, project_id
from churnops.platform.services import free_port, stop_group
from churnops.settings import get_settings
from tests.processes import LOOPBACK, wait_for_port

pytestmark = pytest.mark.integration

SECRET = f"evidently-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def evidently_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of ``evidently ui`` with EVIDENTLY_SECRET set in its environment."""
    home = tmp_path_factory.mktemp("evidently")
    port = free_port(LOOPBACK)
    command = [
        str(Path(sys.executable).parent / "evidently"),
        "ui",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workspace",
        str(home / "workspace"),
    ]
    env = {**os.environ, "EVIDENTLY_SECRET": SECRET}
    with (home / "ui.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for_port(port, process, timeout=120)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop_group(process, 20)


def test_the_secret_in_the_settings_lets_churnops_write(evidently_ui: str, tmp_path: Path) -> None:
    settings = get_settings(
        churnops_home=tmp_path, evidently_ui_url=evidently_ui, evidently_secret=SECRET
    )
    name = f"churnops-{uuid.uuid4().hex[:8]}"

    created = project_id(open_workspace(settings), name)

    assert project_id(open_workspace(settings), name) == created


@pytest.mark.parametrize("secret", [None, "wrong"])
def test_without_the_secret_writes_are_refused(
    evidently_ui: str, tmp_path: Path, secret: str | None
) -> None:
    settings = get_settings(
        churnops_home=tmp_path, evidently_ui_url=evidently_ui, evidently_secret=secret
    )

    with pytest.raises(EvidentlyError, match="Not enough permissions"):
        project_id(open_workspace(settings), f"churnops-{uuid.uuid4().hex[:8]}")
