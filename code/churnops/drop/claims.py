"""Who works on which drop: runs, claims and leases, on the drop storage itself.

A run is one object version (a new file with an old name is a new run), so every claimer
computes the same run id. Each attempt conditionally creates ``data/claims/<run>/<attempt>.json``:
of two claimers exactly one wins, then moves the file into ``processing/<run>/``. That
lease is the one judge of liveness (Prefect's heartbeat is off in the runner): its holder
beats for at most :data:`MAX_ATTEMPT_SECONDS`; a lease whose heartbeat is older than
``lease_seconds``, or whose process on this host is gone, is dead, and the next attempt
closes it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

from churnops.drop.storage import (
    CLAIMS,
    RUN_STAGES,
    DropStorage,
    ObjectExists,
    ObjectInfo,
    name_from_key,
    run_key,
    run_name,
    split_run_key,
    stage_key,
)

#: "unmovable": the run gave up on a file it could not move into processing/; it stays in
#: input/ and is never claimed again (a new drop of it is a new run).
LeaseState = Literal["running", "failed", "done", "died", "unmovable"]
HOST = socket.gethostname()


#: A lease whose heartbeat is older than this is dead (s); its holder beats every third of
#: it: long enough for a loaded machine's pauses, short enough to re-drive quickly.
LEASE_SECONDS = 30.0
#: An attempt stops renewing its lease after this (s): the backstop behind every timeout.
MAX_ATTEMPT_SECONDS = 3600.0
RUN_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def run_id(name: str, version: str, modified: datetime) -> str:
    """``20261127T061500Z-1a2b3c4d``: sortable by drop time, unique per object version."""
    digest = hashlib.sha256(f"{name}\0{version}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"{modified.astimezone(UTC):{RUN_TIME_FORMAT}}-{digest[:8]}"


def drop_run(storage: DropStorage, name: str, info: ObjectInfo) -> tuple[str, Lease | None]:
    """The run a dropped file's claim takes, with its latest lease: :func:`run_id` of its
    version, or, when that run ended with its file gone from every run folder, one after it:
    a file moved back into its drop folder by hand (``mv`` keeps a local file's inode and
    times: its version) is a new drop, as its copy back is on S3."""
    run = run_id(name, info.version, info.modified)
    while (last := latest_lease(storage, run)) and last.state == "done":
        if any(storage.exists(run_key(stage, run, last.name)) for stage in RUN_STAGES):
            break  # a move-in cut short: _finish_move_in removes the dropped copy
        run = run_id(name, f"{info.version} after {run}", info.modified)
    return run, last


def dropped_at(run: str) -> datetime:
    """The drop time a run id starts with (see :func:`run_id`)."""
    return datetime.strptime(run.split("-", 1)[0], RUN_TIME_FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Lease:
    """One attempt at a run, as stored in its claim file."""

    run: str
    attempt: int
    #: The file's name in its run folder (:func:`~churnops.drop.storage.run_name`).
    name: str
    #: Where it was dropped (the original name, even when the run's is cut).
    source_key: str
    host: str
    pid: int
    state: LeaseState
    heartbeat: str
    flow_run_id: str = ""
    reason: str = ""
    retry_at: str = ""
    #: The input object version this run took (to finish a move cut short).
    source_version: str = ""

    @property
    def key(self) -> str:
        return claim_key(self.run, self.attempt)

    @property
    def db_id(self) -> str:
        return f"{self.run}.{self.attempt}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Lease:
        return cls(**json.loads(data))

    def holder_gone(self, now: datetime, lease_seconds: float) -> bool:
        """A running attempt nobody works on any more (crash, kill, OOM, redeploy)."""
        if self.state != "running":
            return False
        silent = now - datetime.fromisoformat(self.heartbeat) > timedelta(seconds=lease_seconds)
        return self.process_gone() or silent

    def process_gone(self) -> bool:
        """Its process was on this host and is gone (elsewhere, only time tells)."""
        return self.host == HOST and not pid_alive(self.pid)

    def ended(self, now: datetime, lease_seconds: float) -> bool:
        """Nobody works on this attempt any more: it finished, failed, or its holder died."""
        return self.state != "running" or self.holder_gone(now, lease_seconds)

    @property
    def waits_for_retry(self) -> bool:
        """It failed, and its run waits for the retry it scheduled."""
        return self.state == "failed" and bool(self.retry_at)

    def retry_due(self, now: datetime) -> bool:
        return self.state == "failed" and (
            not self.retry_at or now >= datetime.fromisoformat(self.retry_at)
        )


def claim_key(run: str, attempt: int) -> str:
    return f"{CLAIMS}/{run}/{attempt:04d}.json"


def latest_lease(storage: DropStorage, run: str) -> Lease | None:
    keys = storage.list_keys(f"{CLAIMS}/{run}/")
    return _read_lease(storage, keys[-1]) if keys else None


def lease(storage: DropStorage, run: str, attempt: int) -> Lease | None:
    return _read_lease(storage, claim_key(run, attempt))


def _read_lease(storage: DropStorage, key: str) -> Lease | None:
    try:
        return Lease.from_json(storage.read(key))
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Claim:
    """A won claim: this process works on ``processing_key`` until it releases it."""

    lease: Lease
    processing_key: str

    @property
    def run(self) -> str:
        return self.lease.run

    @property
    def name(self) -> str:
        return self.lease.name


class ClaimRefused(Exception):
    """The key cannot be claimed now; the message says why (for the file's log)."""


class MoveInFailed(Exception):
    """The claim is won but storage would not move the file into processing/ (S3 will not
    copy an object archived to Glacier, one a KMS key or a policy denies us, one over its
    5 GB copy limit; nor delete one under Object Lock): the file is still in input/ (and
    maybe copied into processing/) and ``held`` must be ended."""

    def __init__(self, held: Claim, cause: Exception) -> None:
        super().__init__(f"could not move it into processing/: {cause}")
        self.held, self.cause = held, cause


def claim(storage: DropStorage, key: str, *, lease_seconds: float, flow_run_id: str = "") -> Claim:
    """Take ``key`` (an input file, or a run in processing/ to re-drive) for this process;
    :class:`ClaimRefused` when it is gone, held by a live attempt or given up on."""
    parts = split_run_key(key)
    if parts is None:
        name = name_from_key(key)
        info = storage.stat(key)
        if info is None:
            raise ClaimRefused(f"{name!r} is no longer in input/ (taken by a run, or removed)")
        (run, previous), kept = drop_run(storage, name, info), run_name(name)
        if previous and previous.state == "unmovable":
            why = f"it would not move into processing/ in {previous.attempt} attempts"
            raise ClaimRefused(f"run {run} gave up on {kept!r}: {why} (see its log)")
        if previous and previous.ended(datetime.now(UTC), lease_seconds):
            _finish_move_in(storage, run, kept, key, info.version)
        lease = _next_attempt(
            storage, previous, run, kept, key, lease_seconds, flow_run_id, info.version
        )
        processing_key = run_key("processing", run, kept)
        try:
            storage.move(key, processing_key, version=info.version)
        except FileNotFoundError:
            release(storage, lease, "done", "the file left input/ before it could be moved")
            raise ClaimRefused(f"{kept!r} left input/ before it could be moved") from None
        except Exception as exc:
            raise MoveInFailed(Claim(lease, processing_key), exc) from exc
        return Claim(lease, processing_key)
    stage, run, name = parts
    if stage != "processing":
        raise ClaimRefused(f"{key} is in {stage}/: that run has ended")
    previous = latest_lease(storage, run)
    source = previous.source_key if previous else stage_key("input", name)
    version = previous.source_version if previous else ""
    lease = _next_attempt(storage, previous, run, name, source, lease_seconds, flow_run_id, version)
    processing_key = run_key("processing", run, name)
    if version and (info := storage.stat(source)) is not None and info.version == version:
        try:  # the copy is there: the source goes
            storage.move(source, processing_key, version=version)
        except FileNotFoundError:
            pass
        except Exception as exc:  # it cannot be deleted (S3 Object Lock, a policy)
            raise MoveInFailed(Claim(lease, processing_key), exc) from exc
    return Claim(lease, processing_key)


def _finish_move_in(storage: DropStorage, run: str, name: str, key: str, version: str) -> None:
    """A move-in cut short (killed after the copy): the input file, the same object, goes."""
    for stage in ("processing", "processed", "errored"):
        copy = run_key(stage, run, name)
        if storage.exists(copy):
            storage.move(key, copy, version=version)
            raise ClaimRefused(
                f"{name!r} is already in {stage}/{run}/: removed the copy a cut-short move "
                "left in input/"
            )


def _next_attempt(
    storage: DropStorage,
    previous: Lease | None,
    run: str,
    name: str,
    source: str,
    lease_seconds: float,
    flow_run_id: str,
    source_version: str,
) -> Lease:
    """Create the claim file of the run's next attempt: exactly one claimer wins it."""
    if previous and not previous.ended(datetime.now(UTC), lease_seconds):
        raise ClaimRefused(f"run {run} is being worked on (attempt {previous.attempt})")
    attempt = previous.attempt + 1 if previous else 1
    lease = Lease(
        run=run,
        attempt=attempt,
        name=name,
        source_key=source,
        host=HOST,
        pid=os.getpid(),
        state="running",
        heartbeat=datetime.now(UTC).isoformat(),
        flow_run_id=flow_run_id,
        source_version=source_version,
    )
    try:
        storage.create(lease.key, lease.to_json())
    except ObjectExists:
        raise ClaimRefused(f"attempt {attempt} of run {run} was taken by another run") from None
    return lease


def release(
    storage: DropStorage,
    lease: Lease,
    state: LeaseState,
    reason: str = "",
    retry_in: float | None = None,
) -> Lease:
    """End an attempt: ``done``, or ``failed`` with when to try again."""
    now = datetime.now(UTC)
    due = now + timedelta(seconds=retry_in) if retry_in is not None else None
    retry_at = due.isoformat(timespec="seconds") if due else ""  # printed by status, reconcile
    ended = replace(lease, state=state, heartbeat=now.isoformat(), reason=reason, retry_at=retry_at)
    storage.replace(ended.key, ended.to_json())
    return ended


def taken_over(storage: DropStorage, lease: Lease) -> bool:
    """A later attempt of the run exists: this one stalled past its lease (a stopped or
    starved process) and was declared dead, so it must change nothing more."""
    return storage.exists(claim_key(lease.run, lease.attempt + 1))


def died(storage: DropStorage, run: str, attempt: int) -> list[Lease]:
    """The attempts before ``attempt`` that died and nobody closed: their leases say running."""
    earlier = (lease(storage, run, n) for n in range(1, attempt))
    return [x for x in earlier if x is not None and x.state == "running"]


def death(dead: Lease) -> str:
    """Why an attempt whose lease was left running ended."""
    return (
        f"attempt {dead.attempt} died (no heartbeat since {dead.heartbeat}): "
        "its process was killed (out of memory?), stopped or stalled"
    )


def last_reason(storage: DropStorage, run: str, attempt: int) -> str:
    """Why the attempt before ``attempt`` ended: its failure, or that it died (killed, OOM)."""
    previous = lease(storage, run, attempt - 1)
    if previous is None:
        return "the earlier attempts left no claim"
    return death(previous) if previous.state == "running" else previous.reason


@contextmanager
def heartbeat(
    storage: DropStorage,
    lease: Lease,
    every: float = LEASE_SECONDS / 3,
    limit: float = MAX_ATTEMPT_SECONDS,
) -> Iterator[None]:
    """Keep the lease alive from a thread while the body runs, for at most ``limit`` s (a
    body blocked beyond every timeout loses its lease and is re-driven)."""
    stop = threading.Event()
    deadline = time.monotonic() + limit

    def beat() -> None:
        while not stop.wait(every) and time.monotonic() < deadline:
            with suppress(Exception):  # storage hiccup: the next beat tries again
                if taken_over(storage, lease):  # woken after a stall: never revive its lease
                    return
                storage.replace(
                    lease.key, replace(lease, heartbeat=datetime.now(UTC).isoformat()).to_json()
                )

    thread = threading.Thread(target=beat, name=f"lease-{lease.run}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


def pid_alive(pid: int) -> bool:
    """A process with this pid exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
