"""Rehearse the AWS wiring on this machine: `make rehearse-aws` (see rehearsal/run.py).

Applies the root module against a fresh moto (as `make apply-local`), runs every ECS
container of the task definitions as a local process with its command, environment
and secrets, against moto and a throwaway Postgres for RDS, then drops a file and
checks it is processed through that wiring. Grafana's server is skipped (its binary
comes with its image; no Docker here). A failure names the container and the variable.

  rehearse.py [--workdir DIR]        apply in DIR (a fresh moto), rehearse, clean up
  rehearse.py --reuse --workdir DIR  rehearse an existing `make apply-local` workdir"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from churnops.platform.launch import on_signals
from terraform.scripts import local_postgres, tf_local
from terraform.scripts.rehearsal.checks import DROPPED_FILE
from terraform.scripts.rehearsal.run import TRAINING_FILE, Applied, Rehearsal, RehearsalFailed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path(".churnops/terraform-rehearsal"))
    parser.add_argument("--reuse", action="store_true", help="rehearse an existing apply-local")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("CHURN_DATA_DIR", "data")).resolve()
    require_tools_and_data(data_dir)
    # As `churnops up`: the first Ctrl-C (or SIGTERM) interrupts, a second one must not cut
    # the clean-up short (it left the servers running).
    previous = on_signals(threading.Event())
    try:
        return rehearse(args.workdir, args.reuse, data_dir)
    except KeyboardInterrupt as exc:  # as apply-local's: one line, below the clean-up
        print(
            f"rehearsal stopped ({tf_local.stopped_by(exc)}): {left_behind(args)}", file=sys.stderr
        )
        return tf_local.INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def rehearse(workdir: Path, reuse: bool, data_dir: Path) -> int:
    """Apply (unless ``reuse``), rehearse, clean up: on a failure and on Ctrl-C too."""
    if not reuse and (pid := tf_local.running_moto(workdir)):  # its clean-up is not ours
        raise SystemExit(
            f"{workdir} is in use: another rehearsal runs there, or one whose terminal closed "
            f"left its moto server (pid {pid}): let it end, or `kill {pid}`, then try again"
        )
    try:
        if not reuse:
            tf_local.up(workdir, None)
        endpoint, env = tf_local.workdir_env(workdir)
        applied = Applied(endpoint, tf_local.outputs(workdir / "terraform", env))
        with (
            local_postgres.throwaway_cluster() as cluster,
            tempfile.TemporaryDirectory(prefix="churnops-rehearsal-") as root,
        ):
            print(Rehearsal(applied, cluster.url(), data_dir, Path(root)).run().text())
    except RehearsalFailed as exc:
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # the apply (or init) failed: Terraform's errors are above
        print(f"rehearsal failed: {tf_local.stopped_by(exc)}", file=sys.stderr)
        return 1
    finally:
        if not reuse:
            tf_local.stop_emulator(workdir)  # no destroy: moto's state goes with it
            shutil.rmtree(workdir, ignore_errors=True)
    print("rehearsal passed")
    return 0


def left_behind(args: argparse.Namespace) -> str:
    """What an interrupted rehearsal leaves: nothing of its own; a reused apply-local stays."""
    if args.reuse:
        return (
            f"its PostgreSQL and processes are stopped; the apply-local in {args.workdir} is"
            " kept (make destroy-local removes it)"
        )
    return "its moto server, PostgreSQL and processes are stopped, its work folder removed"


def require_tools_and_data(data_dir: Path) -> None:
    """What a rehearsal needs, each missing one in one line before the 2-minute apply (not
    a traceback, or a wiring error, after it): Terraform, the data, PostgreSQL (RDS's
    stand-in)."""
    tf_local.require_terraform(os.environ)
    missing = [name for name in (TRAINING_FILE, DROPPED_FILE) if not (data_dir / name).is_file()]
    if missing:
        raise SystemExit(f"no {' or '.join(missing)} in {data_dir}: run `make data`")
    if postgres := local_postgres.missing_binaries():
        raise SystemExit(f"{postgres}: install PostgreSQL (initdb and pg_ctl)")


if __name__ == "__main__":
    sys.exit(main())
