"""Scoring helpers: the streamed sample and the exact quality scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from churnops.data.schema import RAW_COLUMNS
from churnops.drop.storage import LocalDropStorage, folder_key, run_key
from churnops.model.churn_model import LoadedModel
from churnops.pipeline.scoring import DriftSample, predictions_name, quality_scores, score_file
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import get_settings


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
    class Model:
        name, version = "M", "3"

    assert predictions_name(name, Model()) == f"{stem}_predictions_M_v3.csv"  # type: ignore[arg-type]


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
