"""The per-run Prefect summary (markdown artifact) of each kind of outcome."""

from __future__ import annotations

from churnops.pipeline.flow import outcome_markdown
from churnops.pipeline.per_file import FileOutcome


def test_an_errored_file_says_why_and_where_its_log_is() -> None:
    outcome = FileOutcome(
        "bad.csv", "errored", "bad.csv is invalid: column 'age' | out of range", run="R", attempt=1
    )
    markdown = outcome_markdown(outcome)
    assert markdown.startswith("### bad.csv\n")
    assert "| outcome | **errored** |" in markdown
    assert "column 'age' / out of range" in markdown  # a '|' would break the table
    assert "| file log | `data/logs/R/bad.csv.log` |" in markdown
    assert "Evidently" not in markdown


def test_a_skipped_trigger_has_no_run() -> None:
    markdown = outcome_markdown(FileOutcome("a.csv", "skipped", "already taken by a run"))
    assert "| outcome | **skipped** |" in markdown and "file log" not in markdown
