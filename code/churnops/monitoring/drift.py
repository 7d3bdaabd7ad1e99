"""Drift and quality of a scored file against the model's reference, with Evidently 0.7:
one report per file, stored in a workspace (a folder or a remote UI) and summarised as a
:class:`MonitoringResult`.

- The drifted share counts feature columns only; prediction drift is its own flag.
- One ``ValueDrift`` per column, not the presets: they compute each column's drift three
  times and add tables nothing reads (about 11 s more on 1M rows).
- Drift is measured on a seeded sample of a big file; rows, churn rate and scores are
  exact over every row (:class:`Totals`).
- Labels come from the ``labels`` task, ROC AUC from ``scores``: one task with both would
  make Evidently derive labels at 0.5 and ignore the model's threshold.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pandas as pd
import requests
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently._pydantic_compat import parse_obj_as
from evidently.core.report import Snapshot
from evidently.errors import EvidentlyError
from evidently.ui.workspace import RemoteWorkspace, Workspace, WorkspaceBase
from urllib3.exceptions import ConnectTimeoutError

from churnops import retry
from churnops.data.schema import TARGET
from churnops.monitoring import evidently_ui
from churnops.monitoring.evidently_ui import FileReport, ensure_dashboard, file_values
from churnops.results import PREDICTION, PROBABILITY, QUALITY_METRICS, ColumnDrift, MonitoringResult
from churnops.settings import MonitoringSettings, PlatformSettings

LABELS_TASK = "labels"
SCORES_TASK = "scores"

#: Evidently metric type -> key of ``MonitoringResult.quality``.
_QUALITY_TYPES = dict(zip(evidently_ui.QUALITY_TYPES, QUALITY_METRICS, strict=True))
_METRIC_TYPE_PREFIX = "evidently:metric_v2:"


@dataclass(frozen=True)
class Totals:
    """What is counted over every row of a file whose drift is measured on a sample;
    ``quality`` None: take the report's (the sample is the whole file)."""

    rows: int
    predicted_churn_rate: float
    quality: dict[str, float] | None


def run_monitoring(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    feature_columns: list[str],
    monitoring: MonitoringSettings,
    platform: PlatformSettings,
    file_name: str,
    model_version: str,
    model_name: str,
    totals: Totals | None = None,
    attribution_ndcg: float | None = None,
    run: str = "",
) -> MonitoringResult:
    """Run the report for one scored file, store it, return its numbers. Without the label
    only drift is measured; ``totals``: a sample's whole file; ``run``: the drop's run, in
    the report's metadata (:func:`reports_of`)."""
    labeled = TARGET in current.columns
    _check_frames(reference, current, feature_columns)
    totals = totals or Totals(len(current), float(current[PREDICTION].mean()), None)
    facts = file_values(totals.rows, attribution_ndcg, totals.quality)
    report = build_report(feature_columns, labeled, facts=list(facts))
    definition = data_definition(feature_columns, labeled)
    metadata = {"file_name": file_name, "model_name": model_name, "model_version": model_version}
    metadata |= {RUN_KEY: run} if run else {}
    if totals.rows > len(current):
        metadata["sample"] = f"{len(current):,} of {totals.rows:,} rows (seeded, uniform)"
    model_tag = f"{model_name}:v{model_version}"
    started = time.perf_counter()
    # Now in UTC without a zone: Evidently stores and compares naive times and stamps a
    # report with the local clock by default, so under TZ=America/New_York its reports were
    # five hours off every other time ChurnOps shows (all UTC).
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition, metadata=facts),
        Dataset.from_pandas(reference, data_definition=definition),
        name=file_name,
        tags=[file_name, model_tag],
        metadata=metadata,
        timestamp=datetime.now(UTC).replace(tzinfo=None),
    )
    drop_widget_copies(snapshot)
    seconds = {"report": time.perf_counter() - started}
    result = extract_result(
        snapshot.dict(),
        feature_columns,
        rows=totals.rows,
        predicted_churn_rate=totals.predicted_churn_rate,
    )
    if totals.quality is not None:
        result.quality = dict(totals.quality)
    started = time.perf_counter()
    result.snapshot_id, result.report_url = publish(snapshot, monitoring, platform, model_tag)
    result.seconds = seconds | {"store": time.perf_counter() - started}
    return result


def drop_widget_copies(snapshot: Snapshot) -> None:
    """Keep each plot once, in the report's page, not again in each metric's result where
    nothing reads it: halves each upload."""
    for result in snapshot.metric_results.values():
        result.widget = None


def _check_frames(reference: pd.DataFrame, current: pd.DataFrame, features: list[str]) -> None:
    """Fail early, naming what is missing, instead of deep inside Evidently."""
    if not features:
        raise ValueError("feature_columns is empty: nothing to monitor")
    needed = [*features, PREDICTION, PROBABILITY]
    for name, frame, columns in (
        ("reference", reference, [*needed, TARGET]),
        ("current", current, needed),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} data lacks column(s): {', '.join(missing)}")
        if frame.empty:
            raise ValueError(f"{name} data has no rows")


