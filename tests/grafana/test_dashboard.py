"""The dashboard JSON, its provisioning and the image agree with each other and with terraform
(hadolint checks the image's Dockerfile with the others: tests/terraform/test_workflows.py)."""

from __future__ import annotations

import re

import yaml

from churnops.model.registry import GATE_MIN_ROC_AUC
from churnops.results import QUALITY_METRICS
from churnops.settings import MonitoringSettings

from .grafana_macros import (
    DATASOURCES_YAML,
    DOCKERFILE,
    PROVIDERS_YAML,
    REPO,
    dashboard,
    datasource,
    panel_sql,
)

#: Dashboard JSON schema version of the pinned Grafana 12.0 image.
SCHEMA_VERSION = 41


def test_schema_version_title_and_image_pin() -> None:
    board = dashboard()
    assert board["schemaVersion"] == SCHEMA_VERSION
    assert board["title"] == "Customer Churn Model Evaluation"
    pinned = r"^FROM grafana/grafana:12\.0\.\d+@sha256:[0-9a-f]{64}$"  # a tag and its digest
    assert re.search(pinned, DOCKERFILE.read_text(), re.M)


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


def test_every_query_uses_the_provisioned_data_source() -> None:
    source = datasource()
    board = dashboard()
    refs = [v["datasource"] for v in board["templating"]["list"]]
    for panel in board["panels"]:
        refs += [panel["datasource"], *(t["datasource"] for t in panel["targets"])]
    assert {(r["type"], r["uid"]) for r in refs} == {(source["type"], source["uid"])}


def test_panels_cover_the_issue() -> None:
    panels = dashboard()["panels"]
    stats = [p for p in panels if p["type"] == "stat"]
    assert [p["title"] for p in stats] == [
        "Latest F1",
        "Latest Precision",
        "Latest Recall",
        "Latest Accuracy",
        "Latest ROC AUC",
    ]
    assert {p["title"] for p in panels if p["type"] == "timeseries"} == {
        "Scores over time",
        "Drifted columns",
        "Drift score per column",
        "Feature attribution (mean |SHAP|)",
        "Rows processed and files errored",
        "Realized scores (late labels)",
    }
    tables = {p["title"]: p for p in panels if p["type"] == "table"}
    assert set(tables) == {"Latest runs", "Model versions (retraining)"}
    table = tables["Latest runs"]
    links = [
        prop["value"]
        for override in table["fieldConfig"]["overrides"]
        if override["matcher"]["options"] == "report"
        for prop in override["properties"]
        if prop["id"] == "links"
    ]
    assert links == [[{"title": "Evidently report", "url": "${__value.raw}", "targetBlank": True}]]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["model_version", "file"]
    # Versions in numeric order (1, 2, 10, not 1, 10, 2): Grafana's sort 3; files by name.
    assert (variables["model_version"]["sort"], variables["file"]["sort"]) == (3, 1)


def test_alert_thresholds_are_read_from_each_run_with_the_defaults_as_fallback() -> None:
    defaults = MonitoringSettings.model_construct()
    expected = [defaults.score_minimums[m] for m in QUALITY_METRICS if m != "roc_auc"]
    expected.append(GATE_MIN_ROC_AUC)
    stats = [p for p in dashboard()["panels"] if p["type"] == "stat"]
    fallback = [p["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] for p in stats]
    assert fallback == expected
    for stat in stats:
        (config,) = stat["transformations"]
        assert config["id"] == "configFromData"
        assert "m.threshold" in panel_sql(stat, config["options"]["configRefId"])
    panels = {p["title"]: p for p in dashboard()["panels"]}
    assert "avg(m.threshold)" in panel_sql(panels["Drifted columns"])
    assert "min(m.threshold)" in panel_sql(panels["Scores over time"])


def test_a_stat_just_below_its_minimum_does_not_show_the_minimum() -> None:
    """The stat turns red below the threshold; its text must not read as the threshold
    itself (F1 0.6996 against 0.7 printed "70.0%" in red at 1 decimal)."""
    for stat in (p for p in dashboard()["panels"] if p["type"] == "stat"):
        defaults = stat["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit", stat["title"]
        minimum = defaults["thresholds"]["steps"][1]["value"]
        shown = [f"{100 * v:.{defaults['decimals']}f}" for v in (minimum - 0.0004, minimum)]
        assert shown[0] != shown[1], (stat["title"], shown)


def test_datasource_settings_come_from_what_terraform_passes() -> None:
    text = DATASOURCES_YAML.read_text()
    used = set(re.findall(r"\$\{?([A-Z_]+)\}?", text.split("apiVersion", 1)[1]))
    assert used == {
        "METRICS_DB_HOST",
        "METRICS_DB_NAME",
        "METRICS_DB_USER",
        "METRICS_DB_PASSWORD",
        "METRICS_DB_SSLMODE",
    }
    services = (REPO / "terraform" / "services.tf").read_text()
    grafana = services[
        services.index("grafana = {") : services.index("# ---", services.index("grafana = {"))
    ]
    main_env = grafana.partition("init = {")[0]
    passed = set(re.findall(r"^\s+([A-Z_]+)\s+=", main_env, re.M))
    baked = set(re.findall(r"^(?:ENV\s+)?\s*([A-Z_]+)=", DOCKERFILE.read_text(), re.M))
    assert used <= passed | baked, (
        f"not passed by terraform nor set in the image: {used - passed - baked}"
    )
    assert "METRICS_DB_SSLMODE" in baked


def test_dashboards_are_loaded_from_where_the_image_puts_them() -> None:
    (provider,) = yaml.safe_load(PROVIDERS_YAML.read_text())["providers"]
    path = provider["options"]["path"]
    copies = re.findall(r"^COPY (\S+) (\S+)$", DOCKERFILE.read_text(), re.M)
    assert ("dashboards/", f"{path}/") in copies
    assert ("provisioning/datasources/", "/etc/grafana/provisioning/datasources/") in copies
    assert ("provisioning/dashboards/", "/etc/grafana/provisioning/dashboards/") in copies
