"""What a person sees in the Evidently UI: a report that opens with a summary
(:class:`FileReport`, each metric computed once), and the project's dashboard.

The reference-side quality counters are left out: the reference is the training data, so
its scores are in-sample. :class:`DriftedFeatures` and :class:`FileValue` carry ChurnOps'
numbers into Evidently so the dashboard can plot them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evidently.core.container import MetricContainer
from evidently.core.metric_types import (
    CountCalculation,
    CountMetric,
    SingleValueCalculation,
    SingleValueMetric,
)
from evidently.legacy.model.widget import BaseWidgetInfo
from evidently.legacy.renderers.html_widgets import CounterData, counter
from evidently.metrics import Accuracy, F1Score, Precision, Recall, RocAuc, ValueDrift
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric
from evidently.sdk.panels import bar_plot_panel, line_plot_panel
from evidently.ui.workspace import WorkspaceBase

from churnops.results import PREDICTION, QUALITY_METRICS

#: FileValue names (``what``), shown in the summary and plotted on the dashboard.
ROWS = "rows in the file"
ATTRIBUTION_NDCG = "attribution NDCG"
#: Label metrics with their summary names; ROC AUC is computed on the scores task.
_LABEL_METRICS = {"F1": F1Score, "precision": Precision, "recall": Recall, "accuracy": Accuracy}
#: The summary's counter of each score (``churnops.results.QUALITY_METRICS`` order).
SCORE_COUNTERS = [f"{name} on this file" for name in [*_LABEL_METRICS, "ROC AUC"]]
#: The id of a ``ValueDrift`` test, and the status of a failed one (the column drifted).
DRIFT_TEST, FAILED = "drift", "FAIL"


class DriftedFeatures(CountMetric):
    """How many of ``columns`` drifted, and their share, from the report's own tests."""

    columns: list[str]


