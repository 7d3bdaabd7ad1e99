"""Simulate customer files arriving: upload each data file into the drop's input folder.

Every ``customer_churn_*.csv`` except the training file goes to ``data/input/``
of the drop (the local drop folder or an S3 bucket), ``--interval`` seconds
apart, so a running platform (``churnops up``) picks each one up.

    python upload_simulation_script.py --interval 5
    python upload_simulation_script.py --target s3 --bucket my-drop-bucket
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from churnops.drop.storage import ObjectExists, open_storage, stage_key
from churnops.settings import get_settings


def parse_args(
    argv: list[str] | None, default_data: Path, default_target: str
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between uploads")
    parser.add_argument("--data-dir", type=Path, default=default_data, help="folder of CSV files")
    parser.add_argument("--target", choices=("local", "s3"), default=default_target)
    parser.add_argument("--bucket", default=None, help="drop bucket (default: DROP_BUCKET)")
    args = parser.parse_args(argv)
    if args.interval < 0:
        parser.error(f"--interval must be at least 0, got {args.interval}")
    return args


def files_to_upload(data_dir: Path, training_file: str) -> list[Path]:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} is not a folder: run `make data` or pass --data-dir")
    files = sorted(p for p in data_dir.glob("customer_churn_*.csv") if p.name != training_file)
    if not files:
        raise FileNotFoundError(
            f"no customer_churn_*.csv files besides {training_file} in {data_dir}"
        )
    return files


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args = parse_args(argv, settings.model.churn_data_dir, settings.drop.drop_storage)
    settings = settings.replace(drop_storage=args.target)
    try:
        files = files_to_upload(args.data_dir, settings.model.training_file)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Local writes go to a temporary name, then a rename: the watcher sees whole files.
    storage = open_storage(settings.drop, args.bucket)
    for number, path in enumerate(files):
        if number:
            time.sleep(args.interval)
        key = stage_key("input", path.name)
        try:
            storage.create(key, path.read_bytes())
        except ObjectExists:
            print(f"not uploaded: {path.name} still waits in {key} (not taken yet)", flush=True)
            continue
        print(f"uploaded {path.name} -> {storage!r} {key}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
