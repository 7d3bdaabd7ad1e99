"""``make optuna-dashboard``: the training search's Optuna study in optuna-dashboard.

The study database is the one ``churnops train`` writes (``optuna.db`` in the settings'
home, so ``CHURNOPS_HOME`` is read as training reads it). What optuna-dashboard itself
answers with a traceback (no database yet: it cannot open one without Optuna's tables) or
with a minute of bind retries (the port in use) is refused here in one line that says
what to do."""

from __future__ import annotations

import argparse
import sys

from churnops.model.registry import OPTUNA_STUDY
from churnops.platform.services import PlatformError, choose_port
from churnops.settings import ModelSettings, get_settings

DEFAULT_PORT = 8080
HOST = "127.0.0.1"


class NoStudy(RuntimeError):
    """No study database to show; the message says how to make one."""


def study_storage(model: ModelSettings) -> str:
    """The SQLite URL of the study database, refused when training has not written it yet."""
    database = model.optuna_database
    if not database.exists():
        raise NoStudy(
            f"no Optuna study at {database}: run `make register-model TRIALS=20` first "
            "(a search stores its trials there; is CHURNOPS_HOME the one you trained in?)"
        )
    return model.optuna_storage_url


def trial_count(storage: str) -> int:
    """Trials of the training search's study (0 when a ``train`` made it without a search)."""
    import optuna

    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return sum(s.n_trials for s in summaries if s.study_name == OPTUNA_STUDY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.optuna_dashboard", description=__doc__
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0: a free one"
    )
    args = parser.parse_args(argv)
    try:
        storage = study_storage(get_settings().model)
        port = choose_port(HOST, args.port, "port")
    except (NoStudy, PlatformError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    trials = trial_count(storage)
    if not trials:
        print(f"study {OPTUNA_STUDY} has no trials yet: `make register-model TRIALS=20` runs some")
    print(f"Optuna study {OPTUNA_STUDY} ({trials} trials) at http://{HOST}:{port} (Ctrl-C stops)")
    from optuna_dashboard import run_server

    run_server(storage, host=HOST, port=port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
