"""The screenshot script finds the staging version through MLflow's REST API (real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnops.settings import get_settings
from devtools.screenshots import ScreenshotError, Services, staging_version


def test_the_staging_version_comes_from_the_registry(
    mlflow_server: str, session_model: str, tmp_path: Path
) -> None:
    services = Services("http://unused", mlflow_server, "http://unused", str(tmp_path))
    settings = get_settings(churnops_home=tmp_path, model_name=session_model)
    assert staging_version(services, settings.model) == "1"
    missing = get_settings(churnops_home=tmp_path, model_name="NoSuchModel")
    with pytest.raises(ScreenshotError, match="no NoSuchModel@staging in MLflow"):
        staging_version(services, missing.model)
