"""The rehearsal's checks, in the order run.py runs them: before anything starts, what ECS
would refuse or a runner get wrong; once the platform runs, one file dropped into the
bucket, followed to everything its run leaves behind."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import yaml
from psycopg2 import sql

from churnops.pipeline import RECONCILE_DEPLOYMENT
from terraform.scripts.rehearsal import containers, iam, images, lambda_runtime
from terraform.scripts.rehearsal.deployment import Aws, Deployment, WiringError
from terraform.scripts.rehearsal.mapping import LOCAL_SSLMODE, LOOPBACK, STRICT_SSLMODES
from terraform.scripts.rehearsal.services import (
    TERMINAL,
    PrefectApi,
    connect,
    login_of,
    notification_for,
    s3_event,
)

if TYPE_CHECKING:
    from terraform.scripts.rehearsal.run import Rehearsal

REPO = Path(__file__).resolve().parents[3]
GRAFANA_DATASOURCES = REPO / "code/grafana/provisioning/datasources"
#: A labeled file whose drift alerts: the run exercises the topic too.
DROPPED_FILE = "customer_churn_2_majority_drifted.csv"
#: A space and a plus: S3 URL-encodes both in the event.
DROPPED_NAME = "rehearsal {stamp}+drift.csv"
RUN_TIMEOUT = 300.0


# ---------------------------------------------------------------------------- before the start
def check_secret_permissions(r: Rehearsal) -> None:
    """Each task's execution role may read (and decrypt) every secret its containers
    name, as ECS needs before starting it; the Lambda's role the secrets its
    environment names."""
    problems = []
    for task in r.deployment.tasks.values():
        if not task.execution_role_arn:
            continue
        policies = iam.Policies(r.aws, task.execution_role_arn)
        for container in task.containers:
            for name, value_from in container.secrets.items():
                if ":secretsmanager:" in value_from:
                    place = containers.where(container, name, secret=True)
                    secret = ":".join(value_from.split(":")[:7])
                    problems += [
                        f"{place}: {p}" for p in iam.secret_problems(r.aws, policies, secret)
                    ]
    function = r.deployment.function
    if function is not None:
        policies = iam.Policies(r.aws, function.role_arn)
        for name, value in function.environment.items():
            if value.startswith("arn:") and ":secretsmanager:" in value:
                place = f"Lambda {function.name}, variable {name}"
                problems += [f"{place}: {p}" for p in iam.secret_problems(r.aws, policies, value)]
    if problems:
        raise WiringError("\n".join(problems))
    r.report.facts["secrets"] = "every secret readable by its execution (or Lambda) role"


def check_runner_settings(r: Rehearsal) -> None:
    """What churnops reads from the worker's environment names this deployment's
    resources: its bucket and topic, and a database, MLflow, Evidently UI and Prefect
    API of its own, not the local defaults (SQLite, folders, a temporary server)."""
    worker = r.worker()
    code = (
        "import json\nfrom churnops.settings import get_settings\ns = get_settings()\n"
        "print(json.dumps({'drop': s.drop.drop_uri, 'DATABASE_URL': s.monitoring.database_url,"
        " 'MLFLOW_TRACKING_URI': s.model.mlflow_tracking_uri,"
        " 'EVIDENTLY_UI_URL': s.monitoring.evidently_ui_url,"
        " 'ALERTS_TOPIC_ARN': s.alerts.alerts_topic_arn}))"
    )
    done = subprocess.run(
        [str(containers.VENV_BIN / "python"), "-c", code],
        env=worker.env,
        cwd=worker.cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise WiringError(
            f"container {worker.label}: churnops cannot read its settings:\n{done.stderr[-2000:]}"
        )
    read = json.loads(done.stdout.splitlines()[-1])
    problems = [
        f"{name} is unset: churnops would use its local default"
        for name in ("DATABASE_URL", "MLFLOW_TRACKING_URI", "EVIDENTLY_UI_URL", "ALERTS_TOPIC_ARN")
        if not read[name]
    ]
    if not worker.env.get("PREFECT_API_URL"):
        problems.append("PREFECT_API_URL is unset: Prefect would start a temporary server")
    bucket = f"s3://{r.deployment.bucket}"
    if read["drop"] != bucket:
        problems.append(
            f"churnops reads its drop as {read['drop']}, not the bucket {bucket}"
            f" (DROP_STORAGE={worker.env.get('DROP_STORAGE')},"
            f" DROP_BUCKET={worker.env.get('DROP_BUCKET')})"
        )
    topic = r.applied.outputs.get("alerts_topic_arn")
    if read["ALERTS_TOPIC_ARN"] and topic and read["ALERTS_TOPIC_ARN"] != topic:
        problems.append(f"ALERTS_TOPIC_ARN is not the deployment's topic {topic}")
    if problems:
        raise WiringError("\n".join(f"container {worker.label}: {p}" for p in problems))
    r.report.facts["runner settings"] = f"drop {bucket}, its own database, MLflow, Evidently, topic"


def check_database_logins(r: Rehearsal) -> None:
    """Who each long-running container logs in to the database as (a URL's user), the
    dashboards' login as Grafana builds it; none may be the master user."""
    port = f"@{LOOPBACK}:{r.mapper.postgres_port}/"
    logins: dict[str, set[str]] = {}
    for task in r.deployment.tasks.values():
        if task.one_off:  # the database bootstrap logs in as the master user by design
            continue
        inits = set(task.waited_for())
        for container in task.containers:
            local = r.local[container.label]
            if container.name in inits:
                continue
            users = {login_of(v) for v in local.env.values() if port in v and "://" in v}
            if _is_grafana(local):
                users.add(datasource_login(local)["user"])
            if users:
                logins[container.label] = users
    problems = [
        f"container {label} logs in to the database as the master user {user}:"
        " it needs a role of its own"
        for label, users in logins.items()
        for user in sorted(users & set(r.master_users))
    ]
    if problems:
        raise WiringError("\n".join(problems))
    r.report.facts["database logins"] = ", ".join(
        f"{label} as {' and '.join(sorted(users))}" for label, users in logins.items()
    )


def master_login(aws: Aws, deployment: Deployment) -> tuple[list[str], str]:
    """The RDS master user name(s) and its password, from the instance's managed secret
    (the module sets manage_master_user_password).

    moto's managed secret names its own user (``admin``), not the instance's master user
    as RDS does: then the secret's user is the master here (what its readers log in as)
    and the instance's name another login with its rights."""
    db = deployment.database
    if not db.master_secret_arn:
        raise WiringError(f"the RDS instance manages no secret for {db.master_username}")
    sm = aws.client("secretsmanager")
    value = json.loads(sm.get_secret_value(SecretId=db.master_secret_arn)["SecretString"])
    users = list(dict.fromkeys([value.get("username", ""), db.master_username]))
    return [u for u in users if u], value["password"]


# ---------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class Drop:
    """A file dropped into the bucket, the flow run the Lambda started for it, and the
    queue that receives the alerts topic's messages."""

    key: str
    flow_run_id: str
    alerts_queue: str


def drop_file(r: Rehearsal) -> Drop:
    """Upload a file to data/input/ and give the Lambda handler S3's event for it."""
    s3 = r.aws.client("s3")
    bucket = r.deployment.bucket
    queue = _listen_for_alerts(r)
    key = f"data/input/{DROPPED_NAME.format(stamp=time.strftime('%H%M%S'))}"
    s3.upload_file(str(r.data_dir / DROPPED_FILE), bucket, key)
    head = s3.head_object(Bucket=bucket, Key=key)
    try:
        configuration = notification_for(r.deployment.notification, r.function().arn, key)
    except ValueError as exc:
        raise WiringError(f"the bucket notification: {exc}") from None
    event = s3_event(bucket, key, head, configuration, r.aws.region)
    outcome = lambda_runtime.invoke(r.function(), event, r.mapper, r.aws, r.root / "lambda")
    (result,) = outcome["results"]
    if result.get("status") != "created":
        raise WiringError(f"the Lambda handler did not start a flow run: {json.dumps(result)}")
    r.report.facts["dropped"] = f"s3://{bucket}/{key}"
    r.report.facts["lambda"] = f"created flow run {result['flow_run_id']}"
    return Drop(key, result["flow_run_id"], queue)


def check_processed(r: Rehearsal, drop: Drop) -> None:
    """The flow run completed as processed, and everything it leaves is where it should be."""
    run_id = drop.flow_run_id
    worker = r.worker()
    api = PrefectApi(worker.env)
    run = api.wait_terminal(run_id, RUN_TIMEOUT)
    logs = "\n".join(p.tail() for label, p in r.processes.items() if "worker" in label)
    if run is None:
        raise WiringError(f"flow run {run_id} did not end within {RUN_TIMEOUT:.0f}s:\n{logs}")
    state = run["state"]
    if state["type"] != "COMPLETED" or not (state.get("message") or "").startswith("processed"):
        raise WiringError(
            f"flow run {run_id} ended {state['type']}: {state.get('message')}\n{logs}"
        )
    s3 = r.aws.client("s3")
    name = drop.key.rsplit("/", 1)[-1]
    listed = s3.list_objects_v2(Bucket=r.deployment.bucket, Prefix="data/processed/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    originals = [k for k in keys if k.endswith(f"/{name}")]
    if len(originals) != 1:
        raise WiringError(f"{name} is not once in data/processed/ (found {originals})")
    folder = originals[0].rsplit("/", 1)[0]
    predictions = [k for k in keys if k.startswith(f"{folder}/") and "_predictions_" in k]
    if not predictions:
        raise WiringError(f"no predictions beside {originals[0]}")
    r.report.facts["processed"] = originals[0]
    r.report.facts["predictions"] = predictions[0]
    run, report_url = _run_row(r, drop.flow_run_id)
    user = login_of(r.worker().env.get("DATABASE_URL", ""))
    r.report.facts["metrics row"] = (
        f"pipeline_runs {run} processed, written by the flow run as {user}"
    )
    r.report.facts["report"] = _report_stored(r, report_url)
    r.report.facts["alert"] = _alert_received(r, drop.alerts_queue)


def _run_row(r: Rehearsal, flow_run_id: str) -> tuple[str, str | None]:
    url = r.admin_url.rsplit("/", 1)[0] + f"/{r.deployment.database.database}"
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, status, report_url FROM pipeline_runs WHERE flow_run_id = %s",
            (flow_run_id,),
        )
        rows = cur.fetchall()
    if len(rows) != 1 or rows[0][1] != "processed":
        raise WiringError(f"pipeline_runs has {rows} for flow run {flow_run_id}")
    return rows[0][0], rows[0][2]


def _report_stored(r: Rehearsal, report_url: str | None) -> str:
    """The run's Evidently report is listed by the Evidently UI it links to."""
    found = re.search(r"/projects/([0-9a-f-]{36})/reports/([0-9a-f-]{36})", report_url or "")
    if not found:
        raise WiringError(f"the run's report URL {report_url!r} names no Evidently report")
    project, snapshot = found.groups()
    base = report_url[: found.start()]
    try:
        with urllib.request.urlopen(f"{base}/api/projects/{project}/snapshots", timeout=10) as got:
            listed = json.loads(got.read())
    except OSError as exc:
        raise WiringError(f"the Evidently UI at {base} does not list {project}: {exc}") from None
    if snapshot not in {str(s.get("id")) for s in listed}:
        raise WiringError(f"the Evidently UI at {base} has no report {snapshot}")
    return f"report {snapshot} in the Evidently UI's project {project}"


def check_reconciler(r: Rehearsal) -> None:
    """A run of the reconciler's deployment, made by its schedule, completed. The first is
    due an interval after the deployment was registered: brought forward to now (Prefect's
    API: Scheduled again, at a new time), the check does not wait that out."""
    api = PrefectApi(r.worker().env)
    name = RECONCILE_DEPLOYMENT
    deployment = api.deployment(name)
    intervals = [(s.get("schedule") or {}).get("interval") for s in deployment.get("schedules", [])]
    if not any(intervals):
        raise WiringError(f"the deployment {name} has no interval schedule")
    deadline = time.monotonic() + RUN_TIMEOUT
    every_state = ("SCHEDULED", "PENDING", "RUNNING", *TERMINAL)
    while not (
        made := [x for x in api.runs_of(deployment["id"], every_state) if x["auto_scheduled"]]
    ):
        if time.monotonic() > deadline:
            raise WiringError(f"the schedule of {name} made no run")
        time.sleep(1)
    first = made[0]
    if first["state"]["type"] == "SCHEDULED":
        now = {"scheduled_time": datetime.now(UTC).isoformat()}
        state = {"type": "SCHEDULED", "name": "Scheduled", "state_details": now}
        api.call("POST", f"/flow_runs/{first['id']}/set_state", {"state": state})
    run = api.wait_terminal(first["id"], RUN_TIMEOUT)
    if run is None or run["state"]["type"] != "COMPLETED":
        state = {} if run is None else run["state"]
        ended = f"ended {state['type']}: {state.get('message')}" if state else "did not end in time"
        raise WiringError(f"the reconciler's scheduled run {ended}")
    r.report.facts["reconciler"] = f"{name}: scheduled run {first['name']} completed"


def check_reader(r: Rehearsal) -> None:
    """The dashboards' login, as Grafana's data source provisioning builds it from the
    Grafana container's environment: SELECT on every dashboard table, no writes."""
    from churnops.monitoring.metrics_db import DASHBOARD_TABLES

    grafana = [local for local in r.local.values() if _is_grafana(local)]
    if not grafana:
        raise WiringError("no Grafana container in the task definitions")
    login = datasource_login(grafana[0])
    counts = {}
    with connect(**login) as conn, conn.cursor() as cur:
        for table in DASHBOARD_TABLES:
            try:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name)))
            except psycopg2.Error as exc:
                raise WiringError(
                    f"container {grafana[0].label}: its login {login['user']} cannot"
                    f" SELECT from {table.name}: {exc.pgerror or exc}"
                ) from None
            counts[table.name] = cur.fetchone()[0]
        try:
            cur.execute("DELETE FROM pipeline_runs WHERE false")
        except psycopg2.errors.InsufficientPrivilege:
            pass
        else:
            raise WiringError(
                f"container {grafana[0].label}: its login {login['user']} may delete"
                " from pipeline_runs: the dashboards' role must be read-only"
            )
    if counts.get("pipeline_runs", 0) < 1:
        raise WiringError(f"the dashboards' role sees no run: {counts}")
    r.report.facts["dashboard role"] = (
        f"{login['user']} reads {', '.join(f'{t} ({n})' for t, n in counts.items())}; cannot delete"
    )


