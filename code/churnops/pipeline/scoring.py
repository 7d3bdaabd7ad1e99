"""Scoring one file in chunks, in flat memory: read, validate, predict, write, keeping a
seeded sample for drift and every row's labels and probabilities for exact scores.
Columns outside the contract come first in the predictions file, untouched.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from churnops.data.reading import CustomerReader, Part, refuse_oversize
from churnops.data.schema import RAW_NAMES, TARGET, DataValidationError
from churnops.drop.storage import (
    MAX_WRITTEN_NAME_BYTES,
    DropStorage,
    ObjectExists,
    folder_key,
    run_key,
)
from churnops.model.churn_model import LoadedModel
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import DropSettings

log = logging.getLogger(__name__)

#: The drift sample is the same for the same file, run after run.
SAMPLE_SEED = 20_26
#: Rows of a file's seeded uniform sample that drift is measured on (counts, churn rate
#: and quality scores use every row): enough for stable per-column tests, bounded memory.
DRIFT_SAMPLE_ROWS = 50_000


@dataclass
class ScoredFile:
    rows: int
    predictions_key: str
    predicted_churn_rate: float
    #: A seeded uniform sample of the scored rows (all of them for small files).
    sample: pd.DataFrame
    #: Exact over every row; empty when the file has no label.
    quality: dict[str, float]
    notes: tuple[str, ...] = ()
    #: Seconds spent reading and validating, predicting, writing.
    seconds: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    kept_earlier_predictions: bool = False


def predictions_name(name: str, model: LoadedModel) -> str:
    """``<stem>_predictions_<model>_v<version>.csv`` (never equal to ``name`` itself)."""
    return f"{_predictions_prefix(name)}{model.name}_v{model.version}.csv"


def _predictions_prefix(name: str) -> str:
    """``<stem>_predictions_``: how the predictions of ``name`` by any version begin."""
    stem = PurePosixPath(name).name
    for suffix in (".csv.gz", ".parquet", ".csv", ".gz"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}_predictions_"


#: What follows a predictions file's prefix: ``<model>_v<version>.csv``.
_SCORED_BY = re.compile(r"^(?P<model>.+)_v(?P<version>[^_]+)\.csv$")


def predictions_of(name: str, keys: list[str]) -> dict[str, tuple[str, str]]:
    """The keys among ``keys`` that are predictions of ``name``, each with the (model,
    version) its name says: the one rule for telling them apart (scoring, finishing a
    run, joining late labels)."""
    prefix, found = _predictions_prefix(name), {}
    for key in keys:
        base = key.rsplit("/", 1)[-1]
        if base.startswith(prefix) and (match := _SCORED_BY.match(base[len(prefix) :])):
            found[key] = (match["model"], match["version"])
    return found


def score_file(
    drop: DropSettings,
    storage: DropStorage,
    processing_key: str,
    run: str,
    name: str,
    model: LoadedModel,
) -> ScoredFile:
    """Score the run's file into its predictions file; invalid files raise, naming every
    problem. Predictions a dead attempt wrote are kept (the same model on the same rows
    gives the same bytes; a rewrite would leave two versions in a versioned bucket)."""
    check_size(storage, processing_key, name, drop.max_file_bytes)
    refuse_long_names(name, predictions_name(name, model))
    key = run_key("processing", run, predictions_name(name, model))
    earlier = predictions_of(name, storage.list_keys(folder_key("processing", run)))
    kept = key in earlier  # one listing: what an earlier attempt wrote, by any version
    set_aside = set_aside_stale(storage, run, [k for k in earlier if k != key])
    sample = DriftSample(DRIFT_SAMPLE_ROWS, SAMPLE_SEED)
    labels = _Labels()
    seconds = {"read and validate": 0.0, "predict": 0.0, "write": 0.0}
    chunks = 0
    with storage.open_read(processing_key) as stream, _sink(storage, key, kept) as out:
        reader = CustomerReader(
            stream, name=name, id_columns=drop.id_columns, max_bytes=drop.max_file_bytes
        )
        for part in _timed(reader.parts(), seconds, "read and validate"):
            frame = part.frame  # the contract's columns only: pass-through ones never go further
            started = time.perf_counter()
            scored = model.model.score(frame)
            seconds["predict"] += time.perf_counter() - started
            started = time.perf_counter()
            passthrough = part.passthrough
            if drop.neutralise_formulas:
                passthrough = passthrough.apply(neutralised)
            # copy=False: pandas 2 copies every column of a renamed or joined frame.
            written = (passthrough, frame.rename(columns=RAW_NAMES, copy=False), scored)
            out.write(csv_bytes(*written, header=chunks == 0))
            seconds["write"] += time.perf_counter() - started
            rows = pd.concat([frame, scored], axis=1, copy=False)
            sample.add(rows)
            labels.add(rows)
            chunks += 1
    if kept:
        log.info("%s: kept the predictions an earlier attempt wrote", key)
    return ScoredFile(
        rows=reader.rows,
        predictions_key=key,
        predicted_churn_rate=labels.churn_rate(),
        sample=sample.frame(),
        quality=labels.quality(),
        notes=(*reader.notes, *set_aside),
        seconds=seconds,
        chunks=chunks,
        kept_earlier_predictions=kept,
    )


def set_aside_stale(storage: DropStorage, run: str, stale: list[str]) -> list[str]:
    """Move the ``stale`` predictions an earlier attempt wrote with another version (the
    alias moved between attempts) to ``errored/<run>/``, as a restarted run's stale outputs
    go: left beside this attempt's, they reached ``processed/`` naming a version that did
    not score the run, and late labels could be joined to them. A note per file moved."""
    notes = []
    for key in stale:
        found = key.rsplit("/", 1)[-1]
        storage.move(key, run_key("errored", run, found))
        notes.append(f"{found}, by an earlier attempt with another version: in errored/{run}/")
    return notes


def check_size(storage: DropStorage, key: str, name: str, max_bytes: int) -> None:
    """Refuse a file over the limit from its size alone (stat, or HEAD on S3), before reading."""
    info = storage.stat(key)
    if info is None:
        raise FileNotFoundError(key)
    refuse_oversize(info.size, max_bytes, name)


#: Text a spreadsheet evaluates as a formula (CSV injection), and numbers, which it does not.
_FORMULA = re.compile(r"[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralised(column: pd.Series) -> pd.Series:
    """A text column with each cell a spreadsheet would evaluate prefixed by ``'`` (shown,
    not run); signed numbers stay as they are."""
    text = column.astype("string")
    formula = text.str.match(_FORMULA) & ~text.str.fullmatch(_NUMBER)
    if not formula.fillna(False).any():
        return column
    return column.where(~formula.fillna(False).to_numpy(), "'" + column.astype(str))


def refuse_long_names(name: str, *outputs: str) -> None:
    """Refuse a file whose outputs' names would pass the file-name limit, before writing any."""
    longest = max(len(o.encode("utf-8", "surrogateescape")) for o in outputs)
    if longest > MAX_WRITTEN_NAME_BYTES:
        shorter = len(name.encode("utf-8", "surrogateescape")) - longest + MAX_WRITTEN_NAME_BYTES
        problem = (
            f"the file name is too long: its outputs' names would pass {MAX_WRITTEN_NAME_BYTES} "
            f"bytes; rename it to at most {max(shorter, 1)} bytes"
        )
        raise DataValidationError([problem], name)


