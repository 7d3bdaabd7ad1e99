"""``churnops up``: start the local platform, supervise it, stop it cleanly.

Servers, then a model if none has the alias, then the runners (they create the
deployments), then the watcher: no trigger comes before a deployment exists.
Stopping goes the other way."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from churnops.drop.storage import LocalDropStorage, bucket_problem, s3_client
from churnops.model.progress import progress_bars
from churnops.pipeline import PIPELINE_DEPLOYMENT, RECONCILE_DEPLOYMENT
from churnops.platform import services as svc
from churnops.platform.status import list_files, stage_counts
from churnops.platform.watcher import (
    BucketPoller,
    Dispatcher,
    FolderWatcher,
    start_deployment_run,
    trigger,
)
from churnops.settings import DropSettings, MonitoringSettings, PlatformSettings, Settings

log = logging.getLogger("churnops.platform")
SERVER_START_TIMEOUT = 240.0
RUNNER_START_TIMEOUT = 300.0
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 600.0
#: The drop the last ``up`` of a home watched (a file in the home): a local folder's path,
#: or the bucket's URI.
DROP_RECORD = "drop.last"
#: The servers' ports the last ``up`` of a home used (a file in the home beside it).
PORTS_RECORD = "ports.last"
#: Where a file waits for a platform: dropped, or in a run nobody finished.
WAITING_STAGES = ("input", "labels", "processing")


@dataclass
class Platform:
    """The running pieces, so that :meth:`stop` can take them down in order."""

    settings: Settings
    console: Console
    servers: list[svc.Service] = field(default_factory=list)
    runners: list[svc.Service] = field(default_factory=list)
    watcher: FolderWatcher | BucketPoller | None = None

    def children(self) -> list[svc.Service]:
        return [*self.servers, *self.runners]

    def show_trigger(self, result: dict) -> None:
        """A line per flow run started or trigger failed; a duplicate trigger is not news."""
        log.info("trigger %s", result)
        key, status = result.get("key"), result.get("status")
        if status == "skipped" and result.get("flow_run_id"):
            return
        detail = result.get("flow_run_id") or result.get("reason") or ""
        word = {"created": "run started", "skipped": "ignored"}.get(str(status), str(status))
        colour = {"created": "green", "skipped": "yellow"}.get(str(status), "red")
        self.console.print(f"  drop [{colour}]{word}[/{colour}] {escape(f'{key} {detail}')}")

    def stop(self) -> None:
        if self.watcher is not None:
            with self.console.status("stopping the drop watcher..."):
                self.watcher.stop()
        if self.runners:
            with self.console.status("stopping the flow runners (finishing their runs)..."):
                svc.stop_all(self.runners, grace=120)
        for server in reversed(self.servers):
            with self.console.status(f"stopping {server.name}..."):
                server.stop()


def platform_settings(settings: Settings, ports: svc.Ports) -> Settings:
    """The settings every part uses while the platform runs: the servers' real ports."""
    return settings.replace(
        churnops_home=settings.home,
        prefect_port=ports.prefect,
        mlflow_port=ports.mlflow,
        evidently_port=ports.evidently,
        mlflow_tracking_uri=settings.model.mlflow_tracking_uri
        or svc.server_url(settings.platform, ports.mlflow),
        # Runners store reports through the UI, as on AWS: one writer of the workspace.
        evidently_ui_url=settings.monitoring.evidently_ui_url
        or svc.server_url(settings.platform, ports.evidently),
    )


def runner_env(settings: Settings) -> dict[str, str]:
    """The runners' settings, pointed at the platform's servers."""
    return svc.child_env(
        settings.platform,
        {
            "CHURNOPS_HOME": str(settings.home),
            "MLFLOW_TRACKING_URI": str(settings.model.mlflow_tracking_uri),
            "PREFECT_API_URL": svc.prefect_api_url(settings.platform),
            "PREFECT_HOME": str(settings.home / "prefect"),
            "PREFECT_PORT": str(settings.platform.prefect_port),
            "MLFLOW_PORT": str(settings.platform.mlflow_port),
            "EVIDENTLY_PORT": str(settings.platform.evidently_port),
            "EVIDENTLY_UI_URL": str(settings.monitoring.evidently_ui_url),
            "PREFECT_LOGGING_LEVEL": "INFO",
        },
    )


