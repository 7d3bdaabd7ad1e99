"""What `apply-local` created, read back from the emulator's AWS APIs.

Only what the rehearsal needs: every ECS service's task definition, how its
containers are reached (Cloud Map names, load-balancer rules), the database
instance, the Lambda, the bucket's notification and the secrets. Read through the
APIs, as ECS and Lambda would see it, not from terraform's state file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from terraform.scripts.tf_local import REGION, emulator_client


class WiringError(RuntimeError):
    """The deployment's wiring is wrong; the message names the container and variable."""


@dataclass(frozen=True)
class Aws:
    endpoint: str
    region: str = REGION

    def client(self, service: str) -> Any:
        return emulator_client(self.endpoint, service, self.region)


@dataclass(frozen=True)
class Container:
    service: str
    name: str
    image: str
    command: list[str] | None
    entry_point: list[str] | None
    environment: dict[str, str]
    #: variable name -> valueFrom (a Secrets Manager or SSM parameter ARN)
    secrets: dict[str, str]
    essential: bool
    #: (container name, condition), e.g. ("init", "SUCCESS")
    depends_on: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]
    health_check: dict[str, Any] | None
    #: (volume name, container path)
    mount_points: tuple[tuple[str, str], ...]
    working_directory: str | None

    @property
    def label(self) -> str:
        """How messages name it: ``service/container``."""
        return f"{self.service}/{self.name}"

    @classmethod
    def from_api(cls, service: str, raw: dict[str, Any]) -> Container:
        return cls(
            service=service,
            name=raw["name"],
            image=raw["image"],
            command=raw.get("command") or None,
            entry_point=raw.get("entryPoint") or None,
            environment={e["name"]: e["value"] for e in raw.get("environment", [])},
            secrets={s["name"]: s["valueFrom"] for s in raw.get("secrets", [])},
            essential=raw.get("essential", True),
            depends_on=tuple(
                (d["containerName"], d["condition"]) for d in raw.get("dependsOn", [])
            ),
            ports=tuple(p["containerPort"] for p in raw.get("portMappings", [])),
            health_check=raw.get("healthCheck"),
            mount_points=tuple(
                (m["sourceVolume"], m["containerPath"]) for m in raw.get("mountPoints", [])
            ),
            working_directory=raw.get("workingDirectory"),
        )


@dataclass(frozen=True)
class Task:
    """An ECS service: its task definition and how it is reached."""

    service: str
    definition_arn: str
    containers: tuple[Container, ...]
    #: volume name -> what identifies its storage across tasks (an EFS file system and
    #: root directory, or the task's own name for a task-local volume)
    volumes: dict[str, str]
    #: target group ARN -> (container, port)
    target_groups: dict[str, tuple[str, int]]
    #: Cloud Map service ARNs the service registers in
    registries: tuple[str, ...]
    execution_role_arn: str | None
    #: a task definition run on demand (RunTask by `make apply`), not an ECS service
    one_off: bool = False

    def container(self, name: str) -> Container:
        (found,) = [c for c in self.containers if c.name == name]
        return found

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for c in self.containers for p in c.ports)

    def waited_for(self) -> list[str]:
        """Containers another container waits for to exit (dependsOn SUCCESS or COMPLETE):
        the init containers."""
        return list(
            dict.fromkeys(
                name
                for c in self.containers
                for name, condition in c.depends_on
                if condition in ("SUCCESS", "COMPLETE")
            )
        )


@dataclass(frozen=True)
class Rule:
    """A load-balancer listener rule (or its default action), in evaluation order."""

    hosts: tuple[str, ...]
    #: the action a request ends in: ("forward", target group ARN) or ("fixed-response", code)
    outcome: tuple[str, str]
    authenticated: bool


@dataclass(frozen=True)
class Listener:
    protocol: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Database:
    """The RDS instance: where it is, its master user and first database."""

    address: str
    port: int
    master_username: str
    database: str
    #: the RDS-managed master secret, when the instance manages its password
    master_secret_arn: str | None


@dataclass(frozen=True)
class Function:
    """The Lambda: its environment, handler image and network placement."""

    name: str
    arn: str
    environment: dict[str, str]
    image_command: list[str] | None
    role_arn: str
    timeout: float


