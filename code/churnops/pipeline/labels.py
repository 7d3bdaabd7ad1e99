"""Late labels: join a labels file to the run that scored its rows, and score that run.

Churn is known weeks after scoring. A user drops into ``data/labels/`` the
predictions file the platform wrote (``processed/<run>/<stem>_predictions_<model>_v<n>.csv``)
with its ``Churn`` column filled in: 1 churned, 0 stayed, blank not known yet.
:func:`join_labels` finds the scoring run those rows came from:

- **by identifier** when the file has one (``ID_COLUMNS``) naming each customer
  once: every identifier must be a row of the run's predictions; the file may
  hold only some of them (partial labels);
- **by rows** otherwise (no identifier, or one empty or repeated somewhere): the
  file must hold the predictions file's rows, all of them, in order.

Either way the columns the labels file shares with the predictions file (the
features, ``churn_prediction``, ``churn_probability``) must agree, row by row,
so a labels file cannot be joined to the wrong month's customers. Runs whose
predictions file name starts the labels file's name are tried first.

The realized scores (F1, precision, recall, accuracy, ROC AUC) compare the
labels with the predictions the platform stored, not with the labels file's
copy. The labelled rows (features and ``Churn``) are written beside the labels
file as ``<name>.labeled-rows.csv``, and the join as ``<name>.join.json``:
retraining learns from the rows, the newest labels of each scoring run only.

A labels file that matches no run, or matches a run but holds other rows, is
invalid (:class:`DataValidationError`) and ends in ``errored/`` like any bad file.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from churnops.data.reading import refuse_oversize
from churnops.data.schema import RAW_COLUMNS, TARGET, DataValidationError, clean_name, split_columns
from churnops.drop import claims
from churnops.drop.keys import is_labels
from churnops.drop.storage import DropStorage, ObjectExists, folder_key, run_folders, run_key
from churnops.pipeline.scoring import csv_bytes, quality_scores
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings

log = logging.getLogger(__name__)

#: Suffix of the labelled rows written beside a labels file, for retraining.
LABELED_ROWS_SUFFIX = ".labeled-rows.csv"
#: Suffix of the join record written beside a labels file (which run, how).
JOIN_SUFFIX = ".join.json"
#: ``<stem>_predictions_<model>_v<version>.csv`` (:func:`scoring.predictions_name`).
_PREDICTIONS = re.compile(r"^(?P<stem>.+)_predictions_(?P<model>.+)_v(?P<version>[^_]+)\.csv$")
#: Probabilities written by Arrow read back exactly; a spreadsheet may round them.
PROBABILITY_TOLERANCE = 1e-6
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
    labeled_rows_key: str

    @property
    def scoring_file(self) -> str:
        return self.scoring.file_name

    def summary(self) -> str:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items() if k != "log_loss")
        return (
            f"labels for {self.scoring_file} (run {self.scoring.run}, "
            f"{self.scoring.model_name} v{self.scoring.model_version}) matched by "
            f"{self.matched_by}: {self.labeled_rows} of {self.rows} rows labeled; {scores}"
        )


class _Mismatch(Exception):
    """This run did not score these rows; the message says why."""


# --- reading ---------------------------------------------------------------------------
def read_table(data: bytes) -> pd.DataFrame:
    """A CSV as text, cell for cell (blank cells stay ``''``)."""
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True)


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
        rows = ", ".join(f"row {i + 2} ({text[i]!r})" for i in text.index[bad][:5])
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
        for key in storage.list_keys(folder_key("processed", run)):
            name = key.rsplit("/", 1)[-1]
            match = _PREDICTIONS.match(name)
            if match and name != lease.name:
                found.append(
                    ScoringRun(run, lease.name, key, match["model"], match["version"], lease.db_id)
                )
    stem = labels_name.rsplit(".", 1)[0]
    named = [s for s in found if stem.startswith(s.predictions_key.rsplit("/", 1)[-1][:-4])]
    return named + [s for s in found if s not in named]


# --- matching --------------------------------------------------------------------------
def _compared_columns(labels: pd.DataFrame, predictions: pd.DataFrame, label: str) -> list[str]:
    """The columns both files hold that the platform wrote (features and outputs)."""
    written = {*RAW_COLUMNS, PREDICTION, PROBABILITY} - {label}
    return [c for c in predictions.columns if c in written and c in labels.columns]


def _rows_of(
    labels: pd.DataFrame, predictions: pd.DataFrame, identifier: str | None
) -> tuple[np.ndarray, str]:
    """For each labels row, its row in ``predictions``; and how they were matched.

    By identifier when both files name each customer once; by rows otherwise.
    """
    if identifier and identifier in predictions.columns and _unique(predictions[identifier]):
        ids = predictions[identifier]
        position = pd.Series(np.arange(len(ids)), index=ids)
        unknown = ~labels[identifier].isin(ids)
        if unknown.any():
            shown = ", ".join(map(repr, labels[identifier][unknown].head(5)))
            raise _Mismatch(f"{int(unknown.sum())} identifier(s) are not among its rows: {shown}")
        return position[labels[identifier]].to_numpy(), f"identifier '{identifier}'"
    if len(labels) != len(predictions):
        raise _Mismatch(
            f"it has {len(predictions)} rows, the labels file {len(labels)}; without an "
            "identifier a labels file must keep every row of the predictions file, in order"
        )
    return np.arange(len(labels)), "rows (no identifier)"


def _unique(ids: pd.Series) -> bool:
    """Every value given, none twice: the identifier names one customer per row."""
    return not (ids.duplicated().any() or (ids.str.strip() == "").any())


def _check_same(labels: pd.DataFrame, matched: pd.DataFrame, columns: list[str]) -> None:
    """The shared columns agree on every row (probabilities within rounding)."""
    for column in columns:
        left = pd.to_numeric(labels[column], errors="coerce").to_numpy(float)
        right = pd.to_numeric(matched[column], errors="coerce").to_numpy(float)
        tolerance = PROBABILITY_TOLERANCE if column == PROBABILITY else 0.0
        same = np.isclose(left, right, rtol=0, atol=tolerance, equal_nan=True)
        if not same.all():
            first = int(np.argmax(~same))
            raise _Mismatch(
                f"'{column}' differs on {int((~same).sum())} row(s), first on row {first + 2} "
                f"({labels[column].iloc[first]!r} here, {matched[column].iloc[first]!r} there)"
            )


def _match(
    labels: pd.DataFrame, predictions: pd.DataFrame, label: str, identifier: str | None
) -> tuple[pd.DataFrame, str, bool]:
    """The predictions rows of the labels rows, how they matched, and whether columns agreed."""
    positions, matched_by = _rows_of(labels, predictions, identifier)
    matched = predictions.iloc[positions].reset_index(drop=True)
    columns = _compared_columns(labels, predictions, label)
    _check_same(labels.reset_index(drop=True), matched, columns)
    return matched, matched_by, bool(columns)


def _find(
    storage: DropStorage, labels: pd.DataFrame, label: str, identifier: str | None, name: str
) -> tuple[ScoringRun, pd.DataFrame, str]:
    """The newest run that scored these rows (a name match first); every reason otherwise."""
    reasons: list[str] = []
    matches: list[tuple[ScoringRun, pd.DataFrame, str, bool]] = []
    for candidate in scoring_runs(storage, name):
        predictions = read_table(storage.read(candidate.predictions_key))
        try:
            matched, matched_by, compared = _match(labels, predictions, label, identifier)
        except _Mismatch as exc:
            reasons.append(f"run {candidate.run} ({candidate.predictions_key}): {exc}")
            continue
        matches.append((candidate, matched, matched_by, compared))
        if compared:  # columns agreed row by row: this run scored these rows
            break
    if not matches:
        raise DataValidationError(_no_match(reasons), name)
    if len(matches) > 1:
        runs = ", ".join(m[0].run for m in matches)
        raise DataValidationError(
            [
                f"only identifiers and 'Churn' to go by, and they fit several runs ({runs}): "
                "keep the predictions file's other columns (features, churn_prediction)"
            ],
            name,
        )
    run, matched, matched_by, _ = matches[0]
    return run, matched, matched_by


def _no_match(reasons: list[str]) -> list[str]:
    if not reasons:
        return ["matches no run: no processed file has predictions yet"]
    return ["matches no processed run's predictions", *reasons[:5]]


# --- the step --------------------------------------------------------------------------
def join_labels(
    settings: Settings, storage: DropStorage, processing_key: str, run: str, name: str
) -> LabelsJoin:
    """Join the run's labels file to its scoring run, score it, write the labelled rows."""
    info = storage.stat(processing_key)
    if info is None:
        raise FileNotFoundError(processing_key)
    refuse_oversize(info.size, settings.max_file_bytes, name)
    labels = read_table(storage.read(processing_key))
    label = label_column(labels, name)
    values = parse_labels(labels[label], name)
    if not values.notna().any():
        raise DataValidationError(["no row has a label: fill in 'Churn' (1 or 0)"], name)
    identifier = split_columns(labels.columns, settings.id_columns).identifier
    if identifier and not _unique(labels[identifier]):
        identifier = None  # empty or repeated (a warning when scored): match by rows
    scoring, matched, matched_by = _find(storage, labels, label, identifier, name)
    known = values.notna().to_numpy()
    actual = values[known].to_numpy(np.int8)
    scores = quality_scores(
        actual,
        pd.to_numeric(matched[PREDICTION][known]).to_numpy(np.int8),
        pd.to_numeric(matched[PROBABILITY][known]).to_numpy(float),
    )
    rows_key = _write_labeled_rows(storage, run, name, matched[known], actual)
    record = {"scoring_run": scoring.run, "predictions_key": scoring.predictions_key}
    _create(storage, run_key("processing", run, f"{name}{JOIN_SUFFIX}"), json.dumps(record))
    return LabelsJoin(
        scoring=scoring,
        matched_by=matched_by,
        rows=len(labels),
        labeled_rows=int(known.sum()),
        scores=scores,
        arrived_at=claims.dropped_at(run),
        labeled_rows_key=rows_key,
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
) -> str:
    """The labelled rows as a customer file (UCI headers, ``Churn`` last), for retraining."""
    key = run_key("processing", run, labeled_rows_name(name))
    features = [c for c in RAW_COLUMNS if c in matched.columns and clean_name(c) != TARGET]
    frame = matched[features].apply(pd.to_numeric).reset_index(drop=True)
    label = pd.DataFrame({next(r for r in RAW_COLUMNS if clean_name(r) == TARGET): actual})
    _create(storage, key, csv_bytes(frame, label))
    return key
