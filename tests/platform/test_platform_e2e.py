"""The whole local platform: ``churnops up`` in a subprocess, killed with SIGKILL (nothing
of it may keep running) and started again on the very same ports (TIME_WAIT), where it
finds the model by its alias and trains no more, as ``make demo`` twice must. The other
tests drop files on that restarted platform and check them through the APIs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from evidently.ui.workspace import Workspace
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun

from churnops.drop.claims import Lease
from churnops.drop.storage import LocalDropStorage, stage_key
from churnops.monitoring.drift import PROJECT
from churnops.monitoring.metrics_db import DRIFTED_SHARE, MetricsStore
from churnops.pipeline import PIPELINE_DEPLOYMENT
from churnops.platform import services
from churnops.settings import Settings, get_settings
from tests.exactly_once import Drops, check_records_agree
from tests.processes import FOREIGN, LOOPBACK, eventually, leftovers

START_TIMEOUT = 900.0  # training included, on a busy 2-core machine
DONE_TIMEOUT = 300.0
GONE_TIMEOUT = 30.0
SERVERS = ("prefect", "mlflow", "evidently")
FILES = GOOD, DRIFTED, MALFORMED = (
    "customer_churn_1.csv",
    "customer_churn_2_majority_drifted.csv",
    "malformed.csv",
)


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
                self.process.wait(timeout=240)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        services.terminate_groups([r.pid for r in _records(self.home)], grace=5)


@dataclass
class RunningPlatform:
    """The restarted platform, and what was seen of the killed one."""

    up: Up
    state: dict
    settings: Settings
    first_ports: dict[str, int]
    first_children: set[str]
    left_after_kill: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[RunningPlatform]:
    home = tmp_path_factory.mktemp("platform") / "home"
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env |= {
        "CHURNOPS_HOME": str(home),
        "CHURN_DATA_DIR": str(data_dir),
        "PLATFORM_HOST": LOOPBACK,
        "PREFECT_PORT": "0",
        "MLFLOW_PORT": "0",
        "EVIDENTLY_PORT": "0",
        "COLUMNS": "200",
    }
    started: list[Up] = []
    try:
        # One warm runner while it trains: quicker on 2 cores.
        first = Up(home, env | {"RUNNER_PROCESSES": "1"}, "first")
        started.append(first)
        ports = _ports(first.wait_ready())
        records = _records(home)
        pgids = [r.pid for r in records]
        first.process.kill()  # SIGKILL: `up` can stop nothing itself
        first.process.wait()
        eventually(lambda: not _whats_left(home, pgids, ports), GONE_TIMEOUT, 0.5)
        left = _whats_left(home, pgids, ports)
        again = env | {f"{n.upper()}_PORT": str(p) for n, p in ports.items()}
        second = Up(home, again, "second")
        started.append(second)
        state = second.wait_ready()
        yield RunningPlatform(
            second, state, get_settings(churnops_home=home), ports, {r.name for r in records}, left
        )
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


def test_a_killed_platform_leaves_nothing_running_and_restarts_on_its_ports(
    platform: RunningPlatform,
) -> None:
    names = platform.first_children
    assert set(SERVERS) < names and all(n.startswith("runner") for n in names - set(SERVERS))
    assert platform.left_after_kill == [], platform.up.logs()
    assert _ports(platform.state) == platform.first_ports
    assert all(services.http_ok(platform.state["services"][name]["health_url"]) for name in SERVERS)
    output = platform.up.text()
    assert "training" not in output, output
    assert "is version 1" in output, output
    assert "left running" not in output, output  # nothing was left for it to stop


def test_three_drops_end_where_they_should(platform: RunningPlatform, data_dir: Path) -> None:
    settings = platform.settings
    storage = LocalDropStorage(settings.drop.drop_dir)
    for name in (GOOD, DRIFTED):
        storage.create(stage_key("input", name), (data_dir / name).read_bytes())
    storage.create(stage_key("input", MALFORMED), b"not,a,churn\nfile,at,all\n")

    runs = _final_runs(platform, FILES)
    # One run decides each file; a run the reconciler added on a slow machine (a file left
    # in input/ past its grace) ends 'skipped:', and the records must agree with it too.
    deciding = [run for run in runs if not (run.state.message or "").startswith("skipped:")]
    by_name = {_file_name(run): run for run in deciding}
    assert sorted(by_name) == sorted(_file_name(run) for run in deciding) == sorted(FILES)
    states = {name: run.state.name for name, run in by_name.items()}
    assert states == {GOOD: "Completed", DRIFTED: "Completed", MALFORMED: "Rejected"}, states
    check_records_agree(storage, settings.monitoring.metrics_db_url, runs)
    assert by_name[MALFORMED].state.message.startswith("errored: ")
    assert by_name[GOOD].state.message.startswith("processed: drifted ")
    finished = {f"processed {GOOD}", f"rejected {MALFORMED}"}  # one line per file from `up`
    assert eventually(lambda: finished <= set(_finished(platform)), 15, 0.5), platform.up.logs()

    processed = {k.rsplit("/", 1)[1]: k for k in storage.list_keys("data/processed/")}
    assert {GOOD, DRIFTED} <= set(processed)
    predictions = [k for n, k in processed.items() if n.startswith("customer_churn_1_predictions_")]
    assert len(predictions) == 1
    assert predictions[0].rsplit("/", 2)[1] == processed[GOOD].rsplit("/", 2)[1]  # one run folder
    header = storage.read(predictions[0]).decode().splitlines()[0]
    assert header.endswith("churn_prediction,churn_probability")
    [errored] = storage.list_keys("data/errored/")
    assert errored.endswith(f"/{MALFORMED}")
    assert storage.list_keys("data/input/") == storage.list_keys("data/processing/") == []

    workspace = Workspace(str(settings.monitoring.evidently_workspace_dir))
    [project] = workspace.search_project(PROJECT)
    tags = [
        workspace.get_run(project.id, snapshot_id).tags
        for snapshot_id in workspace.list_runs(project.id)
    ]
    assert sorted(t[0] for t in tags) == sorted([GOOD, DRIFTED])

    with closing(MetricsStore.from_settings(settings.monitoring)) as store:
        stored = store.runs().set_index("file_name")
        assert stored.loc[GOOD, "status"] == stored.loc[DRIFTED, "status"] == "processed"
        assert stored.loc[MALFORMED, "status"] == "errored"
        assert str(stored.loc[GOOD, "flow_run_id"]) == str(by_name[GOOD].id)
        metrics = store.metrics(str(stored.loc[DRIFTED, "id"]))
        shares = metrics.loc[metrics["metric"] == DRIFTED_SHARE, "value"].tolist()
        assert len(shares) == 1 and shares[0] > settings.monitoring.drift_share_threshold
        assert store.metrics(str(stored.loc[MALFORMED, "id"])).empty

    alerts = settings.alerts.alert_log.read_text()
    assert f"drift: {DRIFTED}" in alerts


def test_a_runner_killed_mid_file_loses_nothing(platform: RunningPlatform, data_dir: Path) -> None:
    """SIGKILL the runner that holds a file: a warm runner re-drives it, the dead one restarts."""
    storage = LocalDropStorage(platform.settings.drop.drop_dir)
    drops = Drops(storage, [])
    drops.drop("killed.csv", (data_dir / GOOD).read_bytes())
    assert eventually(lambda: _leases(storage, "killed.csv"), DONE_TIMEOUT, 0.02), (
        platform.up.logs()
    )
    os.kill(_leases(storage, "killed.csv")[0].pid, signal.SIGKILL)

    def redriven() -> bool:
        last = _leases(storage, "killed.csv")[-1]
        return last.attempt > 1 and last.state == "done"

    assert eventually(redriven, DONE_TIMEOUT), platform.up.logs()
    drops.dropped += [(data_dir / name).read_bytes() for name in (GOOD, DRIFTED)]
    drops.dropped.append(b"not,a,churn\nfile,at,all\n")
    drops.check(settled=True, invalid=1, metrics_url=platform.settings.monitoring.metrics_db_url)
    assert platform.up.process.poll() is None  # the platform carried on
    assert "died: restarting it" in platform.up.text()
    runs = _final_runs(platform, {*FILES, "killed.csv"})
    # the killed attempt's flow run too: Crashed, marked by the attempt that took over
    check_records_agree(storage, platform.settings.monitoring.metrics_db_url, runs)


def _finished(platform: RunningPlatform) -> list[str]:
    """``<status> <file>`` of the console's lines about finished files."""
    lines = platform.up.text().splitlines()
    return [" ".join(line.split()[1:3]) for line in lines if line.strip().startswith("file ")]


