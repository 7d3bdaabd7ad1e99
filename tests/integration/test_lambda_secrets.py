"""The Lambda's credential from moto's Secrets Manager, and a real Prefect server that
requires the auth string (the fake Prefect API and the handler's fixtures are the unit
tests')."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

from tests.fixtures.prefect_server import running_prefect_server
from tests.unit.test_lambda_handler import (
    BUCKET,
    DEPLOYMENT,
    FakePrefect,
    basic,
    handler,
    prefect,
    record,
)

__all__ = ["handler", "prefect"]  # fixtures, used by name
#: The S3 event of one dropped file.
A_DROP = {"Records": [record("data/input/a.csv")]}


def test_the_auth_string_comes_from_moto_secrets_manager(
    handler: ModuleType, prefect: FakePrefect, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real boto3 path of the Lambda, against moto's Secrets Manager."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    secret = boto3.client("secretsmanager").create_secret(
        Name=f"churnops-test/prefect-{uuid.uuid4().hex[:8]}", SecretString="churnops:from-moto\n"
    )
    monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ID", secret["ARN"])

    [outcome] = handler.lambda_handler(A_DROP, None)["results"]

    assert outcome["status"] == "created"
    assert {r["headers"]["Authorization"] for r in prefect.requests} == {
        basic("churnops:from-moto")
    }


def test_a_prefect_server_that_requires_the_auth_string_takes_the_run(
    handler: ModuleType, moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
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
        authorized = {PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth_string}
        with temporary_settings(updates=authorized), get_client(sync_client=True) as client:
            flow_name, name = DEPLOYMENT.split("/")
            client.create_deployment(flow_id=client.create_flow_from_name(flow_name), name=name)
        monkeypatch.setenv("PREFECT_API_URL", url)

        with pytest.raises(handler.PrefectUnauthorized):
            handler.lambda_handler(A_DROP, None)
        monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ID", secret["ARN"])
        [outcome] = handler.lambda_handler(A_DROP, None)["results"]
        with temporary_settings(updates=authorized), get_client(sync_client=True) as client:
            run = client.read_flow_run(outcome["flow_run_id"])

    assert outcome["status"] == "created"
    assert run.parameters == {"drop": f"s3://{BUCKET}", "key": "data/input/a.csv"}
