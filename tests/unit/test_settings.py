"""Settings: read when asked, in groups under their flat names; explicit overrides win; each
described, and docs/configuration.md is the generator's output, listing every variable read."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from churnops.drop import trigger
from churnops.settings import GROUPS, get_settings
from devtools.configuration_reference import REFERENCE, render


def test_environment_is_read_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MIN_F1", "0.9")
    settings = get_settings()
    assert settings.monitoring.min_f1 == 0.9
    assert settings.monitoring.metrics_db_url == f"sqlite:///{tmp_path / 'metrics.db'}"
    assert settings.drop.drop_dir == tmp_path / "drop"
    assert {group.home for group in vars(settings).values()} == {tmp_path}


def test_explicit_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_ALIAS", "production")
    assert get_settings(model_alias="canary").model.model_alias == "canary"


def test_replace_routes_flat_names_to_their_group_and_validates(tmp_path: Path) -> None:
    settings = get_settings(churnops_home=tmp_path)
    changed = settings.replace(drop_storage="s3", min_f1="0.8")
    assert changed.drop.drop_storage == "s3" and changed.monitoring.min_f1 == 0.8
    assert changed.model is settings.model  # untouched groups are shared
    with pytest.raises(ValueError):
        settings.replace(drop_storage="ftp")


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(TypeError, match="lease_seconds"):
        get_settings(lease_seconds=1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREFECT_PORT", "-1"),
        ("MLFLOW_PORT", "99999"),
        ("EVIDENTLY_PORT", "65536"),
        ("SMTP_PORT", "0"),
        ("RUNNER_PROCESSES", "0"),
        ("MAX_FILE_BYTES", "-5"),
        ("DRIFT_SHARE_THRESHOLD", "-1"),
        ("DRIFT_SHARE_THRESHOLD", "7"),
        ("MIN_F1", "-3"),
        ("MIN_F1", "70"),  # a percentage: every labeled file would alert, no model promote
    ],
)
def test_a_value_out_of_its_range_is_refused_when_read(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not later as a traceback (a port past 65535 failed bind() in `churnops up`), a
    silently changed count (0 runners ran 1) or a threshold no file can cross or miss."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        get_settings()


@pytest.mark.parametrize("alias", ["latest", "Latest", "v2", "V10", "my alias", ""])
def test_an_alias_mlflow_reserves_or_refuses_is_refused_when_read(
    alias: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODEL_ALIAS=latest scored every file with the newest version, refused ones too (the
    gate bypassed: MLflow reads 'latest' as that version), and MODEL_ALIAS=v2 failed only
    after `churnops train` had registered a version ("Version alias name 'v2' is reserved")."""
    monkeypatch.setenv("MODEL_ALIAS", alias)
    with pytest.raises(ValidationError, match="model_alias"):
        get_settings()
    monkeypatch.setenv("MODEL_ALIAS", "production-2")
    assert get_settings().model.model_alias == "production-2"


@pytest.mark.parametrize(("name", "value"), [("PREFECT_PORT", "0"), ("MIN_F1", "1")])
def test_the_ends_of_a_range_are_taken(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    read = {field: v for group in vars(get_settings()).values() for field, v in vars(group).items()}
    assert read[name.lower()] == float(value)


def test_the_committed_reference_is_current() -> None:
    assert REFERENCE.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_the_lambda_environment_lists_every_variable_the_trigger_reads() -> None:
    source = inspect.getsource(trigger)
    read = set(re.findall(r'env(?:\.get\(|\[)"([A-Z_]+)"', source))
    read |= set(re.findall(r'_number\(env, "([A-Z_]+)"', source))
    assert read == set(trigger.ENVIRONMENT)


def test_at_most_40_settings_each_saying_what_it_does() -> None:
    """Issue 20: a user reads 40 or fewer; tunables are constants beside their code."""
    fields = {name: f for group in GROUPS.values() for name, f in group.model_fields.items()}
    assert [name for name, field in fields.items() if not field.description] == []
    assert len(fields) <= 40