def run(settings: Settings, console: Console, errors: Console) -> int:
    """Start everything, block until Ctrl-C (or a service dies), stop everything."""
    home = settings.home
    try:
        svc.take_pid_file(home)
    except svc.PlatformError as exc:  # another `up` owns the home: touch nothing of it
        _print_error(errors, exc)
        return 1
    reaper = svc.start_reaper(home)  # stops the children should this process be killed
    stop_requested = threading.Event()
    previous = on_signals(stop_requested)
    platform = Platform(settings, console)
    code = 0
    try:
        _stop_leftovers(home, console)
        _check_drop(settings.drop)
        _note_previous_drop(settings.drop, console)
        ports = choose_ports(settings)
        settings = platform_settings(settings, ports)
        platform.settings = settings
        _start_servers(platform, ports)
        if not stop_requested.is_set():
            _ensure_model(settings, console)
            _ensure_project(settings.monitoring)
        if not stop_requested.is_set():
            _start_runner(platform)
        if not stop_requested.is_set():
            _start_watcher(platform)
            _write_state(platform)
            _print_summary(platform)
            code = _supervise(platform, stop_requested)
    except svc.PlatformError as exc:
        _print_error(errors, exc)
        code = 1
    except KeyboardInterrupt:
        pass  # Ctrl-C during start-up: stop what has started
    finally:
        if platform.children():
            console.print("stopping the platform...")
            platform.stop()
            console.print("[green]stopped[/green]: state kept in " + escape(str(home)))
        svc.release_files(home)
        svc.release_reaper(reaper)
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    return code


def _print_error(errors: Console, exc: svc.PlatformError) -> None:
    """One logical line (log tails keep their own lines), no markup from it."""
    errors.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)


def _stop_leftovers(home: Path, console: Console) -> None:
    """Stop what a killed ``up`` left running on this home: it would hold the ports."""
    with console.status("looking for processes a killed platform left running..."):
        stopped = svc.stop_leftovers(home)
    if stopped:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in stopped)
        console.print(
            f"stopped what a killed platform (pid {stopped[0].parent}) left running: {names}",
            soft_wrap=True,
        )


