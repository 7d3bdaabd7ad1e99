"""Recovery and bursts on a real ``churnops up`` in a scratch home, beside the single-file
time of the same run (median of 3): a runner holding a file killed with SIGKILL, time
until that file is processed; bursts of N files with ``RUNNER_PROCESSES=1`` and with
``--runners``, alternated ``--repeats`` times, each checked exactly once; the same file
through ``churnops process`` in a fresh process, and the imports alone.

    python -m benchmarks.recovery              # or: make benchmark-recovery
    python -m benchmarks.recovery --files 30 --rows 1000 --runners 2"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import pandas as pd

from benchmarks.latency import drop, final_stage, start_platform, stop_platform
from benchmarks.pipeline import source_file
from churnops.drop.claims import Lease
from churnops.monitoring.metrics_db import MetricsStore
from churnops.platform.services import PlatformState, bin_path
from churnops.settings import Settings, get_settings

TIMEOUT = 900.0
#: What a fresh process imports before it can run the flow (the flow module imports the rest
#: lazily: the model, Evidently and the metrics database are loaded by the steps).
FLOW_IMPORTS = (
    "import churnops.pipeline.flow, churnops.model.churn_model, churnops.monitoring.drift,"
    " churnops.monitoring.metrics_db, mlflow.pyfunc, xgboost, evidently"
)


def wait_processed(settings: Settings, names: list[str]) -> float:
    """Seconds until every name is in processed/ (SystemExit if one errors or time runs out)."""
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    pending = set(names)
    while pending:
        for name in list(pending):
            stage = final_stage(settings, name)
            if stage == "errored":
                raise SystemExit(f"{name} errored; see {settings.drop.drop_dir / 'data' / 'logs'}")
            if stage == "processed":
                pending.discard(name)
        if time.monotonic() > deadline:
            raise SystemExit(f"not processed in {TIMEOUT:.0f}s: {sorted(pending)[:5]}")
        time.sleep(0.05)
    return time.perf_counter() - started


def crash_recovery(settings: Settings, data: bytes) -> float:
    """Kill the runner holding a file; seconds from the kill until the file is processed."""
    name = "crash.csv"
    drop(settings, name, data)
    claims_dir = settings.drop.drop_dir / "data" / "claims"
    deadline = time.monotonic() + TIMEOUT
    while True:
        leases = [Lease.from_json(p.read_bytes()) for p in claims_dir.glob("*/*.json")]
        holder = next((lease for lease in leases if lease.name == name), None)
        if holder is not None:
            break
        if time.monotonic() > deadline:
            raise SystemExit("the crash file was never claimed")
        time.sleep(0.01)
    os.kill(holder.pid, signal.SIGKILL)
    return wait_processed(settings, [name])


def burst(settings: Settings, data: bytes, names: list[str]) -> float:
    """Seconds until the files ``names`` dropped at once are processed; SystemExit unless
    each exactly once."""
    for name in names:
        drop(settings, name, data)
    seconds = wait_processed(settings, names)
    check_exactly_once(settings, names)
    return seconds


def check_exactly_once(settings: Settings, names: list[str]) -> None:
    """Each file once in processed/, nowhere else, and one processed row in the database."""
    data = settings.drop.drop_dir / "data"
    wanted = set(names)
    copies = {
        stage: Counter(p.name for p in (data / stage).glob("*/*") if p.name in wanted)
        for stage in ("processing", "processed", "errored")
    }
    with closing(MetricsStore(settings.monitoring.metrics_db_url)) as store:
        runs = store.runs()
    rows = Counter(runs[runs["status"] == "processed"]["file_name"])
    wrong = [
        f"{name}: {copies['processed'][name]} in processed/, {rows[name]} processed rows,"
        f" {copies['processing'][name] + copies['errored'][name]} elsewhere"
        for name in names
        if (copies["processed"][name], rows[name], copies["processing"][name]) != (1, 1, 0)
        or copies["errored"][name]
    ]
    if wrong:
        raise SystemExit("not exactly once:\n" + "\n".join(wrong))


def cold_process(settings: Settings, rows_file: Path, count: int = 3) -> list[float]:
    """``churnops process`` of the file in a fresh process each time, against the running
    platform's MLflow, into a drop folder of its own (the platform's watcher never sees it)."""
    state = PlatformState.load(settings.home)
    assert state is not None, "the platform is not running"
    env = dict(
        os.environ,
        CHURNOPS_HOME=str(settings.home),
        LOCAL_DROP_DIR=str(settings.home / "cold-drop"),
        # The servers the runners use (reports go through the Evidently UI, as theirs).
        MLFLOW_TRACKING_URI=str(state.services["mlflow"]["url"]),
        EVIDENTLY_UI_URL=str(state.services["evidently"]["url"]),
    )
    churnops = bin_path("churnops")
    timings = []
    for index in range(count):
        target = rows_file.with_name(f"cold_{index}.csv")
        target.write_bytes(rows_file.read_bytes())
        started = time.perf_counter()
        subprocess.run([churnops, "process", str(target)], env=env, check=True, capture_output=True)
        timings.append(time.perf_counter() - started)
    return timings


def import_seconds(count: int = 3) -> list[float]:
    """The flow's imports in a fresh interpreter (no model, no work)."""
    code = f"import time; t = time.perf_counter(); {FLOW_IMPORTS}; print(time.perf_counter() - t)"
    return [
        float(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(count)
    ]


def with_platform(runners: int, rows_file: Path, measure, seed: Path) -> dict:
    """Start a platform with ``runners`` runners, measure, stop. The first trains the model
    in ``seed``; the others start with a copy of its MLflow store: one model for all."""
    first = not (seed / "mlflow").exists()
    home = seed if first else Path(tempfile.mkdtemp(prefix=f"churnops-recovery-{runners}-"))
    try:  # a platform that did not start left its copy behind
        if not first:
            shutil.copytree(seed / "mlflow", home / "mlflow")
        settings = get_settings(churnops_home=home)
        process = start_platform(settings, {"RUNNER_PROCESSES": str(runners)})
        try:
            return measure(settings, rows_file.read_bytes())
        finally:
            stop_platform(process)
    finally:
        if not first:
            shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30, help="files in the burst")
    parser.add_argument("--rows", type=int, default=1000, help="rows per file")
    parser.add_argument(
        "--runners", type=int, default=os.cpu_count() or 1, help="runners of the second burst"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="more bursts with 1 and with N runners, alternating"
    )
    args = parser.parse_args()
    source = source_file(get_settings())
    scratch = Path(tempfile.mkdtemp(prefix="churnops-recovery-"))
    rows_file, seed = scratch / "rows.csv", scratch / "home"
    bursts: dict[int, list[float]] = {1: [], args.runners: []}
    names = [f"burst_{index:03d}.csv" for index in range(args.files)]

    def everything(settings: Settings, data: bytes) -> dict:
        single = [burst(settings, data, [f"single_{index}.csv"]) for index in range(3)]
        figures = {
            "single_file_median_s": round(statistics.median(single), 2),
            "cold_process_median_s": round(statistics.median(cold_process(settings, rows_file)), 2),
            "crash_to_processed_s": round(crash_recovery(settings, data), 2),
        }
        bursts[args.runners].append(burst(settings, data, names))
        return figures

    def one_burst(settings: Settings, data: bytes) -> dict:
        return {"burst_s": burst(settings, data, names)}

    try:
        pd.read_csv(source).head(args.rows).to_csv(rows_file, index=False)
        figures = with_platform(args.runners, rows_file, everything, seed)
        # Alternating, so that the machine's other load falls on both alike.
        for _ in range(args.repeats):
            for runners in (1, args.runners):
                bursts[runners].append(
                    with_platform(runners, rows_file, one_burst, seed)["burst_s"]
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    one, many = statistics.median(bursts[1]), statistics.median(bursts[args.runners])
    summary = {
        "rows_per_file": args.rows,
        "runner_processes": args.runners,
        "imports_fresh_process_median_s": round(statistics.median(import_seconds()), 2),
        **figures,
        f"burst_{args.files}_files_one_runner_s": [round(b, 1) for b in bursts[1]],
        f"burst_{args.files}_files_{args.runners}_runners_s": [
            round(b, 1) for b in bursts[args.runners]
        ],
        "burst_speedup_of_medians": round(one / many, 2),
        "bursts_exactly_once": True,  # checked: check_exactly_once raises otherwise
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
