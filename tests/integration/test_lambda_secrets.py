"""The Lambda's credential from moto's Secrets Manager, and a real Prefect server that
requires the auth string (the fake Prefect API and the handler's fixtures are the unit
tests')."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import ModuleType

import boto3
import pytest

from tests.fixtures.prefect_server import running_prefect_server
from tests.unit.test_lambda_handler import (
    BUCKET,
    DEPLOYMENT,
    FakePrefect,
    basic,
    event,
    handler,
    prefect,
    record,
)

pytestmark = pytest.mark.integration
__all__ = ["handler", "prefect"]  # fixtures, used by name


def test_the_auth_string_comes_from_moto_secrets_manager(
    handler: ModuleType, prefect: FakePrefect, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real boto3 path of the Lambda, against moto's Secrets Manager."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    secret = boto3.client("secretsmanager").create_secret(
        Name=f"churnops-test/prefect-{uuid.uuid4().hex[:8]}", SecretString="churnops:from-moto\n"
    )
    monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ID", secret["ARN"])

    [outcome] = handler.lambda_handler(event(record("data/input/a.csv")), None)["results"]

    assert outcome["status"] == "created"
    assert {r["headers"]["Authorization"] for r in prefect.requests} == {
        basic("churnops:from-moto")
    }


def test_a_prefect_server_that_requires_the_auth_string_takes_the_run(
    handler: ModuleType,
    moto_server: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A real Prefect server started with PREFECT_SERVER_API_AUTH_STRING (as the ECS
    task is) refuses the trigger without the credential and takes the run with the
    one read from (moto's) Secrets Manager."""
    auth_string = f"churnops:{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    secret = boto3.client("secretsmanager").create_secret(
        Name=f"churnops-test/prefect-{uuid.uuid4().hex[:8]}", SecretString=auth_string
    )
    with running_prefect_server(tmp_path, PREFECT_SERVER_API_AUTH_STRING=auth_string) as url:
        _create_deployment(url, auth_string)
        monkeypatch.setenv("PREFECT_API_URL", url)

        with pytest.raises(handler.PrefectUnauthorized):
            handler.lambda_handler(event(record("data/input/a.csv")), None)
        monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ID", secret["ARN"])
        [outcome] = handler.lambda_handler(event(record("data/input/a.csv")), None)["results"]
        run = _get(url, f"/flow_runs/{outcome['flow_run_id']}", auth_string)

    assert outcome["status"] == "created"
    assert run["parameters"] == {"drop": f"s3://{BUCKET}", "key": "data/input/a.csv"}


def _create_deployment(url: str, auth_string: str) -> None:
    """The deployment the trigger runs, made through the REST API with the credential."""
    flow_name, name = DEPLOYMENT.split("/")
    flow = _post(url, "/flows/", {"name": flow_name}, auth_string)
    _post(url, "/deployments/", {"name": name, "flow_id": flow["id"]}, auth_string)


def _post(url: str, path: str, body: dict, auth_string: str) -> dict:
    return _call(url, path, auth_string, json.dumps(body).encode())


def _get(url: str, path: str, auth_string: str) -> dict:
    return _call(url, path, auth_string, None)


def _call(url: str, path: str, auth_string: str, data: bytes | None) -> dict:
    """The test's own set-up calls; a busy server's 5xx is retried, as Prefect's client and
    the trigger retry it (a fresh server under load answers 503 while its database is busy)."""
    headers = {"Authorization": basic(auth_string), "Content-Type": "application/json"}
    for attempt in range(5):
        request = urllib.request.Request(url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == 4:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")