@dataclass
class Deployment:
    """Everything the rehearsal reads from the emulator."""

    tasks: dict[str, Task]
    #: Cloud Map: fully qualified name -> ECS service
    discovery: dict[str, str]
    namespaces: tuple[str, ...]
    #: DNS name -> its listeners by port
    load_balancers: dict[str, dict[int, Listener]]
    target_group_health: dict[str, dict[str, Any]]
    database: Database
    #: None when the emulator has no such function (a failed apply)
    function: Function | None
    bucket: str
    notification: list[dict[str, Any]] = field(default_factory=list)

    def service_of_target_group(self, arn: str) -> tuple[str, int]:
        """(service, container port) behind a target group."""
        for task in self.tasks.values():
            if arn in task.target_groups:
                return task.service, task.target_groups[arn][1]
        raise WiringError(f"target group {arn} has no ECS service behind it")


# ---------------------------------------------------------------------------- reading
def read(aws: Aws, outputs: dict[str, Any]) -> Deployment:
    """The deployment as the emulator's APIs describe it, found from terraform's outputs:
    the bucket, the Lambda, and db_bootstrap_task, the task definition `make apply` runs
    on demand (not a service)."""
    tasks = read_tasks(aws)
    bucket = outputs["bucket_name"]
    if "db_bootstrap_task" in outputs:
        run = outputs["db_bootstrap_task"]
        ecs = aws.client("ecs")
        definition = ecs.describe_task_definition(taskDefinition=run["task_definition"])
        service = {"serviceName": run["container"]}
        tasks[run["container"]] = _task(service, definition["taskDefinition"], one_off=True)
    discovery, namespaces = read_discovery(aws, tasks)
    balancers, health = read_load_balancers(aws)
    return Deployment(
        tasks=tasks,
        discovery=discovery,
        namespaces=namespaces,
        load_balancers=balancers,
        target_group_health=health,
        database=read_database(aws),
        function=read_function(aws, outputs["lambda_function_name"]),
        bucket=bucket,
        notification=aws.client("s3")
        .get_bucket_notification_configuration(Bucket=bucket)
        .get("LambdaFunctionConfigurations", []),
    )


def read_tasks(aws: Aws) -> dict[str, Task]:
    """Every ECS service of every cluster, with its current task definition."""
    ecs = aws.client("ecs")
    tasks: dict[str, Task] = {}
    for cluster in ecs.list_clusters()["clusterArns"]:
        arns = ecs.list_services(cluster=cluster, maxResults=100)["serviceArns"]
        if not arns:
            continue
        for service in ecs.describe_services(cluster=cluster, services=arns)["services"]:
            definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
            tasks[service["serviceName"]] = _task(service, definition["taskDefinition"])
    return tasks


def _task(service: dict[str, Any], definition: dict[str, Any], one_off: bool = False) -> Task:
    name = service["serviceName"]
    return Task(
        service=name,
        definition_arn=definition["taskDefinitionArn"],
        containers=tuple(Container.from_api(name, c) for c in definition["containerDefinitions"]),
        volumes={v["name"]: _volume_key(name, v) for v in definition.get("volumes", [])},
        target_groups={
            lb["targetGroupArn"]: (lb["containerName"], lb["containerPort"])
            for lb in service.get("loadBalancers", [])
        },
        registries=tuple(r["registryArn"] for r in service.get("serviceRegistries", [])),
        execution_role_arn=definition.get("executionRoleArn"),
        one_off=one_off,
    )


def _volume_key(service: str, volume: dict[str, Any]) -> str:
    """Tasks that mount the same EFS file system and directory share its files."""
    efs = volume.get("efsVolumeConfiguration")
    if efs:
        access_point = efs.get("authorizationConfig", {}).get("accessPointId", "")
        root = efs.get("rootDirectory", "/").strip("/").replace("/", "-")
        return "-".join(p for p in ("efs", efs["fileSystemId"], access_point, root) if p)
    return f"task-{service}-{volume['name']}"