@contextlib.contextmanager
def _sink(storage: DropStorage, key: str, kept: bool) -> Iterator[IO[bytes]]:
    """A new object, or nowhere when an earlier attempt wrote the predictions."""
    if kept:
        with open(os.devnull, "wb") as nowhere:
            yield nowhere
        return
    try:
        with storage.create_streamed(key) as out:
            yield out
    except ObjectExists:
        log.info("%s: kept the predictions an earlier attempt wrote", key)


def _timed(chunks: Iterator[Part], seconds: dict[str, float], step: str) -> Iterator[Part]:
    while True:
        started = time.perf_counter()
        chunk = next(chunks, None)
        seconds[step] += time.perf_counter() - started
        if chunk is None:
            return
        yield chunk


def csv_bytes(*frames: pd.DataFrame, header: bool = True) -> bytes:
    """The columns of ``frames``, side by side, as CSV written by Arrow (twice as fast as
    ``to_csv``): numbers as the shortest text that reads back the same, never missing;
    text as it is (missing: empty), quoted only when a value of the chunk needs it."""
    columns = {name: column for frame in frames for name, column in frame.items()}
    if len(columns) < sum(len(frame.columns) for frame in frames):
        raise ValueError("a column name repeats: the file would not read back")
    table = pa.table({name: _arrow(name, column) for name, column in columns.items()})
    rows = _arrow_csv(table)
    if not header:
        return rows
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(columns)  # quotes a name only if needed
    return line.getvalue().encode() + rows


def _arrow(name: str, column: pd.Series) -> pa.Array:
    if column.dtype.kind in "iuf":
        if column.isna().to_numpy().any():
            raise ValueError("missing values cannot be written: the file would not read back")
        return pa.array(column.to_numpy())
    if column.dtype.kind == "O" or isinstance(column.dtype, pd.StringDtype):
        try:
            return pa.array(column.to_numpy(), type=pa.string(), from_pandas=True)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise ValueError(f"column {name!r} holds values that are not text: {exc}") from exc
    raise ValueError(f"only int, float and text columns can be written, not {name}: {column.dtype}")


