"""S3 -> Prefect: one ``churn_prediction_pipeline`` flow run per new dropped file.

The AWS Lambda runs this module: standard library only (with :mod:`churnops.drop.keys`;
boto3, in the Lambda image, only reads a secret), so the retry loop is written out here.
The local watcher calls :func:`handle_event` with S3-shaped events. The Lambda reads its
environment (:data:`ENVIRONMENT`) on each call, never at import. S3 delivers at least
once, so the idempotency key is bucket, key and version (or sequencer). The handler
raises, so Lambda retries and then dead-letters the event, when Prefect is unreachable or
refuses the credential or the secret cannot be read; any other problem is the record's
``failed`` outcome.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

from churnops.drop.keys import decode_event_key, not_a_drop

LOGGER = logging.getLogger("s3_to_prefect")
LOGGER.setLevel(logging.INFO)  # the Lambda runtime's root logger stops at WARNING

DEFAULT_DEPLOYMENT = "churn_prediction_pipeline/churnops"
CREATED = 201  # Prefect answers 200 when the idempotency key matched an existing run

#: Deployment ids by (API URL, "<flow>/<deployment>"), kept while the Lambda is warm.
_DEPLOYMENT_IDS: dict[tuple[str, str], str] = {}

#: How long a secret read from Secrets Manager is reused while the Lambda is warm (s).
SECRET_TTL_SECONDS = 300.0
#: Secret values by id, with the monotonic time they were read.
_SECRETS: dict[str, tuple[str, float]] = {}

#: Kept back from the Lambda's timeout: a cold start's two requests, each retried, could
#: outlast it, and Lambda then logs only "Task timed out"; the handler gives up first, in
#: its own words (PrefectUnavailable: the event is retried).
DEADLINE_MARGIN_SECONDS = 2.0
#: A try starts only with this much time left before that deadline.
MIN_TRY_SECONDS = 0.5

#: The Lambda's environment: variable -> (default, meaning). The one list of what
#: :meth:`Config.from_env` reads; ``docs/configuration.md`` is generated from it.
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "PREFECT_API_URL": (None, "Prefect API base URL (required), e.g. `http://127.0.0.1:4200/api`."),
    "PREFECT_API_KEY": (None, "Prefect Cloud: the API key (a bearer token)."),
    "PREFECT_API_AUTH_STRING": (None, "Self-hosted Prefect: the basic auth string, `user:pass`."),
    "PREFECT_API_AUTH_STRING_SECRET_ID": (
        None,
        "The Secrets Manager secret holding that auth string (the AWS Lambda's way: its "
        "environment holds the ARN, not the value); read with boto3, reused for "
        f"{SECRET_TTL_SECONDS:g} s while warm and read again after Prefect answers 401.",
    ),
    "PREFECT_DEPLOYMENT": (DEFAULT_DEPLOYMENT, "Deployment to start, `<flow>/<deployment>`."),
    "PREFECT_HTTP_TIMEOUT": ("5", "Seconds per request to Prefect."),
    "PREFECT_HTTP_RETRIES": ("4", "Retries of a request after the first try."),
    "PREFECT_HTTP_BACKOFF": (
        "0.2",
        "First wait between tries (s), doubling. Short: a busy local Prefect server (SQLite) "
        "answers 503 at once and the next try a moment later. In the Lambda, tries stop "
        f"{DEADLINE_MARGIN_SECONDS:g} s before its timeout (the event is retried).",
    ),
}

#: Reads a secret's string by its id (name or ARN).
SecretReader = Callable[[str], str]


class PrefectUnavailable(RuntimeError):
    """The Prefect API could not be reached, even after retries: retry the event later."""


class PrefectUnauthorized(RuntimeError):
    """The Prefect API refused the credential (401): the secret is read again on the retry."""


class PrefectRequestError(Exception):
    """The Prefect API refused a request; retrying the same request will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Prefect API answered HTTP {status}: {detail}")
        self.status = status


