"""The S3 -> Prefect Lambda handler against a fake Prefect API over real HTTP, and its
credential from a fake Secrets Manager (real ones: tests/integration/test_lambda_secrets.py)."""

from __future__ import annotations

import ast
import base64
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from churnops.drop import trigger
from churnops.drop.keys import encode_event_key
from churnops.platform.services import free_port
from tests.processes import LOOPBACK, http_server, run_python

HANDLER_FILE = Path(__file__).parents[2] / "code" / "s3_to_prefect_lambda" / "lambda_function.py"
DEPLOYMENT = "churn_prediction_pipeline/churnops"
BUCKET = "churnops-drop"
CLIENT_TIMEOUT = 0.5


# --- a fake Prefect API -------------------------------------------------------------------
@dataclass
class FakePrefect:
    """Just enough of the Prefect 3 REST API: deployment by name, create_flow_run."""

    deployment_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    requests: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    failures: list[int] = field(default_factory=list)  # statuses of the next answers
    stalls: int = 0  # next requests answered after the client's timeout
    late: int = 0  # next requests carried out, but answered after the client's timeout
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, headers: dict, body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
            if self.stalls:
                self.stalls -= 1
                return -1, None
            if self.failures:
                status = self.failures.pop(0)
                return status, {"detail": f"injected {status}"}
            status, payload = self._route(method, path, body)
            if self.late:
                self.late -= 1
                return -1, None
            return status, payload

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if not path.startswith("/api/"):
            return 200, b"<html>UI</html>"  # the UI's page, not its API
        if method == "GET" and path == f"/api/deployments/name/{DEPLOYMENT}":
            return 200, {"id": self.deployment_id, "name": "churnops"}
        if method == "POST" and path == f"/api/deployments/{self.deployment_id}/create_flow_run":
            created = body["idempotency_key"] not in self.runs
            run = self.runs.setdefault(body["idempotency_key"], {"id": str(uuid.uuid4()), **body})
            return (201 if created else 200), run
        return 404, {"detail": "Not Found"}

    def sent(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]

    def authorizations(self) -> list[str | None]:
        return [r["headers"].get("Authorization") for r in self.requests]


class Handler(BaseHTTPRequestHandler):
    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        status, payload = self.server.fake.answer(  # type: ignore[attr-defined]
            self.command, self.path, dict(self.headers), body
        )
        if status < 0:
            time.sleep(CLIENT_TIMEOUT * 3)
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the fake records its requests itself."""


@pytest.fixture
def prefect() -> Iterator[FakePrefect]:
    fake = FakePrefect()
    with http_server(Handler) as server:
        server.fake = fake  # type: ignore[attr-defined]
        server.handle_error = lambda request, address: None  # stalled clients hang up
        fake.url = f"http://{LOOPBACK}:{server.server_port}/api"
        yield fake


@pytest.fixture(autouse=True)
def handler(monkeypatch: pytest.MonkeyPatch, prefect: FakePrefect) -> ModuleType:
    """The handler module cold (empty cache), with the Lambda's environment (every test
    here calls ``trigger`` with it; tests/integration/test_lambda_secrets.py uses the module
    it returns)."""
    for name in trigger.ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", prefect.url)
    monkeypatch.setenv("PREFECT_HTTP_TIMEOUT", str(CLIENT_TIMEOUT))
    monkeypatch.setenv("PREFECT_HTTP_RETRIES", "2")
    monkeypatch.setenv("PREFECT_HTTP_BACKOFF", "0.01")
    trigger._DEPLOYMENT_IDS.clear()
    trigger.forget_secrets()
    return trigger


def test_the_lambda_entry_point_is_the_trigger_module() -> None:
    """As the Lambda runtime imports it: with its folder (LAMBDA_TASK_ROOT) on the path."""
    code = (
        "import lambda_function, churnops.drop.trigger as trigger; "
        "assert lambda_function.lambda_handler is trigger.lambda_handler"
    )
    done = run_python(code, cwd=HANDLER_FILE.parent)
    assert done.returncode == 0, done.stderr


def test_the_image_modules_need_only_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import churnops.drop.trigger; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = run_python(code, check=True).stdout.split()
    outside = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"churnops"}
    assert outside == set(), outside
    ours = sorted(m for m in loaded if m.startswith("churnops"))
    assert ours == ["churnops", "churnops.drop", "churnops.drop.keys", "churnops.drop.trigger"]
    dockerfile = HANDLER_FILE.with_name("Dockerfile").read_text()
    copied = " ".join(re.findall(r"^COPY (.*)$", dockerfile, re.M)).split()
    for module in ours:
        path = module.replace(".", "/")
        assert f"{path}/__init__.py" in copied or f"{path}.py" in copied, module


def test_boto3_is_the_one_import_beyond_the_standard_library_and_the_base_image_has_it() -> None:
    """Only ``secrets_manager_value`` imports it: the AWS Lambda Python base image ships it."""
    tree = ast.parse(Path(trigger.__file__).read_text())
    where = {  # node -> the innermost function around it (ast.walk goes outside in)
        node: function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
    }
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(alias.name, where.get(node, "<module>")) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imported.add((node.module or "", where.get(node, "<module>")))
    ours = set(sys.stdlib_module_names) | {"churnops"}
    assert {(n, at) for n, at in imported if n.split(".")[0] not in ours} == {
        ("boto3", "secrets_manager_value")
    }
    dockerfile = HANDLER_FILE.with_name("Dockerfile").read_text()
    assert re.search(r"^FROM public\.ecr\.aws/lambda/python:3\.\d+$", dockerfile, re.M)


def record(key: str, sequencer: str = "0062A1B2C3D4E5F601", **obj: str) -> dict[str, Any]:
    """An S3 ObjectCreated record; ``key`` URL-encoded as S3 sends it."""
    return {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": BUCKET},
            "object": {"key": key, "size": 10, "sequencer": sequencer, **obj},
        },
    }


def basic(auth_string: str) -> str:
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


def invoke(*records: Any) -> list[dict[str, Any]]:
    """The handler's outcomes for one event of ``records`` (a key stands for its record)."""
    found = [record(r) if isinstance(r, str) else r for r in records]
    return trigger.lambda_handler({"Records": found}, None)["results"]


