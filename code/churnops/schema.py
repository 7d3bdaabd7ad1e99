"""The customer file contract: raw columns, cleaning, types, ranges, validation.

Files arrive with the UCI header (``Call  Failure`` with two spaces, ``Churn``).
:func:`clean_columns` turns any spelling of it into snake_case, and
:func:`validate` checks a frame with pandera and reports every problem of the
file in one :class:`DataValidationError`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

TARGET = "churn"

#: Raw UCI header -> clean name. The order is the order of the UCI file.
RAW_COLUMNS: dict[str, str] = {
    "Call  Failure": "call_failure",
    "Complains": "complains",
    "Subscription  Length": "subscription_length",
    "Charge  Amount": "charge_amount",
    "Seconds of Use": "seconds_of_use",
    "Frequency of use": "frequency_of_use",
    "Frequency of SMS": "frequency_of_sms",
    "Distinct Called Numbers": "distinct_called_numbers",
    "Age Group": "age_group",
    "Tariff Plan": "tariff_plan",
    "Status": "status",
    "Age": "age",
    "Customer Value": "customer_value",
    "Churn": TARGET,
}

#: Every input column (all but the target), clean names.
INPUT_COLUMNS: list[str] = [c for c in RAW_COLUMNS.values() if c != TARGET]

# Valid ranges. Counts are open-ended (new customers may use the service more
# than the training customers did); coded columns take their documented codes.
_UNBOUNDED = None
_RANGES: dict[str, tuple[float, float | None]] = {
    "call_failure": (0, _UNBOUNDED),
    "complains": (0, 1),
    "subscription_length": (0, _UNBOUNDED),
    "charge_amount": (0, 10),
    "seconds_of_use": (0, _UNBOUNDED),
    "frequency_of_use": (0, _UNBOUNDED),
    "frequency_of_sms": (0, _UNBOUNDED),
    "distinct_called_numbers": (0, _UNBOUNDED),
    "age_group": (1, 5),
    "tariff_plan": (1, 2),
    "status": (1, 2),
    "age": (0, 120),
    "customer_value": (0, _UNBOUNDED),
    TARGET: (0, 1),
}
_FLOAT_COLUMNS = {"customer_value"}


class DataValidationError(ValueError):
    """A customer file breaks the contract; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], source: str = "file") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is invalid ({len(problems)} problem(s)):\n{lines}")


def clean_name(raw: str) -> str:
    """``'Call  Failure'`` -> ``'call_failure'``; any case, spacing or dashes."""
    return re.sub(r"[^0-9a-z]+", "_", raw.strip().lower()).strip("_")


def clean_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rename columns to their clean snake_case names."""
    return df.rename(columns={c: clean_name(str(c)) for c in df.columns})


def _column(name: str, require: bool) -> pa.Column:
    low, high = _RANGES[name]
    check = pa.Check.ge(low) if high is None else pa.Check.in_range(low, high)
    dtype = float if name in _FLOAT_COLUMNS else "int64"
    return pa.Column(dtype, checks=check, nullable=False, coerce=True, required=require)


def build_schema(require_target: bool) -> pa.DataFrameSchema:
    """The pandera schema of a clean customer frame."""
    columns = {c: _column(c, True) for c in INPUT_COLUMNS}
    columns[TARGET] = _column(TARGET, require_target)
    return pa.DataFrameSchema(columns, strict=True, name="customer file")


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame has no truth value to compare
class CustomerFile:
    """A customer frame and the notes on how its file was read (encoding, delimiter)."""

    frame: pd.DataFrame
    notes: tuple[str, ...] = ()


#: Byte-order marks, longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "UTF-32 BE"),
    (codecs.BOM_UTF8, "UTF-8"),
    (codecs.BOM_UTF16_LE, "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "UTF-16 BE"),
)
_EXCEL_ADVICE = "export it as CSV (File > Save As > CSV UTF-8)"
#: Magic numbers of the formats users drop by mistake: (magic, what it is, what to do).
_FORMATS: tuple[tuple[bytes, str, str], ...] = (
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel workbook (.xls)", _EXCEL_ADVICE),
    (b"PK\x03\x04", "a zip archive", "extract the CSV file from it"),
    (b"PK\x05\x06", "a zip archive", "extract the CSV file from it"),
    (b"\x1f\x8b", "a gzip-compressed file", "decompress it and upload the CSV file"),
    (b"%PDF-", "a PDF document", "export the data as a CSV file"),
    (b"PAR1", "a Parquet file", "convert it to a CSV file"),
)
_DELIMITERS = (",", ";", "\t", "|")  # ',' first: it wins a tie
_DELIMITER_NAMES = {";": "';'", "\t": "tabs", "|": "'|'"}
_SNIFF_BYTES = 8192


def _label(source: Path | bytes, name: str | None) -> str:
    return name or (source.name if isinstance(source, Path) else "file")


def _read_bytes(source: Path | bytes, label: str, max_bytes: int | None) -> bytes:
    data = source.read_bytes() if isinstance(source, Path) else source
    if max_bytes is not None and len(data) > max_bytes:
        raise DataValidationError(
            [f"file is {len(data):,} bytes, over the limit of {max_bytes:,} bytes"], label
        )
    return data


def _is_xlsx(data: bytes) -> bool:
    """An .xlsx file is a zip archive with the workbook under ``xl/``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.startswith("xl/") for n in names)


