"""Scoring helpers: the streamed sample and the exact quality scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from churnops.pipeline.scoring import DriftSample, predictions_name, quality_scores


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
            "accuracy": accuracy_score(actual, predicted),
            "precision": precision_score(actual, predicted),
            "recall": recall_score(actual, predicted),
            "f1": f1_score(actual, predicted),
            "roc_auc": roc_auc_score(actual, probability),
            "log_loss": log_loss(actual, probability),
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
