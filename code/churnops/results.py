"""What one processed file produced: the values that monitoring hands to the
metrics database and to the alerting step. Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: at run time results imports nothing of ours
    from churnops.monitoring.attribution import AttributionDrift

#: Output columns added to a scored file (and present in the reference data).
PREDICTION = "churn_prediction"
PROBABILITY = "churn_probability"

#: Classification scores measured when a file carries the label.
QUALITY_METRICS = ("f1", "precision", "recall", "accuracy", "roc_auc")
#: Share of the feature columns that drifted (a ``run_metrics.metric`` and an alert key).
DRIFTED_SHARE = "drifted_share"
#: NDCG of the file's feature-attribution order against the reference's (a metric and an
#: alert key, see :mod:`churnops.monitoring.attribution`).
ATTRIBUTION_NDCG = "attribution_ndcg"
#: What a message says for a report stored with no link: one in the local workspace while
#: EVIDENTLY_PORT=0 and no platform runs has no port yet (the next `up` picks one).
NO_REPORT_LINK = "stored, no link (EVIDENTLY_PORT=0: `churnops up` shows it in the Evidently UI)"


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column against the reference (Evidently's per-column test)."""

    column: str
    score: float
    method: str
    threshold: float
    drifted: bool


@dataclass
class MonitoringResult:
    """Drift and quality of one scored file compared with the model's reference."""

    rows: int
    drifted_count: int
    drifted_share: float
    columns: list[ColumnDrift]
    predicted_churn_rate: float
    #: f1, precision, recall, accuracy, roc_auc; empty for an unlabeled file.
    quality: dict[str, float] = field(default_factory=dict)
    report_url: str | None = None
    snapshot_id: str | None = None
    #: Feature-attribution drift; None when not measured (ATTRIBUTION_SAMPLE_ROWS=0).
    attribution: AttributionDrift | None = None
    #: Seconds of the monitor step's parts ("report": Evidently's computation and plots,
    #: "store": the snapshot's save or upload), for the file's log and the benchmark.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def drifted_columns(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    @property
    def report_where(self) -> str:
        """The report's link for a message, or why it has none."""
        return self.report_url or NO_REPORT_LINK
