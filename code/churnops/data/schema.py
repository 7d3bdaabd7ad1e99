"""The customer file contract: the UCI columns (any spelling, cleaned to snake_case), their
types and ranges, checked with pandera; every problem of a file in one
:class:`DataValidationError`. Any other column passes through (:func:`split_columns`),
never validated, scored or monitored.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from churnops.results import PREDICTION, PROBABILITY

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
#: Clean name -> the raw UCI header (what a predictions file and a model's example show).
RAW_NAMES: dict[str, str] = {clean: raw for raw, clean in RAW_COLUMNS.items()}

#: Every input column (all but the target), clean names.
INPUT_COLUMNS: list[str] = [c for c in RAW_COLUMNS.values() if c != TARGET]
#: The columns scoring adds: no column of a customer file may be named so.
OUTPUT_COLUMNS: tuple[str, ...] = (PREDICTION, PROBABILITY)

#: Valid ranges, one per column (a new column without one fails loudly). Counts are
#: open-ended (new customers may use the service more than the training customers did);
#: coded columns take their documented codes.
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
#: XGBoost reads features as float32: a larger value (or inf) fails it, as if a dependency had.
_LARGEST_FLOAT = float(np.finfo(np.float32).max)


#: Problems named in one message, and the characters of each (a 50 MB value is cut).
MAX_PROBLEMS = 20
MAX_PROBLEM_CHARS = 500


class DataValidationError(ValueError):
    """The input is bad (content or name): it goes to ``errored/`` with every reason
    (``problems``) and is never retried."""

    def __init__(self, problems: list[str], source: str = "file") -> None:
        more = len(problems) - MAX_PROBLEMS
        problems = [shorten(p, MAX_PROBLEM_CHARS) for p in problems[:MAX_PROBLEMS]]
        self.problems = problems + [f"... and {more} more problem(s)"] * (more > 0)
        self.source = shorten(source, 300)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.source} is invalid ({len(self.problems)} problem(s)):\n{lines}")


def is_bad_input(exc: BaseException) -> bool:
    """The one rule every path classifies a failure by: the input's fault (errored, never
    retried), or a dependency's (retried up to ``MAX_ATTEMPTS``)."""
    return isinstance(exc, DataValidationError)


def clean_name(raw: str) -> str:
    """``'Call  Failure'`` -> ``'call_failure'``; any case, spacing or dashes."""
    return re.sub(r"[^0-9a-z]+", "_", raw.strip().lower()).strip("_")


def clean_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rename columns to their clean snake_case names."""
    return df.rename(columns={c: clean_name(str(c)) for c in df.columns})


def _column(name: str, require: bool) -> pa.Column:
    low, high = _RANGES[name]
    checks = [pa.Check.ge(low) if high is None else pa.Check.in_range(low, high)]
    if name in _FLOAT_COLUMNS:
        checks.append(pa.Check(lambda s: s < _LARGEST_FLOAT, name="less_than(3.4e38)"))
    dtype = float if name in _FLOAT_COLUMNS else "int64"
    return pa.Column(dtype, checks=checks, nullable=False, coerce=True, required=require)


def build_schema(require_target: bool) -> pa.DataFrameSchema:
    """The pandera schema of a clean customer frame."""
    columns = {c: _column(c, True) for c in INPUT_COLUMNS}
    columns[TARGET] = _column(TARGET, require_target)
    parser = pa.Parser(_fractions_as_text)
    return pa.DataFrameSchema(columns, strict=True, name="customer file", parsers=parser)


def _fractions_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns' values that are no int64 (0.5, 1e308, inf) become text, so that the
    type check names them: coercion would cut 0.5 to 0 (a label too) and 1e308 to -2**63."""
    changed = {}
    for name in frame.columns.intersection(list(_RANGES)).difference(list(_FLOAT_COLUMNS)):
        column = frame[name]
        if not pd.api.types.is_float_dtype(column):
            continue  # read as integers (fine) or as text (the type check names it)
        unfit = column.notna() & ((column % 1 != 0) | ~(column.abs() < 2**63))  # inf, too
        if unfit.any():
            changed[name] = column.astype(object).where(~unfit, column.map(str))
    return frame.assign(**changed) if changed else frame


@dataclass(frozen=True, eq=False)  # eq=False: a DataFrame has no truth value to compare
class CustomerFile:
    """A customer frame and the notes on how its file was read (encoding, delimiter)."""

    frame: pd.DataFrame
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Columns:
    """How a file's header (pandas' labels, file order) splits: the contract's columns
    (raw -> clean name), the ones passed through (raw, file order) and among them the
    identifier; the required columns it lacks and its other problems."""

    header: tuple[str, ...]
    known: dict[str, str]
    passthrough: tuple[str, ...]
    identifier: str | None
    missing: tuple[str, ...]
    problems: tuple[str, ...]


