"""Visible progress for long steps (training trials and folds) with rich."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:  # training loads XGBoost, Optuna and scikit-learn: not for `--help`
    from churnops.model.training import Progress as ProgressCallback


@contextmanager
def progress_bars(console: Console, prefix: str = "") -> Iterator[ProgressCallback]:
    """A ``(what, done, total)`` callback drawing one bar per kind of step."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bars:
        tasks: dict[str, int] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(f"{prefix}{what}s", total=total)
            bars.update(tasks[what], completed=done, total=total)

        yield report
