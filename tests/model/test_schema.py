"""The data: the UCI archive fetched, checked and split into the platform's files; the
schema: cleaning the UCI header, types, ranges, and one message for every problem."""

from __future__ import annotations

import codecs
import gzip
import http.server
import io
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnops.data import dataset
from churnops.data.reading import (
    MAX_LINE_BYTES,
    CustomerReader,
    _Utf8Checked,
    load_customer_file,
    read_customer_file,
)
from churnops.data.schema import (
    INPUT_COLUMNS,
    MAX_PROBLEM_CHARS,
    RAW_COLUMNS,
    TARGET,
    DataValidationError,
    clean_columns,
    clean_name,
    shorten,
)
from tests.processes import LOOPBACK, http_server

HEADER = ",".join(RAW_COLUMNS)
GOOD_ROW = "8,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"


def csv(*rows: str, header: str = HEADER) -> bytes:
    return "\n".join([header, *rows]).encode() + b"\n"


BIG = csv(*[GOOD_ROW] * 20_000)  # past the 64 KiB looked at first


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
    header = HEADER.replace("Customer Value", "Extra")  # 'Extra' passes through
    data = csv(
        "8,3,38,0,4370,71,5,17,3,1,1,30,1,0",  # complains out of range
        "x,0,39,0,318,5,7,4,2,1,2,25,1,0",  # not a number
        ",0,39,0,318,5,7,4,9,1,2,25,1,0",  # missing value, age_group out of range
        header=header,
    )
    problems = problems_of(data)
    assert "missing column 'customer_value'" in problems
    assert any("'call_failure' must be numeric" in p and "x" in p for p in problems)
    assert any("'call_failure' has 1 missing value" in p for p in problems)
    assert any("'complains' out of range" in p and "3" in p for p in problems)
    assert any("'age_group' out of range" in p and "9" in p for p in problems)
    assert len(problems) == len(set(problems)) == 5


# --- wrong file formats: accepted with a note, or one clear message ----------------------


@pytest.fixture(scope="module")
def uci_bytes(data_dir: Path) -> bytes:
    """The real shared file, as dropped: UCI header, comma-separated UTF-8."""
    return (data_dir / "customer_churn_1.csv").read_bytes()


@pytest.fixture(scope="module")
def uci_frame(uci_bytes: bytes) -> pd.DataFrame:
    return load_customer_file(uci_bytes, require_target=True)


def _utf(codec: str, bom: bytes = b"") -> Callable[[bytes], bytes]:
    return lambda data: bom + data.decode().encode(codec)


SEMICOLON = "columns separated by ';' (not ',')"


