"""The supervisor of ``churnops up`` (``launch._supervise``) over real children: servers
and runners restarted, a budget for crash loops. ``churnops up`` itself, killed and
started again, is test_platform_e2e.py."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console

from churnops.platform import launch, services
from churnops.settings import get_settings
from tests.processes import LOOPBACK, eventually


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
        started = [c for c in self.platform.children() if c.process is not None]
        services.stop_all(started, grace=10)


def _settings(tmp_path: Path, prefect_server: str, **extra: object):  # type: ignore[no-untyped-def]
    """Settings whose Prefect is the session's server: against a closed port each of the
    supervisor's requests would cost seconds of retries."""
    port = urlsplit(prefect_server).port
    return get_settings(churnops_home=tmp_path, platform_host=LOOPBACK, prefect_port=port, **extra)


def test_a_killed_mlflow_server_is_restarted_by_up(tmp_path: Path, prefect_server: str) -> None:
    settings = _settings(tmp_path, prefect_server, mlflow_port=0)
    ports = services.Ports(prefect=0, mlflow=services.free_port(LOOPBACK), evidently=0)
    mlflow = next(s for s in services.server_services(settings, ports) if s.name == "mlflow")
    platform = launch.Platform(settings, Console(file=io.StringIO()), servers=[mlflow])
    mlflow.start()
    assert eventually(mlflow.healthy, 180, 0.2), mlflow.tail()
    first = mlflow.pid
    with Supervised(platform) as supervised:
        os.kill(first, signal.SIGKILL)
        assert eventually(lambda: mlflow.pid != first and mlflow.healthy(), 180, 0.2), mlflow.tail()
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
            assert eventually(lambda pid=pid: killed.pid != pid and killed.alive(), 30, 0.2)
        assert not supervised.code
    crashing = _child(tmp_path, "runner-1", [sys.executable, "-c", "raise SystemExit(1)"])
    platform = launch.Platform(settings, Console(file=io.StringIO()), runners=[crashing])
    crashing.start()
    with Supervised(platform) as supervised:
        supervised.thread.join(timeout=60)
        assert supervised.code == [1]
    assert "runner-1 stopped unexpectedly" in platform.console.file.getvalue()
