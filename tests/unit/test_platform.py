"""The local platform's building blocks: drop events, settling files, status, ports, PID file,
the runner's warm-up."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock, Mock

import pytest
from rich.console import Console

from churnops.drop import claims, trigger
from churnops.drop.storage import LocalDropStorage, run_key, stage_key
from churnops.platform import launch, services
from churnops.platform import runner as runner_module
from churnops.platform import watcher as watcher_module
from churnops.platform.runner import FlowRunner
from churnops.platform.status import list_files, service_health, stage_counts
from churnops.platform.watcher import (
    Dispatcher,
    FolderWatcher,
    file_sequencer,
    s3_event,
    wait_stable,
)
from churnops.settings import MLFLOW_CLIENT_ENV, NO_USAGE_TELEMETRY, get_settings
from tests.processes import dead_pid, eventually, http_server, run_python

ROOT = Path(__file__).parents[2]
PORTS = services.Ports(prefect=1, mlflow=2, evidently=3)


def test_the_lambda_handler_reads_back_the_real_key_of_a_built_event() -> None:
    key = "data/input/a+b año 1.csv"
    sequencer = file_sequencer(os.stat(__file__))
    record = s3_event("drop", key, 10, sequencer)["Records"][0]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"] == "ObjectCreated:Put"
    assert trigger._parse_record(record) == ("drop", key, sequencer)
    assert trigger._skip_reason(record, key) is None


def test_sequencer_differs_per_drop_and_is_stable_for_one(tmp_path: Path) -> None:
    """A same-name replacement, with the same size and a copied mtime, is another drop."""
    path, other = tmp_path / "a.csv", tmp_path / "b.csv"
    path.write_bytes(b"a,b\n1,2\n")
    first = os.lstat(path)
    assert file_sequencer(first) == file_sequencer(os.lstat(path))
    other.write_bytes(b"a,b\n3,4\n")
    os.utime(other, ns=(first.st_atime_ns, first.st_mtime_ns))
    os.replace(other, path)
    assert file_sequencer(os.lstat(path)) != file_sequencer(first)


def test_wait_stable_returns_only_once_the_writer_stopped_and_none_once_gone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "growing.csv"
    path.write_bytes(b"x")

    def grow() -> None:
        for _ in range(8):
            time.sleep(0.05)
            with path.open("ab") as out:
                out.write(b"y" * 100)

    writer = threading.Thread(target=grow)
    writer.start()
    stable = wait_stable(path, interval=0.2)
    writer.join()
    assert stable is not None and stable.st_size == path.stat().st_size == 801
    assert stable.st_mtime_ns == path.stat().st_mtime_ns
    assert wait_stable(tmp_path / "gone.csv") is None


@contextmanager
def watching(
    root: Path, monkeypatch: pytest.MonkeyPatch, settle: float, waiting: tuple[str, ...] = ()
) -> Iterator[tuple[LocalDropStorage, list[dict[str, Any]], threading.Event]]:
    """A started FolderWatcher on ``root`` with the quiet period ``settle``, the files
    ``waiting`` in input/ before it starts; the storage, the S3 objects sent, one was sent."""
    monkeypatch.setattr(watcher_module, "SETTLE_SECONDS", settle)
    storage = LocalDropStorage(root)
    storage.create_layout()
    for name in waiting:
        storage.create(stage_key("input", name), b"a,b\n1,2\n")
    objects: list[dict[str, Any]] = []
    seen = threading.Event()

    def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
        objects.append(event["Records"][0]["s3"]["object"])
        seen.set()
        return {"results": [{"status": "created"}]}

    watcher = FolderWatcher(root, Dispatcher(handler, "drop", lambda result: None))
    watcher.start()
    try:
        yield storage, objects, seen
    finally:
        watcher.stop()


def test_folder_watcher_reports_waiting_and_new_files_once_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiting = ("before start.csv",)
    with watching(tmp_path, monkeypatch, 0.05, waiting) as (storage, objects, _):
        storage.create(stage_key("input", "new+1.csv"), b"a,b\n3,4\n")  # temp name, then link
        (tmp_path / "data/input/.hidden.csv").write_bytes(b"ignored")
        storage.create(stage_key("labels", "late.csv"), b"a,b\n5,6\n")
        (tmp_path / "data/labels/sub").mkdir()
        eventually(lambda: len({o["key"] for o in objects}) >= 3, 30, 0.05)
    keys = {o["key"] for o in objects}
    assert keys == {"data/input/before+start.csv", "data/input/new%2B1.csv", "data/labels/late.csv"}
    assert {o["size"] for o in objects} == {8}


@pytest.mark.parametrize("written_in", ["data/input", "data"], ids=["in the folder", "outside"])
def test_a_file_renamed_into_input_is_sent_without_the_quiet_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written_in: str
) -> None:
    """A rename is atomic: the file is whole when it appears, nothing to wait for, whether
    it was written under a temporary name in the folder or elsewhere (``mv``)."""
    with watching(tmp_path, monkeypatch, 3600.0) as (_, objects, seen):
        partial = tmp_path / written_in / ".renamed.csv.part"
        partial.write_bytes(b"a,b\n1,2\n")
        partial.rename(tmp_path / "data/input/renamed.csv")
        assert seen.wait(30), "a renamed-in file waited for the quiet period"
    assert [o["key"] for o in objects] == ["data/input/renamed.csv"]


def test_a_file_renamed_over_one_still_settling_is_sent_once_as_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file that waited is gone (replaced by its writer): only the new one is sent
    (twice at most, as one version: the handler's idempotency key makes it one run)."""
    with watching(tmp_path, monkeypatch, 1.0) as (storage, objects, seen):
        storage.create(stage_key("input", "same.csv"), b"a,b\n1,2\n")  # settles for 1 s
        partial = tmp_path / "data/input/.same.csv.part"
        partial.write_bytes(b"a,b\n1,2\n3,4\n")
        partial.rename(tmp_path / "data/input/same.csv")
        assert seen.wait(30), "nothing was sent"
        time.sleep(2.0)  # a second event would come within the quiet period
    final = (tmp_path / "data/input/same.csv").lstat()
    sent = {(o["size"], o["sequencer"]) for o in objects}
    assert sent == {(final.st_size, file_sequencer(final))}