def read_discovery(aws: Aws, tasks: dict[str, Task]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Cloud Map: ``<name>.<namespace>`` -> the ECS service registered under it."""
    sd = aws.client("servicediscovery")
    namespaces = {n["Id"]: n["Name"] for n in sd.list_namespaces()["Namespaces"]}
    by_registry = {arn: t.service for t in tasks.values() for arn in t.registries}
    names: dict[str, str] = {}
    for service in sd.list_services()["Services"]:
        namespace = namespaces.get(service.get("DnsConfig", {}).get("NamespaceId", ""))
        if namespace and service["Arn"] in by_registry:
            names[f"{service['Name']}.{namespace}"] = by_registry[service["Arn"]]
    return names, tuple(namespaces.values())


def read_load_balancers(
    aws: Aws,
) -> tuple[dict[str, dict[int, Listener]], dict[str, dict[str, Any]]]:
    """Load balancers' listeners by DNS name, and each target group's health check."""
    elb = aws.client("elbv2")
    balancers = {
        lb["DNSName"]: {
            listener["Port"]: Listener(listener["Protocol"], _rules(elb, listener["ListenerArn"]))
            for listener in elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])[
                "Listeners"
            ]
        }
        for lb in elb.describe_load_balancers()["LoadBalancers"]
    }
    health = {tg["TargetGroupArn"]: tg for tg in elb.describe_target_groups()["TargetGroups"]}
    return balancers, health


def _rules(elb: Any, listener_arn: str) -> tuple[Rule, ...]:
    raw = elb.describe_rules(ListenerArn=listener_arn)["Rules"]
    ordered = sorted(raw, key=lambda r: (r.get("IsDefault", False), _priority(r)))
    return tuple(_rule(r) for r in ordered)


def _priority(rule: dict[str, Any]) -> int:
    return int(rule["Priority"]) if str(rule.get("Priority", "")).isdigit() else 1 << 30


def _rule(raw: dict[str, Any]) -> Rule:
    hosts = [
        host
        for condition in raw.get("Conditions", [])
        if condition.get("Field") == "host-header"
        for host in condition.get("HostHeaderConfig", {}).get(
            "Values", condition.get("Values") or []
        )
    ]
    actions = sorted(raw.get("Actions", []), key=lambda a: a.get("Order", 0))
    last = actions[-1] if actions else {"Type": "none"}
    if last["Type"] == "forward":
        target = (
            last.get("TargetGroupArn") or last["ForwardConfig"]["TargetGroups"][0]["TargetGroupArn"]
        )
        outcome = ("forward", target)
    else:
        outcome = (last["Type"], str(last.get("FixedResponseConfig", {}).get("StatusCode", "")))
    return Rule(
        hosts=tuple(hosts),
        outcome=outcome,
        authenticated=any(a["Type"].startswith("authenticate") for a in actions),
    )


def read_database(aws: Aws) -> Database:
    (db,) = aws.client("rds").describe_db_instances()["DBInstances"]
    return Database(
        address=db["Endpoint"]["Address"],
        port=int(db["Endpoint"]["Port"]),
        master_username=db["MasterUsername"],
        database=db.get("DBName") or "postgres",
        master_secret_arn=(db.get("MasterUserSecret") or {}).get("SecretArn"),
    )


def read_function(aws: Aws, name: str) -> Function | None:
    client = aws.client("lambda")
    try:
        config = client.get_function_configuration(FunctionName=name)
    except client.exceptions.ResourceNotFoundException:
        return None
    image = config.get("ImageConfigResponse", {}).get("ImageConfig", {})
    return Function(
        name=name,
        arn=config["FunctionArn"],
        environment=dict(config.get("Environment", {}).get("Variables", {})),
        image_command=image.get("Command"),
        role_arn=config["Role"],
        timeout=float(config.get("Timeout", 3)),
    )


# ---------------------------------------------------------------------------- secrets
def secret_value(aws: Aws, value_from: str, where: str) -> str:
    """What ECS injects for a Secrets Manager ``valueFrom``: the whole secret, or one JSON key
    (``arn:...:secret:name:json-key::``). A WiringError names ``where`` and why."""
    parts = value_from.split(":")
    arn, json_key = ":".join(parts[:7]), (parts[7] if len(parts) > 7 else "")
    where = f"{where}: valueFrom {value_from}"
    sm = aws.client("secretsmanager")
    try:
        text = sm.get_secret_value(SecretId=arn)["SecretString"]
    except sm.exceptions.ResourceNotFoundException:
        raise WiringError(f"{where}: no such secret (or no value) in Secrets Manager") from None
    except KeyError:
        raise WiringError(f"{where}: the secret holds binary data, ECS injects text only") from None
    if not json_key:
        return text
    try:
        document = json.loads(text)
    except ValueError:
        raise WiringError(
            f"{where} asks for JSON key {json_key!r} but the secret is not JSON"
        ) from None
    if not isinstance(document, dict) or json_key not in document:
        keys = ", ".join(sorted(document)) if isinstance(document, dict) else "none"
        raise WiringError(f"{where}: the secret has no JSON key {json_key!r} (keys: {keys})")
    return str(document[json_key])