# --- the happy path and key decoding -------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "version"),
    [({}, "0062A1B2C3D4E5F601"), ({"versionId": "v3"}, "v3")],
    ids=["sequencer", "version id wins"],
)
def test_creates_a_flow_run_with_bucket_key_and_idempotency_key(
    prefect: FakePrefect, extra: dict, version: str
) -> None:
    key = "data/input/customer_churn_1.csv"
    results = invoke(record(key, **extra))

    [post] = prefect.sent("POST")
    run_id = next(iter(prefect.runs.values()))["id"]
    assert results == [{"bucket": BUCKET, "key": key, "status": "created", "flow_run_id": run_id}]
    assert post["body"] == {
        "parameters": {"drop": f"s3://{BUCKET}", "key": key},
        "idempotency_key": f"s3://{BUCKET}/{key}#{version}",
        "name": "customer_churn_1.csv",
    }
    assert post["headers"]["Content-Type"] == "application/json"
    assert prefect.authorizations() == [None, None]


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("data/input/march+batch.csv", "data/input/march batch.csv"),
        ("data/input/a%2Bb.csv", "data/input/a+b.csv"),
        ("data/input/clientes_a%C3%B1o_%C3%BC.csv", "data/input/clientes_año_ü.csv"),
        ("data/input/50%25+off%2C+q%3F.csv", "data/input/50% off, q?.csv"),
        ("data/input/a%C3%B1o+%C3%BC.csv", "data/input/año ü.csv"),
        ("data/input/50%25_off%26more%3D1.csv", "data/input/50%_off&more=1.csv"),
    ],
)
def test_url_encoded_keys_are_decoded_and_the_watcher_encodes_them_alike(
    prefect: FakePrefect, encoded: str, decoded: str
) -> None:
    """The local watcher builds the events the Lambda reads: per segment, as S3 does."""
    assert encode_event_key(decoded) == encoded
    [outcome] = invoke(encoded)

    assert (outcome["status"], outcome["key"]) == ("created", decoded)
    [post] = prefect.sent("POST")
    assert post["body"]["parameters"] == {"drop": f"s3://{BUCKET}", "key": decoded}


