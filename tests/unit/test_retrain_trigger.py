"""When retraining starts (RETRAIN_MODE in the alert step, the cooldown, one at a time), and
that its verdict reaches people even when the metrics database fails to record it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest.mock import Mock

import pytest
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops.drop.storage import open_storage
from churnops.model.churn_model import LoadedModel
from churnops.model.registry import Outcome
from churnops.model.training import Evaluation
from churnops.monitoring.metrics_db import MetricsDatabaseUnavailable, MetricsStore
from churnops.pipeline import per_file, retrain_trigger, retraining
from churnops.pipeline.retrain_trigger import SUGGESTION, cooling_down, idempotency_key
from churnops.pipeline.retraining import LOCK, RetrainOptions, retrain
from churnops.results import ColumnDrift, MonitoringResult
from churnops.settings import Settings, get_settings

LOW = {"f1": 0.55, "precision": 0.6, "recall": 0.5, "accuracy": 0.88, "roc_auc": 0.9}
GOOD = {"f1": 0.9, "precision": 0.9, "recall": 0.9, "accuracy": 0.95, "roc_auc": 0.97}
MODEL = LoadedModel("M", "4", None)  # type: ignore[arg-type]  # the alert reads name, version


def result(quality: dict[str, float], share: float = 0.0) -> MonitoringResult:
    columns = [ColumnDrift("age", 0.001, "K-S p_value", 0.05, True)]
    return MonitoringResult(
        rows=1000,
        drifted_count=1,
        drifted_share=share,
        columns=columns,
        predicted_churn_rate=0.15,
        quality=quality,
    )


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return get_settings(churnops_home=tmp_path, database_url=None, **overrides)


def alert(settings: Settings, quality: dict[str, float], submit: Mock, share: float = 0.0):
    return per_file.send_alerts(
        settings.monitoring,
        settings.model,
        settings.alerts,
        result(quality, share),
        "f.csv",
        MODEL,
        drop="s3://b",
        run="R1",
        submit=submit,
    )


# --- the window and the key --------------------------------------------------------------
def test_one_idempotency_key_per_cooldown_window() -> None:
    start = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    keys = {idempotency_key(start + timedelta(minutes=m), 60) for m in (0, 1, 30, 59.9)}
    assert keys == {"retrain:20261127T060000Z"}
    assert idempotency_key(start + timedelta(minutes=60), 60) == "retrain:20261127T070000Z"
    assert idempotency_key(start + timedelta(minutes=20), 15) == "retrain:20261127T061500Z"
    # no cooldown: every request is its own run
    assert idempotency_key(start, 0) != idempotency_key(start + timedelta(microseconds=1), 0)


def test_cooling_down_until_the_cooldown_has_passed() -> None:
    now = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    assert not cooling_down(None, now, 60)
    assert cooling_down(now - timedelta(minutes=59), now, 60)
    assert not cooling_down(now - timedelta(minutes=60), now, 60)
    assert not cooling_down(now, now, 0)


# --- the alert step --------------------------------------------------------------------------
def test_suggest_is_the_default_and_says_what_to_run(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.model.retrain_mode == "suggest"
    submit = Mock()
    channels, message = alert(settings, LOW, submit)
    assert channels == ("log",) and SUGGESTION in message
    assert SUGGESTION in settings.alerts.alert_log.read_text()
    submit.assert_not_called()


def test_the_retraining_benchmarks_submit_is_called_as_the_deployments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make benchmark-retraining` submitted with a stale signature: every call raised in the
    alert step, and its RETRAIN_MODE=auto sequence retrained nothing, like the one without."""
    from benchmarks import retraining as benchmark

    settings = settings_for(tmp_path, retrain_mode="auto", retrain_cooldown_minutes=0)
    asked: list[RetrainOptions] = []
    monkeypatch.setattr(benchmark, "retrain", lambda _s, _d, options: asked.append(options) or 7)
    outcomes: list = []
    _, message = alert(settings, LOW, benchmark.retrain_here(settings, Mock(), outcomes))
    assert "retraining started" in message
    assert outcomes == [7]
    assert [(o.trigger, o.include_run) for o in asked] == [("auto", "R1")]


