"""Identifiers and other non-feature columns pass through, untouched, and are never features;
the predictions file reads back to exactly the values that were scored."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.data import reading
from churnops.data.identifiers import IdentifierCheck
from churnops.data.reading import CustomerReader, Part, load_customer_file
from churnops.data.schema import (
    INPUT_COLUMNS,
    RAW_COLUMNS,
    TARGET,
    DataValidationError,
    find_identifier,
    split_columns,
)
from churnops.drop.storage import LocalDropStorage, log_key, run_key
from churnops.model.churn_model import LoadedModel
from churnops.pipeline import scoring
from churnops.pipeline.scoring import csv_bytes, score_file
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import DEFAULT_ID_COLUMNS, get_settings

HEADER = list(RAW_COLUMNS)
GOOD_ROW = "8,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"


def csv(header: list[str], *rows: str) -> bytes:
    return "\n".join([",".join(header), *rows]).encode() + b"\n"


def read(data: bytes, chunk_rows: int = 1000) -> tuple[list[Part], list[str]]:
    """Every part of the file and the reader's notes."""
    reader = CustomerReader(
        io.BytesIO(data), name="f.csv", chunk_rows=chunk_rows, id_columns=DEFAULT_ID_COLUMNS
    )
    return list(reader.parts()), reader.notes


def problems_of(data: bytes) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        read(data)
    return caught.value.problems


@pytest.fixture(scope="module")
def uci(data_dir: Path) -> pd.DataFrame:
    """The shared file with its raw UCI header, every value as read."""
    return pd.read_csv(data_dir / "customer_churn_1.csv")


def valid_rows(count: int) -> pd.DataFrame:
    """A valid customer frame, raw UCI header, with no data file."""
    return pd.read_csv(io.BytesIO(csv(HEADER, *[GOOD_ROW] * count)))


def with_extras(uci: pd.DataFrame) -> pd.DataFrame:
    """The file with an identifier first and a region last, values a number parser would change."""
    frame = uci.copy()
    frame.insert(0, "Customer ID", [f"{i:06d}" for i in range(len(frame))])
    frame["Region"] = np.where(np.arange(len(frame)) % 3, "north", "NA")
    return frame


# --- which columns pass through ---------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "identifier"),
    [
        (["region", "Customer ID", "msisdn"], "Customer ID"),
        (["CustomerID", "id"], "CustomerID"),
        (["id", "customer-id"], "customer-id"),  # the names are tried in order
        (["Phone Number", "ID"], "Phone Number"),
        (["region", "notes"], None),
    ],
)
def test_the_identifier_is_the_first_usual_name_found(header: list[str], identifier: str) -> None:
    assert find_identifier(header, DEFAULT_ID_COLUMNS) == identifier


def test_only_non_feature_columns_pass_through() -> None:
    columns = split_columns(["Customer ID", *HEADER, "Region"], DEFAULT_ID_COLUMNS)
    assert columns.passthrough == ("Customer ID", "Region")
    assert sorted(columns.known.values()) == sorted([*INPUT_COLUMNS, TARGET])
    assert columns.identifier == "Customer ID"
    assert columns.problems == () and columns.missing == ()


def test_a_feature_named_in_the_id_list_stays_a_feature() -> None:
    columns = split_columns(HEADER, ["Status"])
    assert columns.identifier is None and "Status" in columns.known


def test_a_column_given_twice_is_an_error() -> None:
    assert problems_of(csv([*HEADER, "id", "id"], GOOD_ROW + ",1,2")) == [
        "column 'id' appears 2 times"
    ]
    assert problems_of(csv([*HEADER, "age"], GOOD_ROW + ",30")) == [
        "columns 'Age', 'age' are the same column 'age'"
    ]


# --- reading: text as written, apart from the features --------------------------------------