@pytest.mark.parametrize(
    ("encode", "notes"),
    [
        (lambda data: data, ()),
        (lambda data: codecs.BOM_UTF8 + data, ()),
        (_utf("utf-16-le", codecs.BOM_UTF16_LE), ("decoded as UTF-16 LE (BOM)",)),
        (_utf("utf-16-be", codecs.BOM_UTF16_BE), ("decoded as UTF-16 BE (BOM)",)),
        (_utf("utf-32-le", codecs.BOM_UTF32_LE), ("decoded as UTF-32 LE (BOM)",)),
        (_utf("utf-16-le"), ("decoded as UTF-16 LE (no BOM; guessed from its NUL bytes)",)),
        (lambda data: data.replace(b",", b";"), (SEMICOLON,)),
        (lambda data: data.replace(b",", b"\t"), ("columns separated by tabs (not ',')",)),
        (lambda data: data.replace(b",", b"|"), ("columns separated by '|' (not ',')",)),
        (gzip.compress, ("gzip-compressed",)),
        (lambda data: gzip.compress(data.replace(b",", b";")), ("gzip-compressed", SEMICOLON)),
        # by row groups (_parquet), under the raw and the clean header
        (lambda data: _parquet(pd.read_csv(io.BytesIO(data))), ("read as Parquet",)),
        (lambda data: _parquet(clean_columns(pd.read_csv(io.BytesIO(data)))), ("read as Parquet",)),
    ],
    ids=[
        *("csv", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf32le-bom", "utf16le"),
        *("semicolon", "tab", "pipe", "gzip", "gzip-semicolon", "parquet", "parquet-clean"),
    ],
)
def test_encodings_delimiters_and_formats_are_read_with_a_note(
    uci_bytes: bytes, uci_frame: pd.DataFrame, encode: Callable[[bytes], bytes], notes: tuple
) -> None:
    read = read_customer_file(encode(uci_bytes), name="ok.csv", require_target=True)
    assert read.notes == notes
    pd.testing.assert_frame_equal(read.frame, uci_frame)


LATIN1 = csv(GOOD_ROW).replace(b"Status", "Statu\xe9".encode("latin-1"))
TYPED = "must be numeric ('int64', whole numbers); bad values"
NOT_UTF8 = "not UTF-8 text: byte 0xe9 at offset {} (line 1); save the file as CSV UTF-8"
RANGE = "column 'customer_value' out of range less_than(3.4e38): values"
#: pandera reports values no type takes twice (coercion, then dtype), each in an order of
#: its own: two problems whose values and lines did not match, from line 13 down.
YES_NO = [f"8,{'yes' if i % 2 else 'no'},38,0,4370,71,5,17,3,1,1,30,197.64,0" for i in range(12)]


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        (LATIN1, [NOT_UTF8.format(LATIN1.index(b"\xe9"))]),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["file is binary, not a CSV text file"]),
        # a fraction in an integer column was cut to 0: a label too
        (csv(GOOD_ROW[:-1] + "0.5"), [f"column 'churn' {TYPED} 0.5 (lines 2)"]),
        (csv(GOOD_ROW.replace(",30,", ",25.5,")), [f"column 'age' {TYPED} 25.5 (lines 2)"]),
        # named as -9223372036854775808, what coercion made of it
        (
            csv(GOOD_ROW.replace("4370", "1e308")),
            [f"column 'seconds_of_use' {TYPED} 1e+308 (lines 2)"],
        ),
        # XGBoost fails on inf, and on what float32 makes inf: retried as a dependency
        (csv(GOOD_ROW.replace("197.64", "inf")), [f"{RANGE} inf (lines 2)"]),
        (csv(GOOD_ROW.replace("197.64", "1e39")), [f"{RANGE} 1e+39 (lines 2)"]),
        (
            gzip.compress(csv(GOOD_ROW[:-1] + "5")),  # gzip keeps the CSV rules
            ["column 'churn' out of range in_range(0, 1): values 5 (lines 2)"],
        ),
        (csv(GOOD_ROW, "8,0,38,0,4370", GOOD_ROW), ["line 3 has 5 fields, the header 14"]),
        (
            csv(GOOD_ROW.replace(",30,", ",,"), GOOD_ROW.replace(",30,", ",150,")),
            [
                "column 'age' has 1 missing value(s) (lines 2)",
                "column 'age' out of range in_range(0, 120): values 150 (lines 3)",  # not 150.0
            ],
        ),
        (  # refused as it is met
            gzip.compress(csv(GOOD_ROW) + b"9" * (MAX_LINE_BYTES + 10)),
            [f"line 3 is longer than {MAX_LINE_BYTES:,} bytes, the limit"],
        ),
        (  # refused, not cut
            csv(*[GOOD_ROW] * 3, header=HEADER + ",id").replace(b"0\n", b"0,a\x00b\n"),
            ["line 2 holds a NUL byte (offset 231); remove it"],
        ),
        (
            csv(*YES_NO),  # one problem, in file order
            [
                f"column 'complains' {TYPED} no, yes, no, yes, no, ... (12 in all) "
                "(lines 2, 3, 4, 5, 6, ... (12 in all))"
            ],
        ),
        # pandas took each row's first field as an index: every value moved one column on,
        # and the problems named the wrong columns and values, on 'lines 2, 2, 2'
        (
            csv(*[f"{GOOD_ROW}," for _ in range(3)]),  # a delimiter at the end of each row
            [
                "the rows have 15 fields, the header 14: a delimiter at the end of each row, "
                "or a column without a name in the header?"
            ],
        ),
    ],
    ids=[
        *("latin1", "binary", "fraction-label", "fraction-feature", "int64-overflow", "inf"),
        *("float32-inf", "gzip", "row-ends-early", "values-as-written", "long-line", "nul"),
        *("no-type-takes", "one-field-longer-than-header"),
    ],
)
def test_a_bad_file_is_named_in_exact_problems(data: bytes, problems: list[str]) -> None:
    assert problems_of(data) == problems


def test_decimal_commas_of_a_semicolon_file_are_not_numbers(uci_bytes: bytes) -> None:
    data = uci_bytes.replace(b",", b";").replace(b".", b",")
    problems = problems_of(data)
    assert all(p.startswith("column 'customer_value' must be numeric") for p in problems)
    assert "185,85" in problems[0]


