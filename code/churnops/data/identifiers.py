"""Empty and repeated customer identifiers, over a file read in chunks.

Neither makes a file invalid: its rows are still scored, and the counts with
the first few rows go into the file's log, so whoever acts on the predictions
knows which rows cannot be matched to one customer. Which column is the
identifier is decided by :func:`churnops.data.schema.split_columns`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnops.data.schema import shorten

#: Rows named per kind of problem; the count covers every row.
EXAMPLES = 5


class IdentifierCheck:
    """Counts the empty values of one identifier column and the values seen on an earlier row.

    Repeats are found across chunks by keeping the hash of every distinct value
    seen so far in one sorted array: 8 bytes per distinct identifier (16 while
    a chunk is merged in), 160 MB for the 20M rows of a file at ``MAX_FILE_BYTES``.
    Python's string hash (salted per process) is only compared within one read;
    two different identifiers share a 64-bit hash with odds of about n^2 / 2^65,
    1 in 100,000 for 20M identifiers, and then one row is reported repeated.
    """

    def __init__(self, column: str, unit: str = "line", first: int = 2) -> None:
        self.column = column
        #: How rows are named: file lines (index 0 is line 2), or Parquet rows from 1.
        self.unit, self.first = unit, first
        self.empty = 0
        self.repeated = 0
        self._empty_rows: list[int] = []
        self._repeats: list[tuple[str, int]] = []
        self._seen = np.empty(0, dtype=np.int64)

    def add(self, values: pd.Series) -> None:
        """One chunk of the column (text); its index numbers the file's data rows from 0."""
        empty = _is_empty(values)
        self.empty += int(empty.sum())
        self._empty_rows += values.index[empty][: EXAMPLES - len(self._empty_rows)].tolist()
        filled = values[~empty]
        repeat = self._repeat_mask(np.fromiter(map(hash, filled), np.int64, len(filled)))
        self.repeated += int(repeat.sum())
        for row, value in filled[repeat].head(EXAMPLES - len(self._repeats)).items():
            self._repeats.append((str(value), int(row)))

    def _repeat_mask(self, hashes: np.ndarray) -> np.ndarray:
        """Which values were seen before: on an earlier row of this chunk or in an earlier chunk."""
        order = np.argsort(hashes, kind="stable")  # equal hashes keep their row order
        ordered = hashes[order]
        seen = np.zeros(len(ordered), dtype=bool)
        seen[1:] = ordered[1:] == ordered[:-1]
        at = np.searchsorted(self._seen, ordered)  # sorted needles: a walk, not random probes
        if len(self._seen):
            seen |= self._seen[np.minimum(at, len(self._seen) - 1)] == ordered
        self._seen = np.insert(self._seen, at[~seen], ordered[~seen])  # stays sorted
        repeat = np.empty(len(hashes), dtype=bool)
        repeat[order] = seen
        return repeat

    def notes(self) -> list[str]:
        """One line per kind of problem found, with its count and the first rows (file lines)."""
        notes = []
        if self.empty:
            rows = ", ".join(str(r + self.first) for r in self._empty_rows)
            notes.append(
                f"identifier '{self.column}' is empty on {self.empty} row(s)"
                f" ({self.unit}s {rows}{_more(self.empty)})"
            )
        if self.repeated:
            shown = ", ".join(
                f"'{shorten(value)}' at {self.unit} {row + self.first}"
                for value, row in self._repeats
            )
            notes.append(
                f"identifier '{self.column}' repeats an earlier row's value on "
                f"{self.repeated} row(s): {shown}{_more(self.repeated)}"
            )
        return notes


def _is_empty(values: pd.Series) -> np.ndarray:
    """Missing or blank (a CSV field of spaces is read as '', the spaces skipped)."""
    text = values.to_numpy(dtype=object)
    return pd.isna(text) | (text == "")


def _more(count: int) -> str:
    return ", ..." if count > EXAMPLES else ""
