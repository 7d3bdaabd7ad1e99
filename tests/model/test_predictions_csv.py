"""The predictions file reads back to exactly the values that were scored."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.data.reading import load_customer_file
from churnops.data.schema import RAW_COLUMNS
from churnops.pipeline.scoring import csv_bytes


def _read_back(data: bytes, like: pd.DataFrame) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data)).astype(like.dtypes.to_dict())


def test_a_scored_real_file_reads_back_exactly(data_dir: Path) -> None:
    frame = load_customer_file(data_dir / "customer_churn_1.csv", require_target=True)
    proba = np.random.default_rng(0).random(len(frame)).astype("float32")
    scored = pd.DataFrame(
        {"churn_prediction": (proba > 0.5).astype("int8"), "churn_probability": proba}
    )
    raw = frame.rename(columns={clean: raw for raw, clean in RAW_COLUMNS.items()})
    data = csv_bytes(raw, scored)
    assert data.splitlines()[0].decode() == ",".join([*RAW_COLUMNS, *scored.columns])
    pd.testing.assert_frame_equal(_read_back(data, raw.join(scored)), raw.join(scored))


def test_floats_read_back_exactly() -> None:
    frame = pd.DataFrame(
        {
            "f32": np.array([0.0, 1.0, 3.2e-05, 1e-7, 0.99999994, 1e-4], dtype="float32"),
            "f64": [0.0, 185.85, 123456789.0, 1e22, 5e-324, 0.1],
            "i64": [0, -1, 2**40, 3, 4, 5],
            "u8": np.arange(6, dtype="uint8"),
        }
    )
    pd.testing.assert_frame_equal(_read_back(csv_bytes(frame), frame), frame)


def test_chunks_without_a_header_continue_the_file() -> None:
    frame = pd.DataFrame({"p": np.linspace(0, 1, 10, dtype="float32"), "n": np.arange(10)})
    data = csv_bytes(frame.iloc[:4]) + csv_bytes(frame.iloc[4:], header=False)
    assert data == csv_bytes(frame)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([pd.DataFrame({"a": [True]})], "only int, float and text columns"),
        ([pd.DataFrame({"a": ["x", 7]})], "not text"),
        ([pd.DataFrame({"a": [1.0, None]})], "missing values"),
        ([pd.DataFrame({"a": ["x"]}), pd.DataFrame({"a": [1]})], "a column name repeats"),
    ],
)
def test_other_frames_are_refused(frames: list[pd.DataFrame], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        csv_bytes(*frames)


def test_text_columns_are_written_as_they_are() -> None:
    """Leading zeros, 'NA' and spaces stay; nothing is quoted that needs no quotes."""
    text = pd.DataFrame({"Customer ID": ["007", "NA", "a b"], "region": ["north", "", None]})
    numbers = pd.DataFrame({"n": [1, 2, 3]})
    data = csv_bytes(text, numbers)
    assert data == b"Customer ID,region,n\n007,north,1\nNA,,2\na b,,3\n"


def test_text_needing_quotes_reads_back_the_same() -> None:
    text = pd.DataFrame({'id, "new"': ["a,b", 'say "hi"', "two\nlines"]})
    numbers = pd.DataFrame({"p": np.array([0.5, 0.25, 1.0], dtype="float32")})
    back = pd.read_csv(io.BytesIO(csv_bytes(text, numbers)), dtype={'id, "new"': str})
    pd.testing.assert_frame_equal(back, text.join(numbers), check_dtype=False)
