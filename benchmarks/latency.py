"""Drop-to-processed latency of the local platform, beside the bare in-process cost.

Each drop is ``customer_churn_1.csv`` under a new name, renamed into ``data/input/``
one after the other; it is done when the file is in ``processed/`` and its alert is
logged. The baseline runs ``per_file.process`` in this process with a warm model, so the
difference is the platform's own overhead. Printed per drop: where its time went (until
its flow run existed, until a runner started it, its steps from claim to finish) and the
monitor step with its parts (attribution, Evidently's report, its store). Target: p50
1.2 s or less with attribution on, beside the load average.

    python -m benchmarks.latency                 # uses a running platform, or starts one
    python -m benchmarks.latency --drops 20
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks.pipeline import peak_rss_mb, source_file, step_durations
from churnops.drop.storage import LocalDropStorage, stage_key
from churnops.platform.services import PlatformState, bin_path
from churnops.settings import Settings, get_settings

START_TIMEOUT = 900.0
DROP_TIMEOUT = 120.0
TARGET_P50 = 1.2
#: The monitor step's parts in its log line: "(500 rows, 0.05s)", "report 0.61s", "store 0.2s".
MONITOR_PARTS = re.compile(r"(\d+ rows, |report |store )([0-9.]+)s")
MONITOR_KEYS = ("attribution", "report", "store")
#: Where a drop's time goes (:func:`figures`).
SEGMENTS = ("trigger", "pickup", "steps")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    return float(np.percentile(values, q, method="inverted_cdf"))


def start_platform(settings: Settings, env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    """``churnops up`` on settings.home with free ports; returns once it serves."""
    env = dict(os.environ, CHURNOPS_HOME=str(settings.home))
    env |= {"PREFECT_PORT": "0", "MLFLOW_PORT": "0", "EVIDENTLY_PORT": "0", **(env_extra or {})}
    log = settings.home / "benchmark-up.log"
    settings.home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [bin_path("churnops"), "up"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while PlatformState.load(settings.home) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the platform did not start; see {log}:\n{log.read_text()[-3000:]}"
                )
            time.sleep(1)
    except BaseException:
        # Ctrl-C or the timeout: the platform runs in a session of its own, which the
        # terminal's SIGINT does not reach.
        stop_platform(process)
        raise
    return process


def stop_platform(process: subprocess.Popen) -> None:
    """What Ctrl-C in its terminal does: ``churnops up`` stops its children and exits."""
    process.send_signal(signal.SIGINT)
    process.wait(timeout=300)


def one_drop(settings: Settings, data: bytes, api: str) -> tuple[float, dict[str, float]]:
    """Seconds from landing in input/ to processed/ with the alert and the finish logged
    (the original moves before the outputs and the log line), and the drop's :func:`figures`."""
    name = f"latency_{uuid.uuid4().hex[:10]}.csv"
    landed_at = time.time()
    drop(settings, name, data)
    landed = time.perf_counter()
    deadline = time.monotonic() + DROP_TIMEOUT
    while not (final_stage(settings, name) == "processed" and logged(settings, name)):
        if final_stage(settings, name) == "errored" or time.monotonic() > deadline:
            raise SystemExit(f"{name} was not processed; see {settings.home / 'logs'}")
        time.sleep(0.02)
    latency = time.perf_counter() - landed
    return latency, figures(settings, name, api, landed_at)


def figures(
    settings: Settings, name: str, api: str | None = None, landed_at: float = 0.0
) -> dict[str, float]:
    """The monitor step's seconds and its parts', from the file's log; with ``api``, where
    the drop's time went (:data:`SEGMENTS`): until its flow run existed, until a runner
    started it (from Prefect), from the claim to the end of its finish step."""
    (log,) = (settings.drop.drop_dir / "data" / "logs").glob(f"*/{glob.escape(name)}.log")
    text = log.read_text()
    lines = text.splitlines()
    line = next(line for line in lines if " | monitor | ok | " in line)
    found = {"monitor": step_durations(text)["monitor"]} | {
        ("attribution" if "rows" in p else p.strip()): float(s)
        for p, s in MONITOR_PARTS.findall(line)
    }
    if api is None:
        return found
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with SyncPrefectClient(api) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    claimed = datetime.fromisoformat(lines[0].split(" | ")[0]).timestamp()
    finished = [line for line in lines if " | finish | ok | " in line][-1]
    assert run.created is not None and run.start_time is not None, run
    return found | {
        "trigger": run.created.timestamp() - landed_at,
        "pickup": run.start_time.timestamp() - run.created.timestamp(),
        "steps": datetime.fromisoformat(finished.split(" | ")[0]).timestamp() - claimed,
    }


def drop(settings: Settings, name: str, data: bytes) -> None:
    """Write under a temporary name, then rename into input/: the file lands whole."""
    target = LocalDropStorage(settings.drop.drop_dir).path(stage_key("input", name))
    temporary = target.with_name(f".{name}.part")
    temporary.write_bytes(data)
    temporary.rename(target)


