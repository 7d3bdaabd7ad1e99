"""Checks of the wiring before anything starts, what ECS would refuse or a runner get wrong:
each execution role may read its containers' secrets (the Lambda's role too); the
worker's settings name this deployment's bucket, topic, database and servers; every
service logs in to the database as its own role, never the master user (only init
containers may); and where the RDS master password is, for the local stand-in."""

from __future__ import annotations

import contextlib
import json
import subprocess
from typing import TYPE_CHECKING

from terraform.scripts.rehearsal import containers, iam, images
from terraform.scripts.rehearsal.checks import datasource_login
from terraform.scripts.rehearsal.deployment import Aws, Deployment, WiringError
from terraform.scripts.rehearsal.mapping import LOOPBACK
from terraform.scripts.rehearsal.services import login_of

if TYPE_CHECKING:
    from terraform.scripts.rehearsal.run import Rehearsal


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
            if images.repository(container.image) == "grafana" and container.essential:
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


def master_login(aws: Aws, deployment: Deployment) -> tuple[list[str], str, str]:
    """The RDS master user name(s), its password and where it was found: the instance's
    managed secret, else the secret whose JSON names the master user.

    moto's managed secret names its own user (``admin``), not the instance's master user
    as RDS does: then the secret's user is the master here (what its readers log in as)
    and the instance's name another login with its rights."""
    sm = aws.client("secretsmanager")
    db = deployment.database
    if db.master_secret_arn:
        value = json.loads(sm.get_secret_value(SecretId=db.master_secret_arn)["SecretString"])
        users = list(dict.fromkeys([value.get("username", ""), db.master_username]))
        return [u for u in users if u], value["password"], "the instance's RDS-managed secret"
    for page in sm.get_paginator("list_secrets").paginate():
        for entry in page["SecretList"]:
            with contextlib.suppress(Exception):
                value = json.loads(sm.get_secret_value(SecretId=entry["ARN"])["SecretString"])
                if value.get("username") == db.master_username and value.get("password"):
                    return [db.master_username], value["password"], f"secret {entry['Name']}"
    raise WiringError(f"no secret holds the password of the RDS master user {db.master_username}")
