"""EVIDENTLY_SECRET: a real ``evidently ui`` started with it (as the ECS task is) takes
writes from ChurnOps only when the settings carry the same secret."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from evidently.errors import EvidentlyError

from churnops import retry
from churnops.monitoring.drift import open_workspace, project_id
from churnops.settings import get_settings
from tests.fixtures.evidently_ui import SECRET

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def evidently_ui(evidently_process: subprocess.Popen) -> str:
    """The URL of the UI."""
    return evidently_process.url  # type: ignore[attr-defined]


def test_the_secret_in_the_settings_lets_churnops_write(evidently_ui: str, tmp_path: Path) -> None:
    settings = get_settings(
        churnops_home=tmp_path, evidently_ui_url=evidently_ui, evidently_secret=SECRET
    )
    name = f"churnops-{uuid.uuid4().hex[:8]}"

    created = project_id(open_workspace(settings.monitoring), name)

    assert project_id(open_workspace(settings.monitoring), name) == created


@pytest.mark.parametrize("secret", [None, "wrong"])
def test_without_the_secret_writes_are_refused(
    evidently_ui: str, tmp_path: Path, secret: str | None
) -> None:
    settings = get_settings(
        churnops_home=tmp_path, evidently_ui_url=evidently_ui, evidently_secret=secret
    )

    with pytest.raises(EvidentlyError, match="Not enough permissions"):
        project_id(open_workspace(settings.monitoring), f"churnops-{uuid.uuid4().hex[:8]}")


def test_a_frozen_ui_fails_the_call_in_bounded_time_then_works_again(
    evidently_ui: str,
    evidently_process: subprocess.Popen,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGSTOP'ed, the UI accepts connections and answers nothing: NETWORK_TIMEOUT_SECONDS
    ends the wait (the run fails and is retried), and after SIGCONT it works."""
    settings = get_settings(
        churnops_home=tmp_path,
        evidently_ui_url=evidently_ui,
        evidently_secret=SECRET,
    )
    monkeypatch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 1.0)
    os.kill(evidently_process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(requests.Timeout):
            open_workspace(settings.monitoring)
    finally:
        os.kill(evidently_process.pid, signal.SIGCONT)
    assert project_id(open_workspace(settings.monitoring), f"churnops-{uuid.uuid4().hex[:8]}")