def test_a_trigger_prefect_did_not_answer_is_one_line_saying_what_happens_next(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: three lines, one saying 'Lambda will retry the event', which nothing does
    for the local watchers (the reconciler takes the file later)."""

    def unreachable(event: Any, context: object) -> Any:
        raise trigger.PrefectUnavailable("POST http://127.0.0.1:1/api/x failed 5 times")

    shown: list[dict] = []
    Dispatcher(unreachable, "drop", shown.append).send("data/input/a.csv", 1, "01")

    (result,) = shown
    assert result["status"] == "failed" and "the reconciler starts it" in result["reason"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_status_lists_every_file_by_stage_and_counts_them(tmp_path: Path) -> None:
    """Under a table of 600 lines (300 files), one line says how many are where: files
    waiting in the drop folders, runs in the later stages."""
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    storage.create(stage_key("input", "a.csv"), b"x")
    for stage, name in [("processing", "b.csv"), ("processed", "c.csv"), ("errored", "d.csv")]:
        storage.create(run_key(stage, "R1", name), b"x")  # type: ignore[arg-type]
    storage.create("data/logs/R1/d.csv.log", b"why")
    storage.create(stage_key("labels", "l.csv"), b"x")
    storage.create("data/input/sub/nested.csv", b"x")  # no run takes it: shown, not hidden
    listed = [(f.stage, f.run, f.name) for f in list_files(storage)]
    assert listed == [
        ("input", "", "a.csv"),
        ("input, ignored", "", "sub/nested.csv"),
        ("labels", "", "l.csv"),
        ("processing", "R1", "b.csv"),
        ("processed", "R1", "c.csv"),
        ("errored", "R1", "d.csv"),
    ]
    storage.create(stage_key("input", "b.csv"), b"x")
    for name in ("c.csv", "c_predictions.csv"):
        storage.create(run_key("processed", "R2", name), b"x")
    assert stage_counts(list_files(storage)) == (
        "2 input, 1 input, ignored, 1 labels, 1 processing, 2 processed, 1 errored"
    )


def test_status_in_another_terminal_lists_the_folder_the_platform_watches(
    tmp_path: Path,
) -> None:
    """`up` started with LOCAL_DROP_DIR, `churnops status` in a terminal without it listed
    the home's default drop folder (only its watcher row named the watched one)."""
    from typer.testing import CliRunner

    from churnops import cli

    watched = LocalDropStorage(tmp_path / "elsewhere")
    watched.create_layout()
    watched.create(stage_key("input", "waiting.csv"), b"x")
    drop = str(watched.root / "data" / "input")
    services.PlatformState(os.getpid(), drop, {}).save(tmp_path)  # a platform running
    home = {"CHURNOPS_HOME": str(tmp_path)}
    shown = CliRunner().invoke(cli.app, ["status"], env=home)
    assert shown.exit_code == 0 and "waiting.csv" in shown.output, shown.output
    mine = CliRunner().invoke(
        cli.app, ["status"], env=home | {"LOCAL_DROP_DIR": str(tmp_path / "mine")}
    )
    assert "waiting.csv" not in mine.output  # a folder named here wins, as for the URLs


def test_status_and_process_show_a_name_as_written_never_as_markup(tmp_path: Path) -> None:
    """`[draft] customers.csv` was listed as ' customers.csv' (rich took '[draft]' for a
    style), and a file `bold]x.csv` in a subfolder `[` stopped `churnops status` with a
    MarkupError traceback ('closing tag [/bold] ... doesn't match any open tag')."""
    from typer.testing import CliRunner

    from churnops import cli
    from churnops.pipeline.per_file import FileOutcome

    storage = LocalDropStorage(tmp_path / "drop")
    storage.create_layout()
    storage.create(stage_key("input", "[draft] customers.csv"), b"x")
    storage.create("data/input/[/bold]x.csv", b"x")
    result = CliRunner().invoke(cli.app, ["status"], env={"CHURNOPS_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "[draft] customers.csv" in result.output and "[/bold]x.csv" in result.output

    shown = io.StringIO()
    cli.console.file = shown
    try:
        cli._print_outcome(FileOutcome("[draft] a.csv", "processed", "ok"), ui_running=True)
    finally:
        cli.console.file = None  # type: ignore[assignment]
    assert shown.getvalue().startswith("processed [draft] a.csv: ok")
    up = launch.Platform(get_settings(churnops_home=tmp_path), Console(file=shown, width=200))
    up.show_trigger({"key": "data/input/[draft] b.csv", "status": "created", "flow_run_id": "F"})
    assert shown.getvalue().endswith("drop run started data/input/[draft] b.csv F\n")


def test_status_says_which_file_in_processing_waits_for_its_retry(tmp_path: Path) -> None:
    """Its attempt failed (Prefect: Failed, the database: failed): not 'processing' alone."""
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    for run in ("R1", "R2"):
        storage.create(run_key("processing", run, "b.csv"), b"x")
    retry_at = "2026-12-05T17:32:54+00:00"
    failed = claims.Lease(
        "R1", 2, "b.csv", "data/input/b.csv", "h", 1, "failed", retry_at, retry_at=retry_at
    )
    storage.create(
        failed.key, dataclasses.replace(failed, reason="ReadTimeout: read timed out").to_json()
    )
    running = dataclasses.replace(failed, run="R2", attempt=1, state="running", retry_at="")
    storage.create(running.key, running.to_json())
    storage.create(run_key("processing", "R1", "b_predictions.csv"), b"x")
    notes = {(f.run, f.name): f.note for f in list_files(storage)}
    assert notes == {
        ("R1", "b.csv"): f"attempt 2 failed, retry at {retry_at}: ReadTimeout: read timed out",
        ("R1", "b_predictions.csv"): "",
        ("R2", "b.csv"): "",
    }


def test_status_lists_no_folder_markers() -> None:
    """The bucket Terraform makes holds zero-byte markers (``data/input/``): no files."""
    keys = ["data/input/", "data/input/a.csv", "data/processed/", "data/processed/R/"]
    bucket = Mock(spec=["list_keys"])
    bucket.list_keys.side_effect = lambda prefix: [k for k in keys if k.startswith(prefix)]
    listed = [(f.stage, f.name) for f in list_files(bucket)]
    assert listed == [("input", "a.csv")]


def test_status_without_a_running_platform_says_so() -> None:
    [health] = service_health(None)
    assert not health.healthy
    assert "churnops up" in health.detail


@pytest.mark.parametrize("usage_telemetry", [False, True])
def test_every_child_gets_the_usage_data_switches_unless_telemetry_is_on(
    usage_telemetry: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in NO_USAGE_TELEMETRY:  # set for the test session by tests/conftest.py
        monkeypatch.delenv(name)
    settings = get_settings(churnops_home=tmp_path, usage_telemetry=usage_telemetry)
    envs = [s.env for s in services.server_services(settings, PORTS)]
    envs.append(launch.runner_env(launch.platform_settings(settings, PORTS)))
    expected = dict.fromkeys(NO_USAGE_TELEMETRY) if usage_telemetry else NO_USAGE_TELEMETRY
    for env in envs:
        assert {name: env.get(name) for name in NO_USAGE_TELEMETRY} == expected
        assert MLFLOW_CLIENT_ENV.items() <= env.items()


def test_the_servers_run_without_the_credentials_only_the_runners_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect, MLflow and the Evidently UI got the SMTP and database passwords and the AWS
    keys in their environment, which none of them reads (least privilege)."""
    given = {name: f"secret-{name}" for name in services.CREDENTIALS_ENV}
    given["DATABASE_URL"] = "postgresql://flow:secret@127.0.0.1/metrics"
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = get_settings(churnops_home=tmp_path)
    for server in services.server_services(settings, PORTS):
        assert not given.keys() & server.env.keys(), server.name
    runner = launch.runner_env(launch.platform_settings(settings, PORTS))
    assert {name: runner[name] for name in given} == given


@pytest.mark.parametrize("configured", [None, "http://mlflow.example:5001"])
def test_up_keeps_a_configured_tracking_server_and_hands_it_to_the_runners(
    configured: str | None, tmp_path: Path
) -> None:
    """A set MLFLOW_TRACKING_URI is the operator's MLflow: `up` must not swap in its own."""
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=configured)
    running = launch.platform_settings(settings, PORTS)
    expected = configured or services.server_url(settings.platform, 2)
    assert running.model.mlflow_tracking_uri == expected
    assert launch.runner_env(running)["MLFLOW_TRACKING_URI"] == expected


@pytest.mark.parametrize("usage_telemetry", ["false", "true"])
def test_the_churnops_command_runs_with_the_switches_unless_telemetry_is_on(
    usage_telemetry: str,
) -> None:
    """The entry point re-executes itself with them: this probe is run twice when off."""
    probe = (
        "import json, os\n"
        "from churnops import cli\n"
        f"names = {list(NO_USAGE_TELEMETRY)}\n"
        "cli.app = lambda: print(json.dumps([os.environ.get(n) for n in names]))\n"
        "cli.entry()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in NO_USAGE_TELEMETRY}
    env["USAGE_TELEMETRY"] = usage_telemetry
    done = run_python(probe, env=env, check=True)
    expected = [None] * 3 if usage_telemetry == "true" else list(NO_USAGE_TELEMETRY.values())
    assert json.loads(done.stdout) == expected


@pytest.mark.parametrize("listener_reuses_address", [False, True])
def test_a_busy_configured_port_is_named_with_the_way_out(listener_reuses_address: bool) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(listener_reuses_address))
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(services.PlatformError, match=f"port {port}.*MLFLOW_PORT=0"):
            services.choose_port("127.0.0.1", port, "mlflow_port")
    assert services.choose_port("127.0.0.1", 0, "mlflow_port") > 0


def test_stopping_a_service_takes_its_whole_process_group(tmp_path: Path) -> None:
    script = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(60)']); print('up', flush=True); time.sleep(60)"
    )
    service = services.Service(
        "sleeper", [sys.executable, "-c", script], tmp_path / "s.log", dict(os.environ), "-"
    )
    service.start()
    eventually(lambda: "up" in service.tail(), 30)
    assert service.pid is not None
    pgid = service.pid
    service.stop(grace=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_simulation_script_uploads_every_file_but_the_training_one(tmp_path: Path) -> None:
    def simulate(data: Path, target: str = "local", **aws: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, CHURNOPS_HOME=str(tmp_path / "home"), DROP_STORAGE="local")
        env.pop("LOCAL_DROP_DIR", None)
        script = str(ROOT / "upload_simulation_script.py")
        arguments = ["--interval", "0", "--data-dir", str(data), "--target", target]
        command = [sys.executable, script, *arguments]
        env |= aws
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    missing = simulate(tmp_path / "nope")
    assert missing.returncode == 1
    assert "nope is not a folder" in missing.stderr
    data = tmp_path / "data"
    data.mkdir()
    for name in ("customer_churn_0.csv", "customer_churn_1.csv", "customer_churn_2_x.csv"):
        (data / name).write_text("a\n1\n")
    done = simulate(data)
    assert done.returncode == 0, done.stderr
    home = (tmp_path / "home").resolve()
    assert done.stdout.startswith(f"note: no platform runs on {home}: the files wait until")
    inbox = tmp_path / "home" / "drop" / "data" / "input"
    assert sorted(p.name for p in inbox.iterdir()) == [
        "customer_churn_1.csv",
        "customer_churn_2_x.csv",
    ]
    # a bucket it cannot reach: one line naming the bucket, not botocore's traceback
    unreachable = simulate(
        data,
        "s3",
        DROP_BUCKET="churnops-drop",
        AWS_ENDPOINT_URL="http://127.0.0.1:1",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_MAX_ATTEMPTS="1",
    )
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(
        "error: customer_churn_1.csv not uploaded to S3DropStorage('churnops-drop'):"
        " EndpointConnectionError"
    )
    assert len(unreachable.stderr.splitlines()) == 1, unreachable.stderr


def test_simulation_script_stopped_by_ctrl_c_says_what_it_did_not_upload(tmp_path: Path) -> None:
    """`make simulate-file-drops` waits INTERVAL (30 s) between files, and Ctrl-C is how
    a user stops it early: it ended in a KeyboardInterrupt traceback from time.sleep."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("customer_churn_0.csv", "customer_churn_1.csv", "customer_churn_2_x.csv"):
        (data / name).write_text("a\n1\n")
    env = dict(os.environ, CHURNOPS_HOME=str(tmp_path / "home"), DROP_STORAGE="local")
    env.pop("LOCAL_DROP_DIR", None)
    script = str(ROOT / "upload_simulation_script.py")
    arguments = ["--interval", "60", "--data-dir", str(data)]
    with subprocess.Popen(
        [sys.executable, script, *arguments],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as simulation:
        assert simulation.stdout is not None
        for line in simulation.stdout:  # the note, then the first upload
            if line.startswith("uploaded customer_churn_1.csv"):
                break
        simulation.send_signal(signal.SIGINT)  # a terminal's Ctrl-C, during the interval
        err = simulation.communicate(timeout=30)[1]
    assert simulation.returncode == 128 + signal.SIGINT
    assert err == "stopped: not uploaded: customer_churn_2_x.csv\n", err


def _tcp_states(port: int) -> set[str]:
    """States (hex, as in /proc/net/tcp) of the IPv4 sockets bound to ``port`` locally."""
    entries = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {entry[3] for entry in entries if int(entry[1].rsplit(":", 1)[1], 16) == port}


def test_a_free_port_setting_takes_the_port_the_last_up_of_the_home_used(tmp_path: Path) -> None:
    """EVIDENTLY_PORT=0 picked a new port at every ``up``: the report links already stored
    (metrics database, alerts, file logs) went to a port nobody served any more."""
    free = {"prefect_port": 0, "mlflow_port": 0, "evidently_port": 0}
    settings = get_settings(churnops_home=tmp_path, platform_host="127.0.0.1", **free)
    first = launch.choose_ports(settings)
    assert launch.choose_ports(settings) == first  # nothing listens there now
    with socket.socket() as sock:  # another program took the Evidently UI's port meanwhile
        sock.bind(("127.0.0.1", first.evidently))
        sock.listen()
        second = launch.choose_ports(settings)
    assert (second.prefect, second.mlflow) == (first.prefect, first.mlflow)
    assert second.evidently not in (first.evidently, 0)
    assert launch.choose_ports(settings) == second  # the last `up`'s, not the one before
    configured = get_settings(
        churnops_home=tmp_path, platform_host="127.0.0.1", **free | {"mlflow_port": first.prefect}
    )
    third = launch.choose_ports(configured)  # a configured port wins, and is not shared
    assert third.mlflow == first.prefect and third.prefect not in (first.prefect, 0)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_a_port_left_in_time_wait_by_a_stopped_server_is_free_again() -> None:
    with socket.socket() as server:
        # As uvicorn does; the accepted sockets, and so their TIME_WAIT, inherit the flag.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection waits
    client.close()
    assert eventually(lambda: _tcp_states(port) == {"06"}, 10, 0.01)  # 06: TIME_WAIT
    with socket.socket() as naive, pytest.raises(OSError):
        naive.bind(("127.0.0.1", port))  # what the probe did before: refused for 60 s
    assert services.choose_port("127.0.0.1", port, "prefect_port") == port


def _sleeper(*command: str) -> subprocess.Popen:
    """A throwaway process leading its own group, as the platform's children do."""
    return subprocess.Popen(list(command), start_new_session=True)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="identifies processes through /proc")
def test_only_what_a_killed_platform_left_is_stopped(tmp_path: Path) -> None:
    sleep = shutil.which("sleep") or "sleep"
    dead = dead_pid()
    ours, stranger, reused, kept = (_sleeper(sleep, "300") for _ in range(4))
    # The leader exited and left a worker in its group (as MLflow's job runner may).
    worker = "import time; time.sleep(300)"
    script = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {worker!r}])"
    orphaned = _sleeper(sys.executable, "-c", script)
    orphaned.wait()
    (tmp_path / services.LOG_DIR).mkdir()
    try:
        of_dead = {"parent": dead, "parent_started": 1}
        for name, process, command, changes in [
            ("mlflow", ours, [sleep, "300"], of_dead),
            ("stranger", stranger, ["/opt/other/server"], of_dead),  # not our program now
            ("reused", reused, [sleep, "300"], of_dead | {"started": 1}),  # another start time
            ("kept", kept, [sleep, "300"], {}),  # its platform (this process) still runs
            ("runner", orphaned, [sys.executable, "-c", script], of_dead),
        ]:
            record = dataclasses.replace(
                services.ChildRecord.of(name, process.pid, command), **changes
            )
            record.save(tmp_path / services.LOG_DIR / f"{name}{services.CHILD_RECORD_SUFFIX}")
        (tmp_path / services.STATE_FILE).write_text(json.dumps({"pid": dead}))

        stopped = services.stop_leftovers(tmp_path, grace=5)

        assert sorted(r.name for r in stopped) == ["mlflow", "runner"]
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert services.live_groups([orphaned.pid]) == {}
        assert [p.poll() for p in (stranger, reused, kept)] == [None, None, None]
        left = sorted(p.name for p in (tmp_path / services.LOG_DIR).iterdir())
        assert left == [f"kept{services.CHILD_RECORD_SUFFIX}"]
        assert not (tmp_path / services.STATE_FILE).exists()
    finally:
        for process in (ours, stranger, reused, kept, orphaned):
            services.terminate_groups([process.pid], grace=5)
            process.wait()


