"""``churnops up`` killed with SIGKILL: nothing of it keeps running, and it starts again at once.

The first start trains the model (empty CHURNOPS_HOME, two CV folds); the
restart finds it by its alias, so it trains once, as ``make demo`` twice must.
The restart asks for the very ports the killed platform had: they must be free
although connections to them just closed (TIME_WAIT).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from churnops.platform import launch, services
from churnops.settings import get_settings
from tests.processes import FOREIGN, LOOPBACK, leftovers

pytestmark = pytest.mark.integration

START_TIMEOUT = 900.0  # training included, on a busy 2-core machine
GONE_TIMEOUT = 30.0
SERVERS = ("prefect", "mlflow", "evidently")


class Up:
    """One ``churnops up`` subprocess on a home, its output in a file."""

    def __init__(self, home: Path, env: dict[str, str], label: str) -> None:
        self.home = home
        self.output = home.parent / f"up-{label}.log"
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("churnops")), "up"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def logs(self) -> str:
        parts = [f"--- {self.output.name}\n{self.text()[-4000:]}"]
        for log in sorted((self.home / services.LOG_DIR).glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def wait_ready(self) -> dict:
        """This process's platform.json: written once every service answers."""
        path = self.home / services.STATE_FILE
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            state = json.loads(path.read_text()) if path.exists() else {}
            if state.get("pid") == self.process.pid:
                return state
            if self.process.poll() is not None:
                pytest.fail(f"churnops up exited early:\n{self.logs()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"not ready in {START_TIMEOUT:.0f}s:\n{self.logs()}", pytrace=False)
            time.sleep(0.5)

    def stop(self) -> None:
        """Ctrl-C, as an operator would; SIGKILL and the groups' cleanup if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        services.terminate_groups([r.pid for r in _records(self.home)], grace=5)


@pytest.fixture
def env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, str]:
    home = tmp_path_factory.mktemp("supervisor") / "home"
    clean = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    return clean | {
        "CHURNOPS_HOME": str(home),
        "CHURN_DATA_DIR": str(data_dir),
        "PLATFORM_HOST": LOOPBACK,
        "PREFECT_PORT": "0",
        "MLFLOW_PORT": "0",
        "EVIDENTLY_PORT": "0",
        "RUNNER_PROCESSES": "1",  # one warm runner is enough here, and quicker on 2 cores
        "COLUMNS": "200",
    }


@pytest.fixture
def ups() -> Iterator[list[Up]]:
    """Every platform a test starts; all stopped at the end, whatever happened."""
    started: list[Up] = []
    try:
        yield started
    finally:
        for up in reversed(started):
            up.stop()


def _records(home: Path) -> list[services.ChildRecord]:
    paths = (home / services.LOG_DIR).glob(f"*{services.CHILD_RECORD_SUFFIX}")
    return [r for p in paths if (r := services.ChildRecord.load(p)) is not None]


def _ports(state: dict) -> dict[str, int]:
    return {name: urlsplit(state["services"][name]["url"]).port for name in SERVERS}


def _busy(ports: dict[str, int]) -> list[str]:
    """The ports a new platform could not take (the probe ``churnops up`` uses)."""
    busy = []
    for name, port in ports.items():
        try:
            services.choose_port(LOOPBACK, port, f"{name}_port")
        except services.PlatformError:
            busy.append(f"{name}:{port}")
    return busy


def _whats_left(home: Path, pgids: list[int], ports: dict[str, int]) -> list[str]:
    groups = [f"group {pgid}: {members}" for pgid, members in services.live_groups(pgids).items()]
    return groups + leftovers(home) + _busy(ports)


def _reaper_log(home: Path) -> str:
    return (home / services.LOG_DIR / "reaper.log").read_text()


def test_a_killed_platform_leaves_nothing_running_and_restarts_on_its_ports(
    env: dict[str, str], ups: list[Up]
) -> None:
    home = Path(env["CHURNOPS_HOME"])
    first = Up(home, env, "first")
    ups.append(first)
    ports = _ports(first.wait_ready())
    records = _records(home)
    names = {r.name for r in records}
    assert set(SERVERS) < names and all(n.startswith("runner") for n in names - set(SERVERS))
    pgids = [r.pid for r in records]

    first.process.kill()  # SIGKILL: `up` can stop nothing itself
    first.process.wait()
    deadline = time.monotonic() + GONE_TIMEOUT
    while _whats_left(home, pgids, ports) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _whats_left(home, pgids, ports) == [], first.logs()

    second = Up(home, env | {f"{n.upper()}_PORT": str(p) for n, p in ports.items()}, "second")
    ups.append(second)
    state = second.wait_ready()
    assert _ports(state) == ports
    assert all(services.http_ok(state["services"][name]["health_url"]) for name in SERVERS)
    output = second.text()
    assert "training" not in output, output
    assert "is version 1" in output, output
    assert "left running" not in output, output  # nothing was left for it to stop

    second.process.send_signal(signal.SIGINT)  # a clean stop releases the reaper too
    assert second.process.wait(timeout=120) == 0, second.logs()
    deadline = time.monotonic() + GONE_TIMEOUT
    while leftovers(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert leftovers(home) == []
    assert f"(pid {second.process.pid}) died" not in _reaper_log(home)


# --- the supervisor of `churnops up`: servers and runners restarted, a budget for crash loops -----
class Supervised:
    """``launch._supervise`` in a thread over a platform of real children."""

    def __init__(self, platform: launch.Platform) -> None:
        self.platform = platform
        self.stop = threading.Event()
        self.code: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.code.append(launch._supervise(platform, self.stop)), daemon=True
        )

    def __enter__(self) -> Supervised:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        svc_stop = [c for c in self.platform.children() if c.process is not None]
        services.stop_all(svc_stop, grace=10)


def _until(condition: Callable[[], bool], seconds: float = 180.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def _settings(tmp_path: Path, prefect_server: str, **extra: object):  # type: ignore[no-untyped-def]
    """A platform's settings whose Prefect is the session's server: the supervisor's
    console lines and reconcile requests get their answers at once (against a closed port
    each look costs seconds of the clients' retries)."""
    port = urlsplit(prefect_server).port
    return get_settings(churnops_home=tmp_path, platform_host=LOOPBACK, prefect_port=port, **extra)


def test_a_killed_mlflow_server_is_restarted_by_up(tmp_path: Path, prefect_server: str) -> None:
    settings = _settings(tmp_path, prefect_server, mlflow_port=0)
    ports = services.Ports(prefect=0, mlflow=services.free_port(LOOPBACK), evidently=0)
    mlflow = next(s for s in services.server_services(settings, ports) if s.name == "mlflow")
    platform = launch.Platform(settings, Console(file=io.StringIO()), servers=[mlflow])
    mlflow.start()
    assert _until(mlflow.healthy), mlflow.tail()
    first = mlflow.pid
    with Supervised(platform) as supervised:
        os.kill(first, signal.SIGKILL)
        assert _until(lambda: mlflow.pid != first and mlflow.healthy()), mlflow.tail()
        assert not supervised.code  # the platform still runs
    assert "mlflow died: restarting it" in platform.console.file.getvalue()


def _child(tmp_path: Path, name: str, command: list[str]) -> services.Service:
    return services.Service(name, command, tmp_path / f"{name}.log", dict(os.environ), url="")


def test_a_runner_killed_again_and_again_is_restarted_but_a_crash_loop_stops_the_platform(
    tmp_path: Path, prefect_server: str
) -> None:
    """SIGKILL (the OOM killer: a file that kills its runner, bounded by MAX_ATTEMPTS) uses
    no restart budget; a child that keeps exiting on its own stops the platform."""
    settings = _settings(tmp_path, prefect_server)
    killed = _child(tmp_path, "runner-0", ["sleep", "600"])
    platform = launch.Platform(settings, Console(file=io.StringIO()), runners=[killed])
    killed.start()
    with Supervised(platform) as supervised:
        for _ in range(launch.MAX_RESTARTS + 2):
            pid = killed.pid
            os.kill(pid, signal.SIGKILL)
            assert _until(lambda pid=pid: killed.pid != pid and killed.alive(), 30)
        assert not supervised.code
    crashing = _child(tmp_path, "runner-1", [sys.executable, "-c", "raise SystemExit(1)"])
    platform = launch.Platform(settings, Console(file=io.StringIO()), runners=[crashing])
    crashing.start()
    with Supervised(platform) as supervised:
        supervised.thread.join(timeout=60)
        assert supervised.code == [1]
    assert "runner-1 stopped unexpectedly" in platform.console.file.getvalue()