def on_signals(stop_requested: threading.Event) -> dict[int, object]:
    """The first SIGINT/SIGTERM interrupts what runs; later ones must not cut the stop short."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop_requested.is_set():
            return
        stop_requested.set()
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}


def _start_servers(platform: Platform, ports: svc.Ports) -> None:
    platform.servers = svc.server_services(platform.settings, ports)
    for server in platform.servers:
        server.start()
    with platform.console.status("starting Prefect, MLflow and the Evidently UI...") as status:

        def ready(server: svc.Service) -> None:
            platform.console.print(f"  [green]ok[/green] {server.name} at {server.url}")
            waiting = [s.name for s in platform.servers if not s.healthy()]
            status.update(f"waiting for {', '.join(waiting) or 'nothing'}...")

        svc.wait_until(platform.servers, svc.Service.healthy, SERVER_START_TIMEOUT, on_ready=ready)


def _ensure_model(settings: Settings, console: Console) -> None:
    """Train and register (no search) when no version has the alias."""
    model = settings.model
    with console.status("checking the model registry (loading MLflow)..."):
        from churnops.model.churn_model import aliased_version, configure_mlflow

        configure_mlflow(model)
        version = aliased_version(model.model_name, model.model_alias)
    if version is not None:
        console.print(
            f"  [green]ok[/green] {model.model_name}@{model.model_alias} is version {version}"
        )
        return
    data_file = model.churn_data_dir / model.training_file
    if not data_file.exists():
        raise svc.PlatformError(
            f"no {model.model_name}@{model.model_alias} and no training file {data_file}:"
            " run `make data` (or set CHURN_DATA_DIR)"
        )
    console.print(f"no version has alias '{model.model_alias}': training on {data_file}")
    from churnops.model.registry import TrainingOptions, train_and_register

    with progress_bars(console, "training: ") as report:
        outcome = train_and_register(settings, TrainingOptions(data_file=data_file), report)
    if outcome.status != "promoted":
        raise svc.PlatformError(f"the trained model was not promoted: {outcome.reason}")
    console.print(f"  [green]ok[/green] trained and registered version {outcome.version}")


def _ensure_project(monitoring: MonitoringSettings) -> None:
    """Create the Evidently project once, before runners could race to create two."""
    from churnops.monitoring.drift import PROJECT, open_workspace, project_id

    project_id(open_workspace(monitoring), PROJECT)


def _start_runner(platform: Platform) -> None:
    """``runner_processes`` flow runners, started together; wait until each serves."""
    settings = platform.settings
    count = settings.platform.runner_processes
    url = svc.server_url(settings.platform, settings.platform.prefect_port)
    for index in range(count):
        svc.ready_file(settings.home, index).unlink(missing_ok=True)
        command = [svc.bin_path("python"), "-m", "churnops.platform.runner", str(index)]
        log_path = settings.home / svc.LOG_DIR / f"runner-{index}.log"
        runner = svc.Service(
            f"runner-{index}", command, log_path, runner_env(settings), f"{url}/deployments"
        )
        platform.runners.append(runner)
        runner.start()
    with platform.console.status(
        f"starting {count} flow runner(s) (deployments, imports, loading the model)..."
    ):
        svc.wait_until(
            platform.runners,
            lambda s: svc.ready_file(settings.home, platform.runners.index(s)).exists(),
            RUNNER_START_TIMEOUT,
        )
    platform.console.print(
        f"  [green]ok[/green] {count} runner(s) serve deployment {PIPELINE_DEPLOYMENT}"
    )


def _check_drop(drop: DropSettings) -> None:
    """A drop bucket that cannot be listed (missing, no credentials, endpoint down), or a
    drop folder that cannot be made, is one line before anything starts: not a warning
    every poll, or an error once the servers have started and a model was trained."""
    if drop.drop_storage == "s3":
        if problem := bucket_problem(s3_client(), drop.drop_bucket):
            raise svc.PlatformError(f"{problem} (DROP_BUCKET)")
        return
    try:
        LocalDropStorage(drop.drop_dir).create_layout()
    except OSError as exc:
        raise svc.PlatformError(
            f"cannot make the drop folder {drop.drop_dir} (LOCAL_DROP_DIR): {exc.strerror}"
        ) from None


def choose_ports(settings: Settings) -> svc.Ports:
    """The servers' ports (:func:`services.choose_ports`). A setting of 0 takes the port the
    last ``up`` of this home used while it is free: the report links stored then (metrics
    database, alerts, file logs) name the Evidently UI's port, and went stale at each start."""
    record = settings.home / PORTS_RECORD
    try:
        previous = svc.Ports(*map(int, record.read_text().split()))
    except (OSError, ValueError, TypeError):  # none yet, or not three numbers
        previous = None
    ports = svc.choose_ports(settings.platform, previous)
    record.write_text(f"{ports.prefect} {ports.mlflow} {ports.evidently}")
    return ports


def _note_previous_drop(drop: DropSettings, console: Console) -> None:
    """One line when the last ``up`` of this home watched another local drop folder where
    files still wait: this platform does not see them (LOCAL_DROP_DIR changed between two
    ``up``s, and they waited silently). Said at the change, not at every start after it."""
    record = drop.home / DROP_RECORD
    previous = record.read_text() if record.exists() else ""
    current = drop.drop_uri if drop.drop_storage == "s3" else str(drop.drop_dir)
    record.write_text(current)
    if previous in ("", current) or previous.startswith("s3://"):
        return
    files = list_files(LocalDropStorage(Path(previous)))
    waiting = [file for file in files if file.stage in WAITING_STAGES]
    if waiting:
        console.print(
            f"[yellow]the drop folder of the last `up` on this home, {escape(previous)}, has "
            f"files waiting ({stage_counts(waiting)})[/yellow]; this one watches "
            f"{escape(_drop_location(drop))} (LOCAL_DROP_DIR)",
            soft_wrap=True,
        )


