"""check_records_agree (tests/exactly_once.py) bites: one record telling another story
fails it. A real local drop folder and SQLite metrics database; the flow run as the
Prefect client models it."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import numpy as np
import pandas as pd
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Completed, Crashed, Failed, Running

from churnops.data.schema import RAW_COLUMNS
from churnops.drop import claims
from churnops.drop.storage import FileLog, LocalDropStorage, run_key, stage_key
from churnops.model.churn_model import LoadedModel
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from churnops.results import PREDICTION, PROBABILITY, MonitoringResult
from churnops.settings import get_settings
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
    store = MetricsStore.from_settings(settings.monitoring)
    try:
        (run,) = store.runs().to_dict("records")
    finally:
        store.close()
    assert (run["model_name"], run["model_version"], run["rows"]) == ("M", "4", 2)
    assert run["report_url"] == "http://ui/r/1"
