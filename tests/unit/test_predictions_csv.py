"""The predictions file is written exactly as ``DataFrame.to_csv`` would write it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.reading import load_customer_file
from churnops.schema import RAW_COLUMNS
from churnops.scoring import csv_bytes


def test_scored_real_file_matches_to_csv(data_dir: Path) -> None:
    frame = load_customer_file(data_dir / "customer_churn_1.csv", require_target=True)
    proba = np.random.default_rng(0).random(len(frame)).astype("float32")
    scored = frame.assign(churn_prediction=(proba > 0.5).astype("int8"), churn_probability=proba)
    scored = scored.rename(columns={clean: raw for raw, clean in RAW_COLUMNS.items()})
    assert csv_bytes(scored) == scored.to_csv(index=False).encode()


def test_float_formats_match_to_csv() -> None:
    frame = pd.DataFrame(
        {
            "f32": np.array([0.0, 1.0, 3.2e-05, 1e-7, 0.99999994, 1e-4], dtype="float32"),
            "f64": [0.0, 185.85, 123456789.0, 1e22, 5e-324, 0.1],
            "i64": [0, -1, 2**40, 3, 4, 5],
            "u8": np.arange(6, dtype="uint8"),
        }
    )
    assert csv_bytes(frame) == frame.to_csv(index=False).encode()


def test_frames_longer_than_a_chunk_match_to_csv() -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"p": rng.random(45_001).astype("float32"), "n": np.arange(45_001)})
    assert csv_bytes(frame) == frame.to_csv(index=False).encode()


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"a": ["x"]}), "only int and float columns"),
        (pd.DataFrame({"a": [True]}), "only int and float columns"),
        (pd.DataFrame({"a": [1.0, None]}), "missing values"),
    ],
)
def test_other_frames_are_refused(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        csv_bytes(frame)