class DriftedFeaturesCalculation(CountCalculation[DriftedFeatures]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
        drifted = sum(_drifted(context, column) for column in self.metric.columns)
        return self.result(drifted, drifted / len(self.metric.columns)), None

    def display_name(self) -> str:
        return "Drifted features"


def _drifted(context: Any, column: str) -> bool:
    result = context.calculate_metric(ValueDrift(column=column).to_calculation())
    return any(t.id == DRIFT_TEST and t.status.value == FAILED for t in result.tests or [])


class FileValue(SingleValueMetric):
    """A number measured outside the report, named ``what``, read from the current dataset's
    metadata (in the config, each value would be a dashboard series of its own)."""

    what: str


class FileValueCalculation(SingleValueCalculation[FileValue]):
    def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
        return self.result(float(current_data.metadata[self.metric.what])), None

    def display_name(self) -> str:
        return self.metric.what


def file_values(
    rows: int, attribution_ndcg: float | None, quality: dict[str, float] | None = None
) -> dict[str, str]:
    """The current dataset's metadata that the :class:`FileValue` metrics read; ``quality``:
    the scores over every row of a file whose report sees a sample (the summary shows them,
    as the alert and the metrics database do)."""
    values = {ROWS: str(rows)}
    scores = quality or {}
    counters = zip(QUALITY_METRICS, SCORE_COUNTERS, strict=True)
    values |= {counter: repr(scores[m]) for m, counter in counters if m in scores}
    if attribution_ndcg is not None:
        values[ATTRIBUTION_NDCG] = repr(attribution_ndcg)
    return values


class FileReport(MetricContainer):
    """The whole per-file report: summary first, each metric once."""

    features: list[str]
    labeled: bool
    labels_task: str
    scores_task: str
    facts: list[str]  # names of the FileValues (file_values)

    def generate_metrics(self, context: Any) -> Sequence[Any]:
        facts = [FileValue(what=what) for what in self.facts]
        return [*facts, DriftedFeatures(columns=self.features), *self.drift(), *self.quality()]

    def drift(self) -> list[ValueDrift]:
        return [ValueDrift(column=c) for c in [*self.features, PREDICTION]]

    def quality(self) -> list[Any]:
        """No default tests (a dummy model, an extra pass); the confusion matrix on F1."""
        if not self.labeled:
            return []
        return [
            metric(classification_name=self.labels_task, tests=[], conf_matrix=metric is F1Score)
            if metric is not Accuracy
            else metric(classification_name=self.labels_task, tests=[])
            for metric in _LABEL_METRICS.values()
        ] + [RocAuc(classification_name=self.scores_task, tests=[])]

    def render(
        self, context: Any, child_widgets: list[tuple[Any, list[BaseWidgetInfo]]] | None = None
    ) -> list[BaseWidgetInfo]:
        """The summary, each column's drift, then the quality figures without counters."""
        children = child_widgets or []
        drift_ids = {m.metric_id for m in self.drift()}
        quality_ids = {m.metric_id for m in self.quality()}
        widgets = [self.summary(context)]
        widgets += [w for metric_id, ws in children if metric_id in drift_ids for w in ws]
        widgets += [
            w
            for metric_id, ws in children
            if metric_id in quality_ids
            for w in ws
            if w.type != "counter"
        ]
        for widget in widgets:
            without_template(widget)
        return widgets

    def summary(self, context: Any) -> BaseWidgetInfo:
        fact = {w: context.get_metric_result(FileValue(what=w)).value for w in self.facts}
        drifted = context.get_metric_result(DriftedFeatures(columns=self.features))
        share = f"{drifted.count.value:.0f} of {len(self.features)} ({drifted.share.value:.0%})"
        counters = [CounterData(ROWS, f"{fact[ROWS]:,.0f}")] if ROWS in fact else []
        counters.append(CounterData("drifted features", share))
        if self.labeled:
            for name, metric in zip(SCORE_COUNTERS, self.quality(), strict=True):
                score = fact[name] if name in fact else context.get_metric_result(metric).value
                counters.append(CounterData(name, f"{score:.3f}"))
        if ATTRIBUTION_NDCG in fact:
            counters.append(CounterData(ATTRIBUTION_NDCG, f"{fact[ATTRIBUTION_NDCG]:.3f}"))
        return counter(counters=counters, title="Summary")


def without_template(widget: Any) -> None:
    """Drop plotly's default template from every figure of ``widget``: a third of a
    snapshot, parsed on every upload; the UI sets its own."""
    params = getattr(widget, "params", None)  # a widget's; a PlotlyGraphInfo has .layout
    for layout in (
        getattr(widget, "layout", None),
        isinstance(params, dict) and params.get("layout"),
    ):
        if isinstance(layout, dict):
            layout.pop("template", None)
    tabs = [tab.widget for tab in getattr(widget, "tabs", [])]
    for child in [*getattr(widget, "widgets", []), *tabs, *getattr(widget, "additionalGraphs", [])]:
        without_template(child)


# --- the project's dashboard --------------------------------------------------------------
#: Evidently's metric types of the scores, in the order of churnops.results.QUALITY_METRICS.
QUALITY_TYPES = ("F1Score", "Precision", "Recall", "Accuracy", "RocAuc")
OVERVIEW_TAB = "Overview"


def dashboard_panels(model_tags: Sequence[str]) -> list[DashboardPanelPlot]:
    """Drifted share, rows per file, attribution NDCG; quality over time per model version
    (``model_tags``: the ``<model>:v<version>`` tags runs carry)."""

    def metric(name: str, legend: str, **labels: str) -> list[PanelMetric]:
        return [PanelMetric(metric=name, metric_labels=labels, legend=legend)]

    panels = [
        line_plot_panel(
            "Drifted feature share",
            metric("DriftedFeatures", "share", value_type="share"),
            description="Share of the features whose drift test failed, per file",
            size="half",
        ),
        bar_plot_panel("Rows per file", metric("FileValue", "rows", what=ROWS), size="half"),
        line_plot_panel(
            "Attribution NDCG",
            metric("FileValue", "NDCG", what=ATTRIBUTION_NDCG),
            description="1: the model leans on the features in the reference's order",
            size="half",
        ),
    ]
    return panels + [
        line_plot_panel(
            f"Quality scores, {tag}",
            [PanelMetric(metric=m, tags=[tag], legend=m) for m in QUALITY_TYPES],
            description="On each labeled file scored by this model version",
            size="half",
        )
        for tag in sorted(model_tags)
    ]


def ensure_dashboard(workspace: WorkspaceBase, project: Any, model_tag: str) -> None:
    """Add the missing panels (a quality one per new model version); a person's own stay."""
    current = workspace.get_dashboard(project)
    titles = {p.title for p in current.panels}
    tags = {tag for p in current.panels for v in p.values for tag in v.tags}
    tags |= {model_tag} if model_tag else set()
    missing = [p for p in dashboard_panels(sorted(tags)) if p.title not in titles]
    if not missing:
        return
    tab = next((t for t in current.tabs if t.title == OVERVIEW_TAB), None)
    if tab is None:
        tab = DashboardTabModel(title=OVERVIEW_TAB, panels=[])
        current.tabs.insert(0, tab)
    current.panels.extend(missing)
    tab.panels.extend(p.id for p in missing)
    workspace.save_dashboard(project, DashboardModel(tabs=current.tabs, panels=current.panels))
