"""Which rows a training fits and which it is judged on: rows known by content, not by file;
which processed files a retraining learns from (labeled ones, newest K, last D days); and
`make benchmark-model`, whose F1 on later files is only a test where the version never
learned them."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.model_quality import retrained_rows
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.drop import claims
from churnops.drop.storage import DropStorage, open_storage, stage_key
from churnops.model.registry import LabeledFile, Split, gate, refit_rows, row_keys, split_rows
from churnops.model.training import evaluate
from churnops.pipeline.per_file import finish
from churnops.pipeline.retraining import labeled_files
from churnops.settings import Settings, get_settings


@pytest.fixture
def files(data_dir: Path) -> tuple[LabeledFile, pd.DataFrame, pd.DataFrame]:
    def rows(name: str) -> pd.DataFrame:
        return load_customer_file(data_dir / name, require_target=True)

    training = rows("customer_churn_0.csv")
    return (
        LabeledFile("c0.csv", "c0.csv", "0" * 64, training),
        rows("customer_churn_1.csv"),
        rows("customer_churn_synthetic_1.csv"),
    )


def labeled(name: str, frame: pd.DataFrame) -> LabeledFile:
    return LabeledFile(name, name, name * 8, frame)


def keys(frame: pd.DataFrame) -> set[str]:
    return {k.split(".")[0] for k in row_keys(frame)}


def test_a_file_dropped_twice_and_its_late_labels_count_once_newest_labels_win(files) -> None:
    training, first, _ = files
    relabeled = first.assign(**{TARGET: 1 - first[TARGET]})
    split = split_rows(
        training,
        [labeled("a.csv", first), labeled("a-again.csv", first), labeled("late.csv", relabeled)],
        set(),
    )
    assert isinstance(split, Split)
    assert len(split.holdout) == len(first)  # once, not three times
    assert (split.holdout[TARGET].to_numpy() == relabeled[TARGET].to_numpy()).all()
    assert not keys(split.fit) & keys(split.holdout)  # never in the fit
    assert not keys(split.fit) & keys(split.training_holdout)
    assert set(split.fit_rows) == {0}  # only the training file's fit split is left to fit


def test_rows_the_champion_learned_from_leave_the_holdout(files) -> None:
    training, first, synthetic = files
    window = [labeled("s.csv", synthetic), labeled("c1.csv", first)]
    seen = set(row_keys(first))
    assert "unseen by the champion" in split_rows(training, window, seen)
    half = set(row_keys(first).iloc[: len(first) // 2])
    split = split_rows(training, window, half)
    copies = row_keys(first).str.split(".").str[0].isin(keys(first.head(len(first) // 2)))
    assert len(split.holdout) == len(first) - copies.sum()  # the file repeats customers


def test_a_copy_of_a_row_the_champion_learned_is_not_in_its_holdout(files) -> None:
    """A file holding each row twice (an export appended to itself): the second copy of a
    row the champion learned was in the holdout (its occurrence, ``.1``, is not the learned
    ``.0``), and the champion was scored on rows it learned, against a challenger that had
    not, for `train --data` and `retrain` alike."""
    training, first, _ = files
    learned = set(split_rows(training, [], set()).fit["_key"])  # a champion's fit rows
    twice = pd.concat([training.frame] * 2, ignore_index=True)
    split = split_rows(labeled("twice.csv", twice), [], learned)
    assert isinstance(split, Split)
    assert not keys(split.holdout) & {k.split(".")[0] for k in learned}
    learned = set(row_keys(first))  # a champion that learned a labeled file once
    again = split_rows(training, [labeled("twice.csv", pd.concat([first] * 2))], learned)
    assert again == "no labeled rows of twice.csv are unseen by the champion: nothing new to " + (
        "judge a challenger on"
    )


def test_a_small_or_one_class_holdout_judges_nothing(files) -> None:
    training, first, _ = files
    ten = split_rows(training, [labeled("ten.csv", first.head(10))], set())
    assert ten == "ten.csv has 10 labeled rows, fewer than the 100 a holdout needs"
    stayed = first[first[TARGET] == 0]
    one_class = split_rows(training, [labeled("stayed.csv", stayed)], set())
    stayed_once = len(stayed.drop_duplicates())  # the file repeats some customers
    assert one_class.startswith(
        f"stayed.csv has 0 churned and {stayed_once} stayed rows ({len(stayed)} with copies)"
    )


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        ("one churner", "has 1 churned and"),
        ("five rows", "has 5 labeled rows, fewer than the 100 a holdout needs"),
    ],
)
def test_a_training_file_too_small_to_split_judges_nothing(files, rows: str, why: str) -> None:
    """`churnops train --data` on a file with one churner, or of five rows, ended in a
    traceback (scikit-learn's "The least populated classes in y have only 1 member", "The
    test_size = 1 should be greater or equal to the number of classes"): a stratified split
    needs two rows of each class. Such a file cannot give a holdout: it judges nothing."""
    training, _, _ = files
    frame = training.frame
    if rows == "one churner":
        frame = pd.concat([frame[frame[TARGET] == 0], frame[frame[TARGET] == 1].head(1)])
    else:
        frame = pd.concat([frame[frame[TARGET] == c].head(n) for c, n in ((0, 3), (1, 2))])
    refusal = split_rows(labeled("small.csv", frame), [], set())
    assert isinstance(refusal, str) and refusal.startswith("small.csv " + why), refusal


def test_copies_of_a_row_do_not_make_a_holdout_big_enough(files) -> None:
    """A labeled file of 12 customers, each row ten times (an export appended to itself):
    120 rows, 60 churned, passed the 100 rows and 10 of each class a holdout needs, and a
    challenger was judged on the F1 of 6 churners. A row and its copies count once."""
    training, first, _ = files
    twelve = pd.concat([first[first[TARGET] == c].head(6) for c in (0, 1)])
    repeated = pd.concat([twelve] * 10, ignore_index=True)
    refusal = split_rows(training, [labeled("repeated.csv", repeated)], set())
    assert refusal == (
        "repeated.csv has 12 labeled rows (120 with copies), fewer than the 100 a holdout needs"
    )


def scores(f1_of: float) -> object:
    """An evaluation whose F1 is about ``f1_of`` (4 rows scored)."""
    y = [1, 1, 0, 0]
    proba = {1.0: [0.9, 0.9, 0.1, 0.1], 0.8: [0.9, 0.9, 0.9, 0.1], 0.5: [0.9, 0.1, 0.9, 0.1]}
    proba = proba[f1_of]
    return evaluate(pd.Series(y).to_numpy(), pd.Series(proba).to_numpy(), 0.5)


def test_the_gate_with_and_without_a_champion() -> None:
    settings = get_settings()
    good, poor = scores(1.0), scores(0.5)
    assert gate(settings, good, None).promote
    assert not gate(settings, poor, None).promote  # minimums decide without a champion
    assert not gate(settings, poor, ("1", poor)).promote  # a tie keeps the champion
    below = get_settings(min_f1=0.9)  # MIN_F1 stops at 1
    better = gate(below, scores(0.8), ("1", poor))
    assert better.promote and "quality still below its minimum" in better.reason
    assert gate(settings, poor, ("1", good), force=True).reason.startswith("forced despite")


def test_a_training_judges_the_champion_only_on_holdout_rows_it_did_not_learn(files) -> None:
    """``churnops train --data`` naming a file a retraining had learned from: the champion
    was scored on its own training rows (F1 0.919, ROC AUC 0.998 against the challenger's
    0.800), and the challenger refused on that."""
    training, _, _ = files
    holdout = split_rows(training, [], set()).holdout
    learned = set(holdout["_key"].iloc[:50])
    split = split_rows(training, [], learned)
    assert len(split.holdout) == len(holdout) - 50
    assert not set(split.holdout["_key"]) & learned
    assert "unseen by the champion" in split_rows(training, [], set(holdout["_key"]))


def test_a_retrained_version_learns_no_copy_of_the_training_files_split(files) -> None:
    """customer_churn_1.csv repeats 16 rows of the training file's holdout split: the
    registered version, refit with the newest holdout, learned them, and the next verdict
    scored it on that split as on rows it never saw."""
    training, first, _ = files
    split = split_rows(training, [labeled("c1.csv", first)], set())
    digests = split.holdout["_key"].str.split(".").str[0]
    repeated = int(digests.isin(keys(split.training_holdout)).sum())
    assert repeated == 16  # the data repeats customers across files
    refit = refit_rows(split, retraining=True)
    assert not keys(refit) & keys(split.training_holdout)
    assert len(refit) == len(split.fit) + len(split.holdout) - repeated
    assert refit_rows(split, retraining=False) is split.fit


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


# --- the retraining's window ---------------------------------------------------------------
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
