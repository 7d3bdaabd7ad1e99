"""Every file exactly once, whatever happens: kills, outages, duplicates, clashes.

Real parts: the local folder + SQLite and S3 on moto + Postgres, the session's MLflow and
Prefect servers. Every trigger runs the Prefect flow in process, so each check reads five
records back (:func:`tests.exactly_once.check_records_agree`). A SIGKILL is real, sent by a
forked child to itself at a chosen point; recovery is the reconciler's re-drive.
"""

from __future__ import annotations

import contextvars
import errno
import gzip
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Pending, Running, Scheduled

from churnops import retry
from churnops.drop import claims
from churnops.drop.storage import (
    RUN_STAGES,
    DropStorage,
    LocalDropStorage,
    S3DropStorage,
    folder_key,
    log_key,
    open_storage,
    run_key,
    run_name,
    s3_client,
    stage_key,
)
from churnops.monitoring import drift
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import flow, per_file, reconcile
from churnops.platform.services import free_port
from churnops.settings import Settings
from tests.exactly_once import (
    Drops,
    check_records_agree,
    leases,
    originals,
    pipeline_runs,
    read_flow_runs,
)
from tests.fixtures.evidently_ui import SECRET as EVIDENTLY_SECRET
from tests.fixtures.model import model_settings
from tests.processes import LOOPBACK, at_once


@dataclass
class World:
    """A drop storage, its settings and the drops made in it."""

    settings: Settings
    drops: Drops
    #: Patches the timing constants (churnops.retry) for one test.
    patch: pytest.MonkeyPatch
    #: The flow runs this test started in process (killed children's are in their leases).
    flow_runs: list[str] = field(default_factory=list)

    @property
    def storage(self) -> DropStorage:
        return self.drops.storage

    def runs(self) -> pd.DataFrame:
        return pipeline_runs(self.settings.monitoring.metrics_db_url)

    def tune(self, **values: Any) -> None:
        self.settings = self.settings.replace(**values)

    def process(
        self, key: str, steps: per_file.Steps = flow.STEPS, storage: Any = None
    ) -> per_file.FileOutcome:
        """One trigger: a flow run of ``churn_prediction_pipeline`` for ``key`` (on
        ``storage``, a wrapper of this world's, if given)."""
        storage = storage or self.storage
        outcome, flow_run_id = _run_flow(self.patch, self.settings, storage, key, steps)
        self.flow_runs.append(flow_run_id)
        return outcome

    def reconcile(self) -> list[per_file.FileOutcome]:
        outcomes = []
        submit = lambda a: outcomes.append(self.process(a.key))  # noqa: E731
        reconcile.reconcile(self.settings, self.storage, submit, flow.PrefectFlowRuns())
        return outcomes

    def check(self, **kwargs: Any) -> None:
        """The files (:meth:`Drops.check`), then the five records of every flow run."""
        url = self.settings.monitoring.metrics_db_url
        self.drops.check(metrics_url=url, **kwargs)
        if kwargs.get("settled"):
            check_records_agree(self.storage, url, read_flow_runs(self.storage, self.flow_runs))