def test_several_records_each_get_an_outcome_and_a_log_line(
    prefect: FakePrefect, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A labels file starts a run of the same deployment. The drop folders are no setting:
    the runs and the reconciler read data/input/ and data/labels/ only, and a run started
    for another folder's file failed with a traceback, the file never processed."""
    monkeypatch.setenv("INPUT_PREFIX", "incoming/")  # once a setting: no longer read
    keys = ["data/input/one.csv", "incoming/a.csv", "data/labels/a_predictions.csv"]
    with caplog.at_level(logging.INFO, logger="s3_to_prefect"):
        results = invoke(*keys)

    assert [(r["key"], r["status"]) for r in results] == list(
        zip(keys, ["created", "skipped", "created"], strict=True)
    )
    assert [p["body"]["parameters"]["key"] for p in prefect.sent("POST")] == [keys[0], keys[2]]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "s3_to_prefect"]
    assert lines == results
    assert "INPUT_PREFIX" not in trigger.ENVIRONMENT


OUTSIDE = "key is outside 'data/input/' and 'data/labels/'"
SUBFOLDER = "key is in a subfolder of {!r}: only files directly in it are processed"
HIDDEN = "a hidden, temporary or partial file (.name, .tmp, .part, ~)"


@pytest.mark.parametrize(
    ("skipped", "reason"),
    [
        (
            {**record("data/input/a.csv"), "eventName": "ObjectRemoved:Delete"},
            "event 'ObjectRemoved:Delete' is not an object creation",
        ),
        (
            {**record("data/input/a.csv"), "eventSource": "aws:sqs"},
            "event source 'aws:sqs' is not aws:s3",
        ),
        ("data/processed/one.csv", OUTSIDE),
        ("incoming/a.csv", OUTSIDE),
        ("data/input/", "folder marker"),
        ("data/input/archive/", "folder marker"),
        ("data/input/archive/old.csv", SUBFOLDER.format("data/input/")),
        ("data/labels/old/b.csv", SUBFOLDER.format("data/labels/")),
        # .a.csv.x1.tmp: the temporary name the local drop writes under; ~$a.csv: Excel's
        # owner file of an open a.csv (was errored with 14 problems, and alerted, at each opening)
        *(
            (f"data/input/{name}", HIDDEN)
            for name in (".hidden.csv", ".a.csv.x1.tmp", "upload.csv.tmp", "a.csv.part")
        ),
        *((f"data/input/{name}", HIDDEN) for name in ("a.csv.crdownload", "a.csv~", "~$a.csv")),
    ],
)
def test_a_record_that_is_no_new_drop_is_skipped_with_the_reason(
    prefect: FakePrefect, skipped: Any, reason: str
) -> None:
    [outcome] = invoke(skipped)

    assert (outcome["status"], outcome["reason"]) == ("skipped", reason)
    assert prefect.requests == []


# --- the deployment cache (duplicates, a recreated or missing deployment: against real
# Prefect in tests/integration/test_lambda_prefect.py) ------------------------------------
def test_the_deployment_is_looked_up_once_while_warm(prefect: FakePrefect) -> None:
    invoke("data/input/a.csv")
    invoke("data/input/b.csv")

    assert (len(prefect.sent("GET")), len(prefect.sent("POST"))) == (1, 2)


