"""The benchmarks' verdict lines: what they say was checked is what the run measured."""

from __future__ import annotations

from benchmarks import pipeline


def test_a_pipeline_run_of_untargeted_sizes_checks_no_target():
    assert pipeline.targets_verdict([], [1050, 100_000]) == (
        "no target checked: the targets are for 1,000,000 and 10,000,000 rows"
    )


def test_a_pipeline_run_of_one_targeted_size_names_the_other():
    assert pipeline.targets_verdict([], [1050, 1_000_000]) == (
        "all targets met (10,000,000 rows not measured)"
    )
    assert pipeline.targets_verdict(["1,000,000 rows: 6.1 s"], [1050, 1_000_000]) == (
        "missed: 1,000,000 rows: 6.1 s (10,000,000 rows not measured)"
    )
    assert pipeline.targets_verdict([], [1050, 1_000_000, 10_000_000]) == "all targets met"