def _start_service_then_get_killed(
    home: Path, command: list[str], reaper: bool, ready: Path | None = None
) -> int:
    """A stand-in for ``up``: starts one Service (and the reaper), then dies by SIGKILL."""
    log = home / services.LOG_DIR / "sleeper.log"
    starter = (
        "import time; from pathlib import Path; from churnops.platform import services as svc;"
        f"home = Path({str(home)!r}); {'svc.start_reaper(home, grace=1)' if reaper else 'pass'};"
        f"s = svc.Service('sleeper', {command!r}, Path({str(log)!r}), {{}}, '-'); s.start();"
        "print(s.pid, flush=True); time.sleep(300)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert services.ChildRecord.load(log.with_suffix(services.CHILD_RECORD_SUFFIX))
    assert services.live_groups([child])
    eventually(lambda: ready is None or ready.exists(), 30, 0.02)
    parent.kill()
    parent.wait()
    return child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_a_service_gets_sigterm_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    command = [str(shutil.which("sleep")), "300"]
    child = _start_service_then_get_killed(tmp_path, command, reaper=False)
    try:
        assert eventually(lambda: not services.live_groups([child]), 10, 0.05)
    finally:
        services.terminate_groups([child], grace=1)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="identifies processes through /proc")
def test_the_reaper_kills_a_service_that_outlives_its_killed_parent(tmp_path: Path) -> None:
    ready = tmp_path / "ignoring SIGTERM"
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        f"open({str(ready)!r}, 'w').close(); time.sleep(300)"
    )
    command = [sys.executable, "-c", stubborn]
    child = _start_service_then_get_killed(tmp_path, command, reaper=True, ready=ready)
    try:
        assert eventually(lambda: not services.live_groups([child]), 15, 0.05)
        log = tmp_path / services.LOG_DIR / "reaper.log"
        # the reaper writes its line once the group is gone
        assert eventually(lambda: "stopped sleeper (pid" in log.read_text(), 10, 0.05)
        assert not list((tmp_path / services.LOG_DIR).glob(f"*{services.CHILD_RECORD_SUFFIX}"))
    finally:
        services.terminate_groups([child], grace=1)


