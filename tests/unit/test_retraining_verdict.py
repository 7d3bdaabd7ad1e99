"""A retraining's verdict reaches people even when the metrics database fails to record it."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnops.model.registry import Outcome
from churnops.model.training import Evaluation
from churnops.monitoring.metrics_db import MetricsDatabaseUnavailable
from churnops.pipeline import retraining
from churnops.pipeline.retraining import RetrainOptions
from churnops.settings import get_settings


class DownStore:
    """A metrics store whose database fails the write (down, or INSERT revoked)."""

    def record_model_event(self, **row: object) -> None:
        raise MetricsDatabaseUnavailable("metrics database unreachable for 10s: refused")


def test_a_verdict_the_database_did_not_record_is_still_alerted(tmp_path: Path) -> None:
    """The alias had moved; the failed record raised past the alert, so a promotion went
    unannounced (found on Postgres with INSERT on model_events revoked: version 2 took the
    alias, alerts.log had nothing, the CLI a 294-line traceback)."""
    settings = get_settings(churnops_home=tmp_path)
    outcome = Outcome("promoted", "passes the minimums", version="2", parent_version="1")

    told = retraining._record(
        settings.model,
        settings.alerts,
        DownStore(),
        "manual",
        outcome,  # type: ignore[arg-type]
    )

    assert told.status == "promoted" and told.alert_channels == ("log",)
    sent = settings.alerts.alert_log.read_text()
    assert "[ChurnOps] retraining promoted version 2" in sent
    assert "Not recorded in the metrics database" in sent and "unreachable" in sent


def test_scores_on_the_same_rows_are_one_line_on_other_rows_two() -> None:
    """`train` judges on the training file's holdout itself: it printed the line twice."""
    one, other = (
        Evaluation(f1, 0.8, 0.8, 0.9, 0.95, 0.8, 0.3, [[1, 0], [0, 1]]) for f1 in (0.8, 0.7)
    )
    same = {"challenger": one, "challenger_training": one}
    trained = Outcome("promoted", "ok", holdout_file="c0.csv (holdout split)", scores=same)
    assert trained.score_lines() == ["on c0.csv (holdout split): challenger f1 0.800 auc 0.950"]
    apart = {"challenger": one, "challenger_training": other}
    assert len(Outcome("promoted", "ok", holdout_file="c3.csv", scores=apart).score_lines()) == 2


def test_an_automatic_retraining_that_fails_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's alert said "retraining started"; its failure was told only in Prefect."""
    settings = get_settings(churnops_home=tmp_path)
    monkeypatch.setattr(retraining, "labeled_files", lambda *args: ["a labeled file"])

    def fails(*args: object) -> None:
        raise RuntimeError("the champion does not load")

    monkeypatch.setattr(retraining, "train_and_register", fails)
    for trigger in ("manual", "auto"):  # manual: the person at the terminal sees it
        with pytest.raises(RuntimeError):
            retraining.retrain(settings, None, RetrainOptions(trigger=trigger))  # type: ignore[arg-type]
    sent = settings.alerts.alert_log.read_text()
    assert sent.count("[ChurnOps] retraining failed: RuntimeError: the champion does not") == 1
