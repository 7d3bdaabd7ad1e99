"""A password in a configured URL (``MLFLOW_TRACKING_URI=http://user:pw@host``) is used, never
written: not in a run's reason, the CLI's error line or the MLflow health probe's host name."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from churnops import retry
from churnops.cli import _one_line
from churnops.drop.storage import brief
from churnops.model.churn_model import MlflowUnavailable, wait_for_tracking_server
from churnops.platform.services import free_port
from churnops.settings import get_settings

SECRET = "MLsecretPW"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    """An MLflow-like /health on a free loopback port (no login asked, as MLflow's)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_tracking_uri_with_a_login_passes_the_health_check(
    health_server: int, tmp_path: Path
) -> None:
    """urllib took ``user:pw@127.0.0.1`` for the host: a name look-up of the password, and
    every file failed on an MLflow that was up."""
    uri = f"http://mluser:{SECRET}@127.0.0.1:{health_server}"
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=uri)
    wait_for_tracking_server(settings.model)


def test_an_unreachable_tracking_server_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(retry, "DEPENDENCY_WAIT_SECONDS", 0.2)
    uri = f"http://mluser:{SECRET}@127.0.0.1:{free_port('127.0.0.1')}"
    settings = get_settings(churnops_home=tmp_path, mlflow_tracking_uri=uri)
    with pytest.raises(MlflowUnavailable) as raised:
        wait_for_tracking_server(settings.model)
    assert SECRET not in str(raised.value)
    assert "http://mluser:***@127.0.0.1" in str(raised.value)
    assert "Name or service not known" not in str(raised.value)


def test_a_reason_and_an_error_line_hide_a_quoted_urls_password() -> None:
    """MLflow's client quotes the URL it failed on; that text became the run's reason (its
    log, claim, database row, flow run state) and the CLI's error line."""
    exc = RuntimeError(f"API request to http://mluser:{SECRET}@10.0.0.5:5000/api/2.0 failed")
    for line in (brief(exc), _one_line(exc)):
        assert SECRET not in line
        assert "http://mluser:***@10.0.0.5:5000/api/2.0" in line
    assert brief(RuntimeError("s3://bucket/data/input/a.csv")).endswith(
        "s3://bucket/data/input/a.csv"
    )