@dataclass(frozen=True)
class Config:
    api_url: str
    deployment: str
    timeout: float
    retries: int
    backoff: float
    authorization: str | None
    #: The drop the flow run is told to read (``file:///<folder>`` for the local
    #: platform's folder); None: the event's bucket, ``s3://<bucket>``.
    drop: str | None = None
    #: ``time.monotonic()`` by which the invocation must be over; None: no deadline.
    deadline: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], read_secret: SecretReader | None = None) -> Self:
        """Read and check the variables; a ValueError names the one that is wrong."""
        api_url = env.get("PREFECT_API_URL", "").strip().rstrip("/")
        if not api_url:
            raise ValueError(
                "PREFECT_API_URL is not set: it must be the Prefect API base URL,"
                " e.g. http://127.0.0.1:4200/api"
            )
        deployment = env.get("PREFECT_DEPLOYMENT") or DEFAULT_DEPLOYMENT
        flow, _, name = deployment.partition("/")
        if not flow or not name or "/" in name:
            raise ValueError(
                f"PREFECT_DEPLOYMENT={deployment!r} must look like <flow>/<deployment>"
            )
        return cls(
            api_url=api_url,
            deployment=deployment,
            timeout=_number(env, "PREFECT_HTTP_TIMEOUT", float, positive=True),
            retries=int(_number(env, "PREFECT_HTTP_RETRIES", int)),
            backoff=_number(env, "PREFECT_HTTP_BACKOFF", float),
            authorization=_authorization(env, read_secret or cached_secret),
        )


def _number(env: Mapping[str, str], name: str, kind: type, positive: bool = False) -> float:
    raw = env.get(name)
    if not raw:
        return kind(ENVIRONMENT[name][0])
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={raw!r} must be {'above' if positive else 'at least'} 0")
    return value


def _authorization(env: Mapping[str, str], read_secret: SecretReader) -> str | None:
    """Prefect Cloud takes a bearer API key; a self-hosted server basic auth, given
    as the auth string itself or as the id of the secret holding it."""
    if env.get("PREFECT_API_KEY"):
        return f"Bearer {env['PREFECT_API_KEY']}"
    auth_string = env.get("PREFECT_API_AUTH_STRING")
    if not auth_string and env.get("PREFECT_API_AUTH_STRING_SECRET_ID"):
        auth_string = read_secret(env["PREFECT_API_AUTH_STRING_SECRET_ID"]).strip()
        if ":" not in auth_string:
            raise ValueError(
                "the secret PREFECT_API_AUTH_STRING_SECRET_ID names does not hold a"
                " Prefect auth string (user:pass)"
            )
    if auth_string:
        return f"Basic {base64.b64encode(auth_string.encode()).decode()}"
    return None


# --- secrets ----------------------------------------------------------------------------
def cached_secret(secret_id: str) -> str:
    """The secret's string, read at most once per ``SECRET_TTL_SECONDS`` while warm."""
    now = time.monotonic()
    cached = _SECRETS.get(secret_id)
    if cached is None or now - cached[1] > SECRET_TTL_SECONDS:
        _SECRETS[secret_id] = (secrets_manager_value(secret_id), now)
    return _SECRETS[secret_id][0]


def secrets_manager_value(secret_id: str) -> str:
    """``GetSecretValue`` with boto3, which the Lambda base image ships (imported here: the
    module stays standard library only)."""
    import boto3

    client = boto3.client("secretsmanager")
    return client.get_secret_value(SecretId=secret_id)["SecretString"]


def forget_secrets() -> None:
    """Read every secret again next time (after Prefect refused one)."""
    _SECRETS.clear()


# --- the handler ------------------------------------------------------------------------
def lambda_handler(event: Mapping[str, Any], context: object) -> dict[str, list[dict]]:
    """The Lambda entry point: the configuration comes from the function's environment, the
    deadline from the invocation's time left."""
    config = Config.from_env(os.environ)
    if left_ms := getattr(context, "get_remaining_time_in_millis", None):
        deadline = time.monotonic() + left_ms() / 1000 - DEADLINE_MARGIN_SECONDS
        config = replace(config, deadline=deadline)
    return handle_event(event, config)


