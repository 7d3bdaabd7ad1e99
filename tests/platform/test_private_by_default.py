"""Nothing leaves the machine unasked: ``churnops up`` scores a file with loopback only.

The platform runs in a network namespace with only ``lo``, under ``strace -f -e
trace=connect``, from an operator's environment (no off switches, no CI markers). Every
connect() of every process may ask for loopback only and look no name up (port 53).
Before ChurnOps set the switches this run attempted 7 connections.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churnops.drop.storage import LocalDropStorage, stage_key
from churnops.platform.services import PlatformState
from churnops.settings import MLFLOW_CLIENT_ENV, NO_USAGE_TELEMETRY, get_settings
from tests.processes import FOREIGN

SCORED = "customer_churn_1.csv"
TIMEOUT = 300.0
#: Variables by which MLflow or Prefect detect CI or a test run and send nothing by
#: themselves (mlflow.telemetry.utils, prefect._internal.analytics.ci_detection: written
#: out, since a private module may move in a minor Prefect release).
CI_MARKERS = (
    "CI",
    "PYTEST_CURRENT_TEST",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "JENKINS_URL",
    "BUILDKITE",
    "CIRCLECI",
    "TRAVIS",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "CODEBUILD_BUILD_ARN",
    "CODEBUILD_BUILD_ID",
    "BITBUCKET_BUILD_NUMBER",
    "BITBUCKET_COMMIT",
    "DRONE",
    "SEMAPHORE",
    "APPVEYOR",
    "BUDDY",
    "CI_NAME",
)
CONNECT = re.compile(
    r"connect\(\d+, \{sa_family=(?P<family>AF_INET6?),"
    r" (?:sin6?_port=htons\((?P<port>\d+)\)).*?"
    r"(?:inet_addr\(\"(?P<v4>[^\"]+)\"\)|inet_pton\(AF_INET6, \"(?P<v6>[^\"]+)\")"
)


def outside_loopback(trace: str) -> list[str]:
    """The connect() lines of an ``strace -f`` log that leave loopback or look a name up."""
    found = []
    for line in trace.splitlines():
        match = CONNECT.search(line)
        if match is None:
            if "sa_family=AF_INET" in line:  # an address this parser cannot read: report it
                found.append(line.strip())
            continue
        address = ipaddress.ip_address(match["v4"] or match["v6"])
        if int(match["port"]) == 53 or not address.is_loopback:
            found.append(line.strip())
    return found


def loopback_only(command: list[str], trace: Path) -> list[str]:
    """``command`` in a namespace with only ``lo``, traced into ``trace`` (argv for Popen)."""
    for tool in ("unshare", "strace", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is not on the PATH: install util-linux, strace, iproute2")
    traced = ["strace", "-f", "--seccomp-bpf", "-e", "trace=connect", "-o", str(trace)]
    script = 'ip link set lo up && exec "$@"'
    return ["unshare", "--map-root-user", "--net", "sh", "-c", script, "sh", *traced, *command]


def operator_env(**extra: str) -> dict[str, str]:
    """The test's environment without the switches, the CI markers and foreign services."""
    dropped = {*NO_USAGE_TELEMETRY, *CI_MARKERS, *FOREIGN, "USAGE_TELEMETRY"}
    return {k: v for k, v in os.environ.items() if k not in dropped} | extra


def test_the_harness_sees_a_name_look_up_and_a_connection_out(tmp_path: Path) -> None:
    """Unhappy path first: an attempt to leave is caught, loopback is not."""
    probe = (
        "import socket\n"
        "for address in [('127.0.0.1', 9), ('::1', 9), ('192.0.2.1', 80), ('2001:db8::1', 80)]:\n"
        "    try: socket.create_connection(address, timeout=1)\n"
        "    except OSError: pass\n"
        "try: socket.getaddrinfo('example.com', 80)\n"
        "except OSError: pass\n"
    )
    trace = tmp_path / "strace.txt"
    subprocess.run(loopback_only([sys.executable, "-c", probe], trace), check=True, timeout=60)
    found = outside_loopback(trace.read_text())
    assert any('"192.0.2.1"' in line for line in found), found
    assert any('"2001:db8::1"' in line for line in found), found
    assert any("htons(53)" in line for line in found), found
    assert not any('"127.0.0.1"' in line or '"::1"' in line for line in found), found


def test_up_scores_a_file_without_leaving_loopback(
    tmp_path: Path, data_dir: Path, trained_home: Path
) -> None:
    home = tmp_path / "home"
    shutil.copytree(trained_home, home)  # a staging model: `up` starts without training
    trace, output = tmp_path / "strace.txt", tmp_path / "up.log"
    env = operator_env(
        CHURNOPS_HOME=str(home),
        CHURN_DATA_DIR=str(data_dir),
        PREFECT_PORT="0",
        MLFLOW_PORT="0",
        EVIDENTLY_PORT="0",
        RUNNER_PROCESSES="1",
    )
    churnops = str(Path(sys.executable).with_name("churnops"))
    with output.open("wb") as out:
        process = subprocess.Popen(
            loopback_only([churnops, "up"], trace),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        state = _wait(lambda: PlatformState.load(home), process, output, "the platform to start")
        settings = get_settings(churnops_home=home)
        LocalDropStorage(settings.drop.drop_dir).create(
            stage_key("input", SCORED), (data_dir / SCORED).read_bytes()
        )
        finished = re.compile(rf"file (\w+) {re.escape(SCORED)}")
        outcome = _wait(
            lambda: finished.search(output.read_text(errors="replace")),
            process,
            output,
            f"{SCORED} to be scored",
        )
        assert outcome[1] == "processed", output.read_text()[-3000:]
        # The platform and each child carry the switches and MLflow's client bounds: `up`
        # itself (the watcher) through its entry point, the servers and the runner through
        # their spawned environment.
        for name, entry in state.services.items():
            environ = Path(f"/proc/{entry['pid']}/environ").read_bytes().split(b"\0")
            for variable, value in (NO_USAGE_TELEMETRY | MLFLOW_CLIENT_ENV).items():
                assert f"{variable}={value}".encode() in environ, (name, variable)
        os.kill(state.pid, signal.SIGINT)
        assert process.wait(timeout=TIMEOUT) == 0, output.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert outside_loopback(trace.read_text()) == []
    assert re.search(r'inet_addr\("127\.0\.0\.1"\)', trace.read_text())  # it did trace


def _wait(ready, process: subprocess.Popen, output: Path, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT
    while not (found := ready()):
        if process.poll() is not None:
            pytest.fail(f"churnops up exited waiting for {what}:\n{output.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {TIMEOUT:.0f}s for {what}:\n{output.read_text()[-3000:]}")
        time.sleep(0.5)
    return found
