"""Drift and quality of a scored file against the model's reference, with Evidently 0.7.

One Evidently report per file: a drift test per feature column and on the
prediction column (prediction drift) and, when the file carries the label, F1,
precision, recall, accuracy and ROC AUC. The run is stored as a snapshot in an
Evidently workspace (a local folder, or a remote Evidently UI) and summarised
as a :class:`MonitoringResult`.

Decisions:

* The drifted share counts the **feature columns only**: "most inputs drifted"
  is the data-drift signal the alert is about. Prediction drift is a separate
  signal: the prediction column is in ``MonitoringResult.columns`` with its own
  test and flag, but not in ``drifted_count`` / ``drifted_share``.
* Individual metrics rather than ``DataDriftPreset`` / ``ClassificationPreset``:
  the drift preset computes every column's drift three times (``ValueDrift``,
  ``DriftedColumnsCount`` and its legacy ``DataDriftTable`` widget) and the
  classification preset adds PR tables, curves and per-label metrics; on a
  1M-row file that is ~11 s more. So the report holds one ``ValueDrift`` per
  column, and the drifted count and share are counted from their verdicts.
* Drift is measured on a seeded uniform sample of a big file
  (``DRIFT_SAMPLE_ROWS``, see :mod:`churnops.pipeline.scoring`); row counts, the churn
  rate and the quality scores stored and alerted on are exact over every row
  (``Totals``). A file within the sample size is its own sample: there the
  report's numbers and the stored ones agree.
* What one 1,050-row file's monitor step costs (2-core machine): the report
  0.45 to 0.8 s of CPU, about half of it plotly building each column's two drift
  plots; then the snapshot's upload, which the UI parses. Nothing is computed
  twice: the drifted count reads the ``ValueDrift`` tests, the database gets the
  report's own values. The stored snapshot keeps each plot once and without
  plotly's template (0.95 MB before, 0.26 MB now: :func:`drop_widget_copies`,
  :func:`churnops.monitoring.evidently_ui.without_template`): the upload takes
  half as long. The reference frame is read once per loaded model; Evidently
  recomputes its side of each drift test per report (it cannot take them given).
* Label metrics use the ``churn_prediction`` labels (classification
  ``labels``); ROC AUC uses ``churn_probability`` (classification ``scores``).
  One task with both would make Evidently derive labels from the probability
  at 0.5 and ignore the model's labels.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pandas as pd
import requests
from evidently import BinaryClassification, DataDefinition, Dataset, Report
from evidently._pydantic_compat import parse_obj_as
from evidently.core.report import Snapshot
from evidently.errors import EvidentlyError
from evidently.ui.workspace import RemoteWorkspace, Workspace, WorkspaceBase

from churnops import retry
from churnops.data.schema import TARGET
from churnops.monitoring import evidently_ui
from churnops.monitoring.evidently_ui import FileReport, ensure_dashboard, file_values
from churnops.results import PREDICTION, PROBABILITY, QUALITY_METRICS, ColumnDrift, MonitoringResult
from churnops.settings import MonitoringSettings, PlatformSettings

#: Names of the two classification tasks in the data definition.
LABELS_TASK = "labels"
SCORES_TASK = "scores"

#: Evidently metric type -> key of ``MonitoringResult.quality``.
_QUALITY_TYPES = dict(zip(evidently_ui.QUALITY_TYPES, QUALITY_METRICS, strict=True))
_METRIC_TYPE_PREFIX = "evidently:metric_v2:"


@dataclass(frozen=True)
class Totals:
    """What is counted over every row of a file whose drift is measured on a sample."""

    rows: int
    predicted_churn_rate: float
    #: Exact scores (:func:`churnops.pipeline.scoring.quality_scores`), empty when unlabeled;
    #: None: take the report's (the current data is the whole file).
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
) -> MonitoringResult:
    """Run the report for one scored file, store it in the workspace, return its numbers.

    ``current`` may lack the ``churn`` label: then only drift is measured and
    ``quality`` stays empty. When ``current`` is a sample of a bigger file,
    ``totals`` holds the counts and scores of all its rows: the result carries
    those, and the report's metadata says how many rows its charts show.
    """
    labeled = TARGET in current.columns
    _check_frames(reference, current, feature_columns)
    rows = totals.rows if totals is not None else len(current)
    facts = file_values(rows, attribution_ndcg)
    report = build_report(feature_columns, labeled, facts=list(facts))
    definition = data_definition(feature_columns, labeled)
    metadata = {"file_name": file_name, "model_name": model_name, "model_version": model_version}
    if totals is not None and totals.rows > len(current):
        metadata["sample"] = f"{len(current):,} of {totals.rows:,} rows (seeded, uniform)"
    model_tag = f"{model_name}:v{model_version}"
    started = time.perf_counter()
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition, metadata=facts),
        Dataset.from_pandas(reference, data_definition=definition),
        name=file_name,
        tags=[file_name, model_tag],
        metadata=metadata,
    )
    drop_widget_copies(snapshot)
    seconds = {"report": time.perf_counter() - started}
    totals = totals or Totals(len(current), float(current[PREDICTION].mean()), None)
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
    """Keep each plot once in the snapshot: in the report's page (``widgets``, which the UI
    and the HTML download show), not again in every metric's result, where nothing reads
    it (the dashboard reads the values). Halves what is saved or uploaded per file."""
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
    """Every column typed up front, so Evidently infers nothing (a pass per column saved)."""
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
    """A drift test per feature and on the prediction, quality when labeled, in one
    :class:`FileReport` that opens with the file's summary; ``facts``: the names of the
    current dataset's metadata values it shows (:func:`file_values`; none by default).

    ``include_tests`` gives each ``ValueDrift`` its pass/fail test: Evidently's
    own verdict on the column, read back as ``ColumnDrift.drifted``. Quality
    metrics get no default tests: those compare against a dummy model, an
    extra pass over the data that nothing here uses.
    """
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
    """Evidently's client, with a timeout on every request: its own sends without one, so a
    frozen UI would block a run for as long as it is frozen. The rest is Evidently's
    ``RemoteBase._request``, which takes no timeout to pass on. The timeout is read at
    each request: the workspace is kept for the process (:func:`_target`)."""

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
        with requests.Session() as session:
            response = session.send(request.prepare(), timeout=retry.NETWORK_TIMEOUT_SECONDS)
        if response.status_code >= 400:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = None
            if detail is not None:
                raise EvidentlyError(detail)
        response.raise_for_status()
        return response if response_model is None else parse_obj_as(response_model, response.json())


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
    """The id of the project called ``name``, created on first use."""
    found = workspace.search_project(name)
    project = found[0] if found else workspace.create_project(name, "ChurnOps drift and quality")
    return project.id


#: The Evidently project of the reports: a name, not a choice.
PROJECT = "churnops"
#: (workspace location, project name) -> the opened workspace and the project's id.
_targets: dict[tuple[str, str], tuple[WorkspaceBase, UUID]] = {}
_targets_lock = threading.Lock()
#: (workspace location, project name, model tag) whose dashboard panels exist.
_dashboards: set[tuple[str, str, str]] = set()


def _target(monitoring: MonitoringSettings) -> tuple[tuple[str, str], WorkspaceBase, UUID]:
    """The workspace and project runs go to, opened once per process.

    Opening a local workspace reads every run stored in it (a second or more
    after a few dozen files), so it is not done per file.
    """
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
) -> tuple[str, str]:
    """Add the run to the workspace; return its snapshot id and the UI's URL for it.

    The project's dashboard gets its panels (and one for a new ``model_tag``) once
    per process. A failed add forgets the opened workspace, so the retry opens it
    again (and finds or creates the project, should someone have deleted it).
    """
    key, workspace, project = _target(monitoring)
    try:
        ref = workspace.add_run(project, snapshot)
        if (*key, model_tag) not in _dashboards:
            ensure_dashboard(workspace, project, model_tag)
            _dashboards.add((*key, model_tag))
    except Exception:
        with _targets_lock:
            _targets.pop(key, None)
        raise
    if monitoring.evidently_ui_url:
        return str(ref.id), ref.url
    return str(ref.id), local_report_url(platform, project, ref.id)


def local_report_url(platform: PlatformSettings, project: UUID, snapshot: UUID) -> str:
    """Where ``evidently ui`` serving the local workspace shows the snapshot.

    The UI's route is ``/projects/:projectId/reports/:snapshotId`` (the same
    one ``RemoteWorkspace`` links to).
    """
    return f"http://{platform.platform_host}:{platform.evidently_port}/projects/{project}/reports/{snapshot}"
