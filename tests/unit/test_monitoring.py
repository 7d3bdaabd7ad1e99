"""Scoring helpers (the streamed sample, the exact quality scores, the predictions file's
name), and drift and quality read out of a real (small) Evidently report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import numpy as np
import pandas as pd
import pytest
import requests
from evidently import Dataset
from evidently.ui.workspace import Workspace
from sklearn import metrics
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from churnops import retry
from churnops.data.schema import RAW_COLUMNS
from churnops.drop.storage import LocalDropStorage, folder_key, run_key
from churnops.model.churn_model import LoadedModel
from churnops.monitoring.drift import (
    PROJECT,
    _BoundedRemoteWorkspace,
    build_report,
    data_definition,
    extract_result,
    local_report_url,
    run_monitoring,
)
from churnops.pipeline.scoring import DriftSample, predictions_name, quality_scores, score_file
from churnops.results import PREDICTION, PROBABILITY, QUALITY_METRICS, MonitoringResult
from churnops.settings import Settings, get_settings

FEATURES = ["stable", "shifted"]
ROWS = 400


def frame(seed: int, shift: float, positive_rate: float = 0.3) -> pd.DataFrame:
    """Two features, a label, and a score whose 0/1 labels use a 0.7 cut (not 0.5)."""
    rng = np.random.default_rng(seed)
    churn = (rng.random(ROWS) < positive_rate).astype(int)
    probability = np.clip(churn * 0.3 + rng.random(ROWS) * 0.7, 0, 1)
    return pd.DataFrame(
        {
            "stable": rng.normal(0, 1, ROWS),
            "shifted": rng.normal(shift, 1, ROWS),
            "churn": churn,
            PREDICTION: (probability >= 0.7).astype(int),
            PROBABILITY: probability,
        }
    )


def extract(reference: pd.DataFrame, current: pd.DataFrame) -> MonitoringResult:
    """The result read out of a real Evidently report of ``current`` against ``reference``."""
    labeled = "churn" in current.columns
    definition = data_definition(FEATURES, labeled)
    snapshot = build_report(FEATURES, labeled).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return extract_result(snapshot.dict(), FEATURES, rows=len(current), predicted_churn_rate=0.0)


def stored(settings: Settings, reference: pd.DataFrame, current: pd.DataFrame) -> MonitoringResult:
    """``run_monitoring`` of file ``f.csv`` by model ``m`` v1, stored in ``settings``' workspace."""
    return run_monitoring(
        reference,
        current,
        feature_columns=FEATURES,
        monitoring=settings.monitoring,
        platform=settings.platform,
        file_name="f.csv",
        model_version="1",
        model_name="m",
    )


def test_per_column_drift_comes_from_evidently_verdicts() -> None:
    result = extract(frame(0, 0.0), frame(1, 3.0))
    by_column = {c.column: c for c in result.columns}
    assert list(by_column) == [*FEATURES, PREDICTION]
    assert by_column["shifted"].drifted and not by_column["stable"].drifted
    # Under 1,000 rows Evidently picks a p-value test: drift means a small score.
    assert by_column["shifted"].method == "K-S p_value"
    assert by_column["shifted"].score < by_column["shifted"].threshold == 0.05
    assert by_column[PREDICTION].method == "Z-test p_value"
    assert (result.drifted_count, result.drifted_share, result.rows) == (1, 0.5, ROWS)


def test_quality_uses_the_model_labels_and_the_probability() -> None:
    current = frame(1, 0.0)
    result = extract(frame(0, 0.0), current)
    assert set(result.quality) == set(QUALITY_METRICS)
    y, labels, probability = current["churn"], current[PREDICTION], current[PROBABILITY]
    # Labels at 0.7: Evidently must not re-derive them from the score at 0.5.
    assert metrics.accuracy_score(y, labels) != metrics.accuracy_score(y, probability >= 0.5)
    assert result.quality["accuracy"] == pytest.approx(metrics.accuracy_score(y, labels))
    assert result.quality["f1"] == pytest.approx(metrics.f1_score(y, labels))
    assert result.quality["roc_auc"] == pytest.approx(metrics.roc_auc_score(y, probability))


def test_prediction_drift_is_reported_but_not_counted_in_the_share() -> None:
    current = frame(1, 0.0)
    current[PREDICTION] = 1
    result = extract(frame(0, 0.0), current)
    prediction = result.columns[-1]
    assert (prediction.column, prediction.drifted) == (PREDICTION, True)
    assert (result.drifted_count, result.drifted_share) == (0, 0.0)