def handle_event(event: Mapping[str, Any], config: Config) -> dict[str, list[dict]]:
    """Start a flow run for each new input file in the event; one outcome per record."""
    if isinstance(event, Mapping) and event.get("Event") == "s3:TestEvent":
        # Sent, without Records, when a notification is configured: nothing to start.
        LOGGER.info("s3:TestEvent for bucket %s: no file, no flow run", event.get("Bucket"))
        return {"results": []}
    records = event.get("Records") if isinstance(event, Mapping) else None
    if not isinstance(records, list):
        raise ValueError("the event has no 'Records' list: not an S3 event notification")
    results = []
    for record in records:
        try:
            outcome = handle_record(record, config)
        except PrefectUnavailable as exc:
            LOGGER.error("Prefect API unreachable, Lambda will retry the event: %s", exc)
            raise
        except PrefectUnauthorized as exc:
            LOGGER.error("Prefect API refused the credential, Lambda will retry: %s", exc)
            forget_secrets()
            raise
        level = logging.WARNING if outcome["status"] == "failed" else logging.INFO
        LOGGER.log(level, json.dumps(outcome, ensure_ascii=False))
        results.append(outcome)
    return {"results": results}


def handle_record(record: Any, config: Config) -> dict[str, Any]:
    """The outcome of one S3 record: created, skipped or failed (with a reason)."""
    try:
        bucket, key, version = _parse_record(record)
    except ValueError as exc:
        return {"bucket": None, "key": None, "status": "failed", "reason": str(exc)}
    outcome: dict[str, Any] = {"bucket": bucket, "key": key}
    if reason := _skip_reason(record, key):
        return {**outcome, "status": "skipped", "reason": reason}
    if not version:
        reason = "the record has neither s3.object.versionId nor s3.object.sequencer"
        return {**outcome, "status": "failed", "reason": f"{reason}: cannot deduplicate"}
    try:
        run_id, created = start_flow_run(
            config,
            parameters={"drop": config.drop or f"s3://{bucket}", "key": key},
            idempotency_key=f"s3://{bucket}/{key}#{version}",
            name=key.rsplit("/", 1)[-1],
        )
    except PrefectRequestError as exc:
        return {**outcome, "status": "failed", "reason": str(exc)}
    if created:
        return {**outcome, "status": "created", "flow_run_id": run_id}
    reason = "duplicate event: Prefect returned the flow run already created for it"
    return {**outcome, "status": "skipped", "flow_run_id": run_id, "reason": reason}


def _parse_record(record: Any) -> tuple[str, str, str | None]:
    """Bucket, decoded key and version marker; a ValueError naming what is missing."""
    s3 = record.get("s3") if isinstance(record, Mapping) else None
    if not isinstance(s3, Mapping):
        raise ValueError("the record has no 's3' section")
    bucket = (s3.get("bucket") or {}).get("name")
    obj = s3.get("object") or {}
    if not bucket or not obj.get("key"):
        raise ValueError("the record has no s3.bucket.name or no s3.object.key")
    return bucket, decode_event_key(obj["key"]), obj.get("versionId") or obj.get("sequencer")


def _skip_reason(record: Mapping[str, Any], key: str) -> str | None:
    """Why the record starts no flow run, or None when it should start one: only a file
    directly in a drop folder (``keys.DROP_PREFIXES``, the folders every part reads)."""
    source = record.get("eventSource", "aws:s3")
    if source != "aws:s3":
        return f"event source {source!r} is not aws:s3"
    name = record.get("eventName", "ObjectCreated:")
    if not name.startswith("ObjectCreated:"):
        return f"event {name!r} is not an object creation"
    return not_a_drop(key)


