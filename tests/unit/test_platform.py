"""The local platform's building blocks: drop events, settling files, status, ports, PID file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from churnops.platform import services
from churnops.platform.status import list_files, service_health
from churnops.platform.watcher import (
    Dispatcher,
    FolderWatcher,
    encode_key,
    file_sequencer,
    is_candidate,
    load_lambda_handler,
    s3_event,
    wait_stable,
)
from churnops.storage import LocalDropStorage, stage_key

ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("data/input/march batch.csv", "data/input/march+batch.csv"),
        ("data/input/a+b.csv", "data/input/a%2Bb.csv"),
        ("data/input/año ü.csv", "data/input/a%C3%B1o+%C3%BC.csv"),
        ("data/input/50%_off&more=1.csv", "data/input/50%25_off%26more%3D1.csv"),
    ],
)
def test_keys_are_encoded_per_segment_as_s3_events_do(key: str, encoded: str) -> None:
    assert encode_key(key) == encoded


def test_the_lambda_handler_reads_back_the_real_key_of_a_built_event() -> None:
    load_lambda_handler()
    handler_module = sys.modules["lambda_function"]
    key = "data/input/a+b año 1.csv"
    record = s3_event("drop", key, 10, file_sequencer(123, 10))["Records"][0]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert handler_module._parse_record(record) == ("drop", key, file_sequencer(123, 10))
    assert handler_module._skip_reason(record, key, "data/input/") is None


def test_sequencer_differs_per_drop_and_is_stable_for_one() -> None:
    assert file_sequencer(10, 5) == file_sequencer(10, 5)
    assert file_sequencer(10, 5) != file_sequencer(11, 5)
    assert file_sequencer(10, 5) != file_sequencer(10, 6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.csv", True),
        (".a.csv.x1.tmp", False),
        ("a.csv.part", False),
        (".hidden", False),
        ("a.csv~", False),
        ("a.tmp", False),
        ("b c.csv", True),
    ],
)
def test_temporary_and_partial_names_are_ignored(name: str, expected: bool) -> None:
    assert is_candidate(name) is expected


def test_wait_stable_returns_only_once_the_writer_stopped(tmp_path: Path) -> None:
    path = tmp_path / "growing.csv"
    path.write_bytes(b"x")

    def grow() -> None:
        for _ in range(8):
            time.sleep(0.05)
            with path.open("ab") as out:
                out.write(b"y" * 100)

    writer = threading.Thread(target=grow)
    writer.start()
    mtime_ns, size = wait_stable(path, interval=0.2)  # type: ignore[misc]
    writer.join()
    assert size == path.stat().st_size == 801
    assert mtime_ns == path.stat().st_mtime_ns


def test_wait_stable_gives_none_for_a_file_that_went_away(tmp_path: Path) -> None:
    assert wait_stable(tmp_path / "gone.csv") is None


def collecting_dispatcher() -> tuple[Dispatcher, list[dict[str, Any]], threading.Event]:
    events: list[dict[str, Any]] = []
    seen = threading.Event()

    def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
        events.append(event)
        seen.set()
        return {"results": [{"status": "created"}]}

    return Dispatcher(handler, "drop", lambda result: None), events, seen


def test_folder_watcher_reports_waiting_and_new_files_once_whole(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    storage.write(stage_key("input", "before start.csv"), b"a,b\n1,2\n")
    dispatcher, events, _ = collecting_dispatcher()
    watcher = FolderWatcher(tmp_path, dispatcher, settle=0.05)
    watcher.start()
    try:
        storage.write(stage_key("input", "new+1.csv"), b"a,b\n3,4\n")  # temp name, then rename
        (tmp_path / "data/input/.hidden.csv").write_bytes(b"ignored")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len({_key(e) for e in events}) < 2:
            time.sleep(0.05)
    finally:
        watcher.stop()
    keys = {_key(e) for e in events}
    assert keys == {"data/input/before+start.csv", "data/input/new%2B1.csv"}
    sizes = {e["Records"][0]["s3"]["object"]["size"] for e in events}
    assert sizes == {8}


def _key(event: dict[str, Any]) -> str:
    return event["Records"][0]["s3"]["object"]["key"]


def test_status_lists_every_file_by_stage(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    for stage, name in [
        ("input", "a.csv"),
        ("processing", "b.csv"),
        ("processed", "c.csv"),
        ("errored", "d.csv"),
    ]:
        storage.write(stage_key(stage, name), b"x")  # type: ignore[arg-type]
    storage.write("data/logs/d.csv.log", b"why")
    listed = [(f.stage, f.name) for f in list_files(storage)]
    assert listed == [
        ("input", "a.csv"),
        ("processing", "b.csv"),
        ("processed", "c.csv"),
        ("errored", "d.csv"),
    ]


def test_status_without_a_running_platform_says_so() -> None:
    [health] = service_health(None)
    assert not health.healthy
    assert "churnops up" in health.detail


def test_a_busy_configured_port_is_named_with_the_way_out() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(services.PlatformError, match=f"port {port}.*MLFLOW_PORT=0"):
            services.choose_port("127.0.0.1", port, "mlflow_port")
    assert services.choose_port("127.0.0.1", 0, "mlflow_port") > 0


def test_a_second_platform_on_the_same_home_is_refused(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / services.PID_FILE).write_text(str(other.pid))
        with pytest.raises(services.PlatformError, match=f"already runs on .*pid {other.pid}"):
            services.take_pid_file(tmp_path)
    finally:
        other.kill()
        other.wait()
    # the owner is gone: the stale PID file is replaced
    assert services.take_pid_file(tmp_path).read_text() == str(os.getpid())
    services.release_files(tmp_path)
    assert not (tmp_path / services.PID_FILE).exists()


def test_stopping_a_service_takes_its_whole_process_group(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"
    )
    service = services.Service(
        "sleeper", [sys.executable, "-c", script], tmp_path / "s.log", dict(os.environ), "-"
    )
    service.start()
    deadline = time.monotonic() + 30
    while "up" not in service.tail() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.pid is not None
    pgid = service.pid
    service.stop(grace=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_simulation_script_uploads_every_file_but_the_training_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("customer_churn_0.csv", "customer_churn_1.csv", "customer_churn_2_x.csv"):
        (data / name).write_text("a\n1\n")
    env = dict(os.environ, CHURNOPS_HOME=str(tmp_path / "home"), DROP_STORAGE="local")
    env.pop("LOCAL_DROP_DIR", None)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "upload_simulation_script.py"),
            "--interval",
            "0",
            "--data-dir",
            str(data),
            "--target",
            "local",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    inbox = tmp_path / "home" / "drop" / "data" / "input"
    assert sorted(p.name for p in inbox.iterdir()) == [
        "customer_churn_1.csv",
        "customer_churn_2_x.csv",
    ]


def test_simulation_script_names_a_missing_data_folder(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "upload_simulation_script.py"),
            "--data-dir",
            str(tmp_path / "nope"),
            "--target",
            "local",
        ],
        env=dict(os.environ, CHURNOPS_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert "nope is not a folder" in done.stderr
