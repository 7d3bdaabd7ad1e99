"""The exactly-once invariant, checked one way for every fault test.

Every dropped byte-string is found exactly once, unchanged, among the originals; once
settled, each is in ``processed/`` with its outputs (or ``errored/``), with one processed
row per processed run; and every attempt's records (stage, row, flow run state, log,
lease) tell one of :data:`STORIES`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

import pandas as pd
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun

from churnops.drop import claims
from churnops.drop.keys import DROP_PREFIXES, is_labels
from churnops.drop.storage import CLAIMS, DropStorage, folder_key, log_key, run_key, stage_key
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline.labels import JOIN_SUFFIX, LABELED_ROWS_SUFFIX


@dataclass
class Original:
    key: str
    stage: str
    run: str
    data: bytes


def originals(storage: DropStorage) -> list[Original]:
    """Every copy of a dropped file wherever it is (the claim files say which is the original)."""
    found = [
        Original(key, prefix, "", storage.read(key))
        for prefix in DROP_PREFIXES
        for key in storage.list_keys(prefix)
        if "/" not in key[len(prefix) :]
    ]
    for stage in ("processing", "processed", "errored"):
        prefix = folder_key(stage)  # type: ignore[arg-type]
        runs = {key[len(prefix) :].split("/", 1)[0] for key in storage.list_keys(prefix)}
        for run in sorted(runs):
            lease = claims.latest_lease(storage, run)
            assert lease is not None, f"run folder {prefix}{run} has no claim file"
            key = run_key(stage, run, lease.name)  # type: ignore[arg-type]
            if storage.exists(key):
                found.append(Original(key, stage, run, storage.read(key)))
    return found


@dataclass
class Drops:
    """What a test dropped, to be checked against what the storage holds."""

    storage: DropStorage
    dropped: list[bytes] = field(default_factory=list)

    def drop(self, name: str, data: bytes, folder: str = "input") -> str:
        key = stage_key(folder, name)  # type: ignore[arg-type]
        self.storage.create(key, data)
        self.dropped.append(data)
        return key

    def check(
        self,
        *,
        settled: bool,
        invalid: int = 0,
        metrics_url: str | None = None,
        waiting: bool = False,
    ) -> None:
        """``waiting``: the runs in processing/ failed (the database up) and wait for a
        retry: their rows and logs must say failed."""
        found = originals(self.storage)
        assert Counter(o.data for o in found) == Counter(self.dropped), [o.key for o in found]
        if waiting:
            assert metrics_url, "the rows are checked against the metrics database"
            waiting_runs = [o for o in found if o.stage == "processing"]
            assert waiting_runs, [o.key for o in found]
            self.check_stories(metrics_url, waiting_runs)
        if not settled:
            return
        stages = Counter(o.stage for o in found)
        expected = {"processed": len(found) - invalid, "errored": invalid}
        assert stages == Counter({stage: n for stage, n in expected.items() if n})
        for original in found:
            if original.stage == "processed":
                folder = folder_key("processed", original.run)
                outputs = [k for k in self.storage.list_keys(folder) if k != original.key]
                lease = claims.latest_lease(self.storage, original.run)
                if lease and is_labels(lease.source_key):
                    made = [f"{original.key}{s}" for s in (JOIN_SUFFIX, LABELED_ROWS_SUFFIX)]
                    assert sorted(outputs) == made, outputs
                else:
                    assert any("_predictions_" in k for k in outputs), outputs
        assert not self.storage.list_keys("data/processing/")
        if metrics_url:
            self.check_database(metrics_url, found)

    def check_database(self, url: str, found: list[Original]) -> None:
        runs = pipeline_runs(url)
        processed_runs = {o.run for o in found if o.stage == "processed"}
        rows = runs[runs["id"].str.rsplit(".", n=1).str[0].isin(processed_runs)]
        assert (rows["status"] == "running").sum() == 0, rows[["id", "status", "error"]]
        per_run = rows[rows["status"] == "processed"]["id"].str.rsplit(".", n=1).str[0]
        assert Counter(per_run) == Counter(processed_runs), rows[["id", "status"]]
        self.check_stories(url, found)

    def check_stories(self, url: str, found: list[Original]) -> None:
        """The records a run has without Prefect (stage, row, log, lease) tell one story."""
        status = _statuses(url)
        stories = {s._replace(state=None) for s in STORIES.values()}
        for original in found:
            lease = claims.latest_lease(self.storage, original.run)
            assert lease is not None, original.key
            told = _told(self.storage, status, lease, None)
            assert told in stories, (original.key, told)


def pipeline_runs(url: str) -> pd.DataFrame:
    with closing(MetricsStore(url)) as store:
        return store.runs()


def _statuses(url: str) -> dict[str, str]:
    runs = pipeline_runs(url)
    return dict(zip(runs["id"], runs["status"], strict=True))


class Story(NamedTuple):
    """A run's outcome as each of its records tells it."""

    #: Where the file's original is: a stage, None (in no run folder) or TAKEN_OVER (a
    #: later attempt of the run holds it; that attempt tells the file's story).
    stage: str | None
    #: Its attempt's ``pipeline_runs`` status (None: the attempt has no row).
    row: str | None
    #: Its flow run's state: (type, name); None where Prefect is not asked.
    state: tuple[str, str] | None
    #: How the log says the attempt ended (:func:`log_end`).
    log: str
    #: The state of the attempt's lease (its claim file).
    lease: str


