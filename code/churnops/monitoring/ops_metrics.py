"""Operational metrics for CloudWatch's alarms and the runners' autoscaling: the oldest
file's age in ``input/`` and ``processing/``, failed and queued flow runs. Published only
with ``OPS_METRICS_NAMESPACE`` set (on ECS); a failure is logged, never raised.
"""

from __future__ import annotations

import logging

from churnops.settings import PlatformSettings

log = logging.getLogger(__name__)

OLDEST_INPUT = "OldestInputSeconds"
OLDEST_PROCESSING = "OldestProcessingSeconds"
FAILED_RUNS = "FailedFlowRuns"
QUEUED_RUNS = "QueuedFlowRuns"
UNITS = {
    OLDEST_INPUT: "Seconds",
    OLDEST_PROCESSING: "Seconds",
    FAILED_RUNS: "Count",
    QUEUED_RUNS: "Count",
}


def publish(platform: PlatformSettings, values: dict[str, float]) -> bool:
    """Put ``values`` (metric name -> value) into the namespace; False when off or failed."""
    if not platform.ops_metrics_namespace or not values:
        return False
    import boto3
    from botocore.config import Config

    try:
        client = boto3.client(
            "cloudwatch",
            config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
        )
        client.put_metric_data(
            Namespace=platform.ops_metrics_namespace,
            MetricData=[
                {"MetricName": name, "Value": float(value), "Unit": UNITS.get(name, "None")}
                for name, value in values.items()
            ],
        )
    except Exception as exc:  # no metric is worth a failed run or reconcile
        log.warning("operational metrics %s not published: %s", ", ".join(values), exc)
        return False
    return True
