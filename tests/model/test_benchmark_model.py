"""`make benchmark-model` reports the staging version's F1 on later files: only a test
when the version never learned them."""

from __future__ import annotations

from pathlib import Path

from benchmarks.model_quality import retrained_rows
from churnops.data.reading import load_customer_file
from churnops.model.registry import row_keys


def test_a_version_retrained_on_a_benchmark_file_is_refused(data_dir: Path) -> None:
    """On a home whose staging version a retraining had fitted on customer_churn_1.csv, the
    benchmark printed its F1 there as the model's quality (rows it learned from)."""
    training = load_customer_file(data_dir / "customer_churn_0.csv", require_target=True)
    later = load_customer_file(data_dir / "customer_churn_1.csv", require_target=True)
    trained = set(row_keys(training))
    assert retrained_rows(trained, training, later) == 0  # a copy of a training row is not
    in_training = row_keys(later).str.split(".").str[0].isin({k.split(".")[0] for k in trained})
    retrained = trained | set(row_keys(later))
    assert retrained_rows(retrained, training, later) == len(later) - int(in_training.sum())