def test_unlabeled_file_gets_drift_and_no_quality_one_class_no_roc_auc() -> None:
    result = extract(frame(0, 0.0), frame(1, 3.0).drop(columns="churn"))
    assert result.quality == {}
    assert result.drifted_count == 1
    # A single-class file leaves out the undefined ROC AUC.
    result = extract(frame(0, 0.0), frame(1, 0.0, positive_rate=0.0))
    assert "roc_auc" not in result.quality
    assert set(result.quality) == {"f1", "precision", "recall", "accuracy"}


@pytest.mark.parametrize(
    ("frame_name", "column", "message"),
    [
        ("current", PROBABILITY, "current data lacks column\\(s\\): churn_pr"),
        ("reference", "churn", "reference data lacks column\\(s\\): churn"),
        ("current", "shifted", "current data lacks column\\(s\\): shifted"),
        ("current", None, "current data has no rows"),
    ],
)
def test_missing_columns_and_an_empty_file_are_named(
    tmp_path: Path, frame_name: str, column: str | None, message: str
) -> None:
    frames = {"reference": frame(0, 0.0), "current": frame(1, 0.0)}
    changed = frames[frame_name]
    frames[frame_name] = changed.drop(columns=column) if column else changed.iloc[:0]
    settings = get_settings(churnops_home=tmp_path)
    with pytest.raises(ValueError, match=message):
        stored(settings, frames["reference"], frames["current"])


def test_local_report_url_follows_the_ui_route() -> None:
    settings = get_settings(platform_host="127.0.0.1", evidently_port=8123)
    project = UUID("00000000-0000-0000-0000-000000000001")
    snapshot = UUID("00000000-0000-0000-0000-000000000002")
    assert local_report_url(settings.platform, project, snapshot) == (
        f"http://127.0.0.1:8123/projects/{project}/reports/{snapshot}"
    )


def test_no_local_report_url_while_the_ui_port_is_yet_to_be_picked() -> None:
    """EVIDENTLY_PORT=0 with no platform running: no UI has a port (the link said :0)."""
    settings = get_settings(evidently_port=0)
    project = UUID("00000000-0000-0000-0000-000000000001")
    assert local_report_url(settings.platform, project, project) is None


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process on a New York clock, UTC-5 in winter (``time.tzset`` reads TZ)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_a_report_is_stamped_in_utc_whatever_the_local_clock(tmp_path: Path) -> None:
    """The Evidently UI shows a report's time as stored, with no zone: it is UTC, as the
    file's log, its run id, the metrics database and ``churnops report`` say."""
    settings = get_settings(churnops_home=tmp_path, evidently_ui_url=None)
    result = stored(settings, frame(0, 0.0), frame(1, 0.0))
    workspace = Workspace(str(settings.monitoring.evidently_workspace_dir))
    (project,) = workspace.search_project(PROJECT)
    snapshot = workspace.get_run(project.id, result.snapshot_id)
    assert snapshot is not None
    utc = datetime.now(UTC).replace(tzinfo=None)
    assert abs(snapshot.timestamp - utc) < timedelta(minutes=1), (snapshot.timestamp, utc)


# --- scoring ----------------------------------------------------------------------------------
def _sampled(frame: pd.DataFrame, size: int, chunk: int) -> pd.DataFrame:
    sample = DriftSample(size, seed=3)
    for start in range(0, len(frame), chunk):
        sample.add(frame.iloc[start : start + chunk])
    return sample.frame()


def test_the_sample_does_not_depend_on_the_chunking() -> None:
    frame = pd.DataFrame({"row": np.arange(10_000)})
    first = _sampled(frame, 500, 10_000)
    assert len(first) == 500 and first["row"].is_unique
    for chunk in (7, 499, 501, 3_333):
        pd.testing.assert_frame_equal(_sampled(frame, 500, chunk), first)


def test_the_sample_is_uniform() -> None:
    """Every tenth of the rows gets about a tenth of the sample."""
    frame = pd.DataFrame({"row": np.arange(100_000)})
    sample = _sampled(frame, 20_000, 7_000)
    counts = np.bincount(sample["row"] // 10_000, minlength=10)
    assert counts.min() > 1_800 and counts.max() < 2_200


def test_a_small_file_is_its_own_sample() -> None:
    frame = pd.DataFrame({"row": np.arange(300)})
    pd.testing.assert_frame_equal(_sampled(frame, 500, 100), frame)


def test_quality_scores_are_sklearns() -> None:
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 2, 5_000)
    probability = np.clip(actual * 0.6 + rng.random(5_000) * 0.5, 0, 1)
    predicted = (probability >= 0.5).astype(int)
    scores = quality_scores(actual, predicted, probability)
    assert scores == pytest.approx(
        {
            "accuracy": metrics.accuracy_score(actual, predicted),
            "precision": metrics.precision_score(actual, predicted),
            "recall": metrics.recall_score(actual, predicted),
            "f1": metrics.f1_score(actual, predicted),
            "roc_auc": metrics.roc_auc_score(actual, probability),
            "log_loss": metrics.log_loss(actual, probability),
        }
    )