# --- Prefect REST API -------------------------------------------------------------------
def start_flow_run(
    config: Config, parameters: dict[str, Any], idempotency_key: str, name: str
) -> tuple[str, bool]:
    """Create a flow run of the deployment: its id, and whether this call created it (a 200
    after a POST that timed out is our own run, not a duplicate event's)."""
    body = {"parameters": parameters, "idempotency_key": idempotency_key, "name": name}
    path = _create_path(config)  # a deployment not found by name is no stale cached id
    try:
        status, run, resent = _request(config, "POST", path, body)
    except PrefectRequestError as exc:
        if exc.status != 404:
            raise
        # The cached id is stale (deployment re-created): look it up once more.
        LOGGER.info(
            "deployment %s not found by its cached id, looking it up again", config.deployment
        )
        _DEPLOYMENT_IDS.pop((config.api_url, config.deployment), None)
        status, run, resent = _request(config, "POST", _create_path(config), body)
    return run["id"], status == CREATED or resent


def _create_path(config: Config) -> str:
    return f"/deployments/{_deployment_id(config)}/create_flow_run"


def _deployment_id(config: Config) -> str:
    """The deployment's id, looked up by name once per warm Lambda."""
    cache_key = (config.api_url, config.deployment)
    if cache_key not in _DEPLOYMENT_IDS:
        flow, name = (urllib.parse.quote(part, safe="") for part in config.deployment.split("/"))
        try:
            _, deployment, _ = _request(config, "GET", f"/deployments/name/{flow}/{name}")
        except PrefectRequestError as exc:
            if exc.status == 404:
                raise PrefectRequestError(
                    404, f"deployment {config.deployment!r} not found at {config.api_url}"
                ) from exc
            raise
        _DEPLOYMENT_IDS[cache_key] = deployment["id"]
    return _DEPLOYMENT_IDS[cache_key]


def _request(
    config: Config, method: str, path: str, body: dict | None = None
) -> tuple[int, Any, bool]:
    """Status, JSON, and whether an earlier try may have reached the server; transient
    failures (5xx, 408, 429, network) are retried."""
    url = config.api_url + path
    data = None if body is None else json.dumps(body).encode()
    problem = ""
    resent = False
    tries = 0
    for attempt in range(config.retries + 1):
        wait = config.backoff * 2 ** (attempt - 1) if attempt else 0.0
        left = _time_left(config) - wait
        if left < MIN_TRY_SECONDS:
            problem = f"{problem}; then " if problem else ""
            problem += "no time left before the Lambda's timeout"
            break
        if attempt:
            # Quiet until it gives up (PrefectUnavailable): a busy server often answers the retry.
            LOGGER.info("%s %s: %s; retrying in %.1fs", method, url, problem, wait)
            time.sleep(wait)
        tries += 1
        try:
            with urllib.request.urlopen(
                _build(config, method, url, data), timeout=min(config.timeout, left)
            ) as r:
                return r.status, _json(r.read(), url), resent
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise PrefectUnauthorized(f"{method} {url}: HTTP 401 {_detail(exc)}") from exc
            if exc.code < 500 and exc.code not in (408, 429):
                raise PrefectRequestError(exc.code, _detail(exc)) from exc
            problem = f"HTTP {exc.code}"
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out
            problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            resent = resent or not isinstance(getattr(exc, "reason", exc), ConnectionRefusedError)
    raise PrefectUnavailable(f"{method} {url} failed {tries} times, last: {problem}")


def _time_left(config: Config) -> float:
    """Seconds before the invocation's deadline; without one, no limit."""
    return math.inf if config.deadline is None else config.deadline - time.monotonic()


def _build(config: Config, method: str, url: str, data: bytes | None) -> urllib.request.Request:
    headers = {"Accept": "application/json", "User-Agent": "churnops-s3-to-prefect"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if config.authorization:
        headers["Authorization"] = config.authorization
    return urllib.request.Request(url, data=data, headers=headers, method=method)


def _json(raw: bytes, url: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        detail = f"{url} did not answer JSON: is PREFECT_API_URL the API (ending in /api)?"
        raise PrefectRequestError(200, detail) from None


def _detail(error: urllib.error.HTTPError) -> str:
    """Prefect's ``detail`` message, or the start of the body."""
    raw = error.read().decode(errors="replace")
    try:
        detail = json.loads(raw).get("detail", raw)
    except (ValueError, AttributeError):
        detail = raw
    return str(detail)[:500] or error.reason
