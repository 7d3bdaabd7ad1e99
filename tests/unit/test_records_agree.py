"""check_records_agree (tests/exactly_once.py) bites: one record telling another story
fails it. A real local drop folder and SQLite metrics database; the flow run as the
Prefect client models it."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed, Running

from churnops.drop import claims
from churnops.drop.storage import FileLog, LocalDropStorage, stage_key
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from tests.exactly_once import check_records_agree


def test_a_flow_state_that_tells_another_story_fails_the_check(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    storage.create(stage_key("input", "a.csv"), b"x\n")
    flow_run = FlowRun(id=uuid4(), flow_id=uuid4(), state=Completed())
    held = claims.claim(storage, "data/input/a.csv", lease_seconds=60, flow_run_id=str(flow_run.id))
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    store = MetricsStore(url)
    try:
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
    finally:
        store.close()

    check_records_agree(storage, url, [flow_run])  # processed everywhere
    for state in (Failed(name="Rejected"), Failed(), Crashed(), Running()):
        with pytest.raises(AssertionError, match="processed"):
            check_records_agree(storage, url, [flow_run.model_copy(update={"state": state})])
    file_log.write("finish", "errored")
    with pytest.raises(AssertionError, match="errored"):
        check_records_agree(storage, url, [flow_run])