def test_undefined_scores_are_left_out() -> None:
    scores = quality_scores(np.zeros(4), np.zeros(4), np.full(4, 0.1))
    assert set(scores) == {"accuracy", "log_loss"}


@pytest.mark.parametrize(
    ("name", "stem"),
    [("a.csv", "a"), ("a.csv.gz", "a"), ("a.parquet", "a"), ("march.2025.csv", "march.2025")],
)
def test_predictions_name_drops_the_format_suffix(name: str, stem: str) -> None:
    model = LoadedModel("M", "3", None)  # type: ignore[arg-type]
    assert predictions_name(name, model) == f"{stem}_predictions_M_v3.csv"


class _ConstantModel:
    """The model's scoring interface: every row a churner at 0.75."""

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        proba = np.full(len(frame), 0.75, dtype="float32")
        return pd.DataFrame({PREDICTION: np.ones(len(frame), "int8"), PROBABILITY: proba})


def test_predictions_of_another_version_by_an_earlier_attempt_are_set_aside(tmp_path: Path) -> None:
    """Attempt 1 scored with version 1 and failed in monitoring; the alias moved; attempt 2
    scored with version 2: both predictions files reached processed/<run>/, the metrics row
    saying version 2, and late labels made from the version 1 file were joined to it."""
    drop = get_settings(churnops_home=tmp_path).drop
    storage = LocalDropStorage(drop.drop_dir)
    row = "8,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"
    key = run_key("processing", "run1", "f.csv")
    storage.create(key, "\n".join([",".join(RAW_COLUMNS), row, row]).encode() + b"\n")
    earlier = run_key("processing", "run1", "f_predictions_M_v1.csv")
    storage.create(earlier, b"stale")

    def score(version: str) -> list[str]:
        loaded = LoadedModel("M", version, _ConstantModel())  # type: ignore[arg-type]
        return list(score_file(drop, storage, key, "run1", "f.csv", loaded).notes)

    assert score("1") == [] and storage.read(earlier) == b"stale"  # the same version: kept
    assert score("2") == [
        "f_predictions_M_v1.csv, by an earlier attempt with another version: in errored/run1/"
    ]
    assert storage.list_keys(folder_key("processing", "run1")) == [
        key,
        run_key("processing", "run1", "f_predictions_M_v2.csv"),
    ]
    assert storage.read(run_key("errored", "run1", "f_predictions_M_v1.csv")) == b"stale"


def _refused() -> requests.ConnectionError:
    """What requests raises when nothing listens on the port: the request was never sent."""
    return requests.ConnectionError(
        MaxRetryError(None, "/api/version", NewConnectionError(None, "refused"))
    )


@pytest.mark.parametrize(("sent", "calls"), [(False, 2), (True, 1)])
def test_an_evidently_ui_restarting_is_waited_for_when_nothing_was_sent(
    monkeypatch: pytest.MonkeyPatch, sent: bool, calls: int
) -> None:
    """The platform restarts an Evidently UI that died: a file's attempt failed at once on its
    refused connection (found by killing the UI under churnops up, then dropping a file),
    where the metrics database and MLflow are waited for. A refused connection sent nothing,
    so it is tried again; one broken after sending is not (the report could be stored twice)."""
    failure = requests.ConnectionError(ProtocolError("aborted")) if sent else _refused()
    answers: list[object] = [failure]
    ok = requests.Response()
    ok.status_code, ok._content = 200, b'{"version": "0.7"}'

    def send(self: requests.Session, request: object, **kwargs: object) -> requests.Response:
        answers.append("sent")
        if isinstance(answers[0], Exception):
            raise answers.pop(0)
        return ok

    monkeypatch.setattr(requests.Session, "send", send)
    monkeypatch.setattr(retry, "CALL", retry.Backoff(first=0.01, longest=0.01))
    ui = _BoundedRemoteWorkspace.__new__(_BoundedRemoteWorkspace)
    ui.base_url, ui.secret = "http://127.0.0.1:1", None
    if sent:
        with pytest.raises(requests.ConnectionError):
            ui._request("/api/version", "GET")
    else:
        assert ui._request("/api/version", "GET") is ok
    assert answers.count("sent") == calls
