"""The reconciler's choice of stranded input files, on a local drop folder."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from churnops.drop import claims
from churnops.drop.storage import LocalDropStorage, stage_key
from churnops.pipeline import reconcile
from tests.exactly_once import leases
from tests.processes import dead_pid


class DiesMovingIn(LocalDropStorage):
    """A storage whose first move fails: the attempt dies between its lease and its move."""

    def move(self, src: str, dst: str, **kwargs: object) -> None:
        raise RuntimeError("killed while moving the file in")


def test_a_file_whose_claim_died_is_redriven_at_once_a_fresh_one_waits(tmp_path: Path) -> None:
    storage = LocalDropStorage(tmp_path)
    storage.create_layout()
    died, fresh = stage_key("input", "died.csv"), stage_key("input", "fresh.csv")
    storage.create(died, b"a,b\n1,2\n")
    storage.create(fresh, b"a,b\n3,4\n")
    with pytest.raises(RuntimeError, match="killed"):
        claims.claim(DiesMovingIn(tmp_path), died, lease_seconds=claims.LEASE_SECONDS)
    (lease,) = leases(storage)
    storage.replace(lease.key, replace(lease, pid=dead_pid()).to_json())

    actions = reconcile.find_work(storage, datetime.now(UTC))

    assert [(a.kind, a.key, a.marker) for a in actions] == [("trigger", died, f"{lease.run}#2")], (
        actions
    )  # fresh.csv is within its grace: its trigger may be on its way
    assert "attempt 1 died" in actions[0].reason
