"""``churnops status``: every dropped file by stage and every service's health."""

from __future__ import annotations

from dataclasses import dataclass

from churnops.drop import claims
from churnops.drop.keys import is_folder_marker, not_a_drop
from churnops.drop.storage import DROP_STAGES, STAGES, DropStorage, folder_key
from churnops.platform.services import PlatformState, http_ok, pid_alive


@dataclass(frozen=True)
class FileState:
    name: str
    stage: str
    key: str
    run: str = ""
    note: str = ""


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    url: str
    healthy: bool
    detail: str


def list_files(storage: DropStorage) -> list[FileState]:
    """Every file by stage, drops (input, labels) first; later stages by run (with their
    predictions files). Folder markers (``data/input/``, as the bucket's layout has) are
    no files; one in a drop folder that no run will take (in a subfolder, hidden or
    partial) is listed as ``ignored``, so no dropped file goes unseen; one in processing/
    whose attempt failed says so, and when it is retried."""
    files = []
    for stage in STAGES:
        prefix = folder_key(stage)
        for key in storage.list_keys(prefix):
            rest = key[len(prefix) :]
            if is_folder_marker(key):
                continue
            if stage in DROP_STAGES:
                files.append(
                    FileState(rest, f"{stage}, ignored" if not_a_drop(key) else stage, key)
                )
            elif rest.count("/") == 1:
                run, name = rest.split("/")
                note = _waiting(storage, run, name) if stage == "processing" else ""
                files.append(FileState(name, stage, key, run, note))
    return files


def stage_counts(files: list[FileState]) -> str:
    """One line under a long table: files waiting in the drop folders, runs in the later
    stages (a processed run holds its predictions beside the file), e.g. ``2 input, 270
    processed, 30 errored``."""
    counts: dict[str, set[str]] = {}
    for file in files:
        counts.setdefault(file.stage, set()).add(file.run or file.key)
    return ", ".join(f"{len(found)} {stage}" for stage, found in counts.items())


def _waiting(storage: DropStorage, run: str, name: str) -> str:
    """Why the file ``name`` of a run in processing/ is not worked on: its attempt failed
    (its flow run and its database row say failed) and it waits for its retry; else
    nothing (also on the run's other files, its predictions)."""
    lease = claims.latest_lease(storage, run)
    if lease is None or not lease.waits_for_retry or lease.name != name:
        return ""
    return f"attempt {lease.attempt} failed, retry at {lease.retry_at}: {lease.reason}"


def service_health(state: PlatformState | None) -> list[ServiceHealth]:
    """Each service of a running platform: answering its health check (or alive)?"""
    if state is None:
        return [ServiceHealth("platform", "-", False, "not running (start it: churnops up)")]
    health = []
    for name, info in state.services.items():
        check, pid = info.get("health_url"), info.get("pid")
        if check:
            ok, detail = http_ok(str(check)), f"GET {check}"
        else:
            ok, detail = bool(pid) and pid_alive(int(pid or 0)), f"process {pid}"
        health.append(ServiceHealth(name, str(info.get("url") or "-"), ok, detail))
    return health