def data_definition(feature_columns: list[str], labeled: bool) -> DataDefinition:
    """Every column typed up front, so Evidently infers nothing."""
    classification = [
        BinaryClassification(name=LABELS_TASK, target=TARGET, prediction_labels=PREDICTION),
        BinaryClassification(name=SCORES_TASK, target=TARGET, prediction_probas=PROBABILITY),
    ]
    return DataDefinition(
        numerical_columns=[*feature_columns, PROBABILITY],
        categorical_columns=[PREDICTION, TARGET] if labeled else [PREDICTION],
        text_columns=[],
        datetime_columns=[],
        unknown_columns=[],
        list_columns=[],
        classification=classification if labeled else None,
    )


def build_report(
    feature_columns: list[str], labeled: bool, *, facts: list[str] | None = None
) -> Report:
    """One :class:`FileReport`; ``include_tests`` gives each ``ValueDrift`` the verdict
    read back as ``ColumnDrift.drifted``; ``facts``: see :func:`file_values`."""
    content = FileReport(
        features=feature_columns,
        labeled=labeled,
        labels_task=LABELS_TASK,
        scores_task=SCORES_TASK,
        facts=facts or [],
    )
    return Report([content], include_tests=True)


def extract_result(
    report: dict[str, Any], feature_columns: list[str], *, rows: int, predicted_churn_rate: float
) -> MonitoringResult:
    """Turn ``Snapshot.dict()`` (metrics with their configs, tests) into a result."""
    drifted_by_metric = {
        test["metric_config"]["metric_id"]: test["status"] == evidently_ui.FAILED
        for test in report["tests"]
        if test["id"] == evidently_ui.DRIFT_TEST
    }
    columns: dict[str, ColumnDrift] = {}
    quality: dict[str, float] = {}
    for metric in report["metrics"]:
        config, value = metric["config"], metric["value"]
        kind = config["type"].removeprefix(_METRIC_TYPE_PREFIX)
        if kind == "ValueDrift":
            columns[config["column"]] = ColumnDrift(
                column=config["column"],
                score=float(value),
                method=config["method"],
                threshold=float(config["threshold"]),
                drifted=drifted_by_metric[metric["id"]],
            )
        elif kind in _QUALITY_TYPES and not math.isnan(value):
            quality[_QUALITY_TYPES[kind]] = float(value)
    missing = [c for c in [*feature_columns, PREDICTION] if c not in columns]
    if missing:
        raise ValueError(f"the report has no drift result for column(s): {', '.join(missing)}")
    drifted = sum(columns[c].drifted for c in feature_columns)
    return MonitoringResult(
        rows=rows,
        drifted_count=drifted,
        drifted_share=drifted / len(feature_columns),
        columns=[columns[c] for c in [*feature_columns, PREDICTION]],
        predicted_churn_rate=predicted_churn_rate,
        quality=quality,
    )


class _BoundedRemoteWorkspace(RemoteWorkspace):
    """Evidently's ``RemoteBase._request`` with a timeout (it sends without one, so a frozen
    UI would block a run as long as it is frozen)."""

    def _request(  # type: ignore[override]
        self,
        path: str,
        method: str,
        query_params: dict | None = None,
        body: dict | None = None,
        response_model: Any = None,
        cookies: Any = None,
        headers: dict[str, str] | None = None,
        form_data: bool = False,
    ) -> Any:
        request = self._prepare_request(
            path, method, query_params, body, cookies, headers, form_data=form_data
        )
        with requests.Session() as session:  # a UI restarting (under `up`) is waited for
            response = retry.call(_not_connected)(
                session.send, request.prepare(), timeout=retry.NETWORK_TIMEOUT_SECONDS
            )
        if response.status_code >= 400:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = None
            if detail is not None:
                raise EvidentlyError(detail)
        response.raise_for_status()
        return response if response_model is None else parse_obj_as(response_model, response.json())

    def run_metadata(self, project_id: Any) -> dict[str, dict[str, Any]]:
        """Snapshot id -> metadata of every report of the project (Evidently's client
        lists no metadata; the UI's own listing does)."""
        listed = self._request(f"/api/projects/{project_id}/snapshots", "GET").json()
        return {str(s["id"]): s.get("metadata") or {} for s in listed}

    def delete_run(self, project_id: Any, snapshot_id: Any) -> None:
        """The UI's own delete (Evidently's client raises NotImplementedError here, so a
        failed attempt's report stayed beside its re-drive's: one file, two points)."""
        self._request(f"/api/projects/{project_id}/{snapshot_id}", "DELETE")


