"""The exactly-once invariant, checked one way for every fault test.

Every byte-string ever dropped is found exactly once, unchanged, among the
originals (``input/<name>``, ``labels/<name>`` or ``<stage>/<run>/<name>``);
nothing else is an original; once settled, each one is in ``processed/`` (or
``errored/`` when it is invalid), each processed run has its predictions (a
labels run: its labelled rows and join), and the metrics database has one
processed row per processed run and no ``running`` row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from churnops.drop import claims
from churnops.drop.keys import DROP_PREFIXES, is_labels
from churnops.drop.storage import DropStorage, folder_key, run_key, stage_key
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

    def check(self, *, settled: bool, invalid: int = 0, metrics_url: str | None = None) -> None:
        found = originals(self.storage)
        assert Counter(o.data for o in found) == Counter(self.dropped), [o.key for o in found]
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
        store = MetricsStore(url)
        try:
            runs = store.runs()
        finally:
            store.close()
        processed_runs = {o.run for o in found if o.stage == "processed"}
        rows = runs[runs["id"].str.rsplit(".", n=1).str[0].isin(processed_runs)]
        assert (rows["status"] == "running").sum() == 0, rows[["id", "status", "error"]]
        per_run = rows[rows["status"] == "processed"]["id"].str.rsplit(".", n=1).str[0]
        assert Counter(per_run) == Counter(processed_runs), rows[["id", "status"]]