def test_auto_submits_one_retraining_for_the_run_that_scored_low(tmp_path: Path) -> None:
    """The alert names the key of the run submitted: ``<key>@<id>`` after an ended one."""
    settings = settings_for(tmp_path, retrain_mode="auto")
    submit = Mock(return_value="retrain:W@ended-run-id")
    _, message = alert(settings, LOW, submit)
    key, drop, run = submit.call_args.args
    submit.assert_called_once()
    assert key == idempotency_key(datetime.now(UTC), settings.model.retrain_cooldown_minutes)
    assert (drop, run) == ("s3://b", "R1")
    assert "retraining started" in message and "retrain:W@ended-run-id" in message
    assert (
        "retraining started (retrain_model/retrain, retrain:W@ended-run-id)"
        in settings.alerts.alert_log.read_text()
    )


@pytest.mark.parametrize(
    ("mode", "quality", "share"),
    [("auto", GOOD, 0.9), ("off", LOW, 0.0), ("auto", {}, 0.9)],
    ids=["drift only", "mode off", "unlabeled file"],
)
def test_no_retraining_without_low_scores_or_when_off(
    tmp_path: Path, mode: str, quality: dict[str, float], share: float
) -> None:
    settings = settings_for(tmp_path, retrain_mode=mode)
    submit = Mock()
    channels, message = alert(settings, quality, submit, share)
    assert channels == ("log",)  # an alert went out all the same
    submit.assert_not_called()
    assert "retrain" not in message


def verdict(settings: Settings, trigger: str = "manual") -> None:
    store = MetricsStore.from_settings(settings.monitoring)
    store.record_model_event(
        model_name="M", version="2", event="refused", reason="r", trigger=trigger
    )
    store.close()


def test_auto_waits_for_the_cooldown_after_the_last_verdict(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, retrain_mode="auto", retrain_cooldown_minutes=30)
    verdict(settings)
    submit = Mock()
    _, message = alert(settings, LOW, submit)
    submit.assert_not_called()
    assert "retraining not started" in message and "cooldown 30 minutes" in message


def test_a_failed_submission_is_noted_and_costs_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, retrain_mode="auto")
    submit = Mock(side_effect=ConnectionError("Prefect API down"))
    channels, message = alert(settings, LOW, submit)
    assert channels == ("log",)
    assert "retraining could not be started (ConnectionError: Prefect API down)" in message
    assert SUGGESTION in message


def test_submission_names_the_retrain_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(
        "prefect.deployments.run_deployment",
        lambda name, **kw: calls.append({"name": name, **kw}) or Mock(state=None),
    )
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        assert retrain_trigger.submit_to_deployment("retrain:K", "s3://b", "R1") == "retrain:K"
    (call,) = calls
    assert call["name"] == "retrain_model/retrain" and call["idempotency_key"] == "retrain:K"
    assert call["parameters"] == {"trigger": "auto", "drop": "s3://b", "include_run": "R1"}
    assert call["timeout"] == 0 and call["as_subflow"] is False


def test_no_submission_without_the_platforms_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """`RETRAIN_MODE=auto churnops process` (no PREFECT_API_URL): Prefect started a server of
    its own under ~/.prefect, outside CHURNOPS_HOME, for 5 to 30 s, found no deployment there,
    and the alert said "retraining could not be started (ObjectNotFound: None)"."""
    calls: list[str] = []
    monkeypatch.setattr("prefect.deployments.run_deployment", lambda name, **_: calls.append(name))
    none = pytest.raises(LookupError, match=r"no Prefect API to start it on \(PREFECT_API_URL")
    with temporary_settings({PREFECT_API_URL: None}), none:
        retrain_trigger.submit_to_deployment("retrain:K", "s3://b", "R1")
    assert calls == []

    def missing(name: str, **_: object) -> None:
        raise ObjectNotFound(None)

    monkeypatch.setattr("prefect.deployments.run_deployment", missing)
    secret = temporary_settings({PREFECT_API_URL: "http://u:secret@127.0.0.1:1/api"})
    with secret, pytest.raises(LookupError) as raised:
        retrain_trigger.submit_to_deployment("retrain:K", "s3://b", "R1")
    assert "no deployment retrain_model/retrain on the Prefect API http://" in str(raised.value)
    assert "secret" not in str(raised.value)


# --- one at a time -----------------------------------------------------------------------------
def test_a_second_retraining_stops_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    store = MetricsStore.from_settings(settings.monitoring)
    assert store.acquire_lock(LOCK, "manual-first", 60)
    storage = open_storage(settings.drop)
    for trigger in ("manual", "auto"):
        outcome = retrain(settings, storage, RetrainOptions(trigger=trigger))  # type: ignore[arg-type]
        assert outcome.status == "skipped", outcome
        assert "another retraining is running" in outcome.reason
        assert "(manual-first)" in outcome.reason
    assert store.lock_state(LOCK).holder == "manual-first"  # not taken over, not released
    assert store.model_events().empty


