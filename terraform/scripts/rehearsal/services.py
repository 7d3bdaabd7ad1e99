"""Talking to the rehearsal's services as the containers do: Prefect's API with the
worker's credential, Postgres with a role's own login, health checks, S3 events.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg2

from churnops.platform import watcher
from terraform.scripts.rehearsal.deployment import WiringError

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class PrefectApi:
    """The Prefect REST API at a URL, with the auth a container's environment gives."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["PREFECT_API_URL"].rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if env.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self.headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def deployment(self, name: str) -> dict[str, Any]:
        flow, _, deployment = name.partition("/")
        quoted = "/".join(urllib.parse.quote(p, safe="") for p in (flow, deployment))
        return self.call("GET", f"/deployments/name/{quoted}")

    def runs_of(self, deployment_id: str, states: tuple[str, ...]) -> list[dict[str, Any]]:
        body = {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": list(states)}}},
            "sort": "EXPECTED_START_TIME_ASC",
        }
        return self.call("POST", "/flow_runs/filter", body)

    def wait_terminal(self, run_id: str, timeout: float) -> dict[str, Any] | None:
        """The flow run once it has ended, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.call("GET", f"/flow_runs/{run_id}")
            if (run.get("state") or {}).get("type") in TERMINAL:
                return run
            time.sleep(1)
        return None


# ---------------------------------------------------------------------------- Postgres
def database_port(url: str) -> int:
    return urlsplit(url).port or 5432


def login_of(url: str) -> str:
    return urlsplit(url).username or "?"


@contextlib.contextmanager
def connect(url: str = "", **login: Any) -> Iterator[Any]:
    """An autocommit connection from a SQLAlchemy or libpq URL, or from libpq keywords;
    a failed login is a WiringError."""
    try:
        conn = psycopg2.connect(
            re.sub(r"^(\w+)\+\w+://", r"\1://", url), connect_timeout=10, **login
        )
    except psycopg2.OperationalError as exc:
        who = login.get("user") or login_of(url)
        database = login.get("dbname") or urlsplit(url).path.lstrip("/")  # the URL has a password
        raise WiringError(f"login {who} to {database} failed: {exc}") from None
    conn.autocommit = True
    with contextlib.closing(conn):
        yield conn


# ---------------------------------------------------------------------------- HTTP
def healthy(url: str, codes: str = "200-399") -> tuple[bool, str]:
    """Whether GET ``url`` answers with a status in ``codes`` (a load balancer matcher)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        return False, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    ranges = [part.strip().partition("-") for part in codes.split(",")]
    return any(int(low) <= status <= int(high or low) for low, _, high in ranges), f"HTTP {status}"


def s3_event(
    bucket: str, key: str, head: dict[str, Any], configuration_id: str, region: str
) -> dict[str, Any]:
    """The record S3 sends for a new object: the local watcher's record (keys URL-encoded,
    space -> '+', '/' kept) with the fields only the real notification has."""
    event = watcher.s3_event(bucket, key, head["ContentLength"], f"{time.time_ns():X}")
    (record,) = event["Records"]
    now = datetime.now(UTC)
    record |= {
        "awsRegion": region,
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "userIdentity": {"principalId": "AWS:REHEARSAL"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "REHEARSAL", "x-amz-id-2": "REHEARSAL"},
    }
    record["s3"]["configurationId"] = configuration_id
    record["s3"]["bucket"]["ownerIdentity"] = {"principalId": "REHEARSAL"}
    record["s3"]["object"]["eTag"] = head["ETag"].strip('"')
    if head.get("VersionId"):
        record["s3"]["object"]["versionId"] = head["VersionId"]
    return event


def notification_for(configs: list[dict[str, Any]], function_arn: str, key: str) -> str:
    """The Id of the bucket notification that sends ``key``'s ObjectCreated:Put to the
    function; a ValueError saying why none does."""
    for config in configs:
        if config.get("LambdaFunctionArn") != function_arn:
            continue
        events = config.get("Events", [])
        if not any(e in ("s3:ObjectCreated:*", "s3:ObjectCreated:Put") for e in events):
            continue
        rules = config.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        if all(_rule_matches(rule, key) for rule in rules):
            return config.get("Id", "")
    raise ValueError(
        f"no notification of the bucket sends ObjectCreated:Put of {key} to {function_arn}"
    )


def _rule_matches(rule: dict[str, str], key: str) -> bool:
    name = rule["Name"].lower()
    return key.startswith(rule["Value"]) if name == "prefix" else key.endswith(rule["Value"])