def _zip(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


EXCEL = "export it as CSV (File > Save As > CSV UTF-8)"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            _zip("[Content_Types].xml", "xl/workbook.xml"),
            f"bad.csv is an Excel workbook (.xlsx), not a CSV file: {EXCEL}",
        ),
        (
            bytes.fromhex("D0CF11E0A1B11AE1") + bytes(504),
            f"bad.csv is an Excel workbook (.xls), not a CSV file: {EXCEL}",
        ),
        (_zip("customers.csv"), "bad.csv is a zip archive, not a CSV file: extract the CSV"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "bad.csv is a PDF document, not a CSV file"),
        (b"PAR1\x15\x04\x15\x00" + bytes(16) + b"PAR1", "not a readable Parquet file"),
        (BIG + b"a\x00b\n", "line 20002 holds a NUL byte"),
    ],
    ids=["xlsx", "xls", "zip", "pdf", "corrupt-parquet", "nul-past-the-head"],
)
def test_other_formats_and_broken_files_get_one_clear_message(data: bytes, problem: str) -> None:
    (only,) = problems_of(data)
    assert only.startswith(problem)


def test_a_header_starting_with_par1_is_still_a_csv() -> None:
    data = csv("1", header="PAR1")
    problems = problems_of(data)
    assert "missing column 'call_failure'" in problems
    assert not any("Parquet" in p for p in problems)


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8])
def test_concatenated_files_name_the_repeated_header_lines(uci_bytes: bytes, bom: bytes) -> None:
    data = bom + uci_bytes + bom + uci_bytes + bom + uci_bytes
    lines = data.replace(codecs.BOM_UTF8, b"").splitlines()
    repeated = [n for n, line in enumerate(lines, start=1) if line == lines[0] and n > 1]
    assert repeated == [1052, 2103]
    assert problems_of(data) == [
        "the header line is repeated at lines 1052, 2103 (were files concatenated?)"
    ]


# --- chunks, gzip and Parquet ---------------------------------------------------------------


def _chunked(data: bytes, chunk_rows: int, **kwargs: object) -> list[pd.DataFrame]:
    reader = CustomerReader(io.BytesIO(data), name="big.csv", chunk_rows=chunk_rows, **kwargs)
    return list(reader.chunks())


def test_chunks_number_rows_across_the_file(uci_bytes: bytes, uci_frame: pd.DataFrame) -> None:
    chunks = _chunked(uci_bytes, chunk_rows=400, require_target=True)
    assert [len(c) for c in chunks] == [400, 400, 250]
    pd.testing.assert_frame_equal(pd.concat(chunks), uci_frame)


def test_problems_of_every_chunk_are_named_once() -> None:
    bad = "x,0,38,0,4370,71,5,17,3,1,1,30,197.64,0"
    with pytest.raises(DataValidationError) as caught:
        _chunked(csv(bad, GOOD_ROW, GOOD_ROW, bad), chunk_rows=2)
    assert caught.value.problems == [
        "column 'call_failure' must be numeric ('int64', whole numbers); "
        "bad values x, x (lines 2, 5)"
    ]


def test_whole_numbers_written_as_decimals_are_taken() -> None:
    frame = load_customer_file(csv("8.0,0,38,0,4370.0,71,5,17,3,1,1,30,3.4e37,1.0"))
    assert frame["seconds_of_use"].tolist() == [4370] and frame["churn"].tolist() == [1]


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_a_corrupt_gzip_is_named(uci_bytes: bytes, cut: float) -> None:
    packed = gzip.compress(uci_bytes)
    (problem,) = problems_of(packed[: int(len(packed) * cut)])
    assert problem.startswith("not a readable gzip file")


def _parquet(frame: pd.DataFrame) -> bytes:
    return frame.to_parquet(index=False, row_group_size=400)


def test_parquet_problems_name_their_rows(uci_bytes: bytes) -> None:
    frame = pd.read_csv(io.BytesIO(uci_bytes))
    frame.loc[900, "Age Group"] = 9
    problems = problems_of(_parquet(frame))
    assert problems == ["column 'age_group' out of range in_range(1, 5): values 9 (rows 901)"]


def test_a_bad_byte_far_into_a_big_file_is_named_by_offset_and_line() -> None:
    at = len(BIG) - 30
    broken = BIG[:at] + b"\xff" + BIG[at + 1 :]
    line = broken.count(b"\n", 0, at) + 1
    with pytest.raises(DataValidationError) as caught:
        _chunked(broken, chunk_rows=1_000)
    assert caught.value.problems == [
        f"not UTF-8 text: byte 0xff at offset {at} (line {line}); save the file as CSV UTF-8"
    ]


def test_characters_cut_by_block_boundaries_are_fine_and_offsets_stay_true() -> None:
    data = "aü\nbü\nc".encode() + b"\xff"
    checked = _Utf8Checked(io.BufferedReader(io.BytesIO(data)), "x.csv")
    read = b""
    with pytest.raises(DataValidationError) as caught:
        while chunk := checked.read(3):  # the second 'ü' is cut by a block boundary
            read += chunk
    assert read == data[:9]
    assert caught.value.problems == [
        "not UTF-8 text: byte 0xff at offset 9 (line 3); save the file as CSV UTF-8"
    ]


