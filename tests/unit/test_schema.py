"""Schema: cleaning the UCI header, types, ranges, and one message for every problem."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnops.schema import (
    INPUT_COLUMNS,
    RAW_COLUMNS,
    TARGET,
    DataValidationError,
    clean_columns,
    clean_name,
    load_customer_file,
    read_customer_csv,
    validate,
)

HEADER = ",".join(RAW_COLUMNS)
GOOD_ROW = "8,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"


def csv(*rows: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *rows]).encode() + b"\n"


def problems_of(data: bytes, **kwargs: object) -> list[str]:
    with pytest.raises(DataValidationError) as caught:
        load_customer_file(data, name="bad.csv", **kwargs)
    return caught.value.problems


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Call  Failure", "call_failure"),
        ("Subscription  Length", "subscription_length"),
        ("Frequency of SMS", "frequency_of_sms"),
        (" Churn ", "churn"),
        ("Age-Group", "age_group"),
    ],
)
def test_clean_name(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_clean_columns_maps_the_uci_header() -> None:
    frame = clean_columns(pd.DataFrame(columns=list(RAW_COLUMNS)))
    assert list(frame.columns) == [*INPUT_COLUMNS, TARGET]


def test_real_file_validates_with_types(data_dir: Path) -> None:
    frame = load_customer_file(data_dir / "customer_churn_1.csv", require_target=True)
    assert len(frame) == 1050
    assert frame["customer_value"].dtype == "float64"
    assert frame["call_failure"].dtype == "int64"


def test_unlabeled_file_is_valid_unless_the_label_is_required() -> None:
    header = ",".join(list(RAW_COLUMNS)[:-1])
    data = csv(GOOD_ROW.rsplit(",", 1)[0], header=header)
    assert TARGET not in load_customer_file(data).columns
    assert problems_of(data, require_target=True) == ["missing column 'churn'"]


def test_every_problem_is_named_in_one_error() -> None:
    header = HEADER.replace("Customer Value", "Extra")
    data = csv(
        "8,3,38,0,4370,71,5,17,3,1,1,30,1,0",  # complains out of range
        "x,0,39,0,318,5,7,4,2,1,2,25,1,0",  # not a number
        ",0,39,0,318,5,7,4,9,1,2,25,1,0",  # missing value, age_group out of range
        header=header,
    )
    problems = problems_of(data)
    assert "unexpected column 'extra'" in problems
    assert "missing column 'customer_value'" in problems
    assert any("'call_failure' must be numeric" in p and "x" in p for p in problems)
    assert any("'call_failure' has 1 missing value" in p for p in problems)
    assert any("'complains' out of range" in p and "3" in p for p in problems)
    assert any("'age_group' out of range" in p and "9" in p for p in problems)
    assert len(problems) == len(set(problems)) == 6


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "file is empty"),
        (b"  \n\n", "file is empty"),
        (csv(), "header but no data rows"),
        (b"\x89PNG\x00\x00\x01", "binary"),
        (csv('1,2,"3'), "not a parsable CSV"),
    ],
)
def test_unreadable_files(data: bytes, expected: str) -> None:
    with pytest.raises(DataValidationError, match=expected):
        read_customer_csv(data, name="bad.csv")


def test_size_limit() -> None:
    with pytest.raises(DataValidationError, match="over the limit of 10 bytes"):
        read_customer_csv(csv(GOOD_ROW), max_bytes=10)


def test_message_names_the_file() -> None:
    with pytest.raises(DataValidationError, match=r"^bad.csv is invalid \(1 problem"):
        validate(
            clean_columns(pd.read_csv(__import__("io").BytesIO(csv(GOOD_ROW)))).drop(columns="age"),
            source="bad.csv",
        )
