"""Empty and repeated customer identifiers, over a file read in chunks: not errors, but
noted in the file's log, so whoever acts on the predictions knows which rows cannot be
matched to one customer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnops.data.schema import shorten

#: Rows named per kind of problem; the count covers every row.
EXAMPLES = 5


class IdentifierCheck:
    """Counts one identifier column's empty values and those seen on an earlier row.

    Repeats are found by a sorted array of the 64-bit hash of each distinct value: 160 MB
    for a file of 20M rows; a hash collision (1 in 100,000 there) notes one row too many.
    """

    def __init__(self, column: str, unit: str = "line", first: int = 2) -> None:
        self.column = column
        self.unit, self.first = unit, first  # index 0 is line 2, or Parquet row 1
        self.empty = 0
        self.repeated = 0
        self._empty_rows: list[int] = []
        self._repeats: list[tuple[str, int]] = []
        self._seen = np.empty(0, dtype=np.int64)

    def add(self, values: pd.Series) -> None:
        """One chunk of the column (text), indexed by data row from 0."""
        empty = _is_empty(values)
        self.empty += int(empty.sum())
        self._empty_rows += values.index[empty][: EXAMPLES - len(self._empty_rows)].tolist()
        filled = values[~empty]
        repeat = self._repeat_mask(np.fromiter(map(hash, filled), np.int64, len(filled)))
        self.repeated += int(repeat.sum())
        for row, value in filled[repeat].head(EXAMPLES - len(self._repeats)).items():
            self._repeats.append((str(value), int(row)))

    def _repeat_mask(self, hashes: np.ndarray) -> np.ndarray:
        """Which values were seen before, in this chunk or an earlier one."""
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
        """One line per kind of problem found, with its count and the first rows."""
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
