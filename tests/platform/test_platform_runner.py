"""The platform's flow runner against a real Prefect server: a run is executed once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Scheduled

from churnops.pipeline import RECONCILE_DEPLOYMENT
from churnops.platform.runner import FlowRunner
from churnops.settings import get_settings


@pytest.fixture
def runner(prefect_server: str, tmp_path: Path) -> Iterator[FlowRunner]:
    """A runner polling a deployment of its own (other tests share the server)."""
    with SyncPrefectClient(prefect_server) as client:
        flow_id = client.create_flow_from_name("churn_prediction_pipeline")
        deployment = client.create_deployment(
            flow_id=flow_id, name=f"runner-{uuid.uuid4().hex[:8]}"
        )
        runner = FlowRunner(get_settings(churnops_home=tmp_path), client)
        runner.deployment_ids = [deployment, deployment]
        yield runner


def test_a_run_another_runner_finished_is_not_run_again(runner: FlowRunner) -> None:
    """A runner holding a stale copy of a scheduled run must not re-run it once it is done."""
    client = runner.client
    assert runner.next_run() is None  # this poll marks the deployment as polled
    created = client.create_flow_run_from_deployment(runner.deployment_ids[0])
    stale = runner.next_run()  # a plain read of the queue finds it as well
    assert stale is not None and stale.id == created.id
    done = Completed(message="errored: processed by the other runner")
    client.set_flow_run_state(created.id, done, force=True)

    runner.execute(stale)

    after = client.read_flow_run(created.id)
    assert after.state is not None and after.state.is_completed()
    assert after.state.message == done.message
    assert after.run_count == 0  # never started here
    assert runner.next_run() is None


def test_a_starting_runner_deletes_the_reconcile_runs_it_missed_and_reconciles_once(
    prefect_server: str, tmp_path: Path
) -> None:
    """Runs that fell due while the platform was down would each repeat the reconcile at
    start: they are deleted; one not yet due stays."""
    flow, name = RECONCILE_DEPLOYMENT.split("/")
    now = datetime.now(UTC)
    with (
        SyncPrefectClient(prefect_server) as client,
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
    ):
        deployment = client.create_deployment(flow_id=client.create_flow_from_name(flow), name=name)
        runs = {
            when: client.create_flow_run_from_deployment(
                deployment, state=Scheduled(scheduled_time=now + timedelta(minutes=when))
            ).id
            for when in (-30, -2, 30)
        }
        FlowRunner(get_settings(churnops_home=tmp_path), client).reconcile_now()

        left = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
        )
    assert runs[30] in {r.id for r in left}
    assert not {runs[-30], runs[-2]} & {r.id for r in left}
    assert [r.name for r in left if r.id != runs[30]] == ["reconcile at runner start"]


@flow(name="churn_prediction_pipeline")
def _stopped_midway() -> str:
    """A run during which the runner is told to stop (`churnops up` stopped with Ctrl-C)."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)  # the signal is handled meanwhile
    return "finished"


def test_a_stop_during_a_run_lets_the_run_finish(runner: FlowRunner, prefect_server: str) -> None:
    """Prefect's flow engine raised TerminationSignal in the run's step: the file's run
    Crashed mid-score and waited in processing/ for a re-drive, though the runner said
    'stopping after the run in progress' (and `up`, 'finishing their runs')."""
    runner.flows = {runner.deployment_ids[0]: _stopped_midway}
    created = runner.client.create_flow_run_from_deployment(runner.deployment_ids[0])

    def stop(signum: int, frame: object) -> None:  # the runner's own handler, as in main()
        runner.stopping = True

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            runner.execute(runner.client.read_flow_run(created.id))
    finally:
        signal.signal(signal.SIGTERM, previous)
    state = runner.client.read_flow_run(created.id).state
    assert state is not None and state.is_completed(), state
    assert runner.stopping