def _not_connected(exc: BaseException) -> bool:
    """Refused, or no connection in time: nothing was sent, so a retry stores nothing twice."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def open_workspace(monitoring: MonitoringSettings) -> WorkspaceBase:
    """The remote Evidently UI when configured, else the local workspace folder."""
    if monitoring.evidently_ui_url:
        secret = monitoring.evidently_secret
        return _BoundedRemoteWorkspace(
            monitoring.evidently_ui_url, secret and secret.get_secret_value()
        )
    monitoring.evidently_workspace_dir.mkdir(parents=True, exist_ok=True)
    return Workspace(str(monitoring.evidently_workspace_dir))


def project_id(workspace: WorkspaceBase, name: str) -> UUID:
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, "ChurnOps drift and quality")
    return project.id


#: The Evidently project of the reports: a name, not a choice.
PROJECT = "churnops"
#: (workspace location, project name) -> the opened workspace and the project's id.
_targets: dict[tuple[str, str], tuple[WorkspaceBase, UUID]] = {}
_targets_lock = threading.Lock()
#: (project id, model tag) whose dashboard panels exist: by id, so a project made again
#: (its workspace lost, the UI restarted) gets its panels again.
_dashboards: set[tuple[UUID, str]] = set()


def _target(monitoring: MonitoringSettings) -> tuple[tuple[str, str], WorkspaceBase, UUID]:
    """The workspace and project, opened once per process (a local one reads every run)."""
    where = monitoring.evidently_ui_url or str(monitoring.evidently_workspace_dir)
    key = (where, PROJECT)
    with _targets_lock:
        if key not in _targets:
            workspace = open_workspace(monitoring)
            _targets[key] = (workspace, project_id(workspace, PROJECT))
        return (key, *_targets[key])


def publish(
    snapshot: Snapshot,
    monitoring: MonitoringSettings,
    platform: PlatformSettings,
    model_tag: str = "",
) -> tuple[str, str | None]:
    """Add the run; return its snapshot id and URL. The dashboard gets its panels once per
    process and model tag. A failed add forgets the workspace: the retry opens it again."""
    key, workspace, project = _target(monitoring)
    try:
        ref = workspace.add_run(project, snapshot)
        if (project, model_tag) not in _dashboards:
            ensure_dashboard(workspace, project, model_tag)
            _dashboards.add((project, model_tag))
    except Exception:
        with _targets_lock:
            _targets.pop(key, None)
        raise
    if monitoring.evidently_ui_url:
        return str(ref.id), ref.url
    return str(ref.id), local_report_url(platform, project, ref.id)


def withdraw(monitoring: MonitoringSettings, snapshot_id: str) -> None:
    """Delete a stored report whose attempt failed afterwards: its re-drive stores the file's
    report again, and one file is one report (and one dashboard point)."""
    _, workspace, project = _target(monitoring)
    workspace.delete_run(project, snapshot_id)


#: The report metadata naming the drop's run (``<drop time>-<hash>``).
RUN_KEY = "run"


def reports_of(monitoring: MonitoringSettings, run: str, since: datetime) -> list[str]:
    """The ids of the stored reports of ``run``, which began at ``since``: read on a re-drive
    only. A local workspace reads a report to see its metadata (3.5 ms each), so only those
    stored after ``since`` less a day (clocks differ) are read: the rest are older."""
    _, workspace, project = _target(monitoring)
    if isinstance(workspace, _BoundedRemoteWorkspace):
        stored = workspace.run_metadata(project)
    else:
        after = (since - timedelta(days=1)).timestamp()
        ids = [i for i in workspace.list_runs(project) if _stored_at(i) >= after]
        stored = {str(i): getattr(workspace.get_run(project, i), "metadata", {}) for i in ids}
    return [snapshot for snapshot, metadata in stored.items() if metadata.get(RUN_KEY) == run]


def _stored_at(snapshot_id: UUID | str) -> float:
    """When a report was stored, from its id: Evidently's ids are UUIDv7, whose first 48
    bits are the Unix time in ms; another kind of id: +inf (read it, to be sure)."""
    uid = UUID(str(snapshot_id))
    return int.from_bytes(uid.bytes[:6]) / 1000 if uid.version == 7 else math.inf


def local_report_url(platform: PlatformSettings, project: UUID, snapshot: UUID) -> str | None:
    """Where ``evidently ui`` serving the local workspace shows the snapshot; None when
    EVIDENTLY_PORT is 0 (a free one): no UI runs (``up`` gives its runners the UI's URL),
    and the next ``up`` takes the last one's port only while it is free. A link to port 0
    went to the alert, the file's log and the metrics database (found by a hunt)."""
    if platform.evidently_port == 0:
        return None
    return f"http://{platform.platform_host}:{platform.evidently_port}/projects/{project}/reports/{snapshot}"