def split_columns(
    header: Sequence[object], id_names: Sequence[str] = (), *, require_target: bool = False
) -> Columns:
    """The one rule: a column whose clean name is a feature or the label is the contract's,
    any other passes through, but not under an output column's name (the predictions file
    would hold it twice). The identifier: the first matching ``id_names``, in order."""
    names = tuple(str(c) for c in header)
    wanted = {*INPUT_COLUMNS, TARGET}
    known = {raw: clean_name(raw) for raw in names if clean_name(raw) in wanted}
    passthrough = tuple(raw for raw in names if raw not in known)
    required = [*INPUT_COLUMNS, TARGET] if require_target else INPUT_COLUMNS
    missing = tuple(c for c in required if c not in known.values())
    problems = [
        *repeated_columns(names),
        *_spelled_twice(known),
        *(
            f"column '{raw}' takes the name of an output column ('{clean_name(raw)}'); rename it"
            for raw in passthrough
            if clean_name(raw) in OUTPUT_COLUMNS
        ),
        *_misspellings(passthrough, missing),
    ]
    identifier = find_identifier(passthrough, id_names)
    return Columns(names, known, passthrough, identifier, missing, tuple(problems))


def repeated_columns(names: Sequence[str]) -> list[str]:
    """One problem per header name given more than once."""
    return [f"column '{n}' appears {k} times" for n, k in Counter(names).items() if k > 1]


def _spelled_twice(known: dict[str, str]) -> list[str]:
    """One problem per contract column given under two spellings ('Age' and 'age')."""
    spellings: dict[str, list[str]] = {}
    for raw, clean in known.items():
        spellings.setdefault(clean, []).append(raw)
    return [
        f"columns {', '.join(repr(r) for r in raws)} are the same column '{clean}'"
        for clean, raws in spellings.items()
        if len(raws) > 1
    ]


def _misspellings(passthrough: Sequence[str], missing: Sequence[str]) -> list[str]:
    """Name the pass-through column that looks like a missing one ('Complaints', 'Complains')."""
    return [
        f"column '{raw}' is no feature or label: is it '{RAW_NAMES[close[0]]}' misspelled?"
        for raw in passthrough
        if (close := difflib.get_close_matches(clean_name(raw), missing, n=1, cutoff=0.8))
    ]


def id_key(name: str) -> str:
    """``'Customer ID'``, ``'customer_id'``, ``'CustomerID'`` -> ``'customerid'``."""
    return clean_name(name).replace("_", "")


def find_identifier(columns: Sequence[str], id_names: Sequence[str]) -> str | None:
    """The first of ``columns`` matching ``id_names``, the names tried in their order."""
    by_key: dict[str, str] = {}
    for column in columns:
        by_key.setdefault(id_key(column), column)  # the first column of a spelling wins
    return next((by_key[id_key(n)] for n in id_names if id_key(n) in by_key), None)


def describe_failures(failures: pd.DataFrame, unit: str = "line", first: int = 2) -> list[str]:
    """pandera's failure cases as one sentence per problem; index 0 is ``unit`` ``first``
    (file line 2 under the header, or Parquet row 1)."""
    problems: list[str] = []
    # coercion is reported by two checks, each in its own order: one check, in file order
    check = failures["check"].astype(str).str.replace(r"^coerce_dtype\(", "dtype(", regex=True)
    failures = failures.assign(failure_case=failures["failure_case"].map(shorten), check=check)
    failures = failures.drop_duplicates(["column", "check", "failure_case", "index"])
    # a bad value also fails the range check, a missing one coercion: once, by cause
    failures = failures[~failures["failure_case"].str.startswith("TypeError(")]
    is_coercion = failures["check"].astype(str).str.startswith("dtype(")
    failures = failures[~(is_coercion & failures["failure_case"].isin(["nan", "<NA>", "None"]))]
    grouped = failures.groupby(["column", "check"], dropna=False, sort=False)
    for (column, check), unordered in grouped:
        group = unordered.sort_values("index", key=_row_order, kind="stable")
        cases = group["failure_case"].tolist()
        rows = group["index"].dropna().astype(int).tolist()
        where = f" ({unit}s {sample_text(r + first for r in rows)})" if rows else ""
        check = str(check)
        if check == "column_in_dataframe":
            problems.append(f"missing column '{cases[0]}'")
        elif check == "column_in_schema":
            problems.append(f"unexpected column '{cases[0]}'")
        elif check == "not_nullable":
            problems.append(f"column '{column}' has {len(cases)} missing value(s){where}")
        elif check.startswith("dtype("):
            dtype = check.split("(")[-1].rstrip(")")
            whole = "" if column in _FLOAT_COLUMNS else ", whole numbers"
            problems.append(
                f"column '{column}' must be numeric ({dtype}{whole}); "
                f"bad values {sample_text(cases)}{where}"
            )
        else:
            problems.append(
                f"column '{column}' out of range {check}: values {sample_text(cases)}{where}"
            )
    return list(dict.fromkeys(problems))


def _row_order(index: pd.Series) -> pd.Series:
    """pandera's failure index as numbers (None for a missing column: last)."""
    return pd.to_numeric(index, errors="coerce")


def sample_text(values: object, limit: int = 5) -> str:
    items = list(values)  # type: ignore[call-overload]
    shown = ", ".join(shorten(v) for v in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def shorten(value: object, limit: int = 60) -> str:
    """A value as a message shows it: 9, not 9.0; over ``limit`` characters cut."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    text = str(value)
    if len(text) <= limit:
        return text
    cut = f"... ({len(text):,} characters)"
    return text[: max(limit - len(cut), 10)] + cut  # at most ``limit``: shortening it keeps it
