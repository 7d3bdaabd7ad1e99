"""The session model, and files scored with it. As MLflow's own tools see it (logged from
code, served on a raw file), as the screenshot script finds it, and as it behaves
(Made-With-ML style): directional (what should raise churn risk does not lower it) and
invariance (row and column order, the label). Big files (up to 400k rows here; 1M and 10M in
the benchmark): streamed through a moto bucket, the fast path, drift on a sample. Extra
columns: the predictions file carries them unchanged, row-aligned; the model, the drift
report and the metrics database never see them."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from churnops.data import reading
from churnops.data.reading import CHUNK_ROWS, load_customer_file
from churnops.data.schema import RAW_COLUMNS, TARGET
from churnops.drop.storage import (
    PART_BYTES,
    DropStorage,
    S3DropStorage,
    log_key,
    s3_client,
    stage_key,
)
from churnops.model.churn_model import ChurnModel, LoadedModel, configure_mlflow
from churnops.monitoring.drift import run_monitoring
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from churnops.pipeline.scoring import DRIFT_SAMPLE_ROWS, SAMPLE_SEED, DriftSample
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings, get_settings
from devtools.screenshots import ScreenshotError, Services, staging_version
from tests.fixtures.model import drop_and_process, session_drop

SOURCE = "customer_churn_1.csv"


@pytest.fixture(scope="module")
def model(session_scoring: tuple[Settings, LoadedModel]) -> ChurnModel:
    return session_scoring[1].model


@pytest.fixture(scope="module")
def customers(data_dir: Path) -> pd.DataFrame:
    return load_customer_file(data_dir / SOURCE, require_target=True)


def test_the_version_is_logged_from_code_not_pickled(
    session_scoring: tuple[Settings, LoadedModel],
) -> None:
    settings, loaded = session_scoring
    configure_mlflow(settings.model)
    uri = f"models:/{settings.model.model_name}/{loaded.version}"
    pyfunc = mlflow.models.get_model_info(uri).flavors["python_function"]
    assert Path(pyfunc["model_code_path"]).name == "model_code.py"
    assert "python_model" not in pyfunc  # the key of python_model.pkl
    assert set(pyfunc["config"]) == {"features", "threshold"}
    assert pyfunc["config"]["threshold"] == loaded.model.threshold
    files = {Path(f.path).name for f in mlflow.artifacts.list_artifacts(uri)}
    assert "model_code.py" in files
    assert not [name for name in files if name.endswith(".pkl")]
    assert isinstance(loaded.model, ChurnModel)


def test_mlflow_models_predict_scores_the_raw_customer_file(
    session_scoring: tuple[Settings, LoadedModel], data_dir: Path, tmp_path: Path
) -> None:
    """``mlflow models predict`` on the file as users drop it (UCI header, Churn column)."""
    settings, loaded = session_scoring
    source = data_dir / SOURCE
    assert "Call  Failure" in pd.read_csv(source, nrows=0).columns
    output = tmp_path / "predictions.json"
    uri = f"models:/{settings.model.model_name}@{settings.model.model_alias}"
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "predict", "-m", uri]
    command += ["-i", str(source), "-t", "csv", "--env-manager", "local", "-o", str(output)]
    env = os.environ | {
        "MLFLOW_TRACKING_URI": settings.model.tracking_uri,
        # nothing of the model may need unpickling
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads(output.read_text())["predictions"]
    expected = loaded.model.score(load_customer_file(source))[PREDICTION]
    assert len(predictions) == len(expected) == 1050
    assert [row[PREDICTION] for row in predictions] == expected.tolist()


def test_the_screenshot_script_finds_the_staging_version_through_mlflows_rest_api(
    mlflow_server: str, session_model: str, tmp_path: Path
) -> None:
    services = Services("http://unused", mlflow_server, "http://unused", str(tmp_path))
    settings = get_settings(churnops_home=tmp_path, model_name=session_model)
    assert staging_version(services, settings.model) == "1"
    missing = get_settings(churnops_home=tmp_path, model_name="NoSuchModel")
    with pytest.raises(ScreenshotError, match="no NoSuchModel@staging in MLflow"):
        staging_version(services, missing.model)


def test_a_complaint_never_lowers_the_churn_risk(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    calm = model.fast_proba(customers.assign(complains=0))
    complaining = model.fast_proba(customers.assign(complains=1))
    # The trees carry no monotone constraint: allow noise, never a real drop.
    assert (complaining >= calm - 0.01).all()
    assert (complaining - calm).mean() > 0.1


def test_inactive_customers_are_riskier_on_average(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    active = model.fast_proba(customers.assign(status=1))
    inactive = model.fast_proba(customers.assign(status=2))
    assert inactive.mean() > active.mean()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c.sample(frac=1, random_state=3), id="rows shuffled"),
        pytest.param(lambda c: c.assign(**{TARGET: 1 - c[TARGET]}), id="label flipped"),
        pytest.param(lambda c: c.drop(columns=TARGET), id="label dropped"),
    ],
)
def test_neither_row_order_nor_the_label_changes_a_score(
    model: ChurnModel, customers: pd.DataFrame, change: Callable[[pd.DataFrame], pd.DataFrame]
) -> None:
    scores = model.score(change(customers)).sort_index()
    pd.testing.assert_frame_equal(scores, model.score(customers), check_exact=True)


def test_column_order_of_the_file_does_not_matter(model: ChurnModel, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / SOURCE)
    columns = list(np.random.default_rng(5).permutation(raw.columns))
    reordered = load_customer_file(raw[columns].to_csv(index=False).encode())
    original = load_customer_file(raw.to_csv(index=False).encode())
    pd.testing.assert_frame_equal(model.score(reordered), model.score(original), check_exact=True)


FILES = ["customer_churn_1.csv", "customer_churn_2_majority_drifted.csv"]


def _many_rows(data_dir: Path, rows: int) -> pd.DataFrame:
    """``rows`` rows drawn with replacement from the two shared files (raw header)."""
    frames = [pd.read_csv(data_dir / name) for name in FILES]
    both = pd.concat(frames, ignore_index=True)
    return both.sample(rows, replace=True, random_state=7).reset_index(drop=True)


def test_the_fast_path_predicts_what_the_pyfunc_predicts(session_scoring, data_dir: Path) -> None:
    settings, loaded = session_scoring
    pyfunc = mlflow.pyfunc.load_model(
        f"models:/{settings.model.model_name}@{settings.model.model_alias}"
    )
    for name in FILES:
        frame = load_customer_file(data_dir / name)
        expected = pyfunc.predict(frame, params={"probability": True})
        fast = loaded.model.score(frame)
        pd.testing.assert_frame_equal(fast, expected.set_axis(fast.index), check_exact=True)


def _verdicts(settings: Settings, loaded: LoadedModel, frame: pd.DataFrame) -> dict[str, bool]:
    result = run_monitoring(
        loaded.model.reference_data(),
        frame,
        feature_columns=loaded.model.features,
        monitoring=settings.monitoring,
        platform=settings.platform,
        file_name="sample-check",
        model_version=loaded.version,
        model_name=loaded.name,
    )
    return {c.column: c.drifted for c in result.columns}


@pytest.mark.parametrize("source", [*FILES, "400k rows of both"])
def test_drift_on_the_sample_gives_the_verdicts_of_all_rows(
    session_scoring, data_dir: Path, source: str
) -> None:
    settings, loaded = session_scoring
    raw = pd.read_csv(data_dir / source) if source in FILES else _many_rows(data_dir, 400_000)
    frame = raw.rename(columns=RAW_COLUMNS)
    scored = pd.concat([frame, loaded.model.score(frame)], axis=1)
    sample = DriftSample(DRIFT_SAMPLE_ROWS, SAMPLE_SEED)
    for start in range(0, len(scored), CHUNK_ROWS):
        sample.add(scored.iloc[start : start + CHUNK_ROWS])
    assert len(sample.frame()) == min(len(scored), DRIFT_SAMPLE_ROWS)
    assert _verdicts(settings, loaded, sample.frame()) == _verdicts(settings, loaded, scored)


@pytest.mark.parametrize("packing", ["csv", "csv.gz", "parquet"])
def test_a_big_file_streams_through_s3_with_its_outputs_in_parts(
    session_scoring,
    data_dir: Path,
    moto_server: str,
    moto_bucket: str,
    packing: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """320k rows in 50k-row chunks; the predictions (> 16 MiB) go up in parts."""
    settings, loaded = session_scoring
    monkeypatch.setattr(reading, "CHUNK_ROWS", 50_000)
    settings = settings.replace(drop_storage="s3", drop_bucket=moto_bucket, evidently_ui_url=None)
    raw = _many_rows(data_dir, 320_000)
    data = raw.to_csv(index=False).encode()
    if packing == "csv.gz":
        data = gzip.compress(data, compresslevel=1)
    elif packing == "parquet":
        buffer = io.BytesIO()
        raw.to_parquet(buffer, index=False, row_group_size=30_000)
        data = buffer.getvalue()
    storage = S3DropStorage(moto_bucket, s3_client(moto_server))
    name = f"everyone.{packing}"
    outcome = drop_and_process(settings, storage, name, data)

    assert outcome.status == "processed", outcome.message
    assert outcome.predictions_key is not None
    assert storage.stat(outcome.predictions_key).size > PART_BYTES  # went up in parts
    written = pd.read_csv(io.BytesIO(storage.read(outcome.predictions_key)))
    frame = raw.rename(columns=RAW_COLUMNS)
    expected = loaded.model.score(frame)
    assert len(written) == len(raw) == 320_000
    np.testing.assert_array_equal(written["churn_prediction"], expected["churn_prediction"])
    np.testing.assert_allclose(written["churn_probability"], expected["churn_probability"])
    pd.testing.assert_frame_equal(written[list(RAW_COLUMNS)], raw, check_dtype=False)
    log = storage.read(f"data/logs/{outcome.run}/{name}.log").decode()
    assert "320000 rows in 7 chunk(s)" in log
    assert storage.list_keys("data/processing/") == []


@pytest.fixture
def local(
    session_scoring: tuple[Settings, LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, DropStorage]:
    """The session model on a fresh local drop, no Evidently UI; 300-row chunks (4 for 1,050)."""
    monkeypatch.setattr(reading, "CHUNK_ROWS", 300)
    return session_drop(session_scoring, tmp_path)


def test_a_bad_row_in_a_later_chunk_errors_the_file_with_nothing_written(
    local: tuple[Settings, DropStorage], data_dir: Path
) -> None:
    settings, storage = local
    lines = (data_dir / FILES[0]).read_text().splitlines()
    lines[1000] = lines[1000].replace(",", ",x", 1)  # file line 1001, in the fourth chunk
    outcome = drop_and_process(settings, storage, "late.csv", ("\n".join(lines) + "\n").encode())

    assert outcome.status == "errored"
    assert "(lines 1001)" in outcome.message
    assert storage.list_keys("data/errored/") == [f"data/errored/{outcome.run}/late.csv"]
    assert storage.list_keys("data/processed/") == storage.list_keys("data/processing/") == []


EXTRA = ["customer_id", "region"]


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
    local: tuple[Settings, DropStorage], data_dir: Path, rename: dict[str, str], problems: list[str]
) -> None:
    settings, storage = local
    frame = _with_extras(pd.read_csv(data_dir / SOURCE)).rename(columns=rename)

    outcome = drop_and_process(settings, storage, "bad.csv", frame.to_csv(index=False).encode())

    assert outcome.status == "errored"
    lines = outcome.message.splitlines()
    assert lines[0] == f"bad.csv is invalid ({len(problems)} problem(s)):"
    assert lines[1:] == [f"  - {p}" for p in problems]
    assert storage.list_keys("data/errored/") == [f"data/errored/{outcome.run}/bad.csv"]