def _arrow_csv(table: pa.Table) -> bytes:
    """Rows without quotes, unless a value needs them (Arrow then quotes every text value)."""
    try:
        return _written(table, "none")
    except pa.ArrowInvalid:  # a comma, quote or line break in a text value
        return _written(table, "needed")


def _written(table: pa.Table, quoting: str) -> bytes:
    out = pa.BufferOutputStream()
    options = pa_csv.WriteOptions(include_header=False, quoting_style=quoting)
    pa_csv.write_csv(table, out, options)
    return out.getvalue().to_pybytes()


class DriftSample:
    """A seeded uniform sample of ``size`` rows over a stream of chunks, in one pass: the
    rows with the ``size`` smallest random keys, whatever the chunking."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.rows: pd.DataFrame | None = None
        self.keys = np.empty(0)

    def add(self, chunk: pd.DataFrame) -> None:
        keys = self.rng.random(len(chunk))
        if self.rows is not None and len(self.rows) >= self.size:
            below = keys < self.keys.max()
            chunk, keys = chunk[below], keys[below]
        rows = chunk if self.rows is None else pd.concat([self.rows, chunk])
        keys = np.concatenate([self.keys, keys])
        if len(rows) > self.size:
            keep = np.sort(np.argpartition(keys, self.size - 1)[: self.size])
            rows, keys = rows.iloc[keep], keys[keep]
        self.rows, self.keys = rows, keys

    def frame(self) -> pd.DataFrame:
        return self.rows.sort_index() if self.rows is not None else pd.DataFrame()


class _Labels:
    """Predictions (and labels, when present) of every row, compactly, for exact scores."""

    def __init__(self) -> None:
        self.rows = self.churners = 0
        self.predicted: list[np.ndarray] = []
        self.probability: list[np.ndarray] = []
        self.actual: list[np.ndarray] = []

    def add(self, rows: pd.DataFrame) -> None:
        predicted = rows[PREDICTION].to_numpy(np.int8)
        self.rows, self.churners = self.rows + len(rows), self.churners + int(predicted.sum())
        if TARGET in rows.columns:  # only a labeled file is scored: keep what that needs
            self.predicted.append(predicted)
            self.probability.append(rows[PROBABILITY].to_numpy(np.float32))
            self.actual.append(rows[TARGET].to_numpy(np.int8))

    def churn_rate(self) -> float:
        return self.churners / self.rows if self.rows else float("nan")

    def quality(self) -> dict[str, float]:
        """F1, precision, recall, accuracy, ROC AUC and log loss; undefined ones left out."""
        if not self.actual:
            return {}
        return quality_scores(
            np.concatenate(self.actual),
            np.concatenate(self.predicted),
            np.concatenate(self.probability),
        )


def quality_scores(
    actual: np.ndarray, predicted: np.ndarray, probability: np.ndarray
) -> dict[str, float]:
    """Exact scores of churn (label 1), undefined ones left out: scikit-learn's numbers (a
    test compares them) in 0.5 s of CPU for 10M rows instead of 4.9 s, and 300 MB less."""
    churner, flagged = np.asarray(actual) == 1, np.asarray(predicted) == 1
    probability = np.asarray(probability)
    tp = int(np.count_nonzero(flagged & churner))
    fp = int(np.count_nonzero(flagged & ~churner))
    fn = int(np.count_nonzero(~flagged & churner))
    scores = {"accuracy": float(np.count_nonzero(flagged == churner) / len(churner))}
    if tp + fp:
        scores["precision"] = tp / (tp + fp)
    if tp + fn:
        scores["recall"] = tp / (tp + fn)
    if tp + fp + fn:
        scores["f1"] = 2 * tp / (2 * tp + fp + fn)
    if churner.any() and not churner.all():
        scores["roc_auc"] = roc_auc(churner, probability)
    scores["log_loss"] = log_loss(churner, probability)
    return scores


def roc_auc(churner: np.ndarray, probability: np.ndarray) -> float:
    """The chance that a churner scores above a non-churner, a tie counting half (ROC AUC):
    each churner's place among the sorted non-churners."""
    others = np.sort(probability[~churner])
    churners = probability[churner]
    below = np.searchsorted(others, churners, side="left")
    ties = np.searchsorted(others, churners, side="right") - below
    wins = int(below.sum()) + int(ties.sum()) / 2
    return wins / (len(churners) * len(others))


def log_loss(churner: np.ndarray, probability: np.ndarray) -> float:
    """Mean cross-entropy, the probability clipped to [eps, 1 - eps] of its float type (as
    scikit-learn clips), summed in float64."""
    kind = probability.dtype if np.issubdtype(probability.dtype, np.floating) else np.float64
    eps = np.finfo(kind).eps
    clipped = np.clip(probability, eps, 1 - eps)
    total = np.log(clipped[churner]).sum(dtype=np.float64)
    total += np.log1p(-clipped[~churner]).sum(dtype=np.float64)
    return float(-total / len(clipped))
