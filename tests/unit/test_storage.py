"""The local drop folder, key helpers and the per-file log."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from churnops.drop import claims
from churnops.drop.storage import (
    MAX_KEY_BYTES,
    FileLog,
    LocalDropStorage,
    ObjectExists,
    S3DropStorage,
    brief,
    log_key,
    name_from_key,
    name_problem,
    open_drop,
    open_storage,
    run_key,
    run_name,
    split_run_key,
    stage_key,
)
from churnops.settings import get_settings

#: A backslash is a character of a POSIX file name, as of an S3 key: no separator.
NAMES = ["customer_churn_1.csv", "march batch.csv", "a+b.csv", "clientes_año_ü.csv", "a\\b.csv"]


@pytest.fixture
def storage(tmp_path: Path) -> LocalDropStorage:
    store = LocalDropStorage(tmp_path)
    store.create_layout()
    return store


def test_keys() -> None:
    assert stage_key("input", "a.csv") == "data/input/a.csv"
    assert stage_key("errored", "a.csv") == "data/errored/a.csv"
    assert run_key("processed", "R1", "a.csv") == "data/processed/R1/a.csv"
    assert log_key("R1", "a.csv") == "data/logs/R1/a.csv.log"
    assert name_from_key("data/input/march batch.csv") == "march batch.csv"
    assert split_run_key("data/processing/R1/a b.csv") == ("processing", "R1", "a b.csv")
    assert split_run_key("data/input/a.csv") is None
    assert split_run_key("data/processing/R1/x/a.csv") is None


@pytest.mark.parametrize(
    ("function", "argument", "message"),
    [
        *((name_from_key, key, "data/input/") for key in ("data/processing/a.csv", "input/a.csv")),
        *((name_from_key, key, "data/input/") for key in ("data/input/", "data/input/sub/a.csv")),
        *((partial(stage_key, "input"), name, "invalid file name") for name in ("", "x/y", "..")),
        *((lambda run: run_key("processed", run, "a.csv"), run, "invalid") for run in ("", "..")),
        (lambda stage: stage_key(stage, "a.csv"), "done", "unknown stage 'done'"),
    ],
)
def test_keys_outside_the_layout_are_refused(function: Any, argument: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        function(argument)


def test_open_storage_local_creates_layout(tmp_path: Path) -> None:
    settings = get_settings(drop_storage="local", local_drop_dir=tmp_path / "drop")
    store = open_storage(settings.drop)
    assert isinstance(store, LocalDropStorage)
    for folder in ("input", "processing", "processed", "errored", "logs"):
        assert (tmp_path / "drop" / "data" / folder).is_dir()


def test_the_drop_uri_names_the_storage_whatever_the_settings_say(tmp_path: Path) -> None:
    """A flow run reads where its trigger saw the file, not where DROP_STORAGE points."""
    s3_settings = get_settings(drop_storage="s3", drop_bucket="configured")
    folder = tmp_path / "a drop ü"
    local = open_drop(folder.as_uri())
    assert isinstance(local, LocalDropStorage)
    assert local.root == folder.resolve()
    assert open_drop(local.uri).root == local.root  # round trip
    remote = open_drop("s3://from-the-event")
    assert isinstance(remote, S3DropStorage)
    assert remote.bucket == "from-the-event"
    assert s3_settings.drop.drop_uri == "s3://configured"
    local_settings = get_settings(drop_storage="local", local_drop_dir=folder)
    assert open_drop(local_settings.drop.drop_uri).root == folder.resolve()


@pytest.mark.parametrize("uri", ["churnops-drop", "s3://", "s3://bucket/data", "http://x/y", ""])
def test_a_drop_uri_that_names_no_storage_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="neither s3://<bucket> nor file:///<folder>"):
        open_drop(uri)


@pytest.mark.parametrize("name", NAMES)
def test_write_read_list_exists(storage: LocalDropStorage, name: str) -> None:
    key = stage_key("input", name)
    storage.create(key, b"x,y\n1,2\n")
    assert storage.read(key) == b"x,y\n1,2\n"
    assert storage.exists(key)
    assert storage.list_keys("data/input/") == [key]
    assert storage.list_keys("data/processed/") == []
    assert not storage.exists(stage_key("processed", name))
    with pytest.raises(FileNotFoundError):
        storage.read(stage_key("processed", name))


def test_list_is_a_string_prefix(storage: LocalDropStorage) -> None:
    for key in ("data/input/a.csv", "data/input/b.csv", "data/inputs.txt", "data/logs/a.log"):
        storage.create(key, b"")
    assert storage.list_keys("data/input") == [
        "data/input/a.csv",
        "data/input/b.csv",
        "data/inputs.txt",
    ]
    assert storage.list_keys("data/input/a") == ["data/input/a.csv"]
    assert len(storage.list_keys("")) == 4


@pytest.mark.parametrize("key", ["/etc/passwd", "data/../../x", ""])
def test_keys_cannot_leave_the_root(storage: LocalDropStorage, key: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        storage.read(key)


def test_create_and_move_create_parents_and_never_replace(storage: LocalDropStorage) -> None:
    storage.create("data/input/a.csv", b"new")
    with pytest.raises(ObjectExists):
        storage.create("data/input/a.csv", b"second")
    assert storage.list_keys("data/input/") == ["data/input/a.csv"]  # no temp file left
    storage.create("data/archive/2024/a.csv", b"old")
    with pytest.raises(ObjectExists):
        storage.move("data/input/a.csv", "data/archive/2024/a.csv")
    assert storage.read("data/archive/2024/a.csv") == b"old"
    assert storage.read("data/input/a.csv") == b"new"
    storage.move("data/input/a.csv", "data/new/deep/a.csv")
    assert storage.read("data/new/deep/a.csv") == b"new"
    assert not storage.exists("data/input/a.csv")


def test_a_move_onto_the_same_bytes_is_done_as_on_s3(storage: LocalDropStorage) -> None:
    """Equal content counts as the moved object (S3 compares ETags): the source leaves."""
    storage.create("data/processing/R/p.csv", b"same")
    storage.create("data/processed/R/p.csv", b"same")
    storage.move("data/processing/R/p.csv", "data/processed/R/p.csv")
    assert not storage.exists("data/processing/R/p.csv")
    assert storage.read("data/processed/R/p.csv") == b"same"


def test_written_files_get_the_usual_permissions(storage: LocalDropStorage) -> None:
    old = os.umask(0o022)
    try:
        storage.create("data/processed/R/a.csv", b"x")
        storage.replace("data/claims/R/0001.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(storage.path("data/processed/R/a.csv").stat().st_mode) == 0o644
    assert stat.S_IMODE(storage.path("data/claims/R/0001.json").stat().st_mode) == 0o644


def test_move_of_a_changed_version_is_refused(storage: LocalDropStorage) -> None:
    storage.create("data/input/a.csv", b"first")
    version = storage.stat("data/input/a.csv").version
    storage.path("data/input/a.csv").unlink()
    storage.create("data/input/a.csv", b"second drop")
    with pytest.raises(FileNotFoundError):
        storage.move("data/input/a.csv", "data/processing/R/a.csv", version=version)
    assert storage.read("data/input/a.csv") == b"second drop"


def test_file_log_steps_lines_and_appended_lines(storage: LocalDropStorage) -> None:
    log = FileLog(storage, "R1", "a b.csv")
    with log.step("validate") as step:
        step.message = "1000 rows"
    with pytest.raises(ValueError, match="bad column"), log.step("predict"):
        raise ValueError("bad column\nsecond problem")
    lines = storage.read("data/logs/R1/a b.csv.log").decode().splitlines()
    assert len(lines) == 4
    fields = [line.split(" | ") for line in lines]
    assert [f[1:3] for f in fields[:4]] == [
        ["validate", "start"],
        ["validate", "ok"],
        ["predict", "start"],
        ["predict", "failed"],
    ]
    assert fields[0][0].endswith("+00:00")
    assert fields[1][3].endswith("s") and float(fields[1][3][:-1]) >= 0
    assert fields[1][4] == "1000 rows"
    assert fields[3][4] == "ValueError: bad column"  # its first line: the reason, one line
    log.write("claim", "ok", "moved to data/processing/")
    assert storage.read(log.key).decode().endswith(" | claim | ok |  | moved to data/processing/\n")
    storage.append_line("data/logs/a.csv.log", "one")
    storage.append_line("data/logs/a.csv.log", "two\n")
    assert storage.read("data/logs/a.csv.log") == b"one\ntwo\n"


def test_an_exception_as_a_reason_is_one_bounded_line() -> None:
    assert brief(ValueError("bad column\nsecond problem")) == "ValueError: bad column"
    assert brief(KeyError()) == "KeyError"
    huge = brief(RuntimeError("x" * 50_000_000 + "\nmore"))
    assert huge.startswith("RuntimeError: xxx") and len(huge) == 300


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("k" * 979 + ".csv", "the file name is too long (983 bytes)"),
        ("é" * 504 + ".csv", "the file name is too long (1,012 bytes)"),
        ("caf\udce9.csv", "the file name 'caf\\xe9.csv' is not UTF-8 text"),
    ],
)
def test_a_name_its_run_cannot_keep_is_cut_and_the_file_refused(name: str, problem: str) -> None:
    """S3 keys of 983 to 1013 bytes fit input/ but not processing/<run>/; a local name that
    is not UTF-8 reaches no log or database: the run keeps the file under a cut name."""
    assert name_problem(name).startswith(problem)
    kept = run_name(name)
    assert kept == run_name(name) != run_name(name + "x")  # one cut per name
    assert not name_problem(kept) and len(kept.encode()) <= 200
    assert run_name("caf\udce9.csv").startswith("caf.csv~")  # what is left of it, then its cut
    assert len(run_key("processing", "20261127T061500Z-1a2b3c4d", "k" * 982).encode()) == (
        MAX_KEY_BYTES
    )
    assert not name_problem("k" * 982) and run_name("k" * 982) == "k" * 982


def test_a_run_blocked_past_its_time_stops_renewing_its_lease(storage: LocalDropStorage) -> None:
    """The backstop behind every network timeout (claims.MAX_ATTEMPT_SECONDS): a run stuck
    in a call loses its lease although its process lives, so the reconciler re-drives it."""
    storage.create(stage_key("input", "a.csv"), b"x")
    held = claims.claim(storage, "data/input/a.csv", lease_seconds=0.5)
    with claims.heartbeat(storage, held.lease, every=0.05, limit=0.2):
        time.sleep(1.0)  # "blocked"
        lease = claims.latest_lease(storage, held.run)
        assert lease is not None and lease.state == "running"
        assert lease.holder_gone(datetime.now(UTC), lease_seconds=0.5)


def test_a_heartbeat_woken_after_its_takeover_never_revives_its_lease(
    storage: LocalDropStorage,
) -> None:
    """A stopped process resumed: its successor ended its lease "died"; it stays so."""
    storage.create(stage_key("input", "a.csv"), b"x")
    held = claims.claim(storage, "data/input/a.csv", lease_seconds=0.5)
    time.sleep(0.6)  # stalled: the lease lapses
    successor = claims.claim(storage, held.processing_key, lease_seconds=0.5)
    claims.release(storage, held.lease, "died", claims.death(held.lease))
    with claims.heartbeat(storage, held.lease, every=0.05):
        time.sleep(0.3)
    assert claims.taken_over(storage, held.lease)
    assert not claims.taken_over(storage, successor.lease)
    lease = claims.lease(storage, held.run, 1)
    assert lease is not None and lease.state == "died"


def test_a_symlink_is_moved_as_itself_and_never_read(storage: LocalDropStorage) -> None:
    target = storage.root / "secret"
    target.write_bytes(b"secret")
    storage.path("data/input/link.csv").symlink_to(target)
    info = storage.stat("data/input/link.csv")
    assert info is not None and not info.regular
    storage.move("data/input/link.csv", "data/errored/R/link.csv")
    assert storage.path("data/errored/R/link.csv").is_symlink()
    with pytest.raises(OSError):
        storage.read("data/errored/R/link.csv")


def test_the_move_that_empties_a_run_folder_removes_it_and_stage_folders_stay(
    storage: LocalDropStorage,
) -> None:
    storage.create("data/input/a.csv", b"x")
    storage.move("data/input/a.csv", "data/processing/R/a.csv")
    storage.create("data/processing/R/a_predictions.csv", b"y")
    partial = storage.root / "data/processing/R/.a_predictions.csv.0123456789ab.tmp"
    partial.write_bytes(b"half a file")  # an attempt killed mid-write left it
    storage.move("data/processing/R/a.csv", "data/processed/R/a.csv")
    assert partial.exists()  # its predictions are still there
    storage.move("data/processing/R/a_predictions.csv", "data/processed/R/a_predictions.csv")
    assert not (storage.root / "data/processing/R").exists()  # leftovers and all
    assert (storage.root / "data/processing").is_dir() and (storage.root / "data/input").is_dir()
    assert storage.list_keys("data/processed/R/") == [
        "data/processed/R/a.csv",
        "data/processed/R/a_predictions.csv",
    ]