# --- Prefect errors -----------------------------------------------------------------------
def test_a_missing_deployment_is_looked_up_once_and_named(
    prefect: FakePrefect, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold start's lookup answered 404 was taken for a stale cached id: the handler
    logged "not found by its cached id, looking it up again" (it had none) and asked twice."""
    monkeypatch.setenv("PREFECT_DEPLOYMENT", "churn_prediction_pipeline/missing")
    with caplog.at_level(logging.INFO, logger="s3_to_prefect"):
        [outcome] = invoke("data/input/a.csv")

    assert outcome["status"] == "failed"
    assert "deployment 'churn_prediction_pipeline/missing' not found" in outcome["reason"]
    assert len(prefect.sent("GET")) == 1 and prefect.sent("POST") == []
    assert "cached id" not in caplog.text


@pytest.mark.parametrize("status", [400, 403, 409, 422])
def test_a_refusal_fails_the_record_without_retrying(prefect: FakePrefect, status: int) -> None:
    invoke("data/input/warm.csv")  # caches the deployment
    prefect.failures = [status]

    results = invoke("data/input/a.csv", "data/input/b.csv")

    assert results[0]["status"] == "failed"
    assert results[0]["reason"] == f"Prefect API answered HTTP {status}: injected {status}"
    assert results[1]["status"] == "created"
    assert len(prefect.sent("POST")) == 3


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
def test_transient_errors_are_retried(prefect: FakePrefect, status: int) -> None:
    prefect.failures = [status, status]  # lookup fails twice, third try answers

    [outcome] = invoke("data/input/a.csv")

    assert outcome["status"] == "created"
    assert len(prefect.sent("GET")) == 3


@pytest.mark.parametrize(
    ("fault", "injected", "last"),
    [("failures", [503] * 3, "HTTP 503"), ("stalls", 3, "TimeoutError")],
)
def test_persistent_server_errors_and_timeouts_raise_for_lambda_to_retry(
    prefect: FakePrefect, fault: str, injected: Any, last: str
) -> None:
    setattr(prefect, fault, injected)

    with pytest.raises(trigger.PrefectUnavailable, match=f"failed 3 times, last: {last}"):
        invoke("data/input/a.csv")
    assert prefect.sent("POST") == []


def test_a_refused_connection_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://{LOOPBACK}:{free_port(LOOPBACK)}/api")

    with pytest.raises(trigger.PrefectUnavailable, match="Connection refused"):
        invoke("data/input/a.csv")


def test_the_handler_gives_up_in_its_own_words_before_the_lambdas_timeout(
    prefect: FakePrefect,
) -> None:
    """A cold start's lookup and create, each with its retries, outlasted the 30 s timeout
    (Lambda logs only "Task timed out"). With time for one stalled try, one is made."""
    prefect.stalls = 3
    deadline = time.monotonic() + trigger.DEADLINE_MARGIN_SECONDS + CLIENT_TIMEOUT + 0.3
    # What the handler reads of the Lambda's context: the invocation's time left.
    context = SimpleNamespace(
        get_remaining_time_in_millis=lambda: int((deadline - time.monotonic()) * 1000)
    )
    found = {"Records": [record("data/input/a.csv")]}

    with pytest.raises(trigger.PrefectUnavailable) as unavailable:
        trigger.lambda_handler(found, context)

    message = str(unavailable.value)
    assert "failed 1 times, last: TimeoutError" in message
    assert message.endswith("then no time left before the Lambda's timeout")
    assert len(prefect.sent("GET")) == 1 and prefect.sent("POST") == []


@pytest.mark.parametrize("fault", ["stalls", "late"])  # late: the run made, its answer late
def test_a_timeout_is_retried_and_a_run_it_created_is_reported_created_not_a_duplicate(
    prefect: FakePrefect, fault: str
) -> None:
    invoke("data/input/warm.csv")
    setattr(prefect, fault, 1)

    [outcome] = invoke("data/input/a.csv")

    assert outcome["status"] == "created"
    assert len(prefect.sent("POST")) == 3  # warm-up, the try that timed out, the retry
    assert len(prefect.runs) == 2  # the retry got the same run back: one run for the file


def test_a_non_json_answer_names_the_likely_cause(
    prefect: FakePrefect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", prefect.url.removesuffix("/api"))  # the UI's page

    [outcome] = invoke("data/input/a.csv")

    assert outcome["status"] == "failed"
    assert "is PREFECT_API_URL the API (ending in /api)?" in outcome["reason"]


# --- configuration and bad input ------------------------------------------------------------
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        # unset (None): the module was imported without it, and only its use fails
        ("PREFECT_API_URL", None, "PREFECT_API_URL is not set"),
        ("PREFECT_DEPLOYMENT", "churnops", "must look like <flow>/<deployment>"),
        ("PREFECT_HTTP_TIMEOUT", "soon", "PREFECT_HTTP_TIMEOUT='soon' is not a valid float"),
        ("PREFECT_HTTP_RETRIES", "-1", "PREFECT_HTTP_RETRIES='-1' must be at least 0"),
        ("PREFECT_HTTP_TIMEOUT", "0", "PREFECT_HTTP_TIMEOUT='0' must be above 0"),
    ],
)
def test_missing_and_bad_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: Any, message: str
) -> None:
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)

    with pytest.raises(ValueError, match=message):
        invoke("data/input/a.csv")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"eventSource": "aws:s3"}, "the record has no 's3' section"),
        ({"s3": {"bucket": {"name": BUCKET}, "object": {}}}, "no s3.object.key"),
        ("not a record", "the record has no 's3' section"),
        # neither versionId nor sequencer
        (
            {"s3": {"bucket": {"name": BUCKET}, "object": {"key": "data/input/b.csv"}}},
            "cannot deduplicate",
        ),
    ],
)
def test_a_malformed_record_fails_alone(prefect: FakePrefect, bad: Any, reason: str) -> None:
    records = [bad, record("data/input/a.csv")]
    results = trigger.lambda_handler({"Records": records}, None)["results"]

    assert results[0]["status"] == "failed"
    assert reason in results[0]["reason"]
    assert results[1]["status"] == "created"
    assert len(prefect.sent("POST")) == 1


@pytest.mark.parametrize("bad", [{}, {"Records": "x"}, [], None])
def test_an_event_without_records_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="not an S3 event notification"):
        trigger.lambda_handler(bad, None)


def test_s3s_test_event_is_a_logged_no_op(
    prefect: FakePrefect, caplog: pytest.LogCaptureFixture
) -> None:
    """S3 sends this, with no Records, when a notification is configured: it was refused
    as no S3 event, so each apply failed the function three times, dead-lettered the event
    and mailed both alarms."""
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-12-06T06:50:00.000Z",
        "Bucket": BUCKET,
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
    with caplog.at_level(logging.INFO, logger="s3_to_prefect"):
        assert trigger.lambda_handler(test_event, None) == {"results": []}

    assert prefect.requests == []
    assert f"s3:TestEvent for bucket {BUCKET}" in caplog.text


# --- the credential: an API key, an auth string, or one from Secrets Manager ----------------
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:churnops/prefect-auth-AbCdEf"


@dataclass
class FakeSecrets:
    """Secrets Manager as the trigger sees it: values by id, and every read."""

    values: dict[str, str] = field(default_factory=lambda: {SECRET_ARN: "churnops:s3cret"})
    reads: list[str] = field(default_factory=list)

    def read(self, secret_id: str) -> str:
        self.reads.append(secret_id)
        return self.values[secret_id]


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> FakeSecrets:
    """The handler reads PREFECT_API_AUTH_STRING_SECRET_ID from a fake Secrets Manager."""
    fake = FakeSecrets()
    monkeypatch.setattr(trigger, "secrets_manager_value", fake.read)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING_SECRET_ID", SECRET_ARN)
    return fake


@pytest.mark.parametrize(
    ("variable", "value", "header"),
    [
        ("PREFECT_API_KEY", "pnu_secret", "Bearer pnu_secret"),
        ("PREFECT_API_AUTH_STRING", "local:pass word", basic("local:pass word")),
    ],
)
def test_a_credential_in_the_environment_is_sent_and_the_secret_not_read(
    prefect: FakePrefect,
    secrets: FakeSecrets,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    header: str,
) -> None:
    monkeypatch.setenv(variable, value)

    invoke("data/input/a.csv")

    assert secrets.reads == []
    assert prefect.authorizations() == [header, header]


@pytest.mark.parametrize("expired", [False, True], ids=["warm", "expired"])
def test_the_auth_string_is_read_from_the_secret_once_until_its_time_is_up(
    prefect: FakePrefect, secrets: FakeSecrets, monkeypatch: pytest.MonkeyPatch, expired: bool
) -> None:
    if expired:
        monkeypatch.setattr(trigger, "SECRET_TTL_SECONDS", 0.0)
    invoke("data/input/a.csv")
    secrets.values[SECRET_ARN] = "churnops:rotated"

    invoke("data/input/b.csv")

    assert secrets.reads == [SECRET_ARN] * (1 + expired)
    last = basic("churnops:rotated" if expired else "churnops:s3cret")
    assert prefect.authorizations() == [basic("churnops:s3cret")] * 2 + [last]


def test_a_refused_credential_fails_the_invocation_and_the_retry_reads_the_secret_again(
    prefect: FakePrefect, secrets: FakeSecrets
) -> None:
    prefect.failures = [401]

    with pytest.raises(trigger.PrefectUnauthorized, match="HTTP 401"):
        invoke("data/input/a.csv")
    secrets.values[SECRET_ARN] = "churnops:rotated"
    [outcome] = invoke("data/input/a.csv")

    assert outcome["status"] == "created"
    assert secrets.reads == [SECRET_ARN, SECRET_ARN]
    assert prefect.requests[-1]["headers"]["Authorization"] == basic("churnops:rotated")


def test_a_secret_that_is_not_an_auth_string_is_named(
    prefect: FakePrefect, secrets: FakeSecrets
) -> None:
    secrets.values[SECRET_ARN] = "only-a-password"

    with pytest.raises(ValueError, match="does not hold a Prefect auth string"):
        invoke("data/input/a.csv")
    assert prefect.requests == []
