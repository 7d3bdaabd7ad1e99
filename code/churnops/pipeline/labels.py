"""Late labels: join a labels file to the run that scored its rows, and score that run.

A labels file is a predictions file the platform wrote, dropped into ``data/labels/`` with
``Churn`` filled in (1, 0, blank: not known yet). It is matched by identifier when one
(``ID_COLUMNS``) names each customer once (it may hold only some rows), else by rows (all
of them, in order); either way the columns it shares with the predictions must agree row
by row, so it cannot be joined to the wrong month. Scores compare the labels with the
stored predictions. The labelled rows (for retraining) and the join are written beside it;
a file that fits no run is invalid and ends in ``errored/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from churnops.data.identifiers import IdentifierCheck
from churnops.data.reading import CustomerReader
from churnops.data.schema import (
    RAW_COLUMNS,
    RAW_NAMES,
    TARGET,
    DataValidationError,
    clean_name,
    shorten,
    split_columns,
)
from churnops.drop import claims
from churnops.drop.keys import is_labels
from churnops.drop.storage import DropStorage, ObjectExists, folder_key, run_folders, run_key
from churnops.pipeline.scoring import (
    check_size,
    csv_bytes,
    neutralised,
    predictions_of,
    quality_scores,
    refuse_long_names,
)
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import DropSettings

log = logging.getLogger(__name__)

#: Suffix of the labelled rows written beside a labels file, for retraining.
LABELED_ROWS_SUFFIX = ".labeled-rows.csv"
#: Suffix of the join record written beside a labels file (which run, how).
JOIN_SUFFIX = ".join.json"
#: Probabilities written by Arrow read back exactly; a spreadsheet may round them.
PROBABILITY_TOLERANCE = 1e-6
#: How a labels file without a usable identifier matched its run.
BY_ROWS = "rows (no identifier)"
_LABEL_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


@dataclass(frozen=True)
class ScoringRun:
    """A processed run that may have scored the labels file's rows."""

    run: str
    file_name: str  # the customer file it scored
    predictions_key: str
    model_name: str
    model_version: str
    run_id: str  # the metrics database row of the attempt that scored it


@dataclass
class LabelsJoin:
    """A labels file joined to its scoring run, and the scores it realizes."""

    scoring: ScoringRun
    matched_by: str
    rows: int
    labeled_rows: int
    scores: dict[str, float]
    arrived_at: datetime
    #: Older runs that scored the same rows the same way: the newest is joined.
    also_fits: tuple[str, ...] = ()

    def summary(self) -> str:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items() if k != "log_loss")
        twins = (
            f"; the same predictions are in run(s) {', '.join(self.also_fits)}: joined the newest"
            if self.also_fits
            else ""
        )
        return (
            f"labels for {self.scoring.file_name} (run {self.scoring.run}, "
            f"{self.scoring.model_name} v{self.scoring.model_version}) matched by "
            f"{self.matched_by}: {self.labeled_rows} of {self.rows} rows labeled; {scores}{twins}"
        )


class _Mismatch(Exception):
    """This run did not score these rows; the message says why."""


