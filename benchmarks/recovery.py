"""Recovery and bursts on the local platform, beside the single-file time of the same run.

Three figures, each on a real ``churnops up`` in a scratch home:

* single file: drop-to-processed of one file with the platform idle (median of 3);
* crash: a runner is killed with SIGKILL while it holds a file (its claim file
  names its pid); the time from the kill until that file is in processed/
  (the platform restarts the runner, which reconciles at start);
* burst: N files dropped at once, time until all are processed, with
  ``RUNNER_PROCESSES=1`` and with one runner per core.

    python benchmarks/recovery.py              # or: make benchmark-recovery
    python benchmarks/recovery.py --files 30 --rows 1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from latency import drop, final_stage, start_platform

from churnops.drop.claims import Lease
from churnops.drop.storage import LocalDropStorage
from churnops.settings import Settings, get_settings

SOURCE = "customer_churn_1.csv"
TIMEOUT = 900.0


def wait_processed(settings: Settings, names: list[str]) -> float:
    """Seconds until every name is in processed/ (SystemExit if one errors or time runs out)."""
    started = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    pending = set(names)
    while pending:
        for name in list(pending):
            stage = final_stage(settings, name)
            if stage == "errored":
                raise SystemExit(f"{name} errored; see {settings.drop_dir / 'data' / 'logs'}")
            if stage == "processed":
                pending.discard(name)
        if time.monotonic() > deadline:
            raise SystemExit(f"not processed in {TIMEOUT:.0f}s: {sorted(pending)[:5]}")
        time.sleep(0.05)
    return time.perf_counter() - started


def single_files(settings: Settings, data: bytes, count: int = 3) -> list[float]:
    storage = LocalDropStorage(settings.drop_dir)
    timings = []
    for index in range(count):
        name = f"single_{index}.csv"
        drop(storage, name, data)
        timings.append(wait_processed(settings, [name]))
    return timings


def crash_recovery(settings: Settings, data: bytes) -> float:
    """Kill the runner holding a file; seconds from the kill until the file is processed."""
    storage = LocalDropStorage(settings.drop_dir)
    name = "crash.csv"
    drop(storage, name, data)
    claims_dir = settings.drop_dir / "data" / "claims"
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


def burst(settings: Settings, data: bytes, files: int) -> float:
    storage = LocalDropStorage(settings.drop_dir)
    names = [f"burst_{index:03d}.csv" for index in range(files)]
    for name in names:
        drop(storage, name, data)
    return wait_processed(settings, names)


def with_platform(runners: int, rows_file: Path, measure) -> dict:
    """Start a platform with ``runners`` runner processes in a scratch home, measure, stop."""
    home = Path(tempfile.mkdtemp(prefix=f"churnops-recovery-{runners}-"))
    settings = get_settings(churnops_home=home)
    process = start_platform(settings, {"RUNNER_PROCESSES": str(runners)})
    try:
        return measure(settings, rows_file.read_bytes())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=30, help="files in the burst")
    parser.add_argument("--rows", type=int, default=1000, help="rows per file")
    args = parser.parse_args()
    source = get_settings().churn_data_dir / SOURCE
    if not source.exists():
        parser.error(f"{source} not found: run `make data` or set CHURN_DATA_DIR")
    rows_file = Path(tempfile.mkdtemp(prefix="churnops-rows-")) / "rows.csv"
    pd.read_csv(source).head(args.rows).to_csv(rows_file, index=False)
    cores = os.cpu_count() or 1

    def everything(settings: Settings, data: bytes) -> dict:
        single = single_files(settings, data)
        return {
            "single_file_median_s": round(statistics.median(single), 2),
            "crash_to_processed_s": round(crash_recovery(settings, data), 2),
            f"burst_{args.files}_files_s": round(burst(settings, data, args.files), 2),
        }

    many = with_platform(cores, rows_file, everything)
    one = with_platform(1, rows_file, lambda s, d: {"burst_s": round(burst(s, d, args.files), 2)})
    summary = {
        "rows_per_file": args.rows,
        "runner_processes": cores,
        **many,
        f"burst_{args.files}_files_one_runner_s": one["burst_s"],
        "burst_speedup": round(one["burst_s"] / many[f"burst_{args.files}_files_s"], 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