# --- limits and messages: hostile files, built small -------------------------------------
def test_a_parquet_text_value_longer_than_a_line_may_be_is_named() -> None:
    """Counted before it is decoded. A gzip bomb and a dictionary-encoded column that
    decodes past MAX_FILE_BYTES: test_a_hostile_file_is_bad_input_errored_once."""
    values = pd.read_csv(io.BytesIO(csv(*[GOOD_ROW] * 50)))
    table = pa.Table.from_pandas(values, preserve_index=False)
    indices = pa.array(np.zeros(50, "int32"))
    huge = pa.DictionaryArray.from_arrays(indices, pa.array(["x" * (MAX_LINE_BYTES + 1)]))
    out = io.BytesIO()
    pq.write_table(table.append_column("note", huge), out)
    (problem,) = problems_of(out.getvalue())
    assert problem.startswith("column 'note' holds a value of 1,048,577 bytes")


def test_messages_are_short_whatever_the_values() -> None:
    value = "7" + "x" * 200_000
    error = DataValidationError([f"bad {value}"] * 50, "f" * 10_000)
    assert len(str(error)) < 20 * MAX_PROBLEM_CHARS + 500
    assert error.problems[-1] == "... and 30 more problem(s)"
    assert shorten(9.0) == "9" and shorten(value) == "7" + "x" * 35 + "... (200,001 characters)"
    (problem,) = problems_of(csv(GOOD_ROW.replace("8,", f"{value},", 1)))
    assert len(problem) < 200


@pytest.mark.parametrize(
    ("above", "sep"),
    [("sep=;", ";"), ("Customer export, December", ","), ("\n\nTitle", ","), ("A\fB", ",")],
)
def test_a_line_above_the_header_is_named_not_every_column_missing(above: str, sep: str) -> None:
    """Excel's delimiter hint or a report's title above the table: it was 13 'missing
    column' problems (14 with 'no data rows')."""
    data = f"{above}\n{HEADER.replace(',', sep)}\n{GOOD_ROW.replace(',', sep)}\n".encode()
    line = 2 + above.count("\n")
    first = above.strip().split("\n")[0]  # a form feed breaks no line of a CSV
    assert problems_of(data) == [
        f"the header is line {line}, not line {line - 1} ({first!r}): delete the line(s) above it"
    ]


# --- fetching the data ------------------------------------------------------------------------
@pytest.fixture
def archive_server(tmp_path: Path, data_dir: Path) -> Iterator[str]:
    """Serves a zip shaped like the UCI download, rebuilt from the three split files, over
    real HTTP on loopback."""
    whole = pd.concat(pd.read_csv(data_dir / name) for name in dataset.SPLIT_FILES)
    with zipfile.ZipFile(tmp_path / "uci.zip", "w") as archive:
        archive.writestr("Customer Churn.csv", whole.to_csv(index=False))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http_server(handler) as server:
        yield f"http://{LOOPBACK}:{server.server_port}"


def test_download_check_and_split_reproduce_the_files(
    archive_server: str, data_dir: Path, tmp_path: Path
) -> None:
    written = dataset.fetch(tmp_path / "out", url=f"{archive_server}/uci.zip")
    assert [p.name for p in written] == list(dataset.SPLIT_FILES)
    for path in written:
        assert path.read_bytes() == (data_dir / path.name).read_bytes()


def test_failed_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(dataset.DataFetchError, match="CHURN_DATA_DIR"):
        dataset.fetch(tmp_path, url=f"http://{LOOPBACK}:9/missing.zip")


def test_wrong_row_count_is_refused(data_dir: Path) -> None:
    raw = (data_dir / "customer_churn_0.csv").read_bytes()
    with pytest.raises(DataValidationError, match="1050 rows, expected 3150"):
        dataset.check_uci(raw)


def test_copy_from_a_folder(data_dir: Path, tmp_path: Path) -> None:
    copied = dataset.fetch(tmp_path, source_dir=data_dir)
    assert {p.name for p in copied} >= set(dataset.SPLIT_FILES)


def test_copy_from_a_folder_without_the_files(tmp_path: Path) -> None:
    with pytest.raises(dataset.DataFetchError, match=r"lacks customer_churn_0\.csv"):
        dataset.fetch(tmp_path / "out", source_dir=tmp_path)


def test_an_archive_that_is_no_zip_says_what_to_give(tmp_path: Path) -> None:
    """A CSV passed as --archive, or a proxy's page saved as the download: it was
    zipfile's BadZipFile traceback."""
    archive = tmp_path / "customer_churn.csv"
    archive.write_bytes(b"Call  Failure,Complains\n8,0\n")
    with pytest.raises(dataset.DataFetchError, match=r"^not a zip archive .*--from DIR"):
        dataset.fetch(tmp_path / "out", archive=archive)