@pytest.mark.parametrize("sep", [",", ";"])
def test_passthrough_columns_are_read_as_written_and_kept_apart(
    uci: pd.DataFrame, sep: str
) -> None:
    frame = with_extras(uci)
    parts, notes = read(frame.to_csv(index=False, sep=sep).encode(), chunk_rows=400)
    assert [len(p.frame) for p in parts] == [400, 400, 250]
    passthrough = pd.concat(p.passthrough for p in parts)
    assert list(passthrough.columns) == ["Customer ID", "Region"]
    assert passthrough["Customer ID"].tolist() == frame["Customer ID"].tolist()  # '000007'
    assert passthrough["Region"].tolist() == frame["Region"].tolist()  # 'NA' is not missing
    features = pd.concat(p.frame for p in parts)
    assert list(features.columns) == [*INPUT_COLUMNS, TARGET]
    pd.testing.assert_frame_equal(features, load_customer_file(uci.to_csv(index=False).encode()))
    assert notes[-1] == "passed through unchanged: 'Customer ID' (identifier), 'Region'"


def test_parquet_passthrough_columns_are_text(uci: pd.DataFrame) -> None:
    frame = uci.copy()
    frame["account"] = pd.array([7, None, *range(len(frame) - 2)], dtype="Int64")
    parts, notes = read(frame.to_parquet(index=False, row_group_size=400), chunk_rows=400)
    passthrough = pd.concat(p.passthrough for p in parts)
    assert passthrough["account"].tolist()[:3] == ["7", None, "0"]  # not 7.0, nan
    assert "identifier 'account' is empty on 1 row(s) (rows 2)" in notes


def test_quoted_text_is_read_whole_wherever_the_sniffed_head_ends() -> None:
    """Commas, quotes and line breaks inside values; the 64 KiB looked at first end in a quote."""
    notes = ["two\nlines" + "z" * 70_000, "a,b", 'say "hi"', "plain"] * 3
    frame = valid_rows(len(notes))
    frame["note"] = notes
    data = frame.to_csv(index=False).encode()
    assert data[:65_536].count(b'"') % 2 == 1  # the head ends inside a quoted value
    parts, _ = read(data, chunk_rows=5)
    assert pd.concat(p.passthrough for p in parts)["note"].tolist() == notes


def test_a_header_longer_than_the_sniffed_head_is_named() -> None:
    header = [*HEADER, *(f"extra_{i:05d}" for i in range(7_000))]
    assert problems_of(csv(header, GOOD_ROW + ",x" * 7_000)) == [
        "the header line is longer than 64 KiB"
    ]


def test_a_file_without_extra_columns_has_no_note(uci: pd.DataFrame) -> None:
    parts, notes = read(uci.to_csv(index=False).encode())
    assert notes == []
    assert all(p.passthrough.columns.empty for p in parts)


# --- identifiers: empty and repeated values are notes, with their rows ---------------------


@pytest.mark.parametrize("chunk", [97, 333, 5_000, 20_000])
def test_repeats_are_what_pandas_finds_whatever_the_chunking(chunk: int) -> None:
    rng = np.random.default_rng(5)
    values = pd.Series(rng.integers(0, 8_000, 20_000).astype(str), dtype=object)
    values[rng.integers(0, 20_000, 50)] = None
    check = IdentifierCheck("id")
    for start in range(0, len(values), chunk):
        check.add(values.iloc[start : start + chunk])
    filled = values.dropna()
    assert check.empty == values.isna().sum() > 0
    assert check.repeated == int(filled.duplicated().sum()) > 0
    first = filled[filled.duplicated()].head(5)
    shown = ", ".join(f"'{value}' at line {row + 2}" for row, value in first.items())
    assert check.notes()[-1].endswith(f"row(s): {shown}, ...")


def test_only_the_first_examples_are_kept() -> None:
    check = IdentifierCheck("id")
    check.add(pd.Series(["x"] * 100 + [""] * 100))
    empty, repeated = check.notes()
    assert empty == "identifier 'id' is empty on 100 row(s) (lines 102, 103, 104, 105, 106, ...)"
    assert repeated.startswith("identifier 'id' repeats an earlier row's value on 99 row(s): ")
    assert repeated.endswith(
        "'x' at line 3, 'x' at line 4, 'x' at line 5, 'x' at line 6, 'x' at line 7, ..."
    )


# --- scoring: passed through into the predictions, never to the model or the sample ---------


class _RecordingModel:
    """The model's scoring interface; remembers the frames it was given."""

    features = INPUT_COLUMNS

    def __init__(self) -> None:
        self.seen: list[pd.DataFrame] = []

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.seen.append(frame)
        proba = (frame["complains"] * 0.5 + 0.25).astype("float32")
        return pd.DataFrame({PREDICTION: (proba > 0.5).astype("int8"), PROBABILITY: proba})


