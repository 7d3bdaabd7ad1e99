"""EVIDENTLY_SECRET: a real ``evidently ui`` started with it (as the ECS task is) takes
writes from ChurnOps only when the settings carry the same secret."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import requests
from evidently.errors import EvidentlyError

from churnops import retry
from churnops.monitoring.drift import open_workspace, project_id
from churnops.settings import MonitoringSettings, get_settings
from tests.fixtures.evidently_ui import SECRET, EvidentlyUI


def _monitoring(home: Path, ui: EvidentlyUI, secret: str | None = SECRET) -> MonitoringSettings:
    return get_settings(
        churnops_home=home, evidently_ui_url=ui.url, evidently_secret=secret
    ).monitoring


def test_the_secret_in_the_settings_lets_churnops_write(
    evidently_ui: EvidentlyUI, tmp_path: Path
) -> None:
    name = f"churnops-{uuid.uuid4().hex[:8]}"
    created = project_id(open_workspace(_monitoring(tmp_path, evidently_ui)), name)
    assert project_id(open_workspace(_monitoring(tmp_path, evidently_ui)), name) == created


@pytest.mark.parametrize("secret", [None, "wrong"])
def test_without_the_secret_writes_are_refused(
    evidently_ui: EvidentlyUI, tmp_path: Path, secret: str | None
) -> None:
    monitoring = _monitoring(tmp_path, evidently_ui, secret)
    with pytest.raises(EvidentlyError, match="Not enough permissions"):
        project_id(open_workspace(monitoring), f"churnops-{uuid.uuid4().hex[:8]}")


def test_a_frozen_ui_fails_the_call_in_bounded_time_then_works_again(
    evidently_ui: EvidentlyUI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGSTOP'ed, the UI accepts connections and answers nothing: NETWORK_TIMEOUT_SECONDS
    ends the wait (the run fails and is retried), and after SIGCONT it works."""
    monitoring = _monitoring(tmp_path, evidently_ui)
    monkeypatch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 1.0)
    with evidently_ui.frozen(), pytest.raises(requests.Timeout):
        open_workspace(monitoring)
    assert project_id(open_workspace(monitoring), f"churnops-{uuid.uuid4().hex[:8]}")
