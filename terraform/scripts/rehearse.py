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
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from churnops.platform.services import terminate_groups
from terraform.scripts import local_postgres, tf_local
from terraform.scripts.rehearsal.run import Applied, Rehearsal, RehearsalFailed


def applied(workdir: Path) -> Applied:
    """The emulator and the outputs of an applied workdir (tf_local.py up)."""
    state = json.loads((workdir / "emulator.json").read_text())
    env = tf_local.emulator_env(state["endpoint"], workdir / "terraform.rc")
    raw = json.loads(
        tf_local.terraform(workdir / "terraform", env, "output", "-json", capture=True)
    )
    return Applied(state["endpoint"], {k: v["value"] for k, v in raw.items()})


def rehearse(target: Applied, data_dir: Path) -> str:
    """The rehearsal against ``target`` with a Postgres of its own; its report."""
    with (
        local_postgres.throwaway_cluster() as cluster,
        tempfile.TemporaryDirectory(prefix="churnops-rehearsal-") as root,
    ):
        return Rehearsal(target, cluster.url(), data_dir, Path(root)).run().text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, default=Path(".churnops/terraform-rehearsal"))
    parser.add_argument("--reuse", action="store_true", help="rehearse an existing apply-local")
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("CHURN_DATA_DIR", "data")).resolve()
    try:
        if not args.reuse:
            tf_local.up(args.workdir, None)
        print(rehearse(applied(args.workdir), data_dir))
    except RehearsalFailed as exc:
        print(f"rehearsal failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.reuse:
            _discard(args.workdir)
    print("rehearsal passed")
    return 0


def _discard(workdir: Path) -> None:
    """Stop the moto server `up` started; its state goes with it (no destroy needed)."""
    state_file = workdir / "emulator.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if "moto_pid" in state:
            terminate_groups([int(state["moto_pid"])], grace=5.0)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