def _score(
    tmp_path: Path, frame: pd.DataFrame, name: str = "f.csv", **settings: object
) -> tuple[LocalDropStorage, str, _RecordingModel, Callable[[], scoring.ScoredFile]]:
    """The file stored in processing/, and the call that scores it with a recording model."""
    drop = get_settings(churnops_home=tmp_path, **settings).drop
    storage = LocalDropStorage(drop.drop_dir)
    key = run_key("processing", "run1", name)
    storage.create(key, frame.to_csv(index=False).encode())
    model = _RecordingModel()
    loaded = LoadedModel("M", "1", model)  # type: ignore[arg-type]
    return storage, key, model, lambda: score_file(drop, storage, key, "run1", name, loaded)


def test_scoring_writes_passthrough_columns_first_and_feeds_the_model_features_only(
    uci: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reading, "CHUNK_ROWS", 300)
    monkeypatch.setattr(scoring, "DRIFT_SAMPLE_ROWS", 500)
    frame = with_extras(uci)
    frame.loc[7, "Customer ID"] = frame.loc[2, "Customer ID"]
    storage, _, model, score = _score(tmp_path, frame)
    scored = score()

    data = storage.read(scored.predictions_key)
    written = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    expected = [*frame.columns[:1], "Region", *HEADER, PREDICTION, PROBABILITY]
    assert list(written.columns) == expected
    assert written["Customer ID"].tolist() == frame["Customer ID"].tolist()
    assert written["Region"].tolist() == frame["Region"].tolist()
    assert len(model.seen) == 4
    assert all(list(seen.columns) == [*INPUT_COLUMNS, TARGET] for seen in model.seen)
    assert list(scored.sample.columns) == [*INPUT_COLUMNS, TARGET, PREDICTION, PROBABILITY]
    assert "identifier 'Customer ID' repeats an earlier row's value on 1 row(s): " in "; ".join(
        scored.notes
    )


@pytest.mark.parametrize("neutralise", [True, False])
def test_cells_a_spreadsheet_would_evaluate_are_neutralised_unless_turned_off(
    tmp_path: Path, neutralise: bool
) -> None:
    frame = with_extras(valid_rows(6))
    cells = ["=1+2", "+1 555 0100", "-3", "@SUM(A1)", "-1.5e3", "\tx"]
    frame["Region"] = cells
    storage, _, _, score = _score(tmp_path, frame, neutralise_formulas=neutralise)
    scored = score()

    written = pd.read_csv(io.BytesIO(storage.read(scored.predictions_key)), dtype=str)
    safe = ["'=1+2", "'+1 555 0100", "-3", "'@SUM(A1)", "-1.5e3", "'\tx"]  # numbers stay
    assert written["Region"].tolist() == (safe if neutralise else cells)
    assert written["Call  Failure"].tolist() == [str(v) for v in frame["Call  Failure"]]


def test_a_name_too_long_for_its_outputs_is_bad_input_before_anything_is_written(
    tmp_path: Path,
) -> None:
    name = "é" * 110 + ".csv"  # 224 bytes: its predictions file would be named with 241 (237 fit)
    storage, key, _, score = _score(tmp_path, with_extras(valid_rows(3)), name)
    with pytest.raises(DataValidationError, match="the file name is too long"):
        score()
    assert storage.list_keys("data/processing/run1/") == [key]
    long_log = log_key("run1", "m" * 255)
    assert len(long_log.rsplit("/", 1)[-1].encode()) <= 255 and long_log.endswith(".log")


# --- the setting ------------------------------------------------------------------------------


def test_id_columns_setting_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ID_COLUMNS", "msisdn, Customer Number")
    assert get_settings().drop.id_columns == ("msisdn", "Customer Number")
    monkeypatch.setenv("ID_COLUMNS", "")
    assert get_settings().drop.id_columns == ()
    monkeypatch.delenv("ID_COLUMNS")
    assert get_settings().drop.id_columns == DEFAULT_ID_COLUMNS


# --- the predictions file reads back exactly -----------------------------------------------
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
