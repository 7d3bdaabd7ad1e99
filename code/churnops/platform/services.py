"""Process supervision of the platform's servers: ports, start, health, stop.

Each service is a child process in its own session (process group), with its
log in ``CHURNOPS_HOME/logs/``; stopping terminates the whole group, then kills
it, so no grandchild (uvicorn workers, Prefect services) outlives the platform.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from churnops.settings import Settings

#: Variables that would point a child at another Prefect server, profile or database.
FOREIGN_PREFECT_ENV = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_PROFILES_PATH",
    "PREFECT_PROFILE",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)
STATE_FILE = "platform.json"
PID_FILE = "platform.pid"
#: Written by each runner once it serves the deployments (removed when it stops).
READY_FILE = "runner.ready"


def ready_file(home: Path, index: int) -> Path:
    """The ready file of runner ``index`` under CHURNOPS_HOME."""
    return home / f"{READY_FILE}.{index}"


class PlatformError(RuntimeError):
    """The platform cannot start or run; the message says why and what to do."""


# --- ports -------------------------------------------------------------------------------
def free_port(host: str) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def choose_port(host: str, configured: int, setting: str) -> int:
    """The configured port if it is free, a free one for 0; a clear error when busy."""
    if configured == 0:
        return free_port(host)
    with socket.socket() as sock:
        try:
            sock.bind((host, configured))
        except OSError as exc:
            raise PlatformError(
                f"port {configured} on {host} ({setting.upper()}) is in use ({exc.strerror}):"
                f" stop what uses it, or set {setting.upper()}=0 to pick a free port"
            ) from None
    return configured


# --- child processes ---------------------------------------------------------------------
def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment minus foreign Prefect variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_PREFECT_ENV}
    return env | extra


def bin_path(name: str) -> str:
    """A console script of this environment (beside the running Python)."""
    return str(Path(sys.executable).with_name(name))


@dataclass
class Service:
    """A supervised child process and how to tell it is healthy."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    url: str
    health_url: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%F %T')} {' '.join(self.command)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: Ctrl-C reaches only `up`
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        return self.alive() and (self.health_url is None or http_ok(self.health_url))

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left."""
        if self.process is None:
            return
        stop_group(self.process, grace)


def stop_all(services: list[Service], grace: float) -> None:
    """SIGTERM every service first, then wait: they stop in parallel, not one by one."""
    for service in services:
        if service.process is not None:
            _signal_group(service.process.pid, signal.SIGTERM)
    for service in services:
        service.stop(grace)


def stop_group(process: subprocess.Popen, grace: float) -> None:
    """Terminate a child's process group; kill it after ``grace`` seconds."""
    pgid = process.pid  # start_new_session: the child leads its group
    _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    _signal_group(pgid, signal.SIGKILL)  # grandchildren too, even if the leader exited
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def http_ok(url: str, timeout: float = 3.0) -> bool:
    """True when a GET answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    services: list[Service],
    ready: Callable[[Service], bool],
    timeout: float,
    on_ready: Callable[[Service], None] = lambda s: None,
) -> None:
    """Wait for every service; PlatformError naming the one that died or is late."""
    pending = list(services)
    deadline = time.monotonic() + timeout
    while pending:
        for service in list(pending):
            if not service.alive():
                code = service.process.returncode if service.process else None
                raise PlatformError(
                    f"{service.name} exited (code {code}) while starting;"
                    f" its log {service.log}:\n{service.tail()}"
                )
            if ready(service):
                pending.remove(service)
                on_ready(service)
        if pending and time.monotonic() > deadline:
            late = pending[0]
            raise PlatformError(
                f"{late.name} did not become healthy within {timeout:.0f}s;"
                f" its log {late.log}:\n{late.tail()}"
            )
        if pending:
            time.sleep(0.3)


# --- the servers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    prefect: int
    mlflow: int
    evidently: int


def choose_ports(settings: Settings) -> Ports:
    host = settings.platform_host
    return Ports(
        prefect=choose_port(host, settings.prefect_port, "prefect_port"),
        mlflow=choose_port(host, settings.mlflow_port, "mlflow_port"),
        evidently=choose_port(host, settings.evidently_port, "evidently_port"),
    )


def prefect_api_url(settings: Settings, port: int) -> str:
    return f"http://{settings.platform_host}:{port}/api"


def mlflow_url(settings: Settings, port: int) -> str:
    return f"http://{settings.platform_host}:{port}"


def server_services(settings: Settings, ports: Ports) -> list[Service]:
    """Prefect, MLflow and the Evidently UI, all with their state under CHURNOPS_HOME."""
    home, host, logs = settings.home, settings.platform_host, settings.home / "logs"
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    settings.evidently_workspace_dir.mkdir(parents=True, exist_ok=True)
    prefect_env = child_env(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": prefect_api_url(settings, ports.prefect),
        }
    )
    api = prefect_api_url(settings, ports.prefect)
    return [
        Service(
            "prefect",
            [bin_path("prefect"), "server", "start", "--host", host, "--port", str(ports.prefect)],
            logs / "prefect.log",
            prefect_env,
            url=f"http://{host}:{ports.prefect}",
            health_url=f"{api}/health",
        ),
        Service(
            "mlflow",
            [
                bin_path("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination",
                str(settings.mlflow_artifacts_dir),
                "--host",
                host,
                "--port",
                str(ports.mlflow),
                "--workers",
                "1",
            ],
            logs / "mlflow.log",
            child_env({}),
            url=mlflow_url(settings, ports.mlflow),
            health_url=f"{mlflow_url(settings, ports.mlflow)}/health",
        ),
        Service(
            "evidently",
            [
                bin_path("evidently"),
                "ui",
                "--workspace",
                str(settings.evidently_workspace_dir),
                "--host",
                host,
                "--port",
                str(ports.evidently),
            ],
            logs / "evidently.log",
            child_env({}),
            url=f"http://{host}:{ports.evidently}",
            health_url=f"http://{host}:{ports.evidently}/api/version",
        ),
    ]


# --- the platform's own files ----------------------------------------------------------------
@dataclass
class PlatformState:
    """What ``churnops status`` needs to find the running platform (``platform.json``)."""

    pid: int
    drop_dir: str
    services: dict[str, dict[str, str | int | None]]

    def save(self, home: Path) -> None:
        path = home / STATE_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, home: Path) -> PlatformState | None:
        """The state of a platform that is still running there, else None."""
        path = home / STATE_FILE
        if not path.exists():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if pid_alive(state.pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_pid_file(home: Path) -> Path:
    """Refuse a second ``churnops up`` on the same home; a stale PID file is replaced."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / PID_FILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        text = path.read_text().strip()
        other = int(text) if text.isdigit() else 0
        if other and other != os.getpid() and pid_alive(other):
            raise PlatformError(
                f"the platform already runs on {home} (pid {other}): use `churnops status`,"
                " or stop it (Ctrl-C in its terminal) before starting it again"
            ) from None
        path.unlink(missing_ok=True)  # left by a platform that did not stop cleanly
        return take_pid_file(home)
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    return path


def release_files(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)
    path = home / PID_FILE
    if path.exists() and path.read_text().strip() == str(os.getpid()):
        path.unlink()
