"""Expand a panel's SQL as Grafana does before it reaches Postgres, in Grafana's order:
template variables (a multi-value or "All" one becomes a quoted list), the backend's
``$__interval``, then the Postgres macros of ``macros.go`` that the dashboard uses
(``$__timeFilter``, ``$__timeGroupAlias``) with the same text. Anything not modelled
raises :class:`UnknownMacro` rather than send half-expanded SQL. And where the Grafana
image's files live.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "code" / "grafana"
DOCKERFILE = GRAFANA / "Dockerfile"
DASHBOARD_JSON = GRAFANA / "dashboards" / "churn_model_evaluation.json"
DATASOURCES_YAML = GRAFANA / "provisioning" / "datasources" / "metrics.yaml"
PROVIDERS_YAML = GRAFANA / "provisioning" / "dashboards" / "churnops.yaml"

#: The value Grafana stores for the "All" option.
ALL = "$__all"

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class UnknownMacro(ValueError):
    """The SQL uses something this expander (and so the test) does not model."""


@dataclass
class Query:
    """The request context Grafana gives a query: time range, interval, variables."""

    time_from: datetime
    time_to: datetime
    interval: timedelta = timedelta(minutes=1)
    #: variable name -> selected values (``[ALL]`` for "All")
    selected: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: variable name -> every option (what "All" stands for)
    options: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for stamp in (self.time_from, self.time_to):
            if stamp.tzinfo is None:
                raise ValueError(f"naive time range bound {stamp!r}")


def expand(sql: str, query: Query) -> str:
    """The SQL text Postgres receives for ``sql`` under ``query``."""
    sql = _VARIABLE.sub(lambda m: _variable(m, query), sql)
    sql = sql.replace("$__interval", _format_interval(query.interval))
    sql = _MACRO.sub(lambda m: _macro(m[1], [a.strip() for a in m[2].split(",")], query), sql)
    leftover = re.findall(r"\$\{?\w+", sql)
    if leftover:
        raise UnknownMacro(f"left unexpanded: {', '.join(leftover)}")
    return sql


def _variable(match: re.Match[str], query: Query) -> str:
    name = match.group(1) or match.group(2) or match.group(4)
    fmt = match.group(3) or match.group(6)
    if match.group(5):
        raise UnknownMacro(f"variable field access is not modelled: {match.group(0)}")
    if name.startswith("__"):
        return match.group(0)  # a Grafana built-in: left for the backend passes
    if name not in query.selected:
        raise UnknownMacro(f"unknown template variable ${name}")
    values = list(query.selected[name])
    if values == [ALL]:
        values = list(query.options[name])
    if fmt not in (None, "sqlstring"):
        raise UnknownMacro(f"variable format {fmt!r} of ${name} is not modelled")
    # The SQL data sources quote multi-value and "All" variables by default (quoteLiteral:
    # ' doubled); the sqlstring format also writes " as \" (scenes' formatRegistry), and
    # Postgres keeps that backslash.
    escapes = {"'": "''", '"': '\\"'} if fmt == "sqlstring" else {"'": "''"}
    return ",".join(f"'{v.translate(str.maketrans(escapes))}'" for v in values)


def _format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit in ("y", "d", "h", "m", "s", "ms"):  # not weeks
        size = round(_UNIT_SECONDS[unit] * 1000)
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def _rfc3339(stamp: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: no trailing zeros in the fraction, ``Z``."""
    text = stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def _seconds(interval: str) -> float:
    match = _INTERVAL.match(interval.strip("'"))
    if not match:
        raise UnknownMacro(f"cannot parse interval {interval!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _go_number(value: float) -> str:
    """fmt %v of a float64: no trailing .0."""
    return f"{value:g}" if value != int(value) else str(int(value))


def _macro(name: str, args: list[str], query: Query) -> str:
    column = args[0]
    if name in ("__timeFilter", "__timeGroupAlias") and not column:
        raise UnknownMacro(f"missing time column argument for macro ${name}")
    match name:
        case "__timeFilter":
            start, end = _rfc3339(query.time_from), _rfc3339(query.time_to)
            return f"{column} BETWEEN '{start}' AND '{end}'"
        case "__timeGroupAlias":
            if len(args) != 2:
                raise UnknownMacro(f"${name} needs (column, interval); fill values not modelled")
            step = _go_number(_seconds(args[1]))
            return f'floor(extract(epoch from {column})/{step})*{step} AS "time"'
        case _:
            raise UnknownMacro(f"unknown macro ${name}")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def datasource() -> dict[str, Any]:
    (source,) = yaml.safe_load(DATASOURCES_YAML.read_text())["datasources"]
    return source


def panel_sql(panel: dict[str, Any], ref_id: str = "A") -> str:
    """The SQL of one of the panel's queries (A: the data; B: a stat's threshold)."""
    (query,) = [t for t in panel["targets"] if t["refId"] == ref_id]
    return query["rawSql"]