# --- reading ---------------------------------------------------------------------------
def text_chunks(
    drop: DropSettings, storage: DropStorage, key: str, name: str, columns: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """A CSV file as text chunks (blank cells stay ``''``), read as customer files are."""
    with storage.open_read(key) as stream:
        reader = CustomerReader(stream, name=name, max_bytes=drop.max_file_bytes)
        yield from reader.text_chunks(columns)


def read_table(drop: DropSettings, storage: DropStorage, key: str, name: str) -> pd.DataFrame:
    """A whole CSV file as text (a labels file: at most the size of a predictions file)."""
    frames = [f for f in text_chunks(drop, storage, key, name) if not f.empty]
    if not frames:
        raise DataValidationError(["file has a header but no data rows"], name)
    return pd.concat(frames, ignore_index=True)


def label_column(frame: pd.DataFrame, name: str) -> str:
    """The ``Churn`` column (any spelling); a clear error when there is none."""
    found = [c for c in frame.columns if clean_name(str(c)) == TARGET]
    if not found:
        raise DataValidationError(
            [
                "no 'Churn' column: a labels file is a predictions file the platform wrote, "
                "with its 'Churn' column filled in (1 churned, 0 stayed, blank not known)"
            ],
            name,
        )
    return found[0]


def parse_labels(values: pd.Series, name: str) -> pd.Series:
    """0/1 per row, missing where blank; every other value is a problem."""
    text = values.str.strip()
    bad = ~text.isin([*_LABEL_VALUES, ""])
    if bad.any():
        rows = ", ".join(f"line {i + 2} ({shorten(repr(text[i]))})" for i in text.index[bad][:5])
        raise DataValidationError(
            [f"'Churn' must be 1, 0 or blank; {int(bad.sum())} row(s) hold something else: {rows}"],
            name,
        )
    return text.map(_LABEL_VALUES).astype("Int8")


# --- candidates ------------------------------------------------------------------------
def scoring_runs(storage: DropStorage, labels_name: str) -> list[ScoringRun]:
    """Processed scoring runs, those whose predictions name starts ``labels_name`` first,
    then newest first."""
    found = []
    for run in reversed(run_folders(storage, "processed")):
        lease = claims.latest_lease(storage, run)
        if lease is None or is_labels(lease.source_key):
            continue
        keys = storage.list_keys(folder_key("processed", run))
        for key, (model, version) in predictions_of(lease.name, keys).items():
            found.append(ScoringRun(run, lease.name, key, model, version, lease.db_id))
    stem = labels_name.rsplit(".", 1)[0]
    named = [s for s in found if stem.startswith(s.predictions_key.rsplit("/", 1)[-1][:-4])]
    return named + [s for s in found if s not in named]


# --- matching --------------------------------------------------------------------------
def _rows_of(
    labels: pd.DataFrame, chunks: Iterator[pd.DataFrame], identifier: str | None
) -> tuple[pd.DataFrame, str]:
    """The predictions rows of the labels rows, in their order, and how they matched (by
    identifier when both files name each customer once); only rows needed are kept."""
    ids = IdentifierCheck(identifier) if identifier else None
    wanted = set(labels[identifier]) if identifier else set()
    by_id: list[pd.DataFrame] = []
    by_row: list[pd.DataFrame] = []
    rows = 0
    for chunk in chunks:
        if ids is not None and identifier in chunk.columns:
            ids.add(chunk[identifier])
            by_id.append(chunk[chunk[identifier].isin(wanted)])
        else:
            ids = None
        by_row.append(chunk.iloc[: max(len(labels) - rows, 0)])
        rows += len(chunk)
        if ids is None and rows > len(labels):
            break  # too many rows to match by rows, and no identifier: stop reading
    if ids is not None and not (ids.empty or ids.repeated):
        found = pd.concat(by_id).set_index(identifier, drop=False) if by_id else pd.DataFrame()
        unknown = ~labels[identifier].isin(found.index)
        if unknown.any():
            shown = ", ".join(shorten(repr(i)) for i in labels[identifier][unknown].head(5))
            raise _Mismatch(f"{int(unknown.sum())} identifier(s) are not among its rows: {shown}")
        matched = found.loc[labels[identifier]].reset_index(drop=True)
        return matched, f"identifier '{identifier}'"
    if len(labels) != rows:
        many = f"more than {len(labels)}" if rows > len(labels) else str(rows)
        unnamed = f"it has no column '{identifier}'; " if identifier and ids is None else ""
        raise _Mismatch(
            f"{unnamed}it has {many} rows, the labels file {len(labels)}; without an "
            "identifier a labels file must keep every row of the predictions file, in order"
        )
    return pd.concat(by_row, ignore_index=True), BY_ROWS


def _check_same(labels: pd.DataFrame, matched: pd.DataFrame, columns: list[str]) -> None:
    """The shared columns agree on every row (probabilities within rounding)."""
    for column in columns:
        left = pd.to_numeric(labels[column], errors="coerce").to_numpy(float)
        right = pd.to_numeric(matched[column], errors="coerce").to_numpy(float)
        tolerance = PROBABILITY_TOLERANCE if column == PROBABILITY else 0.0
        same = np.isclose(left, right, rtol=0, atol=tolerance, equal_nan=True)
        if not same.all():
            first = int(np.argmax(~same))
            here, there = labels[column].iloc[first], matched[column].iloc[first]
            raise _Mismatch(
                f"'{column}' differs on {int((~same).sum())} row(s), first on line {first + 2} "
                f"({shorten(repr(here))} here, {shorten(repr(there))} there)"
            )


_Match = tuple[ScoringRun, pd.DataFrame, str, bool]


def _match(
    drop: DropSettings,
    storage: DropStorage,
    candidate: ScoringRun,
    labels: pd.DataFrame,
    label: str,
    identifier: str | None,
) -> _Match:
    """The candidate's rows of the labels rows, how they matched, whether columns agreed."""
    key = candidate.predictions_key
    written = {*RAW_COLUMNS, PREDICTION, PROBABILITY} - {label}
    needed = [*written, *([identifier] if identifier else [])]
    chunks = text_chunks(drop, storage, key, key.rsplit("/", 1)[-1], needed)
    try:
        matched, matched_by = _rows_of(labels, chunks, identifier)
    finally:
        chunks.close()
    columns = [c for c in matched.columns if c in written and c in labels.columns]
    _check_same(labels.reset_index(drop=True), matched, columns)
    return candidate, matched, matched_by, bool(columns)


def _find(
    drop: DropSettings,
    storage: DropStorage,
    labels: pd.DataFrame,
    label: str,
    identifier: str | None,
    name: str,
) -> tuple[_Match, list[str]]:
    """The run that scored these rows (a name match first, then the newest), and the other
    runs whose identical predictions (files of the same size) fit them too."""
    reasons: list[str] = []
    matches: list[_Match] = []
    candidates = scoring_runs(storage, name)
    for at, candidate in enumerate(candidates):
        try:
            matches.append(_match(drop, storage, candidate, labels, label, identifier))
        except _Mismatch as exc:
            reasons.append(f"run {candidate.run} ({candidate.predictions_key}): {exc}")
            continue
        if matches[-1][3]:  # columns agreed row by row: this run scored these rows
            size = _size(storage, candidate.predictions_key)
            for other in candidates[at + 1 :]:
                if _size(storage, other.predictions_key) != size:
                    continue
                with contextlib.suppress(_Mismatch):
                    twin = _match(drop, storage, other, labels, label, identifier)
                    matches += [twin] if twin[3] else []
            break
    if not matches:
        raise DataValidationError(_no_match(reasons), name)
    if not matches[0][3]:  # no column to tell runs apart: one run by identifier, or none
        keep = "keep the predictions file's other columns (features, churn_prediction)"
        if matches[0][2] == BY_ROWS:
            raise DataValidationError([f"only 'Churn' to go by: {keep}"], name)
        if len(matches) > 1:
            runs = ", ".join(m[0].run for m in matches)
            problem = f"only identifiers and 'Churn' to go by, and they fit several runs ({runs})"
            raise DataValidationError([f"{problem}: {keep}"], name)
    newest = max(matches, key=lambda m: m[0].run)
    return newest, [m[0].run for m in matches if m is not newest]


def _size(storage: DropStorage, key: str) -> int | None:
    info = storage.stat(key)
    return None if info is None else info.size


def _no_match(reasons: list[str]) -> list[str]:
    if not reasons:
        return ["matches no run: no processed file has predictions yet"]
    return ["matches no processed run's predictions", *reasons[:5]]


# --- the step --------------------------------------------------------------------------
def join_labels(
    drop: DropSettings, storage: DropStorage, processing_key: str, run: str, name: str
) -> LabelsJoin:
    """Join the run's labels file to its scoring run, score it, write the labelled rows."""
    check_size(storage, processing_key, name, drop.max_file_bytes)
    refuse_long_names(name, labeled_rows_name(name), f"{name}{JOIN_SUFFIX}")
    labels = read_table(drop, storage, processing_key, name)
    label = label_column(labels, name)
    values = parse_labels(labels[label], name)
    if not values.notna().any():
        raise DataValidationError(["no row has a label: fill in 'Churn' (1 or 0)"], name)
    identifier = split_columns(labels.columns, drop.id_columns).identifier
    if identifier and drop.neutralise_formulas:  # as its predictions file holds them,
        labels[identifier] = neutralised(labels[identifier])  # whatever a spreadsheet kept
    if identifier and (
        labels[identifier].duplicated().any() or (labels[identifier].str.strip() == "").any()
    ):
        identifier = None  # empty or repeated (a warning when scored): match by rows
    (scoring, matched, matched_by, _), twins = _find(drop, storage, labels, label, identifier, name)
    known = values.notna().to_numpy()
    actual = values[known].to_numpy(np.int8)
    scores = quality_scores(
        actual,
        pd.to_numeric(matched[PREDICTION][known]).to_numpy(np.int8),
        pd.to_numeric(matched[PROBABILITY][known]).to_numpy(float),
    )
    _write_labeled_rows(storage, run, name, matched[known], actual)
    record = {"scoring_run": scoring.run, "predictions_key": scoring.predictions_key}
    _create(storage, run_key("processing", run, f"{name}{JOIN_SUFFIX}"), json.dumps(record))
    return LabelsJoin(
        scoring=scoring,
        matched_by=matched_by,
        rows=len(labels),
        labeled_rows=int(known.sum()),
        scores=scores,
        arrived_at=claims.dropped_at(run),
        also_fits=tuple(twins),
    )


def labeled_rows_name(name: str) -> str:
    return f"{name}{LABELED_ROWS_SUFFIX}"


def joined_run(storage: DropStorage, run: str, name: str) -> str | None:
    """The scoring run the labels file ``name`` of ``run`` was joined to (None: not yet)."""
    for stage in ("processed", "processing"):
        key = run_key(stage, run, f"{name}{JOIN_SUFFIX}")  # type: ignore[arg-type]
        if storage.exists(key):
            return json.loads(storage.read(key))["scoring_run"]
    return None


def _create(storage: DropStorage, key: str, text: str | bytes) -> None:
    """Write an output of the run; a re-driven run keeps what its dead attempt wrote
    (the same input gives the same bytes)."""
    try:
        storage.create(key, text.encode() if isinstance(text, str) else text)
    except ObjectExists:
        log.info("%s: kept what an earlier attempt wrote", key)


def _write_labeled_rows(
    storage: DropStorage, run: str, name: str, matched: pd.DataFrame, actual: np.ndarray
) -> None:
    """The labelled rows as a customer file (UCI headers, ``Churn`` last), for retraining."""
    key = run_key("processing", run, labeled_rows_name(name))
    features = [c for c in RAW_COLUMNS if c in matched.columns and clean_name(c) != TARGET]
    frame = matched[features].apply(pd.to_numeric).reset_index(drop=True)
    label = pd.DataFrame({RAW_NAMES[TARGET]: actual})
    _create(storage, key, csv_bytes(frame, label))
