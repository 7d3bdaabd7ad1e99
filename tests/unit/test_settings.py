"""Settings: read when asked, explicit overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnops.settings import get_settings


def test_environment_is_read_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MIN_F1", "0.9")
    settings = get_settings()
    assert settings.min_f1 == 0.9
    assert settings.metrics_db_url == f"sqlite:///{tmp_path / 'metrics.db'}"
    assert settings.drop_dir == tmp_path / "drop"


def test_explicit_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIAS", "production")
    assert get_settings(model_alias="canary").model_alias == "canary"