def _start_watcher(platform: Platform) -> None:
    settings = platform.settings
    api = svc.prefect_api_url(settings.platform)
    handler = trigger(api, PIPELINE_DEPLOYMENT, settings.drop.drop_uri)
    dispatcher = Dispatcher(handler, settings.drop.drop_bucket, platform.show_trigger)
    # The handler's own lines are for AWS (where Lambda retries a failed event): the
    # dispatcher prints one per trigger.
    logging.getLogger("s3_to_prefect").setLevel(logging.CRITICAL)
    if settings.drop.drop_storage == "s3":
        platform.watcher = BucketPoller(s3_client(), settings.drop.drop_bucket, dispatcher)
    else:
        platform.watcher = FolderWatcher(settings.drop.drop_dir, dispatcher)
    platform.watcher.start()


def _write_state(platform: Platform) -> None:
    settings, drop = platform.settings, _drop_location(platform.settings.drop)
    entries: dict[str, dict[str, str | int | None]] = {
        s.name: {"url": s.url, "health_url": s.health_url, "pid": s.pid, "log": str(s.log)}
        for s in platform.children()
    }
    entries["watcher"] = {"url": drop, "health_url": None, "pid": os.getpid(), "log": None}
    svc.PlatformState(os.getpid(), drop, entries).save(settings.home)


def _drop_location(drop: DropSettings, folder: str = "input") -> str:
    if drop.drop_storage == "s3":
        return f"s3://{drop.drop_bucket}/data/{folder}/"
    return str(drop.drop_dir / "data" / folder)


def _print_summary(platform: Platform) -> None:
    settings = platform.settings
    table = Table("service", "where", title="ChurnOps local platform")
    for service in platform.children():
        table.add_row(service.name, service.url)
    table.add_row("drop folder", _drop_location(settings.drop))
    table.add_row("labels folder", _drop_location(settings.drop, "labels"))
    table.add_row("state", str(settings.home))
    table.add_row("logs", str(settings.home / "logs"))
    platform.console.print(table)
    platform.console.print(
        "Drop CSV files into the drop folder; `churnops status` shows them. Ctrl-C stops."
    )


class FinishedFiles:
    """One console line per file whose flow run has ended, read from the Prefect API."""

    def __init__(self, platform: PlatformSettings, console: Console) -> None:
        self.api = svc.prefect_api_url(platform)
        # The reconciler's deployment has the same name: the flow's name tells them apart.
        self.flow, _, self.deployment = PIPELINE_DEPLOYMENT.partition("/")
        self.console = console
        self.since = datetime.now(UTC)
        self.shown: set[str] = set()
        #: One client for every look: building one (its SSL context) each second was most
        #: of an idle ``up``'s CPU. Opened at the first look, closed by :meth:`close`.
        self.client: Any = None
        self.once: Any = None  #: the client's settings: no retries (see print_new)
        self._opened = ExitStack()

    def print_new(self) -> None:
        """Print the runs that ended since the last look (an API hiccup: next time, with a
        new client). The look is not retried: its client's retries (about 70 s against a
        Prefect server that died) held up the loop that restarts the server."""
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.client.schemas import filters
        from prefect.context import SettingsContext, get_settings_context
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

        ended = filters.FlowRunFilter(
            end_time=filters.FlowRunFilterEndTime(after_=self.since - timedelta(seconds=5))
        )
        named = filters.DeploymentFilter(name=filters.DeploymentFilterName(any_=[self.deployment]))
        flow = filters.FlowFilter(name=filters.FlowFilterName(any_=[self.flow]))
        try:
            if self.client is None:
                self.client = self._opened.enter_context(SyncPrefectClient(self.api))
                now = get_settings_context()  # once: temporary_settings took 21 ms a look
                self.once = SettingsContext(
                    profile=now.profile,
                    settings=now.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
                )
            with self.once:
                runs = self.client.read_flow_runs(
                    flow_run_filter=ended, deployment_filter=named, flow_filter=flow
                )
        except Exception as exc:
            log.debug("finished runs not read: %s", exc)
            self.close()
            return
        for run in sorted(runs, key=lambda r: r.end_time or self.since):
            if str(run.id) in self.shown or run.state is None or not run.state.is_final():
                continue
            self.shown.add(str(run.id))
            self.since = max(self.since, run.end_time or self.since)
            self.console.print(_finished_line(run.name, run.state), soft_wrap=True)

    def close(self) -> None:
        """Close the client; the next look opens another."""
        self.client = None
        with suppress(Exception):  # a client the hiccup left broken
            self._opened.close()