def _up_error(home: Path, **overrides: object) -> str:
    """``churnops up`` that fails: its one line on the error console."""
    out, err = io.StringIO(), io.StringIO()
    settings = get_settings(churnops_home=home, **overrides)
    code = launch.run(settings, Console(file=out, width=200), Console(file=err, width=200))
    assert "error:" not in out.getvalue(), "errors go to the error console only"
    assert code == 1
    [line] = err.getvalue().splitlines()
    return line


def test_up_names_the_drop_folder_it_no_longer_watches_while_files_wait_there(
    tmp_path: Path,
) -> None:
    """LOCAL_DROP_DIR changed between two ``up``s of a home: the files waiting in the old
    folder were seen by nobody, and nothing said so."""
    old, new = tmp_path / "old-drop", tmp_path / "new-drop"
    storage = LocalDropStorage(old)
    storage.create_layout()
    for key in (stage_key("input", "a.csv"), stage_key("labels", "b.csv")):
        storage.create(key, b"x\n1\n")
    storage.create(run_key("processed", "r1", "c.csv"), b"x\n1\n")  # done: not waiting
    clash = {"prefect_port": 47124, "mlflow_port": 47124}  # `up` stops after the note

    def up(drop: Path) -> str:
        out = io.StringIO()
        settings = get_settings(churnops_home=tmp_path / "home", local_drop_dir=drop, **clash)
        launch.run(settings, Console(file=out, width=400), Console(file=io.StringIO()))
        return out.getvalue()

    assert "waiting" not in up(old)
    said = up(new)
    assert f"{old.resolve()}, has files waiting (1 input, 1 labels)" in said, said
    assert "(LOCAL_DROP_DIR)" in said
    assert "waiting" not in up(new)  # said once, at the change
    (old / "data" / "input" / "a.csv").unlink()
    (old / "data" / "labels" / "b.csv").unlink()
    assert "waiting" not in up(old) + up(new)  # nothing waits there


