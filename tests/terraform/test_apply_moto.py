"""`terraform apply` of the whole root module against moto, checked with boto3, then destroyed.

The tests run in file order on one deployment, applied in the background from the
start of the session (see ``conftest.py``); the last test destroys it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from .conftest import Deployment, begin_destroy, destroyed, early_apply

pytestmark = pytest.mark.integration

EXPECTED_SERVICES = {"mlflow", "prefect-server", "worker", "evidently", "grafana"}
UI_PORTS = {5000, 4200, 8000, 3000}


@pytest.fixture(scope="module")
def deployment(terraform_bin: str) -> Iterator[Deployment]:
    """The deployment :func:`~tests.terraform.conftest.pytest_collection_finish` began.

    When the checks are done it is destroyed in the background, and
    ``test_destroy_leaves_nothing_behind``, moved to the end of the session by
    ``conftest.py``, checks what the destroy left.
    """
    yield early_apply().result()
    begin_destroy()


def test_outputs_give_every_ui_the_bucket_and_the_topic(deployment: Deployment) -> None:
    out = deployment.outputs
    for key in ("mlflow_url", "prefect_ui_url", "evidently_url", "grafana_url"):
        assert out[key].startswith("http://"), key
    assert out["prefect_api_url"].endswith(":4200/api")
    assert set(out["ui_urls"]) == {"mlflow", "prefect-server", "evidently", "grafana"}
    assert out["bucket_name"].startswith("churnops-emu-drop-")
    assert out["alerts_topic_arn"].startswith("arn:aws:sns:")


def test_bucket_layout_protection_and_notification(deployment: Deployment) -> None:
    s3 = deployment.client("s3")
    bucket = deployment.outputs["bucket_name"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    sse = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    assert sse["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    expiring = {r["Filter"].get("Prefix") for r in rules if "Expiration" in r}
    assert "data/processed/" in expiring

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="data/")["Contents"]}
    assert keys == {f"data/{p}/" for p in ("input", "processing", "processed", "errored", "logs")}

    lam = deployment.client("lambda").get_function(
        FunctionName=deployment.outputs["lambda_function_name"]
    )
    notification = s3.get_bucket_notification_configuration(Bucket=bucket)
    (config,) = notification["LambdaFunctionConfigurations"]
    assert config["LambdaFunctionArn"] == lam["Configuration"]["FunctionArn"]
    assert config["Events"] == ["s3:ObjectCreated:*"]
    (rule,) = config["Filter"]["Key"]["FilterRules"]
    assert rule["Name"].lower() == "prefix" and rule["Value"] == "data/input/"


def test_lambda_is_an_image_with_a_logs_only_role(deployment: Deployment) -> None:
    lam = deployment.client("lambda")
    name = deployment.outputs["lambda_function_name"]
    config = lam.get_function(FunctionName=name)["Configuration"]
    assert config["PackageType"] == "Image"
    env = config["Environment"]["Variables"]
    assert env["PREFECT_API_URL"] == deployment.outputs["prefect_api_url"]
    assert env["PREFECT_DEPLOYMENT"] == "churn_prediction_pipeline/churnops"
    assert env["INPUT_PREFIX"] == "data/input/"

    iam = deployment.client("iam")
    role = config["Role"].rsplit("/", 1)[1]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    (policy_name,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
    doc = iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    actions = {a for s in doc["Statement"] for a in _as_list(s["Action"])}
    assert actions == {"logs:CreateLogStream", "logs:PutLogEvents"}

    policy = json.loads(lam.get_policy(FunctionName=name)["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"]["Service"] == "s3.amazonaws.com"


def test_topic_has_the_email_subscription(deployment: Deployment) -> None:
    sns = deployment.client("sns")
    subs = sns.list_subscriptions_by_topic(TopicArn=deployment.outputs["alerts_topic_arn"])
    assert [(s["Protocol"], s["Endpoint"]) for s in subs["Subscriptions"]] == [
        ("email", "alerts@example.com")
    ]


def test_database_is_private_encrypted_and_its_password_only_in_secrets(
    deployment: Deployment,
) -> None:
    rds = deployment.client("rds")
    (db,) = rds.describe_db_instances(DBInstanceIdentifier=deployment.outputs["db_instance_id"])[
        "DBInstances"
    ]
    assert db["PubliclyAccessible"] is False
    assert db["StorageEncrypted"] is True
    assert db["Engine"] == "postgres"

    sm = deployment.client("secretsmanager")
    names = {s["Name"] for s in sm.list_secrets()["SecretList"]}
    assert {
        "churnops-emu/db/master",
        "churnops-emu/db/grafana-readonly",
        "churnops-emu/db/metrics-url",
        "churnops-emu/grafana/admin",
    } <= names
    master = json.loads(sm.get_secret_value(SecretId="churnops-emu/db/master")["SecretString"])
    assert len(master["password"]) == 32
    url = sm.get_secret_value(SecretId=deployment.outputs["database_url_secret_arn"])
    assert url["SecretString"].startswith("postgresql+psycopg2://churnops:")
    assert url["SecretString"].endswith(f"@{db['Endpoint']['Address']}:5432/metrics")
    assert master["password"] in url["SecretString"]
    assert master["password"] not in json.dumps(deployment.outputs)


def test_ecs_services_and_task_definitions(deployment: Deployment) -> None:
    ecs = deployment.client("ecs")
    cluster = deployment.outputs["ecs_cluster_name"]
    arns = ecs.list_services(cluster=cluster)["serviceArns"]
    services = ecs.describe_services(cluster=cluster, services=arns)["services"]
    assert {s["serviceName"] for s in services} == EXPECTED_SERVICES
    by_name = {}
    for service in services:
        assert service["launchType"] == "FARGATE"
        task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
        by_name[service["serviceName"]] = (service, task["taskDefinition"])
        assert task["taskDefinition"]["executionRoleArn"] != task["taskDefinition"]["taskRoleArn"]

    for name in EXPECTED_SERVICES - {"worker"}:
        assert by_name[name][0]["loadBalancers"], name

    _, worker = by_name["worker"]
    (container,) = worker["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"]}
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    assert env["DROP_STORAGE"] == "s3"
    assert env["ALERTS_TOPIC_ARN"] == deployment.outputs["alerts_topic_arn"]
    assert env["PREFECT_API_URL"].endswith(":4200/api")
    assert {"MLFLOW_TRACKING_URI", "EVIDENTLY_UI_URL"} <= set(env)
    assert "DATABASE_URL" not in env
    assert secrets["DATABASE_URL"] == deployment.outputs["database_url_secret_arn"]
    assert "prefect worker start" in " ".join(container["command"])

    _, grafana = by_name["grafana"]
    init, main = grafana["containerDefinitions"]
    assert init["essential"] is False
    assert main["dependsOn"] == [{"containerName": "init", "condition": "SUCCESS"}]
    assert "METRICS_DB_PASSWORD" in {s["name"] for s in main["secrets"]}


def test_worker_role_is_scoped_to_data_prefixes_topic_and_key(deployment: Deployment) -> None:
    iam = deployment.client("iam")
    doc = iam.get_role_policy(RoleName="churnops-emu-worker-task", PolicyName="application")
    doc = doc["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    bucket = deployment.outputs["bucket_name"]
    resources = {r for s in doc["Statement"] for r in _as_list(s["Resource"])}
    assert f"arn:aws:s3:::{bucket}/data/*" in resources
    assert deployment.outputs["alerts_topic_arn"] in resources
    assert "*" not in resources
    assert f"arn:aws:s3:::{bucket}/*" not in resources


def test_alb_has_one_listener_per_ui_and_cidr_ingress(deployment: Deployment) -> None:
    elb = deployment.client("elbv2")
    (lb,) = elb.describe_load_balancers(Names=["churnops-emu"])["LoadBalancers"]
    listeners = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    assert {listener["Port"] for listener in listeners} == UI_PORTS
    ec2 = deployment.client("ec2")
    (sg,) = ec2.describe_security_groups(GroupIds=lb["SecurityGroups"])["SecurityGroups"]
    assert {p["FromPort"] for p in sg["IpPermissions"]} == UI_PORTS
    cidrs = {r["CidrIp"] for p in sg["IpPermissions"] for r in p["IpRanges"]}
    assert cidrs == set(deployment.tfvars["allowed_cidr_blocks"])


def test_ecr_repositories_scan_on_push(deployment: Deployment) -> None:
    repos = deployment.client("ecr").describe_repositories()["repositories"]
    assert {r["repositoryName"] for r in repos} == {
        "churnops-emu/orchestration",
        "churnops-emu/s3-to-prefect-lambda",
        "churnops-emu/grafana",
    }
    assert all(r["imageScanningConfiguration"]["scanOnPush"] for r in repos)


def test_disable_lambda_removes_the_notification(deployment: Deployment) -> None:
    # What `make disable-lambda` applies (targeted, here without a refresh to save time);
    # `make enable-lambda` is the same apply with lambda_enabled = true (the initial state).
    s3 = deployment.client("s3")
    bucket = deployment.outputs["bucket_name"]
    deployment.apply(
        "-target=module.s3.aws_s3_bucket_notification.drop",
        "-refresh=false",
        "-var=lambda_enabled=false",
    )
    config = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert not config.get("LambdaFunctionConfigurations")


def test_destroy_leaves_nothing_behind(terraform_bin: str) -> None:
    deployment = destroyed().result()
    assert deployment.destroyed
    c = deployment.client
    assert c("s3").list_buckets()["Buckets"] == []
    assert c("lambda").list_functions()["Functions"] == []
    assert c("sns").list_topics()["Topics"] == []
    assert c("rds").describe_db_instances()["DBInstances"] == []
    assert c("ecr").describe_repositories()["repositories"] == []
    assert c("elbv2").describe_load_balancers()["LoadBalancers"] == []
    assert c("elbv2").describe_target_groups()["TargetGroups"] == []
    assert c("secretsmanager").list_secrets()["SecretList"] == []
    assert c("logs").describe_log_groups()["logGroups"] == []
    assert c("iam").list_roles()["Roles"] == []
    assert c("servicediscovery").list_namespaces()["Namespaces"] == []
    ecs = c("ecs")
    active = [
        cl
        for cl in ecs.describe_clusters(clusters=ecs.list_clusters()["clusterArns"])["clusters"]
        if cl["status"] == "ACTIVE"
    ]
    assert active == []
    groups = c("ec2").describe_security_groups()["SecurityGroups"]
    assert {g["GroupName"] for g in groups} == {"default"}
    # KMS keys cannot be deleted at once: they must be scheduled for deletion.
    kms = c("kms")
    states = {
        kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
        for k in kms.list_keys()["Keys"]
    }
    assert states <= {"PendingDeletion"}


def _as_list(value):
    return value if isinstance(value, list) else [value]