TAKEN_OVER = "taken over"

#: Every story an attempt may tell, and, where a record tells it differently from the
#: others, why. The file's story is that of its latest attempt; earlier ones were taken over.
STORIES = {
    "processed": Story("processed", "processed", ("COMPLETED", "Completed"), "ok", "done"),
    "errored": Story("errored", "errored", ("FAILED", "Rejected"), "errored", "done"),
    "failed, waiting for its retry": Story(
        "processing", "failed", ("FAILED", "Failed"), "failed", "failed"
    ),
    # The file changed during its run: it went back to its drop folder to start over as a
    # new run; this one did not fail the flow (nothing was wrong with the file yet).
    "started over": Story(None, "failed", ("COMPLETED", "Completed"), "skipped", "done"),
    # Someone deleted the original from processing/ during the run: nowhere is right.
    "deleted mid-run": Story(None, "errored", ("FAILED", "Rejected"), "errored", "done"),
    "failed, then retried": Story(TAKEN_OVER, "failed", ("FAILED", "Failed"), "failed", "failed"),
    # Storage would not move the file into its run (S3 archived it): it is still in input/.
    "not moved in, waiting for its retry": Story(
        None, "failed", ("FAILED", "Failed"), "failed", "failed"
    ),
    "not moved in, given up": Story(
        None, "errored", ("FAILED", "Rejected"), "errored", "unmovable"
    ),
    # Killed (SIGKILL, OOM): it could not end its lease, row, log or flow run; the attempt
    # that took over wrote "died" in the log, closed its row, marked its flow run Crashed
    # (churnops.pipeline.flow.mark_crashed) and ended its lease "died".
    "died": Story(TAKEN_OVER, "failed", ("CRASHED", "Crashed"), "died", "died"),
    # ... killed before it had started its row.
    "died before its row": Story(TAKEN_OVER, None, ("CRASHED", "Crashed"), "died", "died"),
}


def stage_of(storage: DropStorage, lease: claims.Lease) -> str | None:
    """Where the original of ``lease``'s run is, as :attr:`Story.stage` says."""
    latest = claims.latest_lease(storage, lease.run)
    assert latest is not None, f"run {lease.run} has no claim file"
    if lease.attempt < latest.attempt:
        return TAKEN_OVER
    stages = [
        stage
        for stage in ("processing", "processed", "errored")
        if storage.exists(run_key(stage, lease.run, lease.name))  # type: ignore[arg-type]
    ]
    assert len(stages) <= 1, (lease.run, stages)
    return stages[0] if stages else None


def log_end(storage: DropStorage, lease: claims.Lease) -> str:
    """How the run's log says ``lease``'s attempt ended: "died" (or "failed", when it could
    not write so itself) when a later attempt wrote so, else the status of the last
    ``finish`` line of its part of the log (from its ``claim`` line to the next)."""
    lines = storage.read(log_key(lease.run, lease.name)).decode().splitlines()
    part, ends = 0, []
    for line in lines:
        _, step, status, _, text = (line.split(" | ", 4) + [""] * 5)[:5]
        if step == "claim" and text.startswith("attempt "):
            part = int(text.split()[1].rstrip(":"))
        elif step == "finish" and status in ("died", "failed") and part > lease.attempt:
            if text.startswith(f"attempt {lease.attempt} "):
                return status
        elif step == "finish" and status != "start" and part == lease.attempt:
            ends.append(status)
    assert ends, f"the log of attempt {lease.attempt} has no finish line:\n" + "\n".join(lines)
    return ends[-1]


def leases(storage: DropStorage) -> list[claims.Lease]:
    """Every attempt's lease in the storage."""
    return [claims.Lease.from_json(storage.read(k)) for k in storage.list_keys(f"{CLAIMS}/")]


def read_flow_runs(storage: DropStorage, started: Iterable[str]) -> list[FlowRun]:
    """From the current Prefect server: the flow runs ``started`` and those of every lease
    in ``storage`` (a killed child's flow run is known by its lease only)."""
    ids = {UUID(i) for i in started} | {
        UUID(x.flow_run_id) for x in leases(storage) if x.flow_run_id
    }
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    assert {r.id for r in found} == ids, ids - {r.id for r in found}
    return found


def _told(
    storage: DropStorage, status: dict[str, str], lease: claims.Lease, run: FlowRun | None
) -> Story:
    return Story(
        stage_of(storage, lease),
        status.get(lease.db_id),
        (run.state.type.value, run.state.name) if run and run.state else None,
        log_end(storage, lease),
        lease.state,
    )


def check_records_agree(
    storage: DropStorage, metrics_url: str, flow_runs: Iterable[FlowRun]
) -> None:
    """After each flow run (as its server holds it), its five records tell one of
    :data:`STORIES`. A flow run that did not take its file has no lease, ends Completed."""
    status = _statuses(metrics_url)
    by_flow_run = {x.flow_run_id: x for x in leases(storage)}
    for flow_run in flow_runs:
        state = flow_run.state
        assert state is not None, flow_run.id
        lease = by_flow_run.get(str(flow_run.id))
        if lease is None:
            assert state.is_completed() and state.message.startswith("skipped:"), state
            continue
        told = _told(storage, status, lease, flow_run)
        assert told in STORIES.values(), (lease.run, lease.attempt, told, state.message)
