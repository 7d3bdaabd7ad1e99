"""The benchmarks' own lines: a verdict says what the run measured; missing data is one line."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks import attribution, latency, model_quality, pipeline, recovery
from churnops.settings import get_settings


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


def test_the_quality_bar_names_each_miss_with_its_file():
    misses = model_quality.bar_misses("a.csv", 0.819, 0.974) + model_quality.bar_misses(
        "b.csv", 0.772, 0.96996
    )
    assert model_quality.bar_verdict(misses) == (
        "ours: the bar missed: F1 0.772 < 0.815 on b.csv; ROC AUC 0.96996 < 0.97 on b.csv"
    )
    assert model_quality.bar_verdict([]) == "ours: the bar met"


def test_missing_data_files_are_named_in_one_line(tmp_path: Path) -> None:
    """benchmark-model and benchmark-features were pandas' FileNotFoundError traceback."""
    (tmp_path / "a.csv").write_text("x\n")
    settings = get_settings(churn_data_dir=tmp_path)
    assert pipeline.data_files(settings, "a.csv") == [tmp_path / "a.csv"]
    with pytest.raises(SystemExit) as missing:
        pipeline.data_files(settings, "a.csv", "b.csv", "c.csv")
    assert str(missing.value) == (
        f"error: b.csv, c.csv not in {tmp_path}: run `make data` or set CHURN_DATA_DIR"
    )


def test_the_attribution_benchmark_times_the_configured_budget_by_default() -> None:
    """docs/benchmarks.md says 500 and 50,000 rows; it timed 1,000 and 50,000."""
    assert attribution.row_budgets(get_settings().monitoring.attribution_sample_rows) == [
        500,
        50_000,
    ]
    assert attribution.row_budgets(0) == [50_000]  # attribution off: no file budget


def test_a_pipeline_size_given_twice_or_the_source_s_is_measured_once():
    assert pipeline.big_sizes([1050, 10_000, 10_000, 1_000_000]) == [10_000, 1_000_000]


def test_a_ctrl_c_while_the_benchmark_s_platform_starts_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while benchmark-latency or -recovery started its platform (a first start
    trains: minutes) left that ``churnops up`` running: it runs in a session of its own,
    which the terminal's SIGINT does not reach."""
    up = tmp_path / "churnops"
    up.write_text("#!/bin/sh\necho $$\nexec sleep 600\n")
    up.chmod(0o755)
    monkeypatch.setattr(latency, "bin_path", lambda name: str(up))
    log = tmp_path / "home" / "benchmark-up.log"

    class Starting:
        @staticmethod
        def load(home: Path) -> None:
            while not log.read_text().strip():  # the stand-in runs
                time.sleep(0.01)
            raise KeyboardInterrupt

    monkeypatch.setattr(latency, "PlatformState", Starting)
    with pytest.raises(KeyboardInterrupt):
        latency.start_platform(get_settings(churnops_home=tmp_path / "home"))
    pid = int(log.read_text())
    try:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_latency_baseline_leaves_no_scratch_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each benchmark-latency run left its baseline's home (drop folder, metrics database,
    Evidently workspace: 2.6 MB) in the temporary folder."""
    from churnops.pipeline import per_file

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    processed = per_file.FileOutcome("baseline.csv", "processed", "")
    monkeypatch.setattr(per_file, "process", lambda settings, storage, key: processed)
    monkeypatch.setattr(latency, "figures", lambda settings, name: {"monitor": 0.1})
    source = tmp_path / "source.csv"
    source.write_text("x\n")
    timings, monitors = latency.baseline(get_settings(), source, repeats=2)
    assert len(timings) == len(monitors) == 2
    assert list(tmp_path.iterdir()) == [source]


def test_a_recovery_platform_that_does_not_start_leaves_no_copy_of_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its copy of the seed home was made before the try that removes it."""

    def not_started(*_: object) -> None:
        raise SystemExit("the platform did not start")

    (tmp_path / "seed" / "mlflow").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    monkeypatch.setattr(recovery, "start_platform", not_started)
    with pytest.raises(SystemExit, match="did not start"):
        recovery.with_platform(2, tmp_path / "rows.csv", None, tmp_path / "seed")
    assert list((tmp_path / "scratch").iterdir()) == []
