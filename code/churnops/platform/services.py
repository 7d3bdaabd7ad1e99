"""The platform's child processes: ports, start, health, stop.

Each child leads its own process group, so stopping it stops its grandchildren too.
A killed ``up`` cannot stop anything: the kernel SIGTERMs its children (Linux), a
reaper process stops the rest, and each child's record lets the next ``up`` do so.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import logging
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

from churnops.drop.claims import pid_alive
from churnops.settings import PlatformSettings, Settings


def utc_stamp() -> str:
    """Now, as the platform's logs write it: UTC and labelled, like the files' logs, run ids
    and alerts (the machine's clock may be any zone's: ``TZ=America/New_York`` wrote 11:42
    beside a file log's 16:42+00:00)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class UtcFormatter(logging.Formatter):
    """``%(asctime)s`` in UTC, labelled (:func:`utc_stamp`, with milliseconds)."""

    converter = time.gmtime
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


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
#: Credentials only ChurnOps' own processes use (alerts, the metrics database, S3): the
#: servers it starts (Prefect, MLflow, the Evidently UI) run without them.
CREDENTIALS_ENV = (
    "SMTP_PASSWORD",
    "DASHBOARD_DB_PASSWORD",
    "DATABASE_URL",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
STATE_FILE = "platform.json"
PID_FILE = "platform.pid"
LOG_DIR = "logs"
CHILD_RECORD_SUFFIX = ".child.json"
#: Words in the command line of every process the platform starts.
OUR_COMMANDS = ("churnops", "prefect", "mlflow", "evidently")
PR_SET_PDEATHSIG = 1


def ready_file(home: Path, index: int) -> Path:
    """Written by runner ``index`` once it serves the deployments."""
    return home / f"runner.ready.{index}"


class PlatformError(RuntimeError):
    """The platform cannot start or run; the message says why and what to do."""


# --- ports -------------------------------------------------------------------------------
def free_port(host: str) -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not bind ``port`` now, or None when it could."""
    with socket.socket() as sock:  # as the servers bind: TIME_WAIT is free, a listener not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def choose_port(host: str, configured: int, setting: str, previous: int = 0) -> int:
    """The configured port if it is free; for 0, ``previous`` (the last ``up``'s) if it is
    free, else a free one; a clear error when a configured port is busy."""
    if configured == 0:
        return previous if previous and bind_error(host, previous) is None else free_port(host)
    if (exc := bind_error(host, configured)) is not None:
        raise PlatformError(
            f"port {configured} on {host} ({setting.upper()}) is in use ({exc.strerror}):"
            f" stop what uses it, or set {setting.upper()}=0 to pick a free port"
        )
    return configured


# --- child processes ---------------------------------------------------------------------
def child_env(platform: PlatformSettings, extra: dict[str, str]) -> dict[str, str]:
    """Every child's environment: ours without foreign Prefect variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_PREFECT_ENV}
    return platform.process_env(env) | extra


def bin_path(name: str) -> str:
    """A console script of this environment (beside the running Python)."""
    return str(Path(sys.executable).with_name(name))


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the kernel SIGTERM the child when the starting *thread*
    dies (Linux ``prctl``; None elsewhere), so children are started from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    option, sig, zero = (ctypes.c_ulong(v) for v in (PR_SET_PDEATHSIG, signal.SIGTERM, 0))

    def arm() -> None:  # runs in the child, between fork and exec
        prctl(option, sig, zero, zero, zero)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


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

    @property
    def record_path(self) -> Path:
        return self.log.with_suffix(CHILD_RECORD_SUFFIX)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"\n--- {utc_stamp()} {' '.join(self.command)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # own process group: Ctrl-C reaches only `up`
                preexec_fn=parent_death_signal(),  # and it goes when `up` is killed
            )
        ChildRecord.of(self.name, self.process.pid, self.command).save(self.record_path)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        return self.alive() and (self.health_url is None or http_ok(self.health_url))

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def failure(self, what: str, chars: int = 3000) -> str:
        return f"{self.name} {what}; its log {self.log}:\n{self.tail(chars)}"

    def stop(self, grace: float = 20.0) -> None:
        if self.process is None:
            return
        stop_group(self.process, grace)
        self.record_path.unlink(missing_ok=True)


def stop_all(services: list[Service], grace: float) -> None:
    """SIGTERM every service first, then wait: they stop in parallel."""
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
                raise PlatformError(service.failure(f"exited (code {code}) while starting"))
            if ready(service):
                pending.remove(service)
                on_ready(service)
        if pending and time.monotonic() > deadline:
            late = f"did not become healthy within {timeout:.0f}s"
            raise PlatformError(pending[0].failure(late))
        if pending:
            time.sleep(0.3)


# --- the servers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    prefect: int
    mlflow: int
    evidently: int


def choose_ports(platform: PlatformSettings, previous: Ports | None = None) -> Ports:
    """Each server's port; two given the same one are refused before either starts (the
    second failed to bind, and `up` ended with its log instead of one line). A setting of
    0 takes the server's ``previous`` port unless another server has it."""
    names = ("prefect_port", "mlflow_port", "evidently_port")
    host = platform.platform_host
    for first, second in itertools.combinations(names, 2):
        if (port := getattr(platform, first)) and port == getattr(platform, second):
            raise PlatformError(
                f"{first.upper()} and {second.upper()} are both {port}: give each server "
                "its own port, or 0 to pick free ones"
            )
    taken = {getattr(platform, name) for name in names} - {0}
    chosen: list[int] = []
    for name in names:
        last = getattr(previous, name.removesuffix("_port"), 0)
        last = 0 if last in taken else last
        chosen.append(choose_port(host, getattr(platform, name), name, last))
        taken.add(chosen[-1])
    return Ports(*chosen)


def server_url(platform: PlatformSettings, port: int) -> str:
    return f"http://{platform.platform_host}:{port}"


def prefect_api_url(platform: PlatformSettings, port: int | None = None) -> str:
    return f"{server_url(platform, platform.prefect_port if port is None else port)}/api"


def server_services(settings: Settings, ports: Ports) -> list[Service]:
    """Prefect, MLflow and the Evidently UI, all with their state under CHURNOPS_HOME."""
    home, host, logs = settings.home, settings.platform.platform_host, settings.home / LOG_DIR
    prefect_home = home / "prefect"
    artifacts = settings.model.mlflow_artifacts_dir
    workspace = settings.monitoring.evidently_workspace_dir
    for folder in (prefect_home, artifacts, workspace):
        folder.mkdir(parents=True, exist_ok=True)
    prefect_env = {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        "PREFECT_UI_API_URL": prefect_api_url(settings.platform, ports.prefect),
    }
    # MLflow's job runner (GenAI jobs, unused here) adds seven workers that outlive it.
    mlflow_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow_args = ["server", "--backend-store-uri", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"]
    mlflow_args += ["--artifacts-destination", str(artifacts), "--workers", "1"]

    def service(name: str, args: list[str], port: int, health: str, env: dict) -> Service:
        url = f"http://{host}:{port}"
        command = [bin_path(name), *args, "--host", host, "--port", str(port)]
        env = {
            k: v for k, v in child_env(settings.platform, env).items() if k not in CREDENTIALS_ENV
        }
        return Service(name, command, logs / f"{name}.log", env, url, url + health)

    return [
        service("prefect", ["server", "start"], ports.prefect, "/api/health", prefect_env),
        service("mlflow", mlflow_args, ports.mlflow, "/health", mlflow_env),
        service(
            "evidently", ["ui", "--workspace", str(workspace)], ports.evidently, "/api/version", {}
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
        _write_json(home / STATE_FILE, asdict(self))

    @classmethod
    def load(cls, home: Path) -> PlatformState | None:
        """The state of a platform still running there, else None."""
        path = home / STATE_FILE
        if not path.exists():
            return None
        state = cls(**json.loads(path.read_text()))
        return state if pid_alive(state.pid) else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def take_pid_file(home: Path) -> Path:
    """Refuse a second ``churnops up`` on the same home; a stale PID file is replaced."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / PID_FILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        other = _owner(path)
        if other and other != os.getpid() and pid_alive(other):
            raise PlatformError(
                f"the platform already runs on {home} (pid {other}): use `churnops status`,"
                " or stop it (Ctrl-C in its terminal) before starting it again"
            ) from None
        path.unlink(missing_ok=True)  # stale
        return take_pid_file(home)
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    return path


def release_files(home: Path) -> None:
    """Remove this process's state and PID files (never another platform's)."""
    for name in (STATE_FILE, PID_FILE):
        if _owner(home / name) == os.getpid():
            (home / name).unlink()


def _owner(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text.isdigit() else int(json.loads(text)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- what a killed platform left running -----------------------------------------------------
def _proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [0] state, [2] pgid, [19] start time."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """Clock ticks after boot: a reused pid has another start time."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def running(pid: int, started: int | None = None) -> bool:
    """That process (started then, if known) runs; a zombie (a killed ``up``) does not."""
    if not Path("/proc").is_dir():
        return pid_alive(pid)
    fields = _proc_stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def live_groups(pgids: list[int]) -> dict[int, list[int]]:
    """The running members of each of these process groups; empty without /proc."""
    found: dict[int, list[int]] = {}
    proc = Path("/proc")
    for entry in proc.iterdir() if proc.is_dir() else ():
        fields = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) in pgids and fields[0] not in ("Z", "X"):
            found.setdefault(int(fields[2]), []).append(int(entry.name))
    return found


@dataclass(frozen=True)
class ChildRecord:
    """Who a child of ``up`` is, so that a later ``up`` can stop it and nothing else."""

    name: str
    pid: int
    started: int | None
    command: list[str]
    parent: int
    parent_started: int | None

    @classmethod
    def of(cls, name: str, pid: int, command: list[str]) -> ChildRecord:
        parent = os.getpid()
        return cls(name, pid, start_time(pid), command, parent, start_time(parent))

    def save(self, path: Path) -> None:
        _write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> ChildRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def looks_ours(self, pid: int) -> bool:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        line = raw.replace(b"\0", b" ").decode(errors="replace")
        return bool(line) and any(word in line for word in (*self.command[:1], *OUR_COMMANDS))

    def leftovers(self) -> list[int]:
        """Live processes of the child's group, if that group is still the one we started."""
        members = live_groups([self.pid]).get(self.pid, [])
        if self.pid in members:
            ours = start_time(self.pid) == self.started and self.looks_ours(self.pid)
        else:  # leader gone: a group id is not reused while it has members
            ours = all(self.looks_ours(pid) for pid in members)
        return members if ours else []


def terminate_groups(pgids: list[int], grace: float) -> None:
    """SIGTERM every group, wait up to ``grace`` seconds, SIGKILL what is left."""
    for pgid in pgids:
        _signal_group(pgid, signal.SIGTERM)
    if _wait_gone(pgids, grace):
        return
    for pgid in live_groups(pgids):
        _signal_group(pgid, signal.SIGKILL)
    _wait_gone(pgids, 5.0)


def _wait_gone(pgids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while live_groups(pgids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_leftovers(home: Path, grace: float = 10.0) -> list[ChildRecord]:
    """Stop (and return) the children a killed platform left running; forget its records
    and state. A record whose ``up`` lives, or whose pid is another program's, is kept."""
    stale = {
        path: record
        for path in sorted((home / LOG_DIR).glob(f"*{CHILD_RECORD_SUFFIX}"))
        if (record := ChildRecord.load(path)) is None
        or not running(record.parent, record.parent_started)
    }
    alive = [r for r in stale.values() if r is not None and r.leftovers()]
    terminate_groups([r.pid for r in alive], grace)
    for path in stale:
        path.unlink(missing_ok=True)
    owner = _owner(home / STATE_FILE)
    if owner is not None and not running(owner):
        (home / STATE_FILE).unlink(missing_ok=True)
    return alive


# --- a watchdog that outlives `up` -------------------------------------------------------------
#: Short: with ``up`` dead its servers go too, so no run in progress can finish anyway.
REAPER_GRACE = 5.0
RELEASED = b"released"


def start_reaper(home: Path, grace: float = REAPER_GRACE) -> subprocess.Popen | None:
    """A process running :func:`stop_leftovers` when this one dies without stopping its
    children: the parent-death signal reaches only them, and nobody would SIGKILL one
    that ignores it. It waits on a pipe that :func:`release_reaper` closes cleanly."""
    log = home / LOG_DIR / "reaper.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; from churnops.platform.services import reap; reap(*sys.argv[1:])"
    try:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", code, str(home), str(grace), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # neither Ctrl-C nor a kill of our group reaches it
            )
    except OSError:
        return None


def release_reaper(reaper: subprocess.Popen | None) -> None:
    if reaper is None or reaper.stdin is None:
        return
    with contextlib.suppress(OSError):
        reaper.stdin.write(RELEASED)
        reaper.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=5)


def reap(home: str, grace: str, parent: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.stdin.buffer.read() == RELEASED:  # EOF comes when `up` closes the pipe or dies
        return
    deadline = time.monotonic() + 10
    while os.getppid() == int(parent) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel closes a dying process's files before it reparents
    stopped = stop_leftovers(Path(home), float(grace))
    if stopped:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in stopped)
        print(f"{utc_stamp()} up (pid {parent}) died; stopped {names}", flush=True)
