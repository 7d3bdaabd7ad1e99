"""Extra columns through the real pipeline: the predictions file carries them unchanged,
row-aligned; the model, the drift report and the metrics database never see them."""

from __future__ import annotations

import dataclasses
import io
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.data import reading
from churnops.data.schema import RAW_COLUMNS
from churnops.drop.storage import DropStorage, log_key, stage_key
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings
from tests.fixtures.model import drop_and_process

SOURCE = "customer_churn_1.csv"
EXTRA = ["customer_id", "region"]


@pytest.fixture
def local(
    scoring_drop: tuple[Settings, DropStorage], monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, DropStorage]:
    """The session model on a fresh local drop, 300-row chunks (4 for 1,050 rows)."""
    monkeypatch.setattr(reading, "CHUNK_ROWS", 300)
    return scoring_drop


def _with_extras(raw: pd.DataFrame) -> pd.DataFrame:
    """An identifier first and a region among the features: text a parser could change."""
    frame = raw.copy()
    frame.insert(0, "customer_id", [f"{i:07d}" for i in range(len(frame))])
    regions = np.random.default_rng(3).choice(["north", "south, east", "NA", ""], len(frame))
    frame.insert(6, "region", regions)
    frame.loc[20, "customer_id"] = ""  # file row 22
    frame.loc[700, "customer_id"] = frame.loc[10, "customer_id"]  # file row 702, chunk 3
    return frame


def _predictions(storage: DropStorage, outcome: per_file.FileOutcome) -> pd.DataFrame:
    assert outcome.status == "processed", outcome.message
    assert outcome.predictions_key is not None
    data = storage.read(outcome.predictions_key)
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def test_extra_columns_travel_with_their_rows_and_change_no_prediction(
    local: tuple[Settings, DropStorage], data_dir: Path
) -> None:
    settings, storage = local
    original = (data_dir / SOURCE).read_bytes()
    extended = _with_extras(pd.read_csv(io.BytesIO(original)))
    samples: list[pd.DataFrame] = []

    def monitor(monitoring, platform, model, scored, name, run):  # the real step, input recorded
        samples.append(scored.sample)
        return per_file.monitor(monitoring, platform, model, scored, name, run)

    steps = dataclasses.replace(per_file.PLAIN_STEPS, monitor=monitor)
    plain = _predictions(storage, drop_and_process(settings, storage, "plain.csv", original))
    storage.create(stage_key("input", "ids.csv"), extended.to_csv(index=False).encode())
    outcome = per_file.process(settings, storage, stage_key("input", "ids.csv"), steps=steps)
    written = _predictions(storage, outcome)

    outputs = [*RAW_COLUMNS, PREDICTION, PROBABILITY]
    assert list(written.columns) == [*EXTRA, *outputs]
    for column in EXTRA:
        assert written[column].tolist() == extended[column].tolist()
    pd.testing.assert_frame_equal(written[outputs], plain[outputs])  # the same text, row by row

    (sample,) = samples
    assert not set(EXTRA) & set(sample.columns)
    with closing(MetricsStore(settings.monitoring.metrics_db_url)) as store:
        labels = set(store.metrics(outcome.run_id)["label"].dropna())
    assert labels and not set(EXTRA) & labels  # drift is measured on features only
    log = storage.read(log_key(outcome.run, "ids.csv")).decode()
    assert "passed through unchanged: 'customer_id' (identifier), 'region'" in log
    assert "identifier 'customer_id' is empty on 1 row(s) (lines 22)" in log
    assert "repeats an earlier row's value on 1 row(s): '0000010' at line 702" in log


@pytest.mark.parametrize(
    ("rename", "problems"),
    [
        (
            {"Complains": "Complaints"},
            [
                "missing column 'complains'",
                "column 'Complaints' is no feature or label: is it 'Complains' misspelled?",
            ],
        ),
        (
            {"region": "Churn Prediction"},
            [
                "column 'Churn Prediction' takes the name of an output column "
                "('churn_prediction'); rename it"
            ],
        ),
    ],
    ids=["misspelled feature", "output name taken"],
)
def test_header_errors_send_the_file_to_errored(
    local: tuple[Settings, DropStorage],
    data_dir: Path,
    rename: dict[str, str],
    problems: list[str],
) -> None:
    settings, storage = local
    frame = _with_extras(pd.read_csv(data_dir / SOURCE)).rename(columns=rename)

    outcome = drop_and_process(settings, storage, "bad.csv", frame.to_csv(index=False).encode())

    assert outcome.status == "errored"
    lines = outcome.message.splitlines()
    assert lines[0] == f"bad.csv is invalid ({len(problems)} problem(s)):"
    assert lines[1:] == [f"  - {p}" for p in problems]
    assert storage.list_keys("data/errored/") == [f"data/errored/{outcome.run}/bad.csv"]
