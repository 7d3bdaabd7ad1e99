"""terraform/scripts/post_apply.py against a stub Prefect API on loopback."""

from __future__ import annotations

import base64
import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .conftest import TERRAFORM_DIR

spec = importlib.util.spec_from_file_location(
    "churnops_post_apply", TERRAFORM_DIR / "scripts" / "post_apply.py"
)
post_apply = importlib.util.module_from_spec(spec)
spec.loader.exec_module(post_apply)

OUTPUTS = {
    "aws_region": {"value": "eu-west-1"},
    "bucket_name": {"value": "churnops-stg-drop-1"},
    "alerts_topic_arn": {"value": "arn:aws:sns:eu-west-1:1:churnops-stg-alerts"},
    "mlflow_url": {"value": "http://lb:5000"},
    "prefect_api_url": {"value": "http://lb:4200/api"},
    "prefect_ui_url": {"value": "http://lb:4200"},
    "evidently_url": {"value": "http://lb:8000"},
    "grafana_url": {"value": "http://lb:3000"},
    "ui_urls": {"value": {"mlflow": "http://lb:5000", "grafana": "http://lb:3000"}},
    "internal_urls": {
        "value": {"mlflow": "http://mlflow.x:5000", "evidently": "http://evidently.x:8000"}
    },
    "lambda_function_name": {"value": "churnops-stg-s3-to-prefect"},
    "ecs_cluster_name": {"value": "churnops-stg"},
    "ecs_service_names": {"value": {"worker": "worker"}},
    "database_url_secret_arn": {"value": "arn:aws:secretsmanager:eu-west-1:1:secret:x"},
    "prefect_work_pool": {"value": "churnops-ecs"},
}


class StubPrefect(BaseHTTPRequestHandler):
    pools: set = set()
    variables: dict = {}
    auth: list = []

    def _reply(self, status: int, body: object = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def do_POST(self) -> None:
        self.auth.append(self.headers.get("Authorization"))
        body = self._body()
        if self.path == "/api/work_pools/":
            if body["name"] in self.pools:
                return self._reply(409)
            self.pools.add(body["name"])
            return self._reply(201, body)
        if self.path == "/api/variables/":
            self.variables[body["name"]] = body["value"]
            return self._reply(201, body)
        return self._reply(404)

    def do_PATCH(self) -> None:
        name = self.path.removeprefix("/api/variables/name/")
        body = self._body()
        if name not in self.variables:
            return self._reply(404)
        self.variables[name] = body["value"]
        return self._reply(204)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stub_prefect():
    StubPrefect.pools, StubPrefect.variables, StubPrefect.auth = set(), {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubPrefect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def write_outputs(tmp_path: Path) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(OUTPUTS))
    return path


def test_env_file_has_the_settings_and_no_secret(tmp_path: Path, capsys) -> None:
    env_file = tmp_path / ".env"
    post_apply.main(["env", str(write_outputs(tmp_path)), "--env-file", str(env_file)])
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert values["DROP_STORAGE"] == "s3"
    assert values["PREFECT_API_URL"] == "http://lb:4200/api"
    assert values["ALERTS_TOPIC_ARN"].endswith(":churnops-stg-alerts")
    assert "DATABASE_URL" not in values
    assert "http://lb:5000" in capsys.readouterr().out


def test_the_work_pool_is_created_idempotently(
    tmp_path: Path, stub_prefect: str, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", stub_prefect)
    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret-value")
    outputs = str(write_outputs(tmp_path))
    post_apply.main(["prefect", outputs])
    post_apply.main(["prefect", outputs])
    assert StubPrefect.pools == {"churnops-ecs"}
    assert StubPrefect.variables == {}  # the flow's settings live in its task definition
    expected = "Basic " + base64.b64encode(b"admin:s3cret-value").decode()
    assert set(StubPrefect.auth) == {expected}
    printed = capsys.readouterr()
    assert "s3cret-value" not in printed.out + printed.err