def _is_grafana(local: containers.Local) -> bool:
    return images.repository(local.container.image) == "grafana" and local.container.essential


def _listen_for_alerts(r: Rehearsal) -> str:
    """An SQS queue subscribed to the worker's ALERTS_TOPIC_ARN (removed afterwards)."""
    topic = r.worker().env.get("ALERTS_TOPIC_ARN")
    if not topic:
        raise WiringError(f"container {r.worker().label}: no ALERTS_TOPIC_ARN")
    sqs, sns = r.aws.client("sqs"), r.aws.client("sns")
    queue = sqs.create_queue(QueueName=f"rehearsal-alerts-{secrets.token_hex(4)}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    subscription = sns.subscribe(
        TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
    )["SubscriptionArn"]
    r.cleanups.append(lambda: sqs.delete_queue(QueueUrl=queue))
    r.cleanups.append(lambda: sns.unsubscribe(SubscriptionArn=subscription))
    return queue


def _alert_received(r: Rehearsal, queue: str) -> str:
    sqs = r.aws.client("sqs")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
        for message in batch.get("Messages", []):
            subject = json.loads(message["Body"]).get("Subject", "")
            return f"on the topic: {subject}"
    raise WiringError("no alert reached the topic (ALERTS_TOPIC_ARN of the worker)")


def datasource_login(grafana: containers.Local) -> dict[str, Any]:
    """Host, port, database, user, password and sslmode of Grafana's provisioned data
    source, its ``${VAR}`` references filled from the container's environment."""
    (path,) = sorted(GRAFANA_DATASOURCES.glob("*.yaml"))
    (source,) = yaml.safe_load(path.read_text())["datasources"]

    def fill(text: str) -> str:
        def var(match: re.Match[str]) -> str:
            name = match[1] or match[2]
            if name not in grafana.env:
                raise WiringError(f"container {grafana.label}: {path.name} needs ${name}, unset")
            return grafana.env[name]

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, str(text))

    host, _, port = fill(source["url"]).partition(":")
    sslmode = fill(source["jsonData"].get("sslmode", "prefer"))
    return {
        "host": host,
        "port": int(port or 5432),
        "dbname": fill(source["jsonData"]["database"]),
        "user": fill(source["user"]),
        "password": fill(source["secureJsonData"]["password"]),
        "sslmode": LOCAL_SSLMODE if sslmode in STRICT_SSLMODES else sslmode,
    }
