"""The platform's flow runner against a real Prefect server: a run is executed once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.states import Completed

from churnops.platform.runner import FlowRunner
from churnops.settings import get_settings

pytestmark = pytest.mark.integration


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
    created = client.create_flow_run_from_deployment(runner.deployment_ids[0])
    stale = runner.next_run()
    assert stale is not None and stale.id == created.id
    done = Completed(message="errored: processed by the other runner")
    client.set_flow_run_state(created.id, done, force=True)

    runner.execute(stale)

    after = client.read_flow_run(created.id)
    assert after.state is not None and after.state.is_completed()
    assert after.state.message == done.message
    assert after.run_count == 0  # never started here
    assert runner.next_run() is None
