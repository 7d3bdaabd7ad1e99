"""A file's records (its lease, log, database row and flow run) tell one story, on a local
drop folder and SQLite: the reconciler's choice of stranded input files and of flow runs
left running, and check_records_agree (tests/exactly_once.py), which fails on one record
telling another story (the flow run as the Prefect client models it)."""

from __future__ import annotations

import os
import tracemalloc
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest
import typer
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed, Running, Scheduled

from churnops import retry
from churnops.data.schema import RAW_COLUMNS
from churnops.drop import claims
from churnops.drop.storage import FileLog, LocalDropStorage, run_key, stage_key
from churnops.model.churn_model import LoadedModel
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file, reconcile
from churnops.platform.services import free_port
from churnops.results import PREDICTION, PROBABILITY, MonitoringResult
from churnops.settings import get_settings
from tests.exactly_once import check_records_agree, leases
from tests.processes import LOOPBACK, dead_pid


class DiesMovingIn(LocalDropStorage):
    """A storage whose first move fails: the attempt dies between its lease and its move."""

    def move(self, src: str, dst: str, **kwargs: object) -> None:
        raise RuntimeError("killed while moving the file in")


def test_a_file_whose_claim_died_is_redriven_at_once_a_fresh_one_waits(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    died, fresh = stage_key("input", "died.csv"), stage_key("input", "fresh.csv")
    storage.create(died, b"a,b\n1,2\n")
    storage.create(fresh, b"a,b\n3,4\n")
    with pytest.raises(claims.MoveInFailed, match="killed"):
        claims.claim(DiesMovingIn(tmp_path), died, lease_seconds=claims.LEASE_SECONDS)
    (lease,) = leases(storage)
    storage.replace(lease.key, replace(lease, pid=dead_pid()).to_json())

    actions = reconcile.find_work(storage, datetime.now(UTC))

    assert [(a.kind, a.key, a.marker) for a in actions] == [("trigger", died, f"{lease.run}#2")], (
        actions
    )  # fresh.csv is within its grace: its trigger may be on its way
    assert "attempt 1 died" in actions[0].reason


def test_a_file_that_would_not_move_in_is_triggered_when_its_retry_is_due_never_once_given_up(
    tmp_path: Path,
) -> None:
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    key = stage_key("input", "archived.csv")
    storage.create(key, b"a,b\n1,2\n")
    with pytest.raises(claims.MoveInFailed):
        claims.claim(DiesMovingIn(tmp_path), key, lease_seconds=claims.LEASE_SECONDS)
    (lease,) = leases(storage)
    failed = claims.release(storage, lease, "failed", "could not move it", retry_in=600.0)
    past_grace = datetime.now(UTC) + timedelta(seconds=reconcile.GRACE_SECONDS + 1)

    assert reconcile.find_work(storage, past_grace) == []  # its retry is not due yet
    due = reconcile.find_work(storage, past_grace + timedelta(seconds=600))
    assert [(a.kind, a.key, a.marker) for a in due] == [("trigger", key, f"{lease.run}#2")]
    claims.release(storage, failed, "unmovable", "errored")  # the last attempt gave up
    assert reconcile.find_work(storage, past_grace + timedelta(seconds=600)) == []
    with pytest.raises(claims.ClaimRefused, match=r"gave up on 'archived\.csv'"):
        claims.claim(storage, key, lease_seconds=claims.LEASE_SECONDS)


class LaidOutByTerraform(LocalDropStorage):
    """A bucket as Terraform lays it out: a zero-byte marker per folder (aws_s3_object.prefix)."""

    def list_keys(self, prefix: str) -> list[str]:
        markers = [f"data/{f}/" for f in ("input", "processing", "processed", "errored", "logs")]
        return sorted(super().list_keys(prefix) + [m for m in markers if m.startswith(prefix)])


def test_folder_markers_are_no_runs_and_no_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the data/processing/ marker was a run named '', so the file ages the alarms
    and the 'reconciler silent' alarm watch failed every minute ('time data '' does not
    match format') and were never published; the reconciler also warned about it and
    listed data/input/ among the keys it ignores, every minute."""
    storage = LaidOutByTerraform(tmp_path)
    storage.create_layout()
    now = datetime.now(UTC)
    caplog.set_level("INFO", "churnops.pipeline.reconcile")

    assert reconcile.oldest_ages(storage, now) == {
        "OldestInputSeconds": 0.0,
        "OldestProcessingSeconds": 0.0,
    }
    assert reconcile.find_work(storage, now) == []
    assert caplog.records == []


class FakeFlowRuns:
    """The orchestrator's side of :func:`reconcile.end_flow_runs`: what it reads, what it ends."""

    def __init__(self, unfinished: dict[str, datetime]) -> None:
        self.running, self.ended = unfinished, {}
        self.retrainings: dict[str, datetime] = {}

    def unfinished(self, flow: str = "churn_prediction_pipeline") -> dict[str, datetime]:
        return self.running if flow == "churn_prediction_pipeline" else self.retrainings

    def end(self, endings: dict[str, tuple[str, str]]) -> None:
        self.ended.update(endings)


def test_flow_runs_left_running_are_ended_as_their_attempts_ended(tmp_path: Path) -> None:
    """Killed after its row closed (lease still running): ended as its row says, its lease
    ``done``; a failed attempt that ended long ago: Failed; one that claimed nothing in
    MAX_ATTEMPT_SECONDS: died; a live one and a fresh one without a claim: left alone."""
    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    monitoring = get_settings(churnops_home=tmp_path).monitoring
    store = MetricsStore.from_settings(monitoring)
    now = datetime.now(UTC)
    held = {}
    for name in ("killed", "failed", "live"):
        storage.create(stage_key("input", f"{name}.csv"), name.encode())
        claim = claims.claim(storage, f"data/input/{name}.csv", lease_seconds=60, flow_run_id=name)
        store.start_run(
            run_id=claim.lease.db_id, file_name=name, bucket="", object_key="", flow_run_id=name
        )
        held[name] = claim.lease
    store.finish_run(held["killed"].db_id, "processed")
    store.finish_run(held["failed"].db_id, "failed")
    store.close()
    storage.replace(held["killed"].key, replace(held["killed"], pid=dead_pid()).to_json())
    long_ago = (now - timedelta(seconds=2 * claims.LEASE_SECONDS)).isoformat()
    failed = replace(held["failed"], state="failed", heartbeat=long_ago, reason="MLflow down")
    storage.replace(failed.key, failed.to_json())
    lost = now - timedelta(seconds=claims.MAX_ATTEMPT_SECONDS + 1)
    unfinished = dict.fromkeys(("killed", "failed", "live", "fresh"), now) | {"lost": lost}
    flow_runs = FakeFlowRuns(unfinished)

    with closing(MetricsStore.from_settings(monitoring)) as store:
        actions = reconcile.end_flow_runs(store, storage, now, flow_runs)

    assert flow_runs.ended == {
        "killed": ("processed", ANY),
        "failed": ("failed", "MLflow down"),
        "lost": ("died", ANY),
    }
    assert {a.key for a in actions} == {"killed", "failed", "lost"}
    by_run = {x.flow_run_id: x.state for x in leases(storage)}
    assert by_run == {"killed": "done", "failed": "failed", "live": "running"}


def test_with_the_database_down_the_files_still_move_after_one_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No row closed and no flow run ended, said in one line; the stranded file is
    submitted all the same."""
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(reconcile, "GRACE_SECONDS", 0.0)
    settings = get_settings(
        churnops_home=tmp_path,
        database_url=f"postgresql://churnops@{LOOPBACK}:{free_port(LOOPBACK)}/x",
    )
    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    key = stage_key("input", "waiting.csv")
    storage.create(key, b"a,b\n1,2\n")
    submitted: list[str] = []
    flow_runs = FakeFlowRuns({"some": datetime.now(UTC)})

    actions = reconcile.reconcile(settings, storage, lambda a: submitted.append(a.key), flow_runs)

    assert submitted == [key] and [a.kind for a in actions] == ["trigger"]
    assert flow_runs.ended == {}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "metrics database not checked" in warnings[0], warnings


def test_a_redrive_whose_flow_run_ended_before_claiming_gets_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk failed the claim file's write: the flow run ended, its file stayed in
    processing/ with the same lease, so every later round asked Prefect for the same
    idempotency key and got that ended run back: stuck for ever."""
    runs: dict[str, SimpleNamespace] = {}  # Prefect's idempotency: one flow run per key

    def run_deployment(name: str, *, idempotency_key: str, **kwargs: object) -> SimpleNamespace:
        return runs.setdefault(idempotency_key, SimpleNamespace(state=Scheduled()))

    monkeypatch.setattr("prefect.deployments.run_deployment", run_deployment)
    monkeypatch.setattr(reconcile, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))
    submit = reconcile.submit_to_deployment("file:///drop")
    action = reconcile.Action("redrive", "data/processing/R/a.csv", "attempt 1 failed", "R#2")
    submit(action)
    submit(action)  # a second reconciler meanwhile: the same flow run
    assert len(runs) == 1
    for flow_run in runs.values():
        flow_run.state = Failed(message="OSError: [Errno 28] No space left on device")
    submit(action)  # it ended during this pass: it may have claimed, left alone
    assert len(runs) == 1
    next_pass = reconcile.submit_to_deployment("file:///drop")
    next_pass(action)
    next_pass(action)  # overlapping reconcilers: one new flow run between them
    reconcile.submit_to_deployment("file:///drop")(action)
    assert len(runs) == 2
    assert [run.state.is_final() for run in runs.values()] == [True, False]


def test_a_row_left_running_by_a_finished_attempt_is_closed_as_its_file_ended(
    tmp_path: Path,
) -> None:
    """The database failed only the row's closing (down, or UPDATE revoked, right after the
    metrics were stored): the file is in processed/ and its lease says so. The row was closed
    ``failed``, so the dashboards dropped a processed file (found on Postgres: REVOKE UPDATE
    ON pipeline_runs, a drop, the grant back, a reconcile). A dead attempt's row: failed."""
    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    monitoring = get_settings(churnops_home=tmp_path).monitoring
    with closing(MetricsStore.from_settings(monitoring)) as store:
        held = {}
        for name in ("processed", "errored", "dead"):
            storage.create(stage_key("input", f"{name}.csv"), name.encode())
            held[name] = claims.claim(storage, f"data/input/{name}.csv", lease_seconds=60).lease
            store.start_run(run_id=held[name].db_id, file_name=name, bucket="", object_key="")
        for name in ("processed", "errored"):
            claims.release(storage, held[name], "done", name)
        storage.replace(held["dead"].key, replace(held["dead"], pid=dead_pid()).to_json())
        closed = reconcile.close_dead_runs(store, storage, datetime.now(UTC))
        status = dict(zip(store.runs()["file_name"], store.runs()["status"], strict=True))
    assert len(closed) == 3
    assert status == {"processed": "processed", "errored": "errored", "dead": "failed"}


# --- check_records_agree bites -------------------------------------------------------------
def test_a_flow_state_that_tells_another_story_fails_the_check(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    storage.create(stage_key("input", "a.csv"), b"x\n")
    flow_run = FlowRun(id=uuid4(), flow_id=uuid4(), state=Completed())
    held = claims.claim(storage, "data/input/a.csv", lease_seconds=60, flow_run_id=str(flow_run.id))
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    with closing(MetricsStore(url)) as store:
        store.start_run(
            run_id=held.lease.db_id,
            file_name=held.name,
            bucket=storage.bucket,
            object_key="data/input/a.csv",
            flow_run_id=str(flow_run.id),
        )
        file_log = FileLog(storage, held.run, held.name)
        file_log.write("claim", "ok", f"attempt 1: data/input/a.csv -> {held.processing_key}")
        per_file.finish(storage, held.run, held.name, "processed")
        file_log.write("finish", "ok")
        store.finish_run(held.lease.db_id, "processed")
        claims.release(storage, held.lease, "done", "processed")

    check_records_agree(storage, url, [flow_run])  # processed everywhere
    for state in (Failed(name="Rejected"), Failed(), Crashed(), Running()):
        with pytest.raises(AssertionError, match="processed"):
            check_records_agree(storage, url, [flow_run.model_copy(update={"state": state})])
    file_log.write("finish", "errored")
    with pytest.raises(AssertionError, match="errored"):
        check_records_agree(storage, url, [flow_run])


def test_a_run_whose_outputs_failed_to_move_still_names_what_scored_it(tmp_path: Path) -> None:
    """The finish moved the file to processed/, then failed moving its predictions (a
    storage hiccup): the run was completed as processed, but its row named no model,
    version, rows or report, and neither did the outcome (as after an attempt that died
    right after its finish)."""

    class Constant:
        def score(self, frame: pd.DataFrame) -> pd.DataFrame:
            ones = np.ones(len(frame))
            return pd.DataFrame({PREDICTION: ones.astype("int8"), PROBABILITY: ones * 0.75})

    def finish_then_fail(storage: LocalDropStorage, run: str, name: str, stage: str) -> str:
        storage.move(run_key("processing", run, name), run_key(stage, run, name))
        raise ConnectionError("storage hiccup while moving the outputs")

    result = MonitoringResult(2, 0, 0.0, [], 1.0, report_url="http://ui/r/1")
    steps = per_file.Steps(
        load_model=lambda _: LoadedModel("M", "4", Constant()),  # type: ignore[arg-type]
        monitor=lambda *_: result,
        send_alerts=lambda *_, **__: ((), "no threshold crossed"),
        finish=finish_then_fail,
    )
    settings = get_settings(churnops_home=tmp_path, database_url=None, evidently_ui_url=None)
    storage = LocalDropStorage(settings.drop.drop_dir)
    storage.create_layout()
    row = "8,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"
    storage.create(stage_key("input", "a.csv"), f"{','.join(RAW_COLUMNS)}\n{row}\n{row}\n".encode())
    outcome = per_file.process(settings, storage, stage_key("input", "a.csv"), steps=steps)
    assert (outcome.status, outcome.model_version) == ("processed", "4")
    with closing(MetricsStore.from_settings(settings.monitoring)) as store:
        (run,) = store.runs().to_dict("records")
    assert (run["model_name"], run["model_version"], run["rows"]) == ("M", "4", 2)
    assert run["report_url"] == "http://ui/r/1"


def test_a_retraining_whose_runner_was_killed_is_ended_crashed(tmp_path: Path) -> None:
    """A runner killed mid-retraining (OOM, a stop's grace passed) left its flow run Running
    for ever, and an automatic retraining's idempotency key answered it for the rest of its
    window: none started. Ended died once no live process holds the lock; not while one does,
    nor in the first LEASE_SECONDS of a run (or after a release: its run reports at once)."""
    now = datetime.now(UTC)
    old = now - timedelta(seconds=2 * claims.LEASE_SECONDS)
    flow_runs = FakeFlowRuns({})
    flow_runs.retrainings = {"killed": old, "fresh": now}
    monitoring = get_settings(churnops_home=tmp_path).monitoring
    with closing(MetricsStore.from_settings(monitoring)) as store:
        live = f"auto-{claims.HOST}-{os.getpid()}-n1"
        assert store.acquire_lock(reconcile.retrain_trigger.LOCK, live, 3600)
        assert reconcile.end_retrainings(store, now, flow_runs) == []
        store.release_lock(reconcile.retrain_trigger.LOCK, live)
        assert reconcile.end_retrainings(store, now, flow_runs) == []  # just released
        dead = f"manual-{claims.HOST}-{dead_pid()}-n2"
        assert store.acquire_lock(reconcile.retrain_trigger.LOCK, dead, 3600, take_from=live)
        actions = reconcile.end_retrainings(store, now, flow_runs)
    assert flow_runs.ended == {"killed": ("died", ANY)}
    assert [a.key for a in actions] == ["killed"]


def test_churnops_process_run_again_after_a_failure_redrives_its_run_before_the_retry_is_due(
    tmp_path: Path,
) -> None:
    """`churnops process FILE` failed (no staging model yet); run again at once, as its
    line says, it claimed a second copy while the first waited for its retry: two runs of
    one file in processing/, both processed in the end."""
    from churnops import cli

    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    data = b"a,b\n1,2\n"
    storage.create(stage_key("input", "customers.csv"), data)
    held = claims.claim(
        storage, stage_key("input", "customers.csv"), lease_seconds=claims.LEASE_SECONDS
    )
    claims.release(storage, held.lease, "failed", "no staging model", retry_in=600.0)

    (tmp_path / "customers.csv").write_bytes(data)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "customers.csv").write_bytes(b"other bytes\n")
    assert cli._stranded_run(storage, "customers.csv", tmp_path / "customers.csv") == (
        held.processing_key
    )
    assert cli._stranded_run(storage, "customers.csv", tmp_path / "other" / "customers.csv") is None
    assert reconcile.find_work(storage, datetime.now(UTC)) == []  # the platform waits


def test_churnops_process_streams_the_file_it_copies_in(tmp_path: Path) -> None:
    """`churnops process FILE` held the file whole twice (677 MB for a 320 MB file; 4 GB at
    the 2 GiB limit), to copy it into the drop folder and to look for a stranded run of it:
    both now go a chunk at a time."""
    from churnops import cli

    source = tmp_path / "big.csv"
    source.write_bytes(b"a,b\n" + b"1,2\n" * 5_000_000)  # 20 MB
    settings = get_settings(churnops_home=tmp_path / "home")
    tracemalloc.start()
    try:
        storage, key = cli._open_target(settings, str(source), "input")
        held = claims.claim(storage, key, lease_seconds=claims.LEASE_SECONDS)
        claims.release(storage, held.lease, "failed", "no staging model", retry_in=600.0)
        _, again = cli._open_target(settings, str(source), "input")  # re-drives its run
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert again == held.processing_key
    assert storage.read(again) == source.read_bytes()
    assert peak < 5_000_000, f"{peak:,} bytes held"


def test_a_finished_file_moved_back_into_input_is_a_run_of_its_own_each_time(
    tmp_path: Path,
) -> None:
    """`mv data/processed/<run>/a.csv data/input/` keeps the file's inode and times, so its
    version: its claim took the next attempt of its old run, whose earlier report it withdrew,
    and the sixth move back ended in errored/ as 'gave up after 5 attempts: processed'. Each
    move back is a run of its own, the one the reconciler looks for too."""
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    key = stage_key("input", "a.csv")
    storage.create(key, b"a,b\n1,2\n")
    os.utime(storage.path(key), (0, 0))  # long dropped: the reconciler's grace is over
    runs = []
    for stage in ("processed", "errored", *["processed"] * 5):
        [action] = reconcile.find_work(storage, datetime.now(UTC))
        held = claims.claim(storage, key, lease_seconds=claims.LEASE_SECONDS)
        assert (held.lease.attempt, action.marker) == (1, f"{held.run}#input")
        storage.move(held.processing_key, run_key(stage, held.run, "a.csv"))
        claims.release(storage, held.lease, "done", stage)
        os.rename(storage.path(run_key(stage, held.run, "a.csv")), storage.path(key))
        runs.append(held.run)
    assert len(set(runs)) == len(runs)


def test_churnops_process_takes_a_symlink_in_the_drop_folder_as_itself(tmp_path: Path) -> None:
    """`churnops process .churnops/drop/data/input/link.csv` (a symlink there) said 'another
    link.csv waits in ...: drop it later' (it compared where the link points with the drop
    folder) and left it in input/; it is that drop, whose run refuses it as a symlink."""
    from churnops import cli

    (tmp_path / "real.csv").write_bytes(b"a,b\n1,2\n")
    settings = get_settings(churnops_home=tmp_path / "home")
    storage, key = cli._open_target(settings, str(tmp_path / "real.csv"), "input")
    link = storage.path(stage_key("input", "link.csv"))
    link.symlink_to(tmp_path / "real.csv")
    (tmp_path / "other").mkdir()
    elsewhere = tmp_path / "other" / "real.csv"  # a link to a dropped file is that file
    elsewhere.symlink_to(storage.path(key))

    assert cli._open_target(settings, str(link), "input")[1] == "data/input/link.csv"
    assert cli._open_target(settings, str(elsewhere), "input")[1] == key


def test_churnops_process_refuses_to_copy_in_a_file_whose_name_no_run_can_keep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 240-byte name stopped `churnops process` with 'OSError: [Errno 36] File name too
    long' and the path of the copy's hidden temporary file: now one line naming the limit
    (the one the scoring step gives a dropped file), and nothing is copied in."""
    from churnops import cli

    source = tmp_path / f"{'a' * 236}.csv"
    source.write_bytes(b"a,b\n1,2\n")
    settings = get_settings(churnops_home=tmp_path / "home")
    with pytest.raises(typer.Exit) as stopped:
        cli._open_target(settings, str(source), "input")
    assert stopped.value.exit_code == 1
    assert "rename it to at most" in capsys.readouterr().err
    assert list((settings.drop.drop_dir / "data" / "input").iterdir()) == []