def test_an_automatic_retraining_in_the_cooldown_of_a_verdict_stops(tmp_path: Path) -> None:
    """A retraining that trained nothing holds nothing back (a manual one before any file
    was labeled, say); one across a window boundary from a verdict stops."""
    settings = settings_for(tmp_path, retrain_cooldown_minutes=60, retrain_mode="auto")
    storage = open_storage(settings.drop)
    for trigger in ("manual", "auto", "auto"):
        skipped = retrain(settings, storage, RetrainOptions(trigger=trigger))  # type: ignore[arg-type]
        assert skipped.status == "skipped" and "no labeled file" in skipped.reason

    verdict(settings, "auto")
    waits = retrain(settings, storage, RetrainOptions(trigger="auto"))
    assert waits.status == "skipped" and "automatic ones wait 60 minutes" in waits.reason
    manual = retrain(settings, storage, RetrainOptions(trigger="manual"))
    assert "no labeled file" in manual.reason  # people are not held back by the cooldown


# --- the verdict ------------------------------------------------------------------------------
def test_a_verdict_the_database_did_not_record_is_still_alerted(tmp_path: Path) -> None:
    """The alias had moved; the failed record raised past the alert, so a promotion went
    unannounced (found on Postgres with INSERT on model_events revoked: version 2 took the
    alias, alerts.log had nothing, the CLI a 294-line traceback)."""
    settings = get_settings(churnops_home=tmp_path)
    outcome = Outcome("promoted", "passes the minimums", version="2", parent_version="1")
    # a metrics store whose database fails the write (down, or INSERT revoked)
    unreachable = MetricsDatabaseUnavailable("metrics database unreachable for 10s: refused")
    down = Mock(spec=["record_model_event"], **{"record_model_event.side_effect": unreachable})

    told = retraining._record(settings.model, settings.alerts, down, "manual", outcome)

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
    settings = get_settings(churnops_home=tmp_path, retrain_mode="auto")
    monkeypatch.setattr(retraining, "labeled_files", lambda *args: ["a labeled file"])

    def fails(*args: object) -> None:
        raise RuntimeError("the champion does not load")

    monkeypatch.setattr(retraining, "train_and_register", fails)
    for trigger in ("manual", "auto"):  # manual: the person at the terminal sees it
        with pytest.raises(RuntimeError):
            retraining.retrain(settings, None, RetrainOptions(trigger=trigger))  # type: ignore[arg-type]
    sent = settings.alerts.alert_log.read_text()
    assert sent.count("[ChurnOps] retraining failed: RuntimeError: the champion does not") == 1


def test_an_automatic_retraining_that_skips_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's alert said "retraining started"; its skip (found on the local platform:
    "19 labeled rows unseen by the champion, fewer than the 100 a holdout needs") was told
    only in its Prefect flow run, so alerts.log never said how it ended."""
    settings = get_settings(churnops_home=tmp_path, retrain_mode="auto")
    monkeypatch.setattr(retraining, "labeled_files", lambda *args: ["a labeled file"])
    few = Outcome("skipped", "f.csv has 19 labeled rows unseen by the champion")
    monkeypatch.setattr(retraining, "train_and_register", lambda *args: few)
    for trigger in ("manual", "auto"):  # manual: the person at the terminal sees it
        retraining.retrain(settings, None, RetrainOptions(trigger=trigger))  # type: ignore[arg-type]
    sent = settings.alerts.alert_log.read_text()
    assert sent.count("[ChurnOps] retraining skipped: f.csv has 19 labeled rows unseen") == 1


def test_an_automatic_retraining_submitted_before_retrain_mode_changed_stops(
    tmp_path: Path,
) -> None:
    """Submitted under RETRAIN_MODE=auto, still queued when the platform stopped, it ran on
    the next day's start under 'suggest' and moved the alias nobody had asked to move."""
    settings = settings_for(tmp_path)
    for mode in ("suggest", "off"):
        skipped = retrain(
            settings.replace(retrain_mode=mode),
            open_storage(settings.drop),
            RetrainOptions(trigger="auto"),
        )
        assert skipped.status == "skipped" and f"RETRAIN_MODE is '{mode}'" in skipped.reason