def final_stage(settings: Settings, name: str) -> str | None:
    """'processed' or 'errored' once the file has reached that folder (in its run folder)."""
    for stage in ("processed", "errored"):
        if any((settings.drop.drop_dir / "data" / stage).glob(f"*/{glob.escape(name)}")):
            return stage
    return None


def logged(settings: Settings, name: str) -> bool:
    """Its alert is in the alert log, and its finish in its own log."""
    path = settings.alerts.alert_log
    if not (path.exists() and f": {name} (" in path.read_text(errors="replace")):
        return False
    logs = (settings.drop.drop_dir / "data" / "logs").glob(f"*/{glob.escape(name)}.log")
    return any(" | finish | ok | " in log.read_text() for log in logs)


def baseline(
    platform_settings: Settings, source: Path, repeats: int
) -> tuple[list[float], list[dict[str, float]]]:
    """``per_file.process`` called directly, warm model, into a scratch home (after a
    warm-up): seconds per file, and its monitor step's."""
    from churnops.pipeline import per_file

    with tempfile.TemporaryDirectory(prefix="churnops-baseline-") as scratch:
        settings = platform_settings.replace(churnops_home=Path(scratch))
        storage = LocalDropStorage(settings.drop.drop_dir)
        storage.create_layout()
        timings, monitors = [], []
        for attempt in range(repeats + 1):
            name = f"baseline_{attempt}.csv"
            key = stage_key("input", name)
            storage.create(key, source.read_bytes())
            started = time.perf_counter()
            outcome = per_file.process(settings, storage, key)
            if outcome.status != "processed":
                raise SystemExit(f"baseline run {name}: {outcome.status}: {outcome.message}")
            if attempt:  # the first one loads the model and warms the imports
                timings.append(time.perf_counter() - started)
                monitors.append(figures(settings, name))
    return timings, monitors


def tree_peak_rss_mb(root: int) -> float:
    """The platform's memory (the README's figure): the peak RSS of ``root`` (``churnops
    up``) and of every process under it (servers, runners), summed: their peaks need not
    coincide, so an upper bound of the whole tree's at any one moment."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):  # ended meanwhile
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    pids, total = [root], 0.0
    while pids:
        pid = pids.pop()
        with contextlib.suppress(OSError):
            total += peak_rss_mb(pid)
        pids += children.get(pid, [])
    return total


def part_p50(monitors: list[dict[str, float]]) -> dict[str, float]:
    """The p50 of the monitor step and of each of its parts."""
    return {k: round(percentile([m[k] for m in monitors if k in m], 50), 2) for k in monitors[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drops", type=int, default=12, help="drops to time (at least 10)")
    parser.add_argument("--baseline-runs", type=int, default=5)
    args = parser.parse_args()
    if args.drops < 10:
        parser.error("--drops must be at least 10 for a p95")
    settings = get_settings()
    source = source_file(settings)
    started = None
    state = PlatformState.load(settings.home)
    if state is None:
        print(f"starting the platform on {settings.home} ...", flush=True)
        started = start_platform(settings)
        state = PlatformState.load(settings.home)
    assert state is not None
    evidently = str(state.services["evidently"]["url"])
    live = settings.replace(
        mlflow_tracking_uri=state.services["mlflow"]["url"],
        evidently_port=int(evidently.rsplit(":", 1)[1]),
    )
    try:
        data = source.read_bytes()
        latencies, monitors = [], []
        api = str(state.services["prefect"]["health_url"]).removesuffix("/health")
        for number in range(args.drops):
            latency, monitor = one_drop(live, data, api)
            latencies.append(latency)
            monitors.append(monitor)
            parts = ", ".join(f"{k} {monitor[k]:.2f}s" for k in MONITOR_KEYS if k in monitor)
            went = ", ".join(f"{k} {monitor[k]:.2f}s" for k in SEGMENTS)
            print(
                f"drop {number + 1:2d}: {latency:.2f}s ({went}), monitor step "
                f"{monitor['monitor']:.2f}s ({monitor['monitor'] / latency:.0%}: {parts}); "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        platform_mb = tree_peak_rss_mb(state.pid)
        bare, bare_monitors = baseline(live, source, args.baseline_runs)
    finally:
        if started is not None:
            stop_platform(started)
    summary = {
        "drops": len(latencies),
        "p50_s": round(percentile(latencies, 50), 2),
        "p95_s": round(percentile(latencies, 95), 2),
        "min_s": round(min(latencies), 2),
        "max_s": round(max(latencies), 2),
        "baseline_median_s": round(statistics.median(bare), 2),
        "overhead_p50_s": round(percentile(latencies, 50) - statistics.median(bare), 2),
        "segments_p50_s": {k: v for k, v in part_p50(monitors).items() if k in SEGMENTS},
        "monitor_p50_s": {k: v for k, v in part_p50(monitors).items() if k not in SEGMENTS},
        "monitor_share_of_p50": round(
            percentile([m["monitor"] for m in monitors], 50) / percentile(latencies, 50), 2
        ),
        "baseline_monitor_median_s": part_p50(bare_monitors),
        "target_p50_s": TARGET_P50,
        "platform_peak_rss_mb": round(platform_mb),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
