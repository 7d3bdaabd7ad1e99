"""``make optuna-dashboard``: what optuna-dashboard answered with a traceback (no study
database yet) or a minute of bind retries (its port in use) is one line and exit 1."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import optuna_dashboard
import pytest

from churnops.model.registry import OPTUNA_STUDY
from devtools import optuna_dashboard as dashboard


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    return tmp_path


def test_a_home_never_trained_in_is_one_line_and_no_empty_database(home, capsys):
    assert dashboard.main(["--port", "0"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: no Optuna study at {home / 'optuna.db'}: run `make register")
    assert error.count("\n") == 1
    assert not (home / "optuna.db").exists()  # optuna-dashboard made one, empty


def test_a_port_in_use_is_one_line_naming_the_way_out(home, capsys):
    optuna.create_study(study_name=OPTUNA_STUDY, storage=f"sqlite:///{home / 'optuna.db'}")
    with socket.socket() as taken:
        taken.bind((dashboard.HOST, 0))
        taken.listen()
        assert dashboard.main(["--port", str(taken.getsockname()[1])]) == 1
    error = capsys.readouterr().err
    assert "is in use" in error and "set PORT=0" in error
    assert error.count("\n") == 1


def test_the_study_of_the_home_is_served_with_its_trials_counted(home, monkeypatch, capsys):
    storage = f"sqlite:///{home / 'optuna.db'}"
    study = optuna.create_study(study_name=OPTUNA_STUDY, storage=storage)
    study.add_trial(optuna.trial.create_trial(value=0.8, params={}, distributions={}))
    served = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda s, host, port: served.append(s))
    assert dashboard.main(["--port", "0"]) == 0
    assert served == [storage]
    assert f"Optuna study {OPTUNA_STUDY} (1 trials) at http://{dashboard.HOST}:" in (
        capsys.readouterr().out
    )
