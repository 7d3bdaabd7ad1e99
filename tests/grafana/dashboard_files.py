"""Where the Grafana image's files live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "code" / "grafana"
DOCKERFILE = GRAFANA / "Dockerfile"
DASHBOARD_JSON = GRAFANA / "dashboards" / "churn_model_evaluation.json"
DATASOURCES_YAML = GRAFANA / "provisioning" / "datasources" / "metrics.yaml"
PROVIDERS_YAML = GRAFANA / "provisioning" / "dashboards" / "churnops.yaml"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load(DATASOURCES_YAML.read_text())["datasources"]
    return source


def panel_sql(panel: dict[str, Any], ref_id: str = "A") -> str:
    """The SQL of one of the panel's queries (A: the data; B: a stat's threshold)."""
    (query,) = [t for t in panel["targets"] if t["refId"] == ref_id]
    return query["rawSql"]
