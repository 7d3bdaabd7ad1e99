"""Which processed files a retraining learns from: labeled ones, newest K, last D days."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from churnops.drop import claims
from churnops.drop.storage import DropStorage, open_storage, stage_key
from churnops.pipeline.per_file import finish
from churnops.pipeline.retraining import labeled_files
from churnops.settings import Settings, get_settings

NOW = datetime.now(UTC)


def drop(storage: DropStorage, name: str, data: bytes, days_ago: float, done: bool = True) -> str:
    """Claim a file dropped ``days_ago`` and (unless not ``done``) finish it: its run id."""
    key = stage_key("input", name)
    storage.create(key, data)
    stamp = (NOW - timedelta(days=days_ago)).timestamp()
    os.utime(storage.path(key), (stamp, stamp))  # type: ignore[attr-defined]
    held = claims.claim(storage, key, lease_seconds=30)
    if done:
        finish(storage, held.run, held.name, "processed")
    return held.run


@pytest.fixture
def world(tmp_path: Path, data_dir: Path) -> tuple[Settings, DropStorage]:
    settings = get_settings(churnops_home=tmp_path)
    storage = open_storage(settings.drop)
    labeled = (data_dir / "customer_churn_1.csv").read_bytes()
    lines = labeled.decode().splitlines()
    unlabeled = "\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n"
    assert lines[0].rsplit(",", 1)[-1].strip() == "Churn"  # what unlabeled drops
    drop(storage, "a.csv", labeled, days_ago=5)
    drop(storage, "b.csv", unlabeled.encode(), days_ago=3)
    drop(storage, "notes.csv", b"not a customer file\n", days_ago=2.5)
    drop(storage, "c.csv", labeled, days_ago=2)
    drop(storage, "d.csv", labeled, days_ago=1)
    return settings, storage


def names(settings: Settings, storage: DropStorage, **window: object) -> list[str]:
    chosen = settings.replace(**window)
    return [f.name for f in labeled_files(chosen.model, chosen.drop, storage, NOW)]


def test_only_labeled_customer_files_oldest_first(world) -> None:
    settings, storage = world
    assert names(settings, storage) == ["a.csv", "c.csv", "d.csv"]
    (first, *_) = labeled_files(settings.model, settings.drop, storage, NOW)
    assert first.key.startswith("data/processed/") and first.rows == 1050
    assert first.dropped_at is not None and abs(first.dropped_at - (NOW - timedelta(5))) < (
        timedelta(seconds=2)
    )


def test_the_newest_k_labeled_files(world) -> None:
    settings, storage = world
    assert names(settings, storage, retrain_window_files=2) == ["c.csv", "d.csv"]
    assert names(settings, storage, retrain_window_files=1) == ["d.csv"]


def test_the_last_d_days(world) -> None:
    settings, storage = world
    assert names(settings, storage, retrain_window_days=4) == ["c.csv", "d.csv"]
    assert names(settings, storage, retrain_window_days=1.5) == ["d.csv"]
    assert names(settings, storage, retrain_window_days=6, retrain_window_files=1) == ["d.csv"]


def test_the_run_that_asked_counts_while_it_is_still_finishing(world, data_dir: Path) -> None:
    settings, storage = world
    labeled = (data_dir / "customer_churn_1.csv").read_bytes()
    run = drop(storage, "e.csv", labeled, days_ago=0, done=False)  # still in processing/
    assert names(settings, storage)[-1] == "d.csv"
    window = labeled_files(settings.model, settings.drop, storage, NOW, include_run=run)
    assert [f.name for f in window][-1] == "e.csv"
    assert window[-1].key.startswith("data/processing/")
