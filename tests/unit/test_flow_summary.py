"""The per-run Prefect summary (markdown artifact) of each kind of outcome, rendered
as GFM (tables on) the way the Prefect UI renders it."""

from __future__ import annotations

import pytest
from markdown_it import MarkdownIt

from churnops.data.schema import DataValidationError
from churnops.pipeline.flow import outcome_markdown
from churnops.pipeline.per_file import FileOutcome


def render(outcome: FileOutcome) -> str:
    return MarkdownIt("commonmark").enable("table").render(outcome_markdown(outcome))


def test_a_rejected_file_lists_every_reason_below_one_table() -> None:
    problems = ["column 'age' | out of range (line 9)", "'status' has *2* value(s) like 'x_y'"]
    error = DataValidationError(problems, source="bad_file.csv")
    html = render(FileOutcome("bad_file.csv", "errored", str(error), run="R", attempt=1))
    assert html.startswith("<h3>bad_file.csv</h3>")
    assert html.count("<table>") == 1 and html.count("<tr>") == 3  # header, outcome, log
    assert "<td>outcome</td>\n<td><strong>rejected</strong></td>" in html
    assert "<td>file log</td>\n<td><code>data/logs/R/bad_file.csv.log</code></td>" in html
    assert "<li>bad_file.csv is invalid (2 problem(s)):</li>" in html
    assert "<li>column 'age' | out of range (line 9)</li>" in html
    assert "<li>'status' has *2* value(s) like 'x_y'</li>" in html
    assert "Evidently" not in html


def test_a_processed_file_keeps_its_facts_in_the_table_and_its_summary_as_a_list() -> None:
    outcome = FileOutcome(
        "a|b.csv",
        "processed",
        "drifted 2 columns (share 0.15); f1 0.900; report http://e/r; no threshold crossed",
        run="R",
        model_version="3",
        predictions_key="data/processed/R/a|b_predictions.csv",
        report_url="http://e/r",
    )
    html = render(outcome)
    assert html.count("<table>") == 1 and html.count("<tr>") == 6
    assert "<td><code>data/processed/R/a|b_predictions.csv</code></td>" in html
    assert '<td><a href="http://e/r">open</a></td>' in html
    assert "<li>f1 0.900</li>" in html and "<li>no threshold crossed</li>" in html


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_every_other_outcome_renders_one_table(status: str) -> None:
    html = render(FileOutcome("a.csv", status, "OperationalError: db down; retry", run="R"))
    assert html.count("<table>") == 1 and f"<strong>{status}</strong>" in html
    assert "<li>OperationalError: db down</li>" in html


def test_a_skipped_trigger_has_no_run() -> None:
    html = render(FileOutcome("a.csv", "skipped", "already taken by a run"))
    assert "<strong>skipped</strong>" in html and "file log" not in html
