"""A runner without a model to load still serves (a platform just deployed has none)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from churnops.platform.runner import FlowRunner
from churnops.settings import get_settings


def test_no_staging_model_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = get_settings(
        churnops_home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"
    )
    runner = FlowRunner(settings, client=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="churnops.runner"):
        runner.warm_up()
    assert "not warm, the first run loads the model" in caplog.text
