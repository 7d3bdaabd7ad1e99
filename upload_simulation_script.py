"""Simulate customer files arriving: upload each data file into the drop's input folder.

Every ``customer_churn_*.csv`` except the training file goes to ``data/input/`` of the
drop (the local folder or an S3 bucket), ``--interval`` seconds apart, for a running
platform (``churnops up``) to pick up.

    python upload_simulation_script.py --interval 5
    python upload_simulation_script.py --target s3 --bucket my-drop-bucket
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from churnops.drop.storage import ObjectExists, brief, open_storage, stage_key
from churnops.platform.services import PlatformState
from churnops.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between uploads")
    parser.add_argument(
        "--data-dir", type=Path, default=settings.model.churn_data_dir, help="folder of CSV files"
    )
    parser.add_argument("--target", choices=("local", "s3"), default=settings.drop.drop_storage)
    parser.add_argument("--bucket", default=None, help="drop bucket (default: DROP_BUCKET)")
    args = parser.parse_args(argv)
    if args.interval < 0:
        parser.error(f"--interval must be at least 0, got {args.interval}")
    training = settings.model.training_file
    files = sorted(p for p in args.data_dir.glob("customer_churn_*.csv") if p.name != training)
    if not files:
        problem = (
            f"no customer_churn_*.csv files besides {training} in {args.data_dir}"
            if args.data_dir.is_dir()
            else f"{args.data_dir} is not a folder: run `make data` or pass --data-dir"
        )
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.target == "local" and PlatformState.load(settings.home) is None:
        # Not an error (the files wait and the next `up` takes them), but said: else the
        # uploads look done and nothing happens.
        print(f"note: no platform runs on {settings.home}: the files wait until `make demo`")
    # Local writes go to a temporary name, then a rename: the watcher sees whole files.
    storage = open_storage(settings.replace(drop_storage=args.target).drop, args.bucket)
    done = 0  # files handled (uploaded, or still waiting): counted before they are printed
    try:
        for path in files:
            if done:
                time.sleep(args.interval)
            key = stage_key("input", path.name)
            try:
                storage.create(key, path.read_bytes())
            except ObjectExists:
                done += 1
                print(f"not uploaded: {path.name} still waits in {key} (not taken yet)", flush=True)
                continue
            except (BotoCoreError, ClientError, OSError) as exc:  # no credentials, no bucket, ...
                # Named: with no --bucket it is DROP_BUCKET's, which the user may not know.
                print(
                    f"error: {path.name} not uploaded to {storage!r}: {brief(exc)}", file=sys.stderr
                )
                return 1
            done += 1
            print(f"uploaded {path.name} -> {storage!r} {key}", flush=True)
    except KeyboardInterrupt:  # Ctrl-C: how a user stops it early, mostly between files
        rest = ", ".join(path.name for path in files[done:])
        print(f"stopped: not uploaded: {rest}", file=sys.stderr)
        return 128 + signal.SIGINT  # a shell's status for Ctrl-C
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