def _reject_other_formats(data: bytes, label: str) -> None:
    """One clear message for a workbook, archive, PDF or Parquet file instead of a codec error."""
    for magic, kind, advice in _FORMATS:
        if not data.startswith(magic):
            continue
        if magic == b"PAR1" and not data.endswith(magic):
            continue  # a Parquet file also ends with PAR1; a CSV header might start with it
        if magic.startswith(b"PK") and _is_xlsx(data):
            kind, advice = "an Excel workbook (.xlsx)", _EXCEL_ADVICE
        raise DataValidationError([f"{label} is {kind}, not a CSV file: {advice}"], label)


def _guess_utf16(sample: bytes) -> str | None:
    """UTF-16 without BOM: ASCII text has a NUL as every other byte (the high byte)."""
    sample = sample[: len(sample) // 2 * 2]
    even, odd = sample[0::2], sample[1::2]
    if len(sample) < 4:
        return None
    if odd.count(0) >= 0.9 * len(odd) and 0 not in even:
        return "UTF-16 LE"
    if even.count(0) >= 0.9 * len(even) and 0 not in odd:
        return "UTF-16 BE"
    return None


def _codec(encoding: str) -> str:
    """``'UTF-16 LE'`` -> ``'utf-16-le'``: the BOM stays in the text, offsets stay file offsets."""
    return encoding.lower().replace(" ", "-")


def _not_text(data: bytes, encoding: str, exc: UnicodeDecodeError) -> str:
    at = exc.start
    if encoding == "UTF-8":
        line = data.count(b"\n", 0, at) + 1
        return (
            f"not UTF-8 text: byte 0x{data[at]:02x} at offset {at} (line {line}); "
            "save the file as CSV UTF-8"
        )
    return f"not valid {encoding} text ({exc.reason} at offset {at}); save the file as CSV UTF-8"


def _decode_as(data: bytes, encoding: str, label: str) -> str:
    try:
        text = data.decode(_codec(encoding))
    except UnicodeDecodeError as exc:
        raise DataValidationError([_not_text(data, encoding, exc)], label) from exc
    return text.removeprefix("\ufeff")


def _decode_without_bom(data: bytes, label: str) -> tuple[str, list[str]]:
    """NUL bytes and no BOM: UTF-16 text if the NULs say so, else a binary file."""
    encoding = _guess_utf16(data[:_SNIFF_BYTES])
    if encoding is not None:
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode(_codec(encoding))
            return text, [f"decoded as {encoding} (no BOM; guessed from its NUL bytes)"]
    raise DataValidationError(["file is binary, not a CSV text file"], label)


def _decode(data: bytes, label: str) -> tuple[str, list[str]]:
    """Text and a note on its encoding: a BOM decides, else UTF-8 (no silent cp1252 guess).

    A UTF-8 BOM gets no note: it is what "CSV UTF-8" export writes, the format we ask for.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = _decode_as(data, encoding, label)
            return text, [] if encoding == "UTF-8" else [f"decoded as {encoding} (BOM)"]
    if b"\x00" in data[:_SNIFF_BYTES]:
        return _decode_without_bom(data, label)
    return _decode_as(data, "UTF-8", label), []


def _delimiter(text: str) -> str:
    """The delimiter that splits the header line into the most fields (',' on a tie).

    Only the header is looked at: the data rows of a ';' file may hold decimal commas.
    """
    found = re.search(r"^.*\S.*$", text, re.MULTILINE)
    header = found.group().strip() if found else ""
    fields = {d: len(next(csv.reader([header], delimiter=d))) for d in _DELIMITERS}
    return max(_DELIMITERS, key=fields.__getitem__)


def _parse(text: str, sep: str, label: str) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, skipinitialspace=True)
    except (pd.errors.ParserError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataValidationError([f"not a parsable CSV file: {first}"], label) from exc


def _repeated_header_rows(df: pd.DataFrame) -> list[int]:
    """File line numbers of the rows equal to the header (row r is file line r + 2)."""
    if df.empty or any(pd.api.types.is_numeric_dtype(t) for t in df.dtypes):
        return []  # a header row inside the data leaves no column numeric
    header = [str(c).strip() for c in df.columns]
    # cat of two "CSV UTF-8" files leaves the second file's BOM in its first cell
    cells = df.astype(str).apply(lambda column: column.str.replace("\ufeff", "").str.strip())
    same = cells.eq(header, axis="columns").all(axis="columns")
    return [int(r) + 2 for r in df.index[same]]


def _read(source: Path | bytes, label: str, max_bytes: int | None) -> CustomerFile:
    """The one parsing path: bytes -> checked text -> clean, unvalidated frame + notes."""
    data = _read_bytes(source, label, max_bytes)
    _reject_other_formats(data, label)
    text, notes = _decode(data, label)
    if not text.strip():
        raise DataValidationError(["file is empty"], label)
    sep = _delimiter(text)
    if sep != ",":
        notes.append(f"columns separated by {_DELIMITER_NAMES[sep]} (not ',')")
    df = _parse(text, sep, label)
    if repeated := _repeated_header_rows(df):
        problem = (
            f"the header line is repeated at rows {_sample(repeated)} (were files concatenated?)"
        )
        raise DataValidationError([problem], label)
    df = clean_columns(df)
    if df.empty:
        raise DataValidationError(
            ["file has a header but no data rows", *_header_problems(df)], label
        )
    return CustomerFile(df, tuple(notes))


def read_customer_csv(
    source: Path | bytes, *, name: str | None = None, max_bytes: int | None = None
) -> pd.DataFrame:
    """Parse a customer CSV (path or bytes) and clean its header; see :func:`read_customer_file`.

    Raises :class:`DataValidationError` for what stops parsing: too large, another
    format (Excel, zip, gzip, PDF, Parquet), binary, not UTF-8, not CSV, empty,
    header only, header repeated in the data.
    """
    return _read(source, _label(source, name), max_bytes).frame


def read_customer_file(
    source: Path | bytes,
    *,
    name: str | None = None,
    max_bytes: int | None = None,
    require_target: bool = False,
) -> CustomerFile:
    """Read, clean and validate a customer file, with notes on how it was read.

    Accepted beyond plain UTF-8 CSV, each with a note: UTF-16/UTF-32 (by BOM, or
    UTF-16 by its NUL bytes) and columns separated by ';', tabs or '|'. Decimal
    commas ("185,85") are not converted: they are reported by :func:`validate` as
    "must be numeric", since guessing decimal vs thousands separators could change
    values silently.
    """
    label = _label(source, name)
    read = _read(source, label, max_bytes)
    frame = validate(read.frame, require_target=require_target, source=label)
    return CustomerFile(frame, read.notes)


def _header_problems(df: pd.DataFrame) -> list[str]:
    """Column problems visible from the header alone (for files without rows)."""
    known = [*INPUT_COLUMNS, TARGET]
    missing = [f"missing column '{c}'" for c in INPUT_COLUMNS if c not in df.columns]
    extra = [f"unexpected column '{c}'" for c in df.columns if c not in known]
    return missing + extra


def _describe(failures: pd.DataFrame) -> list[str]:
    """Turn pandera's failure-case table into one sentence per problem."""
    problems: list[str] = []
    failures = failures.astype({"failure_case": str}).drop_duplicates(
        ["column", "check", "failure_case", "index"]
    )
    # A value that cannot be coerced also fails the range check with a TypeError,
    # and a missing value also fails coercion: report each once, by its cause.
    failures = failures[~failures["failure_case"].str.startswith("TypeError(")]
    is_coercion = failures["check"].astype(str).str.startswith(("coerce_dtype", "dtype"))
    failures = failures[~(is_coercion & failures["failure_case"].isin(["nan", "<NA>", "None"]))]
    grouped = failures.groupby(["column", "check"], dropna=False, sort=False)
    for (column, check), group in grouped:
        cases = group["failure_case"].tolist()
        rows = group["index"].dropna().astype(int).tolist()
        where = f" (rows {_sample(r + 2 for r in rows)})" if rows else ""
        check = str(check)
        if check == "column_in_dataframe":
            problems.append(f"missing column '{cases[0]}'")
        elif check == "column_in_schema":
            problems.append(f"unexpected column '{cases[0]}'")
        elif check == "not_nullable":
            problems.append(f"column '{column}' has {len(cases)} missing value(s){where}")
        elif check.startswith("coerce_dtype") or check.startswith("dtype"):
            problems.append(
                f"column '{column}' must be numeric ({check.split('(')[-1].rstrip(')')}); "
                f"bad values {_sample(cases)}{where}"
            )
        else:
            problems.append(
                f"column '{column}' out of range {check}: values {_sample(cases)}{where}"
            )
    return list(dict.fromkeys(problems))  # coercion is reported by two checks


def _sample(values: object, limit: int = 5) -> str:
    items = list(values)  # type: ignore[call-overload]
    shown = ", ".join(str(v) for v in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def validate(
    df: pd.DataFrame, *, require_target: bool = False, source: str = "file"
) -> pd.DataFrame:
    """Return the typed frame, or raise one error naming every problem."""
    try:
        return build_schema(require_target).validate(df, lazy=True)
    except SchemaErrors as exc:
        raise DataValidationError(_describe(exc.failure_cases), source) from exc


def load_customer_file(
    source: Path | bytes,
    *,
    name: str | None = None,
    require_target: bool = False,
    max_bytes: int | None = None,
) -> pd.DataFrame:
    """Read, clean and validate a customer file in one step (the frame only)."""
    return read_customer_file(
        source, name=name, max_bytes=max_bytes, require_target=require_target
    ).frame
