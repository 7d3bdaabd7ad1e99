"""The rehearsal's parts that need no deployment: how values are mapped to this machine,
how a wrong one is reported, the S3 event, the images, the Lambda's import rule.

The end-to-end rehearsal on the applied module is test_rehearsal.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from churnops.drop.keys import decode_event_key
from churnops.platform.services import free_port
from terraform.scripts.rehearsal import checks, images, lambda_runtime
from terraform.scripts.rehearsal import iam as rehearsal_iam
from terraform.scripts.rehearsal.containers import OWN_PLACES, Local
from terraform.scripts.rehearsal.deployment import (
    Aws,
    Container,
    Database,
    Deployment,
    Function,
    Listener,
    Rule,
    Task,
    WiringError,
    secret_value,
)
from terraform.scripts.rehearsal.mapping import Mapper, Paths, command
from terraform.scripts.rehearsal.services import connect, notification_for, s3_event

NS = "churnops-emu.internal"
DB_HOST = "churnops-emu.abc.us-east-1.rds.amazonaws.com"
ALB = "churnops-emu-1.us-east-1.elb.amazonaws.com"
MLFLOW_TG = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/mlflow/1"


def _task(service: str, ports: tuple[int, ...], target_groups: dict | None = None) -> Task:
    image = "1.dkr.ecr/x/orchestration:t"
    mappings = [{"containerPort": port} for port in ports]
    container = Container.from_api(
        service, {"name": service, "image": image, "portMappings": mappings}
    )
    return Task(service, f"arn:td/{service}:1", (container,), {}, target_groups or {}, (), None)


@pytest.fixture
def mapper() -> Mapper:
    rules = (
        Rule(("mlflow.example.org",), ("forward", MLFLOW_TG), authenticated=True),
        Rule((), ("fixed-response", "404"), authenticated=False),
    )
    deployment = Deployment(
        tasks={
            "mlflow": _task("mlflow", (5000,), {MLFLOW_TG: ("mlflow", 5000)}),
            "prefect-server": _task("prefect-server", (4200,)),
            "worker": _task("worker", ()),
        },
        discovery={f"mlflow.{NS}": "mlflow", f"prefect-server.{NS}": "prefect-server"},
        namespaces=(NS,),
        load_balancers={ALB: {443: Listener("HTTPS", rules)}},
        target_group_health={},
        database=Database(DB_HOST, 5432, "churnops", "metrics", None),
        function=Function("f", "arn:f", {}, None, "arn:role", 30.0),
        bucket="b",
    )
    return Mapper(deployment, {("mlflow", 5000): 15000, ("prefect-server", 4200): 14200}, 15432)


def test_service_names_and_the_database_become_local_ports_keeping_credentials(
    mapper: Mapper,
) -> None:
    where = "container worker/worker, variable X"
    assert mapper.value(f"http://prefect-server.{NS}:4200/api", where) == (
        "http://127.0.0.1:14200/api"
    )
    url = f"postgresql+psycopg2://churnops_flow:s3cret@{DB_HOST}:5432/metrics?sslmode=require"
    assert mapper.value(url, where) == (
        "postgresql+psycopg2://churnops_flow:s3cret@127.0.0.1:15432/metrics?sslmode=prefer"
    )
    assert mapper.variable("PGSSLMODE", "require", where, {}) == "prefer"
    # Behind the load balancer's sign-in: TLS ends there, the service speaks http.
    assert mapper.value("https://mlflow.example.org/", where) == "http://127.0.0.1:15000/"
    assert not any("s3cret" in note for note in mapper.notes)


def test_a_host_alone_and_its_port_variable_are_mapped_together(mapper: Mapper) -> None:
    mapper.bare_ports = {}
    assert mapper.value(DB_HOST, "DB_HOST") == "127.0.0.1"
    assert mapper.port_variable("5432", "DB_PORT", {}) == "15432"
    assert mapper.port_variable("60", "INTERVAL", {}) == "60"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"http://mlflw.{NS}:5000", f"mlflw.{NS} is not a name of this deployment"),
        (
            f"http://mlflow.{NS}:5001",
            "port 5001 of ECS service mlflow: its containers listen on 5000",
        ),
        (f"http://prefect-server.{NS}/api", "port 80 of ECS service prefect-server"),
        (f"{DB_HOST}:5433", "listens on 5432, not 5433"),
        (f"http://{ALB}:4200/api", "has no listener on port 4200"),
        (f"https://{ALB}/", "answers https://"),
    ],
)
def test_a_wrong_value_names_the_container_and_variable(
    mapper: Mapper, value: str, message: str
) -> None:
    where = "container worker/worker, variable MLFLOW_TRACKING_URI"
    with pytest.raises(WiringError) as error:
        mapper.value(value, where)
    assert str(error.value).startswith(where)
    assert message in str(error.value)


def test_commands_bind_to_loopback_and_paths_go_to_folders(mapper: Mapper, tmp_path: Path) -> None:
    argv = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
    assert command(argv, mapper, "c", {5000: 15000})[2:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "15000",
    ]
    paths = Paths({"/tmp": tmp_path / "tmp", "/mnt/evidently": tmp_path / "efs"})
    assert paths.value("/mnt/evidently/workspace") == f"{tmp_path}/efs/workspace"
    assert paths.value("sqlite:////tmp/a.db") == f"sqlite:///{tmp_path}/tmp/a.db"
    assert paths.value("/tmpfoo /var/tmp") == "/tmpfoo /var/tmp"


def test_secrets_resolve_whole_and_by_json_key(moto_server: str) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=moto_server)
    arn = sm.create_secret(
        Name="rehearsal-unit/db", SecretString=json.dumps({"username": "u", "password": "p"})
    )["ARN"]
    aws = Aws(moto_server)
    assert secret_value(aws, arn, "c") == json.dumps({"username": "u", "password": "p"})
    assert secret_value(aws, f"{arn}:password::", "c") == "p"
    with pytest.raises(WiringError, match=r"container w/w, secret URL: .* no JSON key 'url'"):
        secret_value(aws, f"{arn}:url::", "container w/w, secret URL")
    with pytest.raises(WiringError, match="no such secret"):
        secret_value(aws, arn[:-3] + "xyz", "c")


def test_the_event_encodes_the_key_as_s3_does() -> None:
    key = "data/input/rehearsal 1+drift é.csv"
    head = {"ContentLength": 3, "ETag": '"abc"', "VersionId": "v1"}
    (record,) = s3_event("b", key, head, "new-input-file", "us-east-1")["Records"]
    encoded = record["s3"]["object"]["key"]
    assert encoded == "data/input/rehearsal+1%2Bdrift+%C3%A9.csv"
    assert decode_event_key(encoded) == key
    assert record["eventName"] == "ObjectCreated:Put"


def test_only_a_notification_that_matches_sends_the_event() -> None:
    configs = [
        {
            "Id": "new-input-file",
            "LambdaFunctionArn": "arn:f",
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "Prefix", "Value": "data/input/"}]}},
        }
    ]
    assert notification_for(configs, "arn:f", "data/input/x.csv") == "new-input-file"
    with pytest.raises(ValueError, match="no notification"):
        notification_for(configs, "arn:f", "data/other/x.csv")
    with pytest.raises(ValueError, match="no notification"):
        notification_for(configs, "arn:g", "data/input/x.csv")


def test_images_are_read_from_their_dockerfiles(tmp_path: Path) -> None:
    flow = images.facts(images.IMAGES["orchestration"].dockerfile)
    assert flow.workdir == "/opt/churnops/code"
    assert flow.env["PREFECT_HOME"] == "/tmp/prefect"
    root = images.build_folder(images.IMAGES["s3-to-prefect-lambda"], tmp_path)
    assert (root / "lambda_function.py").exists()
    assert (root / "churnops" / "drop" / "trigger.py").exists()
    assert not (root / "churnops" / "settings.py").exists()
    assert images.IMAGES["grafana"].not_here


def test_the_lambda_cannot_import_what_its_image_lacks(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(
        "import pandas\ndef handle(event, context):\n    return 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", lambda_runtime.BOOTSTRAP, "handler.handle", "boto3"],
        input="{}",
        env={"LAMBDA_TASK_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "pandas is not in the Lambda image" in done.stderr


def test_a_role_that_may_not_read_a_secret_or_its_key_is_named(moto_server: str) -> None:
    aws = Aws(moto_server)
    key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    sm = aws.client("secretsmanager")
    readable = sm.create_secret(Name="rehearsal-iam/a", SecretString="x", KmsKeyId=key)["ARN"]
    other = sm.create_secret(Name="rehearsal-iam/b", SecretString="y", KmsKeyId=key)["ARN"]
    iam = aws.client("iam")
    role = iam.create_role(RoleName="rehearsal-iam-exec", AssumeRolePolicyDocument="{}")
    statement = {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": readable}
    iam.put_role_policy(
        RoleName="rehearsal-iam-exec",
        PolicyName="secrets",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
    )
    policies = rehearsal_iam.Policies(aws, role["Role"]["Arn"])
    assert rehearsal_iam.secret_problems(aws, policies, readable) == [
        f"role rehearsal-iam-exec may not kms:Decrypt with its key {key}"
    ]
    (problem, _key) = rehearsal_iam.secret_problems(aws, policies, other)
    assert problem == f"role rehearsal-iam-exec may not secretsmanager:GetSecretValue {other}"


def test_the_dashboards_login_is_built_as_grafanas_provisioning_builds_it(tmp_path: Path) -> None:
    env = {
        "METRICS_DB_HOST": "127.0.0.1:5999",
        "METRICS_DB_NAME": "metrics",
        "METRICS_DB_USER": "grafana_ro",
        "METRICS_DB_PASSWORD": "pw$1",
        "METRICS_DB_SSLMODE": "require",
    }
    container = _task("grafana", (3000,)).containers[0]
    local = Local(container, [], env, tmp_path, {}, None, Paths({}))
    assert checks.datasource_login(local) == {
        "host": "127.0.0.1",
        "port": 5999,
        "dbname": "metrics",
        "user": "grafana_ro",
        "password": "pw$1",
        "sslmode": "prefer",
    }
    del env["METRICS_DB_USER"]
    with pytest.raises(WiringError, match=r"container grafana/grafana: .* needs \$METRICS_DB_USER"):
        checks.datasource_login(local)


def test_what_a_container_writes_outside_tmp_and_its_volumes_stays_in_its_folder(
    tmp_path: Path,
) -> None:
    own = {p: tmp_path / "rootfs" / p.lstrip("/") for p in OWN_PLACES}
    paths = Paths({**own, "/var/lib/evidently": tmp_path / "efs", "/tmp": tmp_path / "tmp"})
    assert paths.value("/var/lib/evidently/x") == f"{tmp_path}/efs/x"
    assert paths.value("/var/lib/other") == f"{tmp_path}/rootfs/var/lib/other"
    assert paths.value("/usr/local/bin/python") == "/usr/local/bin/python"


def test_a_service_logging_in_as_the_master_user_is_named(mapper: Mapper, tmp_path: Path) -> None:
    def local(service: str, user: str | None) -> Local:
        url = f"postgresql+psycopg2://{user}:pw@127.0.0.1:15432/metrics"
        env = {"DATABASE_URL": url} if user else {}
        container = mapper.deployment.tasks[service].containers[0]
        return Local(container, [], env, tmp_path, {}, None, Paths({}))

    rehearsal = SimpleNamespace(
        deployment=mapper.deployment,
        mapper=mapper,
        master_users=["churnops"],
        report=SimpleNamespace(facts={}),
        local={
            "worker/worker": local("worker", "churnops_flow"),
            "mlflow/mlflow": local("mlflow", "x"),
            "prefect-server/prefect-server": local("prefect-server", None),
        },
    )
    checks.check_database_logins(rehearsal)
    assert (
        rehearsal.report.facts["database logins"]
        == "mlflow/mlflow as x, worker/worker as churnops_flow"
    )
    rehearsal.local["mlflow/mlflow"] = local("mlflow", "churnops")
    with pytest.raises(WiringError, match=r"container mlflow/mlflow logs in .* as the master user"):
        checks.check_database_logins(rehearsal)


def test_a_failed_database_login_names_user_and_database_but_never_the_password() -> None:
    url = f"postgresql+psycopg2://admin:s3cret-pw@127.0.0.1:{free_port('127.0.0.1')}/metrics"
    with pytest.raises(WiringError, match=r"^login admin to metrics failed") as error, connect(url):
        pass
    assert "s3cret-pw" not in str(error.value)