def _finished_line(name: str, state: Any) -> str:
    """``processed customer.csv: drifted 7 columns ...`` coloured by the outcome."""
    message = state.message or ""
    status, _, detail = message.partition(": ") if message else ("processed", "", "")
    if status not in ("processed", "skipped", "errored", "failed"):  # crashed, cancelled
        detail = message
    if state.is_failed() or state.is_crashed():  # Failed, Rejected, Crashed
        status = state.name.lower()
    colour = {"processed": "green", "skipped": "yellow"}.get(status, "red")
    return f"  file [{colour}]{status}[/{colour}] {escape(name)} {escape(detail)}".rstrip()


def _supervise(platform: Platform, stop_requested: threading.Event) -> int:
    """Wait for a stop signal; restart a child that dies (a runner's run in progress is
    re-driven by the reconciler, a server's state is on disk) within :func:`_may_restart`."""
    restarts: dict[str, list[float]] = {}
    finished = FinishedFiles(platform.settings.platform, platform.console)
    with closing(finished), suppress(KeyboardInterrupt):
        while not stop_requested.wait(1.0):
            finished.print_new()
            for child in platform.children():
                if child.alive():
                    continue
                if not _may_restart(restarts, child, time.monotonic()):
                    failure = child.failure("stopped unexpectedly", 2000)
                    platform.console.print(f"[red]error:[/red] {escape(failure)}")
                    return 1
                _restart(platform, child)
    return 0


def _restart(platform: Platform, child: svc.Service) -> None:
    platform.console.print(
        f"[yellow]{child.name} died: restarting it[/yellow] (log {escape(str(child.log))})",
        soft_wrap=True,
    )
    child.stop(grace=5)  # what is left of its process group (workers holding the port)
    child.start()
    _write_state(platform)  # `churnops status` checks the new pid
    if child not in platform.runners:
        return
    # A reconcile run now: a warm runner re-drives what the dead one held.
    api = svc.prefect_api_url(platform.settings.platform)
    try:
        start_deployment_run(
            api, RECONCILE_DEPLOYMENT, f"runner-died-{time.time():.0f}", "runner died"
        )
    except Exception as exc:  # the restarted runner reconciles at its start anyway
        log.warning("no reconcile run requested: %s", exc)


def _may_restart(restarts: dict[str, list[float]], child: svc.Service, now: float) -> bool:
    """At most MAX_RESTARTS restarts of one child within RESTART_WINDOW_SECONDS; a SIGKILL
    (OOM) is free: a file killing its runner is bounded by its own ``MAX_ATTEMPTS``."""
    if child.process is not None and child.process.returncode == -signal.SIGKILL:
        return True
    recent = [t for t in restarts.get(child.name, []) if now - t < RESTART_WINDOW_SECONDS]
    restarts[child.name] = [*recent, now]
    return len(recent) < MAX_RESTARTS