def _run_flow(
    patch: pytest.MonkeyPatch,
    settings: Settings,
    storage: DropStorage,
    key: str,
    steps: per_file.Steps,
) -> tuple[per_file.FileOutcome, str]:
    """Run the flow in process on this ``storage`` object (one that may kill or replace),
    these ``settings`` and ``steps`` (as the flow's tasks); its outcome and flow run id."""
    patch.setattr(flow, "PREFECT_STEPS", steps.wrapped(flow.as_task))
    patch.setattr(flow, "get_settings", lambda: settings)
    patch.setattr(flow, "open_drop", lambda drop: storage)
    state = flow.churn_prediction_pipeline(drop=storage.uri, key=key, return_state=True)
    outcome = per_file.FileOutcome(**state.result(raise_on_failure=False))
    return outcome, str(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def small_file(data_dir: Path) -> bytes:
    return pd.read_csv(data_dir / "customer_churn_1.csv").head(120).to_csv(index=False).encode()


def _quick(patch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Re-drive at once: no grace for untaken files, no wait before a retry, 2 s for a
    dependency that is down."""
    patch.setattr(reconcile, "GRACE_SECONDS", 0.0)
    patch.setattr(retry, "RUN", retry.Backoff(0.0, 0.0))
    patch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 2.0)
    return patch


def _s3_storage(request: pytest.FixtureRequest, versioned: bool) -> S3DropStorage:
    """A new moto bucket, versioned or not."""
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("moto_bucket")
    if versioned:
        boto3.client("s3", endpoint_url=endpoint).put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
        )
    return S3DropStorage(bucket, s3_client(endpoint))


@pytest.fixture(params=["local", "s3"])
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mlflow_server: str,
    session_model: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    """Local folder + SQLite, or a versioned moto bucket + Postgres."""
    settings = model_settings(tmp_path, mlflow_server, session_model, evidently_ui_url=None)
    if request.param == "local":
        storage: DropStorage = LocalDropStorage(settings.drop.drop_dir)
        storage.create_layout()
    else:
        storage = _s3_storage(request, versioned=True)
        s3 = {"drop_storage": "s3", "drop_bucket": storage.bucket, "database_url": postgres_url}
        settings = settings.replace(**s3)
    return World(settings, Drops(storage), _quick(monkeypatch))


@pytest.fixture(autouse=True)
def _prefect(prefect_server: str) -> Iterator[None]:
    """Flow runs and their Crashed marks go to the session's Prefect server."""
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield


# --- kill -9 at every point of the journey ------------------------------------------------
#: Step functions by name, and points inside storage calls.
KILL_POINTS = [
    "claim: lease written, file not yet moved",
    "claim (half move): file in its run, still in input/",
    "load_aliased_model",
    "score_file",
    "monitor",
    "record_metrics",
    "send_alerts",
    "finish",
    "finish (half move): original in processed/, still in processing/",
    "finish: original moved, outputs not",
    "finish (half move): outputs in processed/, still in processing/",
    "release: all done, lease not closed",
    "report: lease closed, flow run not told",
]

#: Points after which nothing is left to re-drive: only the records are settled.
AFTER_THE_WORK = ("release", "report")


#: The move a "(half move)" point dies in, between making the copy and deleting the source.
HALF_MOVES = {"claim (half move)": 1, "finish (half move)": 2}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _around(
    step_name: str,
    before: Callable[[], None] = lambda: None,
    after: Callable[[], None] = lambda: None,
) -> per_file.Steps:
    """The flow's steps, with ``before`` (a kill, a dependency taken down) just before
    ``step_name`` runs and ``after`` (a failure) right after it did its work."""

    def wrap(step: Callable) -> Callable:
        if step.__name__ != step_name:
            return step

        def with_the_actions(*args: Any, **kwargs: Any) -> Any:
            before()
            done = step(*args, **kwargs)
            after()
            return done

        return with_the_actions

    return flow.STEPS.wrapped(wrap)


class KillingStorage:
    """A storage that SIGKILLs its process at a chosen storage call."""

    def __init__(self, inner: DropStorage, point: str) -> None:
        self.inner, self.point, self.moves = inner, point, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def move(self, src: str, dst: str, **kwargs: Any) -> None:
        self.moves += 1  # 1: claim, 2: original to processed/, 3: outputs
        if self.point.startswith("claim:") and self.moves == 1:
            _die()
        if self.point.startswith("finish:") and self.moves == 3:
            _die()
        if self.moves == HALF_MOVES.get(self.point.split(":")[0]):
            self.inner._delete_source = lambda *args: _die()  # the copy is made, then death
        self.inner.move(src, dst, **kwargs)

    def replace(self, key: str, data: bytes) -> None:
        if self.point.startswith(AFTER_THE_WORK) and b'"done"' in data:
            if self.point.startswith("report"):
                self.inner.replace(key, data)
            _die()
        self.inner.replace(key, data)


def _killed_run(settings: Settings, key: str, point: str, env: dict[str, str]) -> None:
    """In a child process: a flow run for ``key`` that SIGKILLs itself at ``point``."""
    os.environ.update(env)  # the fork server was started before the moto credentials
    api = env.pop("PREFECT_API_URL")
    storage = KillingStorage(open_storage(settings.drop), point)
    with temporary_settings(updates={PREFECT_API_URL: api}):
        _run_flow(pytest.MonkeyPatch(), settings, storage, key, _around(point, _die))
    os._exit(0)  # not killed: the test fails on the exit code


#: Children come from a fork server that imported the stack but never ran XGBoost or
#: Arrow: a plain fork of the test process would deadlock in their thread pools. It imports
#: what each child would import again (this module, where the child's target is; Alembic,
#: Prefect's engines): a third of the children's CPU was those imports.
_CHILDREN = multiprocessing.get_context("forkserver")
_CHILDREN.set_forkserver_preload(
    [
        "churnops.pipeline.flow",
        "churnops.model.churn_model",
        "churnops.monitoring.drift",
        "alembic.command",
        "alembic.config",
        "prefect.flow_engine",
        "prefect.task_engine",
        "sqlalchemy.dialects.postgresql",
        "sqlalchemy.dialects.sqlite",
        __name__,
    ]
)


def _run_killed(world: World, *kills: tuple[str, str]) -> None:
    """Process each ``(key, point)`` in a child of its own, killed at ``point``, one after
    the other (children at once would share the local Evidently workspace, which takes
    one writer)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    for key, point in kills:
        child = _CHILDREN.Process(target=_killed_run, args=(world.settings, key, point, env))
        child.start()
        child.join(timeout=120)
        if child.exitcode is None:
            child.kill()
        assert child.exitcode == -signal.SIGKILL, f"the child was not killed at {point!r}"


def _variants(small_file: bytes, count: int) -> list[bytes]:
    """``count`` different files (the last ``i`` rows left out), one per kill point."""
    lines = small_file.splitlines(keepends=True)
    return [b"".join(lines[: len(lines) - i]) for i in range(count)]


def _kill_points(world: World, points: list[str]) -> list[str]:
    """Every point on the local folder; on S3 the points inside storage calls and the
    first step's: a step dies alike on both (its file waits in processing/, its lease
    running), while each storage moves and replaces in its own way."""
    if world.settings.drop.drop_storage == "local":
        return points
    first_step = next(p for p in points if ":" not in p)
    return [p for p in points if ":" in p or p == first_step]


def test_kill_at_any_point_then_reconcile(world: World, small_file: bytes) -> None:
    """One file per kill point, each killed in its own process; one reconcile recovers all."""
    points = _kill_points(world, KILL_POINTS)
    files = dict(zip(points, _variants(small_file, len(points)), strict=True))
    names = {point: f"customers-{n}.csv" for n, point in enumerate(points)}
    _run_killed(world, *((world.drops.drop(names[p], data), p) for p, data in files.items()))
    # The file is somewhere, once, unchanged; a half move may leave it in two places
    # until recovery finishes the move.
    found = Counter(o.data for o in originals(world.storage))
    assert set(found) == set(files.values()), found
    for point, data in files.items():
        assert found[data] >= 1 if "(half move)" in point else found[data] == 1, point

    outcomes = world.reconcile()
    world.check(settled=True)
    for point, name in names.items():
        mine = [o for o in outcomes if o.name == name]
        if point.startswith(AFTER_THE_WORK):
            assert mine == [], (point, mine)  # nothing was left to do
            continue
        assert [(o.status, o.attempt) for o in mine] == [("processed", 2)], (point, mine)
        # the killed one was attempt 1
        assert point.startswith("finish") or "the previous attempt" not in str(mine), point
    assert world.reconcile() == []  # settled: a second pass finds nothing


def test_an_invalid_file_killed_before_its_release_ends_errored_in_every_record(
    world: World,
) -> None:
    """The file left processing/ before the kill: nothing to re-drive, and its row, stage
    and log say errored."""
    key = world.drops.drop("invalid.csv", b"not,a,churn\nfile,at,all\n")
    _run_killed(world, (key, "release: all done, lease not closed"))
    assert world.reconcile() == []
    world.check(settled=True, invalid=1)


#: The labels steps, and the storage points they share with scoring.
LABELS_KILL_POINTS = [
    "claim (half move): file in its run, still in input/",
    "join_labels",
    "record_realized",
    "alert_realized",
    "finish: original moved, outputs not",
    "release: all done, lease not closed",
]


def test_kill_a_late_labels_run_at_any_point_then_reconcile(
    world: World, small_file: bytes
) -> None:
    """A scored file per kill point; each one's labels run killed at its point."""
    kills, scored = [], {}
    points = _kill_points(world, LABELS_KILL_POINTS)
    for n, (point, data) in enumerate(zip(points, _variants(small_file, len(points)), strict=True)):
        outcome = world.process(world.drops.drop(f"customers-{n}.csv", data))
        assert outcome.status == "processed" and outcome.predictions_key, outcome.message
        labels = world.storage.read(outcome.predictions_key)  # the file carries Churn already
        name = f"customers-{n}_labels.csv"
        kills.append((world.drops.drop(name, labels, folder="labels"), point))
        scored[name] = (point, outcome.run_id)
    _run_killed(world, *kills)

    outcomes = world.reconcile()
    world.check(settled=True)
    with closing(MetricsStore(world.settings.monitoring.metrics_db_url)) as store:
        for name, (point, run_id) in scored.items():
            if not point.startswith("release"):
                mine = [o for o in outcomes if o.name == name]
                assert [(o.status, o.attempt) for o in mine] == [("processed", 2)], (point, mine)
            assert set(store.realized(run_id)["metric"]) >= {"f1", "roc_auc"}, point
    assert world.reconcile() == []


def test_killed_churnops_process_is_recovered_by_running_it_again(
    tmp_path: Path, mlflow_server: str, session_model: str, small_file: bytes
) -> None:
    """The real command, killed with SIGKILL once it holds the file."""
    settings = model_settings(
        tmp_path / "home", mlflow_server, session_model, evidently_ui_url=None
    )
    env = {
        **os.environ,
        "CHURNOPS_HOME": str(settings.home),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MODEL_NAME": session_model,
    }
    env.pop("DATABASE_URL", None)
    env.pop("DROP_STORAGE", None)
    source = tmp_path / "customers.csv"
    source.write_bytes(small_file)
    churnops = str(Path(sys.executable).with_name("churnops"))
    process = subprocess.Popen([churnops, "process", str(source)], env=env)
    claims_dir = settings.drop.drop_dir / "data" / "claims"
    deadline = time.monotonic() + 60
    while not any(claims_dir.glob("*/*.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "churnops process never claimed the file"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    drops = Drops(LocalDropStorage(settings.drop.drop_dir), [small_file])
    drops.check(settled=False)

    run = partial(subprocess.run, env=env, capture_output=True, text=True, timeout=120)
    retry = run([churnops, "process", str(source)])
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert "re-driving data/processing/" in retry.stdout  # the same run, not a second copy
    drops.check(settled=True, metrics_url=settings.monitoring.metrics_db_url)
    done = run([churnops, "reconcile"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to reconcile" in done.stdout


# --- outages: a dependency down is not a bad file ---------------------------------------------
#: The step a dependency goes down before, what the failed attempt's reason says, and
#: whether the attempt could close its row (not when the metrics database is down).
OUTAGES = {
    "metrics database stopped": ("record_metrics", ("unreachable",), False),
    "metrics database frozen": ("record_metrics", ("unreachable",), False),
    "MLflow stopped": ("load_aliased_model", ("MLflow", "unreachable"), True),
    "Evidently UI frozen": ("monitor", ("timed out",), True),
}


def _outage(
    case: str, world: World, request: pytest.FixtureRequest, back: ExitStack
) -> Callable[[], None]:
    """Points ``world`` at the dependency of ``case``, with short waits; what takes the
    dependency down (``back`` brings it up again). Frozen is SIGSTOP, not a stop:
    connections stay open and nothing answers, not even a timeout."""
    if case.startswith("metrics database"):
        service = request.getfixturevalue("postgres_cluster")
        world.tune(database_url=service.url)
        world.patch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 1.0)
    elif case.startswith("Evidently"):
        service = request.getfixturevalue("evidently_ui")
        world.tune(evidently_ui_url=service.url, evidently_secret=EVIDENTLY_SECRET)
    else:  # the session's MLflow server, which ``world`` uses already
        service = request.getfixturevalue("mlflow_instance")
    if case.endswith("frozen"):
        world.patch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 2.0)
        return lambda: back.enter_context(service.frozen())

    def stop() -> None:
        back.callback(service.start)
        service.stop()

    return stop


@pytest.mark.parametrize(
    ("outage", "world"),
    [
        ("metrics database stopped", "local"),
        ("metrics database frozen", "local"),
        ("metrics database frozen", "s3"),
        ("MLflow stopped", "local"),
        ("Evidently UI frozen", "local"),
        ("Evidently UI frozen", "s3"),
    ],
    indirect=["world"],
)
def test_a_dependency_down_mid_run_fails_the_attempt_then_the_file_is_processed(
    world: World, small_file: bytes, request: pytest.FixtureRequest, outage: str
) -> None:
    """The attempt fails fast (a frozen one within NETWORK_TIMEOUT_SECONDS), the file
    waits in processing/ with its lease failed, and once the dependency is back the
    reconciler's retry processes it."""
    step, says, rows_closed = OUTAGES[outage]
    key = world.drops.drop("customers.csv", small_file)
    with ExitStack() as back:  # brought back at the end only if it went down
        outcome = world.process(key, _around(step, _outage(outage, world, request, back)))
    assert outcome.status == "failed", outcome
    assert all(part in outcome.message for part in says), outcome.message
    world.check(settled=False, waiting=rows_closed)
    assert world.storage.list_keys("data/errored/") == []
    lease = claims.latest_lease(world.storage, outcome.run)
    assert lease is not None and lease.state == "failed"
    log = world.storage.read(log_key(outcome.run, "customers.csv")).decode()
    assert "stays in processing/ for a retry" in log
    world.patch.setattr(retry, "NETWORK_TIMEOUT_SECONDS", 60.0)  # an upload on a loaded machine
    outcomes = world.reconcile()
    assert [o.status for o in outcomes] == ["processed"], outcomes
    world.check(settled=True)
    monitoring = world.settings.monitoring
    if not monitoring.evidently_ui_url:  # a workspace of this test's own: one file, one report
        workspace = drift.open_workspace(monitoring)
        (project,) = workspace.search_project(drift.PROJECT)
        assert len(workspace.list_runs(project.id)) == 1


@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_redrive_that_fails_after_its_move_keeps_one_report_and_its_own_metrics(
    world: World, small_file: bytes
) -> None:
    """Attempt 1 fails before its move (its report withdrawn: the file is re-driven);
    attempt 2 moves the file and then fails, so it finishes the run itself: its report and
    its metrics stay, and attempt 1's metrics are not added to its own."""
    key = world.drops.drop("customers.csv", small_file)
    first = world.process(key, _around("finish", _failure("no move")))
    assert first.status == "failed", first
    outcomes: list[per_file.FileOutcome] = []
    fails = _around("finish", after=_failure("failed after its move"))
    redrive = lambda a: outcomes.append(world.process(a.key, fails))  # noqa: E731
    reconcile.reconcile(world.settings, world.storage, redrive, flow.PrefectFlowRuns())
    assert [o.status for o in outcomes] == ["processed"], outcomes
    world.check(settled=True)
    with closing(MetricsStore(world.settings.monitoring.metrics_db_url)) as store:
        one, two = (store.metrics(f"{first.run}.{n}") for n in (1, 2))
    assert len(one) == len(two) > 0
    workspace = drift.open_workspace(world.settings.monitoring)
    (project,) = workspace.search_project(drift.PROJECT)
    assert len(workspace.list_runs(project.id)) == 1


@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_report_the_ui_stored_after_its_attempt_gave_up_waiting_is_withdrawn(
    world: World, small_file: bytes
) -> None:
    """A frozen Evidently UI stores a report after the attempt's request timed out: the
    attempt fails not knowing it, and its re-drive withdraws it before storing its own."""
    key = world.drops.drop("customers.csv", small_file)
    first = world.process(key, _around("monitor", after=_failure("stored, then failed")))
    assert first.status == "failed", first
    assert [o.status for o in world.reconcile()] == ["processed"]
    world.check(settled=True)
    workspace = drift.open_workspace(world.settings.monitoring)
    (project,) = workspace.search_project(drift.PROJECT)
    assert len(workspace.list_runs(project.id)) == 1


def _failure(why: str) -> Callable[[], None]:
    """An action that fails with ``RuntimeError(why)``."""

    def fail() -> None:
        raise RuntimeError(why)

    return fail


# --- duplicates, concurrency, re-drops and name clashes ------------------------------------------
@pytest.fixture(params=["local", "s3-versioned", "s3-unversioned"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> DropStorage:
    if request.param != "local":
        return _s3_storage(request, versioned=request.param == "s3-versioned")
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    return storage


def test_concurrent_claims_of_one_drop_have_one_winner(any_storage: DropStorage) -> None:
    drops = Drops(any_storage)
    key = drops.drop("customers.csv", b"a,b\n1,2\n")
    results = at_once(8, lambda _: claims.claim(any_storage, key, lease_seconds=30))
    assert all(isinstance(r, claims.Claim | claims.ClaimRefused) for r in results), results
    winners = [r for r in results if isinstance(r, claims.Claim)]
    assert len(winners) == 1, results
    assert len(any_storage.list_keys(f"data/claims/{winners[0].run}/")) == 1
    drops.check(settled=False)


def test_a_live_run_cannot_be_taken_over_but_a_dead_one_can(any_storage: DropStorage) -> None:
    drops = Drops(any_storage)
    held = claims.claim(any_storage, drops.drop("a.csv", b"x\n1\n"), lease_seconds=30)
    with pytest.raises(claims.ClaimRefused, match="being worked on"):
        claims.claim(any_storage, held.processing_key, lease_seconds=30)
    time.sleep(0.05)
    second = claims.claim(any_storage, held.processing_key, lease_seconds=0.01)  # expired
    assert second.lease.attempt == 2
    with pytest.raises(claims.ClaimRefused):
        claims.claim(any_storage, held.processing_key, lease_seconds=30)
    drops.check(settled=False)


def test_concurrent_and_duplicate_events_process_a_drop_once(
    world: World, small_file: bytes
) -> None:
    key = world.drops.drop("customers.csv", small_file)
    contexts = [contextvars.copy_context() for _ in range(2)]  # its Prefect settings
    outcomes = at_once(2, lambda n: contexts[n].run(world.process, key))
    outcomes.append(world.process(key))  # a late duplicate event
    assert sorted(o.status for o in outcomes) == ["processed", "skipped", "skipped"]
    world.check(settled=True)


def test_a_new_file_with_an_old_name_is_processed(world: World, data_dir: Path) -> None:
    january = (data_dir / "customer_churn_1.csv").read_bytes()
    february = (data_dir / "customer_churn_2_majority_drifted.csv").read_bytes()
    first = world.process(world.drops.drop("customers.csv", january))
    second = world.process(world.drops.drop("customers.csv", february))
    assert (first.status, second.status) == ("processed", "processed")
    assert first.run != second.run
    world.check(settled=True)


@pytest.mark.parametrize(
    "names",
    [
        ("y_predictions_SessionChurnModel_v1.csv", "y.csv"),
        ("stem.csv", "stem.txt"),
        ("y.csv", "y_predictions_SessionChurnModel_v1.csv"),
    ],
)
def test_names_never_clash(world: World, small_file: bytes, names: tuple[str, str]) -> None:
    for name in names:
        outcome = world.process(world.drops.drop(name, small_file))
        assert outcome.status == "processed", outcome
    world.check(settled=True)
    assert len(world.storage.list_keys("data/processed/")) == 4


# --- hostile inputs: bad input, errored once with its reason, never retried -----------------
def _gzip_streamed(piece: bytes, times: int) -> bytes:
    """``piece`` repeated ``times`` times, gzip-compressed a piece at a time (no big buffer)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    return b"".join(packer.compress(piece) for _ in range(times)) + packer.flush()


def _dictionary_parquet(small_file: bytes) -> bytes:
    """36 KB of Parquet whose 'note' column decodes to 60 MB: one 500 KB value, 120 times."""
    table = pa.Table.from_pandas(pd.read_csv(io.BytesIO(small_file)), preserve_index=False)
    note = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(120, "int32")), pa.array(["x" * 500_000])
    )
    out = io.BytesIO()
    pq.write_table(table.append_column("note", note), out)
    return out.getvalue()


def _with_id(small_file: bytes, value: str) -> bytes:
    frame = pd.read_csv(io.BytesIO(small_file))
    frame.insert(0, "customer_id", [f"C{i}" for i in range(len(frame))])
    frame.loc[3, "customer_id"] = value
    return frame.to_csv(index=False).encode()


HOSTILE = {
    "gzip bomb": ("bomb.csv.gz", "decodes to more than 5,000,000 bytes"),
    "one long line": ("line.csv.gz", "line 2 is longer than 1,048,576 bytes"),
    "dictionary-encoded Parquet": ("dict.parquet", "decodes to more than 5,000,000 bytes"),
    "NUL in an identifier": ("nul.csv", "line 5 holds a NUL byte"),
    "230-byte name": ("n" * 226 + ".csv", "the file name is too long"),
    "255-byte name": ("m" * 251 + ".csv", "the file name is too long"),
    "huge invalid value": ("value.csv", "bad values 1xxxxxxxxxx"),
}


def _hostile(case: str, small_file: bytes) -> bytes:
    header, row = small_file.split(b"\n")[:2]
    if case == "gzip bomb":  # 20 MB of rows in a few KB
        return _gzip_streamed(header + b"\n" + (row + b"\n") * 1000, 200)
    if case == "one long line":
        return gzip.compress(header + b"\n" + b"1" * (3 << 20))
    if case == "dictionary-encoded Parquet":
        return _dictionary_parquet(small_file)
    if case == "NUL in an identifier":
        return _with_id(small_file, "C\x003")
    if case == "huge invalid value":
        return small_file.replace(
            b"\n" + row.split(b",")[0] + b",", b"\n1" + b"x" * 500_000 + b",", 1
        )
    return small_file


def _drop_as_a_user(world: World, name: str, data: bytes) -> str:
    """Drop ``name`` as ``cp`` or an upload does (a 255-byte name leaves no room for the
    temporary name :meth:`LocalDropStorage.create` writes first)."""
    if not isinstance(world.storage, LocalDropStorage):
        return world.drops.drop(name, data)
    key = stage_key("input", name)
    world.storage.path(key).write_bytes(data)
    world.drops.dropped.append(data)
    return key


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_file_is_bad_input_errored_once(
    world: World, small_file: bytes, case: str
) -> None:
    name, reason = HOSTILE[case]
    world.tune(max_file_bytes=5_000_000)

    outcome = world.process(_drop_as_a_user(world, name, _hostile(case, small_file)))

    assert outcome.status == "errored", outcome.message
    assert reason in outcome.message
    assert len(outcome.message) < 500  # a bad value is shortened, never copied whole
    world.check(settled=True, invalid=1)
    assert world.reconcile() == []  # never retried
    assert name in world.storage.read(log_key(outcome.run, name)).decode()


@pytest.mark.parametrize("world", ["s3"], indirect=True)  # no local file takes such a name
def test_a_600_character_key_on_s3_and_postgres_is_bad_input(
    world: World, small_file: bytes
) -> None:
    name = "k" * 596 + ".csv"

    outcome = world.process(world.drops.drop(name, small_file))

    assert outcome.status == "errored", outcome.message
    assert "the file name is too long" in outcome.message
    world.check(settled=True, invalid=1)
    assert world.reconcile() == []
    recorded = world.runs().set_index("id").loc[outcome.run_id, "file_name"]
    assert recorded.startswith("k" * 500) and len(recorded) == 512  # cut to its column


def _s3_key_limit(params: dict[str, Any], **_: Any) -> None:
    """S3's answer to a key over 1024 bytes (moto takes any key)."""
    if len(params.get("Key", "").encode()) > 1024:
        error = {"Code": "KeyTooLongError", "Message": "Your key is too long"}
        raise ClientError({"Error": error}, "S3")


@pytest.mark.parametrize("world", ["s3"], indirect=True)  # no local file takes such a name
@pytest.mark.parametrize("name", ["k" * 979 + ".csv", "é" * 504 + ".csv", "z" * 1009 + ".csv"])
def test_a_key_too_long_for_its_run_on_s3_is_refused_once_unchanged(
    world: World, small_file: bytes, name: str
) -> None:
    """983 to 1013 bytes: a valid input/ key whose processing/<run>/ key would pass S3's
    1024 bytes. The run keeps it under a cut name; the claim file keeps the original key.
    moto does not enforce the limit: the client here refuses longer keys as S3 does."""
    world.storage.client.meta.events.register("before-parameter-build.s3", _s3_key_limit)
    key = world.drops.drop(name, small_file)

    outcome = world.process(key)

    assert outcome.status == "errored", outcome.message
    assert "the file name is too long" in outcome.message and len(outcome.message) < 500
    assert outcome.name == run_name(name) != name
    world.check(settled=True, invalid=1)
    assert world.reconcile() == []  # never retried
    lease = claims.latest_lease(world.storage, outcome.run)
    assert lease is not None and lease.source_key == key
    assert key in world.storage.read(log_key(outcome.run, outcome.name)).decode()


def test_a_dependency_failure_is_one_short_line_where_users_look(
    world: World, small_file: bytes
) -> None:
    """Not a validation error: its reason is ``<class>: <first line>``, bounded, in the
    outcome, the claim, the database row; the file log has the frames, not the text."""
    key = world.drops.drop("customers.csv", small_file)
    page = "<html>" * 100_000

    def monitor(*args: Any) -> Any:
        raise RuntimeError(f"the report server said no\n{page}")

    outcome = world.process(key, replace(flow.STEPS, monitor=monitor))

    assert outcome.status == "failed", outcome
    reason = "RuntimeError: the report server said no"
    assert outcome.message == reason
    lease = claims.latest_lease(world.storage, outcome.run)
    assert lease is not None and lease.reason == reason
    assert world.runs().set_index("id").loc[outcome.run_id, "error"] == reason
    log = world.storage.read(log_key(outcome.run, "customers.csv")).decode()
    assert "<html>" not in log and ", in monitor" in log  # the frames, for whoever debugs
    assert [o.status for o in world.reconcile()] == ["processed"]
    world.check(settled=True)


# --- one bad input never harms another (issue 23) -------------------------------------------------
def _processing_key(world: World) -> str:
    (run,) = {k.split("/")[2] for k in world.storage.list_keys("data/processing/")}
    lease = claims.latest_lease(world.storage, run)
    assert lease is not None
    return f"data/processing/{run}/{lease.name}"


def test_a_dependency_down_for_every_attempt_gives_up_after_max_attempts(
    world: World, small_file: bytes
) -> None:
    """MLflow down (nothing listens on its port; stopping the session's server is
    test_a_dependency_down_mid_run_fails_the_attempt_then_the_file_is_processed) for both
    attempts."""
    world.tune(mlflow_tracking_uri=f"http://{LOOPBACK}:{free_port(LOOPBACK)}")
    world.patch.setattr(retry, "MAX_ATTEMPTS", 2)
    key = world.drops.drop("customers.csv", small_file)
    first = world.process(key)
    outcomes = world.reconcile()
    assert first.status == "failed", first
    assert [o.status for o in outcomes] == ["errored"], outcomes
    assert outcomes[0].message.startswith("gave up after 2 attempts: "), outcomes[0].message
    assert "MLflow" in outcomes[0].message
    assert "gave up" in world.settings.alerts.alert_log.read_text()
    world.check(settled=True, invalid=1)
    assert world.reconcile() == []  # never retried again


@pytest.mark.parametrize("world", ["s3"], indirect=True)  # S3's own refusals
@pytest.mark.parametrize("refusal", ["archived", "locked"])
def test_a_file_that_cannot_be_moved_in_fails_then_is_given_up_once_and_stays_unchanged(
    world: World, small_file: bytes, refusal: str
) -> None:
    """An object S3 will not copy (archived to Glacier by a lifecycle rule; alike a KMS key
    or a policy that denies us, or an object over the 5 GB copy limit), or will copy but
    not delete (Object Lock), stays in input/: its attempts fail as any (the first here
    dies before its move), then its run gives up once, with an alert, and is left alone."""
    world.patch.setattr(retry, "MAX_ATTEMPTS", 3)
    storage = world.storage
    assert isinstance(storage, S3DropStorage)
    key, bucket = stage_key("input", "archived.csv"), storage.bucket
    kept: dict[str, Any] = {"StorageClass": "GLACIER"}
    if refusal == "locked":
        lock = {"ObjectLockEnabled": "Enabled"}
        storage.client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=lock)
        until = datetime.now(UTC) + timedelta(days=1)
        kept = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}
    storage.client.put_object(Bucket=bucket, Key=key, Body=small_file, **kept)
    dropped = storage.client.head_object(Bucket=storage.bucket, Key=key)

    url = world.settings.monitoring.metrics_db_url
    _run_killed(world, (key, "claim: lease written, file not yet moved"))
    (second,) = world.reconcile()
    assert (second.status, second.attempt) == ("failed", 2), second
    assert "could not move it into processing/" in second.message, second.message
    log = storage.read(log_key(second.run, "archived.csv")).decode()
    assert "the file stays in its drop folder for a retry" in log, log
    check_records_agree(storage, url, read_flow_runs(storage, world.flow_runs))  # waiting
    outcomes = world.reconcile()
    assert [(o.status, o.attempt) for o in outcomes] == [("errored", 3)], outcomes
    assert outcomes[0].message.startswith("gave up after 3 attempts: could not move"), outcomes
    alerts = world.settings.alerts.alert_log.read_text()
    assert alerts.count("] gave up: archived.csv") == 1, alerts
    assert "The file is in data/input/archived.csv." in alerts, alerts
    assert world.reconcile() == []  # never retried again
    assert world.process(key).status == "skipped"  # nor by a trigger (the watcher's, say)

    assert storage.list_keys("data/input/") == [key]
    now = storage.client.head_object(Bucket=storage.bucket, Key=key)
    assert (now["VersionId"], now["ETag"]) == (dropped["VersionId"], dropped["ETag"])
    assert not [k for s in RUN_STAGES for k in storage.list_keys(folder_key(s))]
    rows = world.runs().set_index("id")["status"]
    mine = rows[rows.index.str.startswith(f"{second.run}.")].to_dict()  # Postgres: the session's
    assert mine == {second.run_id: "failed", outcomes[0].run_id: "errored"}, mine
    assert [x.state for x in leases(storage)] == ["died", "failed", "unmovable"]
    check_records_agree(storage, url, read_flow_runs(storage, world.flow_runs))


def test_a_file_that_kills_its_runner_is_quarantined_after_max_attempts(
    world: World, small_file: bytes
) -> None:
    """Each attempt dies (SIGKILL, as the OOM killer does); after MAX_ATTEMPTS the next
    claim gives up without running the file, and says why."""
    world.patch.setattr(retry, "MAX_ATTEMPTS", 2)
    key = world.drops.drop("huge.csv", small_file)
    _run_killed(world, (key, "score_file"))
    _run_killed(world, (_processing_key(world), "score_file"))
    outcomes = world.reconcile()
    assert [(o.status, o.attempt) for o in outcomes] == [("errored", 3)], outcomes
    assert outcomes[0].message.startswith("gave up after 2 attempts: attempt 2 died")
    world.check(settled=True, invalid=1)
    assert world.reconcile() == []


def test_an_attempt_killed_while_closing_a_dead_one_leaves_both_to_the_next(
    world: World, small_file: bytes
) -> None:
    """Attempt 1 dies; attempt 2 dies while marking its flow run Crashed (its log and
    row closed, its lease still running); attempt 3 closes both, and each record of
    every attempt agrees (world.check)."""
    key = world.drops.drop("customers.csv", small_file)
    _run_killed(world, (key, "score_file"))
    _run_killed(world, (_processing_key(world), "mark_crashed"))
    outcomes = world.reconcile()
    assert [(o.status, o.attempt) for o in outcomes] == [("processed", 3)], outcomes
    world.check(settled=True)
    ends = {x.attempt: x.state for x in leases(world.storage)}
    assert ends == {1: "died", 2: "died", 3: "done"}, ends


def test_an_attempt_stalled_past_its_lease_changes_nothing_once_woken(
    world: World, small_file: bytes
) -> None:
    """SIGSTOP, not a kill: attempt 1 stalls in scoring (a stopped process beats no more)
    while attempt 2 takes over its lapsed lease and processes the file. Woken, attempt 1
    writes its predictions (the same bytes), then stores, alerts and moves nothing, and its
    stray copy leaves: nothing is left to re-drive, every record agrees."""
    world.patch.setattr(claims, "LEASE_SECONDS", 0.5)
    world.patch.setattr(claims, "heartbeat", lambda *args, **kwargs: nullcontext())
    key = world.drops.drop("customers.csv", small_file)
    stalled, woken = threading.Event(), threading.Event()

    def stalled_score(*args: Any) -> Any:
        stalled.set()
        assert woken.wait(timeout=120)
        return per_file.score_file(*args)

    steps = replace(per_file.PLAIN_STEPS, score_file=stalled_score)
    first: list[per_file.FileOutcome] = []
    own = _own_view(world.storage)  # its process's, as each flow run opens its drop
    run = lambda: first.append(per_file.process(world.settings, own, key, steps=steps))  # noqa: E731
    zombie = threading.Thread(target=run)
    zombie.start()
    assert stalled.wait(timeout=60)
    time.sleep(1.0)  # its lease lapses
    second = world.process(_processing_key(world))
    woken.set()
    zombie.join(timeout=120)

    assert second.status == "processed", second
    assert [o.status for o in first] == ["died"], first
    assert "attempt 2 took over" in first[0].message
    assert world.reconcile() == []  # nothing left in processing/ to re-drive
    world.check(settled=True)
    assert {x.attempt: x.state for x in leases(world.storage)} == {1: "died", 2: "done"}
    with closing(MetricsStore(world.settings.monitoring.metrics_db_url)) as store:
        stored = {r for r in store.metrics()["run_id"] if r.startswith(f"{second.run}.")}
    assert stored == {second.run_id}, stored  # the woken attempt stored no metrics


def _own_view(storage: DropStorage) -> DropStorage:
    """The same drop as another process opens it (nothing it wrote remembered)."""
    if isinstance(storage, S3DropStorage):
        return S3DropStorage(storage.bucket, storage.client)
    return storage


class FailingStorage:
    """A storage whose ``calls`` raise ``error`` once ``failing`` is set (its other calls
    work: on a full disk, moves, renames on one disk and reads do)."""

    def __init__(self, inner: DropStorage, calls: tuple[str, ...], error: Exception) -> None:
        self.inner, self.calls, self.error, self.failing = inner, calls, error, False

    def fail(self) -> None:
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in self.calls:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failing:
                raise self.error
            return attribute(*args, **kwargs)

        return call


def test_storage_look_ups_failing_mid_run_fail_the_attempt_then_it_is_processed(
    world: World, small_file: bytes
) -> None:
    """The takeover check is a storage call too: down, it fails the attempt (retried),
    never escapes it."""
    key = world.drops.drop("customers.csv", small_file)
    blind = FailingStorage(world.storage, ("exists",), ConnectionError("storage look-ups time out"))
    outcome = world.process(key, _around("monitor", blind.fail), storage=blind)
    assert outcome.status == "failed" and "look-ups time out" in outcome.message, outcome
    assert [o.status for o in world.reconcile()] == ["processed"]
    world.check(settled=True)


def test_a_full_disk_fails_the_attempt_and_its_retries_then_the_file_is_processed_once(
    world: World, small_file: bytes
) -> None:
    """Full from the scoring step on: not the file's fault (failed, not errored), though
    neither its log nor its claim can say so. A retry while it is still full cannot take
    the run; once there is room, the claim's silence ends it (the one liveness rule) and
    the next attempt processes the file, unchanged, once, every record agreeing."""
    key = world.drops.drop("customers.csv", small_file)
    writes = ("create", "create_streamed", "replace", "append_line")
    disk = FailingStorage(world.storage, writes, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    outcome = world.process(key, _around("score_file", disk.fail), disk)
    assert outcome.status == "failed" and "No space left" in outcome.message, outcome
    again = world.process(run_key("processing", outcome.run, "customers.csv"), storage=disk)
    assert again.status != "processed", again
    disk.failing = False
    world.patch.setattr(claims, "LEASE_SECONDS", 0.5)
    time.sleep(1.0)  # the failed attempt's claim says running, and beats no more
    assert [(o.status, o.attempt) for o in world.reconcile()] == [("processed", 2)]
    world.check(settled=True)


def test_a_processing_object_deleted_mid_run_closes_the_run_once(
    world: World, small_file: bytes
) -> None:
    key = world.drops.drop("customers.csv", small_file)
    world.drops.dropped.remove(small_file)  # the test deletes it: nowhere is right

    def delete(settings: Settings, storage: DropStorage, processing_key: str, *rest: Any):
        if isinstance(storage, S3DropStorage):
            storage.client.delete_object(Bucket=storage.bucket, Key=processing_key)
        else:
            Path(storage.path(processing_key)).unlink()
        return per_file.score_file(settings, storage, processing_key, *rest)

    steps = replace(flow.STEPS, score_file=delete)
    outcome = world.process(key, steps)
    assert outcome.status == "errored", outcome
    assert "deleted during its run" in outcome.message
    assert world.reconcile() == []  # closed once: not re-driven every tick
    assert world.reconcile() == []
    rows = world.runs()
    mine = rows[rows["id"].str.startswith(f"{outcome.run}.")]
    assert list(mine["status"]) == ["errored"], mine[["id", "status"]]
    world.check(settled=True)


# --- the local folder only: names, symlinks and writers are file-system matters --------------
@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_name_that_is_not_utf8_is_refused_once_and_harms_no_other(
    world: World, small_file: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """No event or flow run can carry such a name: the reconciler refuses it in process,
    once, to errored/ under a cut name (the claim file keeps the original), with one alert."""
    folder = os.fsencode(world.settings.drop.drop_dir / "data" / "input")
    with open(os.path.join(folder, b"caf\xe9.csv"), "wb") as out:  # Latin-1, not UTF-8
        out.write(small_file)
    world.drops.dropped.append(small_file)
    world.drops.drop("fine.csv", small_file)

    outcomes = world.reconcile()

    assert [(o.name, o.status) for o in outcomes] == [("fine.csv", "processed")]
    assert os.listdir(folder) == []
    world.check(settled=True, invalid=1)
    (run,) = {k.split("/")[2] for k in world.storage.list_keys("data/errored/")}
    lease = claims.latest_lease(world.storage, run)
    assert lease is not None and lease.name == run_name("caf\udce9.csv")
    assert lease.source_key == "data/input/caf\udce9.csv"
    log = world.storage.read(log_key(run, lease.name)).decode()
    assert "the file name 'caf\\xe9.csv' is not UTF-8 text" in log
    assert world.reconcile() == []  # once: nothing left to warn about
    assert world.settings.alerts.alert_log.read_text().count("not UTF-8 text") == 1
    assert not [r for r in caplog.records if "reconcile: skipped" in r.getMessage()]


@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_symlink_is_refused_to_errored_without_being_read_or_followed(
    world: World, small_file: bytes, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_bytes(small_file)
    link = world.settings.drop.drop_dir / "data" / "input" / "link.csv"
    link.symlink_to(secret)
    outcome = world.process("data/input/link.csv")
    assert outcome.status == "errored", outcome
    assert outcome.message.startswith("link.csv is invalid")  # was 'file is invalid'
    assert "not a regular file" in outcome.message
    errored = world.settings.drop.drop_dir / "data" / "errored" / outcome.run / "link.csv"
    assert errored.is_symlink() and secret.read_bytes() == small_file
    made = [k for k in world.storage.list_keys("data/") if "_predictions_" in k]
    assert made == []  # the target was never read into an output
    assert world.reconcile() == []


class ReplacingStorage(LocalDropStorage):
    """A new file is dropped under the same name in the instant of a move-in."""

    def __init__(self, root: Path, replacement: bytes) -> None:
        super().__init__(root)
        self.replacement: bytes | None = replacement

    def _delete_source(self, source: Path, target: Path) -> None:
        if self.replacement is not None and source.parent.name == "input":
            newer = source.with_name(".newer.tmp")
            newer.write_bytes(self.replacement)
            os.replace(newer, source)
            self.replacement = None
        super()._delete_source(source, target)


@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_same_name_replacement_during_the_move_in_is_a_second_file(
    world: World, small_file: bytes, data_dir: Path
) -> None:
    second = (data_dir / "customer_churn_2_majority_drifted.csv").read_bytes()[:20000]
    second = second.rsplit(b"\n", 1)[0] + b"\n"
    storage = ReplacingStorage(world.settings.drop.drop_dir, second)
    world.drops = Drops(storage)
    key = world.drops.drop("customers.csv", small_file)
    world.drops.dropped.append(second)
    assert world.process(key).status == "processed"
    assert [o.status for o in world.reconcile()] == ["processed"]
    world.check(settled=True)


def test_a_same_name_replacement_before_the_claim(
    world: World, small_file: bytes, data_dir: Path
) -> None:
    """A second file under the same name before the first is claimed. A local folder holds
    one file per name: the rename over it replaced the first (the operating system's doing,
    not ours), the newest is processed once and the other trigger is a logged no-op. A
    versioned bucket keeps both versions: each is processed, once."""
    second = (data_dir / "customer_churn_2_majority_drifted.csv").read_bytes()
    key = world.drops.drop("customers.csv", small_file)
    if isinstance(world.storage, S3DropStorage):
        world.storage.client.put_object(Bucket=world.storage.bucket, Key=key, Body=second)
        world.drops.dropped.append(second)
        expected = ("processed", "processed")
    else:
        path = world.storage.path(key)
        path.with_name(".newer.tmp").write_bytes(second)
        os.replace(path.with_name(".newer.tmp"), path)
        world.drops.dropped = [second]
        expected = ("processed", "skipped")

    first, again = world.process(key), world.process(key)  # the two triggers

    assert (first.status, again.status) == expected, (first, again)
    world.check(settled=True)
    assert world.reconcile() == []


@pytest.mark.parametrize("world", ["local"], indirect=True)
@pytest.mark.parametrize(
    ("dropped_again", "status", "why"),
    [(False, "skipped", "changed during its run"), (True, "errored", "is another drop now")],
)
def test_a_file_written_after_its_claim_starts_over_unless_its_name_was_dropped_again(
    world: World, small_file: bytes, data_dir: Path, dropped_again: bool, status: str, why: str
) -> None:
    """The writer was not done: the run's outputs are stale and the file goes back to input/,
    its final content processed as a new run. If a newer drop took the name (a move never
    replaces), it ends in errored/ with why, once, and the newer drop is processed."""
    more = small_file.split(b"\n", 1)[1]
    key = world.drops.drop("customers.csv", small_file)
    world.drops.dropped = [small_file + more]

    def still_writing(settings: Settings, storage: DropStorage, processing_key: str, *rest):
        scored = per_file.score_file(settings, storage, processing_key, *rest)
        with Path(storage.path(processing_key)).open("ab") as out:  # the writer's open file
            out.write(more)
        if dropped_again:
            newer = (data_dir / "customer_churn_2_majority_drifted.csv").read_bytes()
            world.drops.drop("customers.csv", newer)
        return scored

    outcome = world.process(key, replace(flow.STEPS, score_file=still_writing))

    assert outcome.status == status and why in outcome.message, outcome
    assert [o.status for o in world.reconcile()] == ["processed"]
    world.check(settled=True, invalid=int(dropped_again))
    assert world.reconcile() == []


def test_the_reconciler_sees_the_pipelines_taken_and_running_flow_runs_and_ends_them() -> None:
    """PrefectFlowRuns against the session's server: a run left Pending (its runner died
    before starting it) or Running is unfinished, a scheduled or a final one is not, and
    each ends in the state its attempt's ending names."""
    parameters = {"drop": "file:///nowhere", "key": "data/input/x.csv"}
    states = {
        "pending": Pending(),
        "running": Running(),
        "scheduled": Scheduled(),
        "completed": Completed(),
    }
    with get_client(sync_client=True) as client:
        create = partial(client.create_flow_run, flow.churn_prediction_pipeline)
        ids = {name: str(create(parameters=parameters, state=s).id) for name, s in states.items()}
    unfinished = flow.PrefectFlowRuns().unfinished()
    assert {name for name, i in ids.items() if i in unfinished} == {"pending", "running"}

    flow.PrefectFlowRuns().end(
        {ids["pending"]: ("died", "gone"), ids["running"]: ("errored", "bad")}
    )
    with get_client(sync_client=True) as client:
        ended = {name: client.read_flow_run(ids[name]).state for name in ("pending", "running")}
    assert (ended["pending"].type, ended["pending"].message) == (StateType.CRASHED, "died: gone")
    assert (ended["running"].type, ended["running"].name) == (StateType.FAILED, flow.REJECTED)