def _leases(storage: LocalDropStorage, name: str) -> list[Lease]:
    """Every attempt's lease for the file ``name``, oldest first."""
    leases = [Lease.from_json(storage.read(k)) for k in storage.list_keys("data/claims/")]
    return [lease for lease in leases if lease.name == name]


def test_retrain_in_a_second_terminal_uses_the_platforms_servers(
    platform: RunningPlatform, data_dir: Path
) -> None:
    """`churnops retrain` beside `churnops up`, as the docs give it: the same CHURNOPS_HOME
    and nothing else set. It finds the platform's MLflow from the platform's own state."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env |= {"CHURNOPS_HOME": str(platform.up.home), "CHURN_DATA_DIR": str(data_dir)}
    churnops = str(Path(sys.executable).with_name("churnops"))
    done = subprocess.run(
        [churnops, "retrain"], capture_output=True, text=True, env=env, timeout=1200
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in said, said
    run_id = said.split("MLflow run ", 1)[1].split()[0]
    mlflow_url = platform.state["services"]["mlflow"]["url"]
    with urllib.request.urlopen(f"{mlflow_url}/api/2.0/mlflow/runs/get?run_id={run_id}") as got:
        assert json.load(got)["run"]["info"]["run_id"] == run_id  # logged to the platform's


def test_the_platform_stops_clean(platform: RunningPlatform) -> None:
    """Ctrl-C: everything stops, the reaper too (it saw no death of `up`)."""
    platform.up.process.send_signal(signal.SIGINT)
    assert platform.up.process.wait(timeout=240) == 0, platform.up.logs()
    assert not (platform.up.home / "platform.json").exists()
    eventually(lambda: not leftovers(platform.up.home), GONE_TIMEOUT, 1)
    assert leftovers(platform.up.home) == []
    reaper = (platform.up.home / services.LOG_DIR / "reaper.log").read_text()
    assert f"(pid {platform.up.process.pid}) died" not in reaper


def _file_name(run: FlowRun) -> str:
    """The dropped file a run is for (the reconciler names its runs '<file> (reconciled)')."""
    return run.name.removesuffix(" (reconciled)")


def _final_runs(platform: RunningPlatform, names) -> list[FlowRun]:
    """The pipeline's flow runs once each has ended and there are runs for ``names``."""
    api = platform.state["services"]["prefect"]["health_url"].removesuffix("/health")
    with SyncPrefectClient(api) as client:
        deployment = client.read_deployment_by_name(PIPELINE_DEPLOYMENT)
        ids = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        deadline = time.monotonic() + DONE_TIMEOUT
        while True:
            runs = client.read_flow_runs(deployment_filter=ids)
            done = all(run.state and run.state.is_final() for run in runs)
            if done and {_file_name(run) for run in runs} == set(names):
                return runs
            if time.monotonic() > deadline:
                states = [(r.name, r.state and r.state.name) for r in runs]
                pytest.fail(
                    f"the drops were not done in {DONE_TIMEOUT:.0f}s: {states}\n"
                    f"{platform.up.logs()}",
                    pytrace=False,
                )
            time.sleep(1)
