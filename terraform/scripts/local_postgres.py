"""A throwaway PostgreSQL cluster (initdb + pg_ctl, no Docker): the tests' session cluster
and `make rehearse-aws`'s stand-in for RDS. As root it belongs to ``postgres``
(``runuser``: the server refuses root). It listens on a free 127.0.0.1 port with scram
logins, so role passwords are really checked."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from churnops.platform.services import free_port

SUPERUSER = "postgres"
HOST = "127.0.0.1"
#: Local socket trusted, TCP logins by password (scram); no syncing: the cluster is thrown away.
INITDB_ARGS = ("--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")


class PostgresError(RuntimeError):
    """A cluster command failed; the message has its output."""


@dataclass
class Cluster:
    """A cluster in ``root``; :meth:`stop` and :meth:`start` simulate an outage."""

    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """The superuser's URL (password included) of ``database``."""
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off"
        log = str(self.root / "server.log")
        _run(["pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start"])

    def stop(self) -> None:
        _run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])


def missing_binaries() -> str:
    """What of PostgreSQL is not on the PATH, in one line, or '' (checked before any work)."""
    missing = [binary for binary in ("initdb", "pg_ctl") if shutil.which(binary) is None]
    return f"PostgreSQL binaries not on PATH: {', '.join(missing)}" if missing else ""


def create() -> Cluster:
    """Initialise and start a fresh cluster under a new folder in the temp dir."""
    if missing := missing_binaries():
        raise PostgresError(missing)
    # The temp dir, not a caller's folder: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="churnops-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER, SUPERUSER)
    cluster = Cluster(root, free_port(HOST), secrets.token_hex(16))
    try:
        _init(cluster)
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def remove(cluster: Cluster) -> None:
    """Stop the server (whatever state it is in) and delete its folder."""
    with contextlib.suppress(PostgresError):
        cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    cluster = create()
    try:
        yield cluster
    finally:
        remove(cluster)


def _init(cluster: Cluster) -> None:
    """initdb with the superuser's password (:data:`INITDB_ARGS`)."""
    pwfile = cluster.root / "pwfile"
    pwfile.write_text(cluster.password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, SUPERUSER, SUPERUSER)
    _run(["initdb", "-D", str(cluster.data), "-U", SUPERUSER, f"--pwfile={pwfile}", *INITDB_ARGS])


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_owner(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PostgresError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