def test_a_second_up_on_the_same_home_says_so_in_one_line(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / services.PID_FILE).write_text(str(other.pid))
        state = json.dumps({"pid": other.pid, "drop_dir": "-", "services": {}})
        (tmp_path / services.STATE_FILE).write_text(state)
        line = _up_error(tmp_path)
        with pytest.raises(services.PlatformError, match=f"already runs on .*pid {other.pid}"):
            services.take_pid_file(tmp_path)
    finally:
        other.kill()
        other.wait()
    assert line.startswith(f"error: the platform already runs on {tmp_path.resolve()}")
    assert f"(pid {other.pid})" in line
    # the running platform's files are its own
    assert (tmp_path / services.PID_FILE).read_text() == str(other.pid)
    assert (tmp_path / services.STATE_FILE).read_text() == state
    # the owner is gone: the stale PID file is replaced
    assert services.take_pid_file(tmp_path).read_text() == str(os.getpid())
    services.release_files(tmp_path)
    assert not (tmp_path / services.PID_FILE).exists()


def _make_clean(cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess:
    """``make clean`` in ``cwd``, with ``CHURNOPS_HOME`` set to ``home`` or unset."""
    env = {k: v for k, v in os.environ.items() if k != "CHURNOPS_HOME"}
    if home is not None:
        env["CHURNOPS_HOME"] = str(home)
    command = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "clean"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_make_clean_keeps_the_state_a_running_platform_uses(tmp_path: Path) -> None:
    home = tmp_path / ".churnops"
    home.mkdir()
    (home / services.PID_FILE).write_text(str(os.getpid()))  # this test stands for `up`

    refused = _make_clean(tmp_path)
    assert refused.returncode != 0
    assert f"error: the platform runs on .churnops (pid {os.getpid()}): stop it" in refused.stderr
    assert (home / services.PID_FILE).exists()
    (home / services.PID_FILE).write_text(str(dead_pid()))  # stopped, or killed
    assert _make_clean(tmp_path).returncode == 0
    assert not home.exists()


def test_make_clean_keeps_a_churnops_home_named_elsewhere(tmp_path: Path) -> None:
    """A folder the user named (CHURNOPS_HOME=$HOME, say) is never deleted: one line says it
    is kept and how to remove it, and a platform running on it is refused as on .churnops."""
    repo, named = tmp_path / "repo", tmp_path / "named"
    (repo / ".churnops").mkdir(parents=True)
    named.mkdir()
    (named / services.PID_FILE).write_text(str(os.getpid()))  # this test stands for `up`

    refused = _make_clean(repo, named)
    assert refused.returncode != 0
    assert f"error: the platform runs on {named} (pid {os.getpid()}): stop it" in refused.stderr
    assert (repo / ".churnops").exists()
    (named / services.PID_FILE).write_text(str(dead_pid()))  # stopped, or killed
    kept = _make_clean(repo, named)
    assert kept.returncode == 0, kept.stderr
    assert not (repo / ".churnops").exists()
    assert (named / services.PID_FILE).exists()
    notes = [line for line in kept.stdout.splitlines() if str(named) in line]
    assert notes == [f"kept CHURNOPS_HOME {named}: remove it yourself with rm -rf {named}"]
    assert _make_clean(repo, repo / ".churnops").stdout == "rm -rf .churnops\n"


def test_a_start_up_error_is_one_line_and_leaves_no_files(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        line = _up_error(tmp_path, platform_host="127.0.0.1", prefect_port=port)
    assert line.startswith(f"error: port {port} on 127.0.0.1 (PREFECT_PORT) is in use")
    assert not (tmp_path / services.PID_FILE).exists()


def test_a_slow_writer_is_reported_once_it_closed_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pauses longer than the quiet period do not report a half-written file: the
    close-write does, with the whole size."""
    with watching(tmp_path, monkeypatch, 0.05) as (_, objects, seen):
        with (tmp_path / "data/input/slow.csv").open("wb") as out:
            for _ in range(6):
                out.write(b"x" * 100)
                out.flush()
                time.sleep(0.25)
        assert seen.wait(30)
        time.sleep(0.5)  # anything reported late would be in by now
    assert [o["size"] for o in objects] == [600]


@pytest.mark.parametrize("how", ["written", "renamed in"])
def test_an_empty_file_its_writer_closed_is_sent_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Whole, though empty: its run rejects it now, as on S3, not the reconciler a minute
    later; one created empty and then written is sent once, whole."""
    with watching(tmp_path, monkeypatch, 0.05) as (_, objects, seen):
        empty = tmp_path / ("data/input/empty.csv" if how == "written" else "data/.empty")
        empty.touch()
        if how == "renamed in":
            empty.rename(tmp_path / "data/input/empty.csv")
        assert seen.wait(30), "an empty file was not sent"
        (tmp_path / "data/input/later.csv").touch()
        with (tmp_path / "data/input/later.csv").open("ab") as out:
            out.write(b"a,b\n1,2\n")
        whole = ("data/input/later.csv", 8)
        eventually(lambda: whole in [(o["key"], o["size"]) for o in objects], 30)
        time.sleep(0.5)  # anything reported late would be in by now
    sent = [(o["key"], o["size"]) for o in objects]
    assert sent[0] == ("data/input/empty.csv", 0) and sent[-1] == ("data/input/later.csv", 8)
    # Its empty version may be sent too (its run finds it written), and the whole one twice
    # (one version: one run, by the handler's idempotency key).
    assert set(sent[1:]) - {("data/input/later.csv", 0)} == {("data/input/later.csv", 8)}


def test_a_drop_folder_that_cannot_be_made_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    """It was a FileNotFoundError once the servers had started and a model was trained."""
    (tmp_path / "a-file").write_text("")
    line = _up_error(tmp_path, local_drop_dir=tmp_path / "a-file" / "drop", prefect_port=0)
    assert line.startswith("error: cannot make the drop folder ") and "LOCAL_DROP_DIR" in line
    assert not list((tmp_path / services.LOG_DIR).glob("prefect*"))  # nothing was started


def test_two_servers_given_one_port_is_one_line_before_either_starts(tmp_path: Path) -> None:
    """It was the second server's bind error and its log, after the first had started."""
    line = _up_error(tmp_path, prefect_port=47124, mlflow_port=47124, evidently_port=0)
    assert line == (
        "error: PREFECT_PORT and MLFLOW_PORT are both 47124: give each server its own port, "
        "or 0 to pick free ones"
    )
    assert not list((tmp_path / services.LOG_DIR).glob("prefect*"))  # nothing was started


def test_the_platform_logs_times_in_utc_whatever_the_local_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A service's start line and a runner's log lines say UTC, as every other time does."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        record = logging.LogRecord("churnops", logging.INFO, __file__, 1, "hello", None, None)
        line = services.UtcFormatter("%(asctime)s %(message)s").format(record)
        stamp = services.utc_stamp()
    finally:
        monkeypatch.undo()
        time.tzset()
    utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    assert line == f"{utc}.{int(record.msecs):03d}Z hello"
    written = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - written) < timedelta(minutes=1), stamp


def test_no_staging_model_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A runner without a model to load still serves (a platform just deployed has none)."""
    settings = get_settings(
        churnops_home=tmp_path, mlflow_tracking_uri=(tmp_path / "mlruns").as_uri()
    )
    runner = FlowRunner(settings, client=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="churnops.runner"):
        runner.warm_up()
    assert "not warm, the first run loads the model" in caplog.text
    assert "has alias 'staging'" in caplog.text, caplog.text


def test_the_finished_files_line_reuses_one_prefect_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``up`` looks for ended runs every second: building a client each time (its SSL
    context) was most of an idle ``up``'s CPU (py-spy: 36 of 42 samples)."""
    import prefect.client.orchestration

    made: list[MagicMock] = []  # the Prefect clients, each answering no ended run

    def client(api: str) -> MagicMock:
        made.append(MagicMock(**{"__enter__.return_value.read_flow_runs.return_value": []}))
        return made[-1]

    monkeypatch.setattr(prefect.client.orchestration, "SyncPrefectClient", client)
    finished = launch.FinishedFiles(get_settings().platform, Console(file=io.StringIO()))
    for _ in range(3):
        finished.print_new()
    assert len(made) == 1
    hiccup = OSError("the server restarts")  # an API hiccup: the next look starts afresh
    made[0].__enter__.return_value.read_flow_runs.side_effect = hiccup
    finished.print_new()
    finished.print_new()
    assert len(made) == 2 and made[0].__exit__.called
    finished.close()
    assert made[1].__exit__.called


class _EndedRuns(BaseHTTPRequestHandler):
    """Prefect's API as the finished-files look meets it: no ended run the first time, then
    a server going down (503, which Prefect's client retries like a refused connection); no
    CSRF (404)."""

    posts: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append(self.path)
        self.send_response(200 if len(self.posts) == 1 else 503)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_the_finished_files_look_does_not_hold_up_the_restart_of_a_dead_prefect() -> None:
    """Prefect killed under ``up`` was restarted 72 s later: the supervising loop first
    looks for ended runs, and its client, having connected once, retried the refused
    connection with its back-off (2, 4, 8, 16, 32 s) before the loop saw the dead server.
    A look is one request: the next second's look is the retry."""
    with http_server(_EndedRuns) as server:
        settings = get_settings(prefect_port=server.server_port)
        finished = launch.FinishedFiles(settings.platform, Console(file=io.StringIO()))
        finished.print_new()
        assert finished.client is not None  # connected once
        finished.print_new()  # the server is going down
    assert len(_EndedRuns.posts) == 2
    assert finished.client is None  # the next look starts afresh


def test_an_idle_runner_polls_with_a_plain_read_and_marks_its_deployments_now_and_then() -> None:
    """The poll that marks the deployments as polled cost the server 6.4 ms against 2.7 ms
    for reading the same runs; two idle runners polled 8 times a second (8% of a core)."""
    marking, reading = "get_scheduled_flow_runs_for_deployments", "read_flow_runs"
    client = Mock(**{f"{marking}.return_value": ["due"], f"{reading}.return_value": ["due"]})
    runner = FlowRunner(get_settings(), client)
    assert [runner.due_runs() for _ in range(4)] == [["due"]] * 4
    assert [name for name, *_ in client.method_calls] == [marking] + [reading] * 3
    runner.marked -= runner_module.MARK_POLLED_SECONDS  # Prefect's foreman waits 60 s
    runner.due_runs()
    assert client.method_calls[-1][0] == marking
