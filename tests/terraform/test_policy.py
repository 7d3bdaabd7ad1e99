"""Policy checks on `terraform show -json` of plans of the root module (against moto):
nothing unauthenticated is reachable from outside, and the Lambda runs in the VPC.

"production" is the widest the module allows (the load balancer open to 0.0.0.0/0) and
keeps the default runner autoscaling, which the emulator's apply cannot (it runs a fixed
runner). Configurations the module must refuse are planned too, and the checkers run on
altered copies of the production plan, so each can be seen to fail.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import DEFAULT, REPO, Deployment, tf_local

OPEN = {"0.0.0.0/0", "::/0"}
AUTHENTICATE = {"authenticate-cognito", "authenticate-oidc"}
CONTROL_PLANES = ("prefect", "mlflow", "evidently")
LOAD_BALANCERS = ("aws_lb", "aws_alb")
LISTENERS = ("aws_lb_listener", "aws_alb_listener")
RULES = ("aws_lb_listener_rule", "aws_alb_listener_rule")
PREFECT_PORT = 4200

OIDC = {
    "issuer": "https://idp.example.com",
    "authorization_endpoint": "https://idp.example.com/authorize",
    "token_endpoint": "https://idp.example.com/token",
    "user_info_endpoint": "https://idp.example.com/userinfo",
    "client_id": "churnops",
}
GITHUB_OIDC = "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "production": {"allowed_cidr_blocks": ["0.0.0.0/0"], "worker_max_count": DEFAULT},
    "oidc": {
        "allowed_cidr_blocks": ["0.0.0.0/0"],
        "ui_authentication": "oidc",
        "ui_oidc": OIDC,
        "ui_oidc_client_secret": "not-a-real-client-secret",
    },
    "development": {"allow_insecure_http": True, "certificate_arn": None, "private_subnet_ids": []},
    # The minimal profile's switches, with the tunnel on and the GitHub roles; a longer
    # project: "churnops-monitoring-emu-prefect-server" is cut to 32 characters at a dash.
    "tunnel": {
        "project": "churnops-monitoring",
        "service_sizes": {
            "mlflow": {"cpu": 256, "memory": 1024},
            "prefect-server": {"cpu": 512, "memory": 1024},
            "worker": {"cpu": 1024, "memory": 2048},
            "evidently": {"cpu": 256, "memory": 512},
            "grafana": {"cpu": 256, "memory": 512},
        },
        "tunnel_enabled": True,
        "container_insights": False,
        "github_repository": "acme/churnops",
        "github_oidc_provider_arn": GITHUB_OIDC,
        "github_state_bucket": "acme-tfstate",
    },
}
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "no certificate, no flag": ({"certificate_arn": None}, "HTTPS is required"),
    "plain HTTP open to anyone": (
        {
            "allow_insecure_http": True,
            "certificate_arn": None,
            "allowed_cidr_blocks": ["0.0.0.0/0"],
        },
        "narrow allowed_cidr_blocks",
    ),
    "certificate without domain": ({"ui_domain": None}, "needs ui_domain"),
}
#: Values the variables' own validations refuse. Terraform names every invalid variable of
#: a plan at once, so these share plans (:func:`shared_plans`): a plan apiece cost a minute.
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    # The database's names allow no dash at the end and no two in a row.
    "project ending with a dash": ({"project": "churnops-"}, "single dashes"),
    # Four target groups of the same 32 characters, which only the apply would refuse.
    "names too long to tell the UIs apart": (
        {"project": "customer-churn-models", "environment": "staging001"},
        "29 characters together",
    ),
    # Sizes only ECS would refuse, mid-apply, or ignore without a word.
    "a size Fargate does not run": (
        {"service_sizes": {"worker": {"cpu": 1024, "memory": 512}}},
        "Fargate runs",
    ),
    "a size for no service": (
        {"service_sizes": {"prefect_server": {"cpu": 512, "memory": 1024}}},
        "does not exist",
    ),
    # Values that plan and fail half-way through the apply: the template's placeholders
    # (nothing looks the VPC up at plan), a Cognito user name that is not an address.
    "the template's placeholders left in": (
        {"vpc_id": "vpc-REPLACE", "alert_email": "REPLACE@example.com"},
        "vpc_id still holds",
    ),
    "a UI user that is not an e-mail address": ({"ui_users": ["alice"]}, "ui_users must be"),
    # What only CreateBucket or CreateDBInstance refuses, and a trigger that never runs.
    "a bucket name S3 refuses": ({"bucket_name": "My_Bucket"}, "bucket_name must be"),
    "less storage than gp3 has": ({"db_allocated_storage": 5}, "at least 20 GiB"),
    "a Lambda throttled for good": (
        {"lambda_reserved_concurrency": 0},
        "concurrency must be at least 1",
    ),
}


# --- a plan as JSON: planned values by address, and which resource an attribute of another
# one points at (from the plan's configuration: ARNs and ids are unknown before apply) ---------
#: ``aws_lb.this``, ``aws_lb_listener.https[0]``, ``aws_lb_target_group.this.arn``
REFERENCE = re.compile(r"^(?P<type>aws_\w+)\.(?P<name>[\w-]+)(?:\[(?P<index>[^\]]+)\])?(?:\.\w+)*$")


class UnresolvedReference(AssertionError):
    """An attribute points at something the plan cannot name (a variable, a module output)."""


def plan_module(
    endpoint: str, workdir: Path, cli_config: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Plan the root module with the emulator's variables and ``overrides``; the plan as JSON.
    A ``RuntimeError`` carries terraform's output when the plan fails (a precondition)."""
    deployment = Deployment(endpoint, workdir, cli_config, overrides)
    deployment.tf("init", "-input=false", "-no-color")
    deployment.tf("plan", "-input=false", "-no-color", "-out=plan.bin")
    return json.loads(deployment.tf("show", "-json", "plan.bin"))


@dataclass(frozen=True)
class Resource:
    """One planned resource instance."""

    address: str
    module: str  # "" for the root module, e.g. "module.alb"
    type: str
    name: str
    index: Any  # None, a count index or a for_each key
    after: dict[str, Any]
    #: Which attributes are known only after apply (``after_unknown``).
    unknown: dict[str, Any]


class Plan:
    """Planned resources, and resolution of one resource's references to others."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.resources = {
            r["address"]: Resource(
                address=r["address"],
                module=r.get("module_address", ""),
                type=r["type"],
                name=r["name"],
                index=r.get("index"),
                after=r["change"]["after"] or {},
                unknown=r["change"].get("after_unknown") or {},
            )
            for r in raw["resource_changes"]
            if r["mode"] == "managed" and "delete" not in r["change"]["actions"]
        }

    def of_type(self, *types: str) -> Iterator[Resource]:
        return (r for r in self.resources.values() if r.type in types)

    def configuration(self, address: str) -> dict[str, Any]:
        """The root module's configuration of a resource or data source."""
        (found,) = [
            r
            for r in self.raw["configuration"]["root_module"]["resources"]
            if r["address"] == address
        ]
        return found

    def expressions(self, resource: Resource) -> dict[str, Any]:
        """The configuration's expressions of the resource (not those of dynamic blocks)."""
        module = self.raw["configuration"]["root_module"]
        for call in filter(None, resource.module.split(".")[1::2]):
            module = module["module_calls"][call]["module"]
        for config in module.get("resources", []):
            if config["address"] == f"{resource.type}.{resource.name}":
                return config.get("expressions", {})
        raise KeyError(resource.address)

    def resolve(self, resource: Resource, expression: dict[str, Any] | None) -> Resource:
        """The resource instance that an attribute of ``resource`` refers to."""
        found = self.resolve_all(resource, expression)
        if len(found) != 1:
            references = (expression or {}).get("references", [])
            raise UnresolvedReference(f"{resource.address}: {references} name {len(found)}")
        return found[0]

    def resolve_all(self, resource: Resource, expression: dict[str, Any] | None) -> list[Resource]:
        """The resource instances an attribute of ``resource`` refers to (a list of ids).

        Only references to resources of the same module are followed; anything else
        (a variable, a module's output) raises :class:`UnresolvedReference`.
        """
        references = (expression or {}).get("references", [])
        found: dict[str, Resource] = {}
        for reference in references:
            match = REFERENCE.match(reference)
            if match is None:
                if reference != "each.key":
                    raise UnresolvedReference(f"{resource.address}: {reference} is not a resource")
                continue
            index = match["index"]
            if index is None and any(
                r.startswith(f"{match['type']}.{match['name']}[") for r in references
            ):
                continue  # ``aws_lb_listener.https`` beside ``aws_lb_listener.https[0]``
            if index == "each.key" or (index is None and "each.key" in references):
                index = json.dumps(resource.index)
            prefix = f"{resource.module}." if resource.module else ""
            address = f"{prefix}{match['type']}.{match['name']}"
            address += "" if index is None else f"[{index}]"
            if address not in self.resources:
                raise UnresolvedReference(f"{resource.address}: {reference} is not planned")
            found[address] = self.resources[address]
        return list(found.values())


# --- the plans ------------------------------------------------------------------------------
class Plans(dict[str, Plan | RuntimeError]):
    """The plans by configuration; ``plans[name]`` fails the test if it did not plan."""

    def __getitem__(self, name: str) -> Plan:
        result = super().__getitem__(name)
        assert isinstance(result, Plan), f"{name} did not plan: {result}"
        return result


@pytest.fixture(scope="module")
def planned(terraform_bin: str, moto_server: str) -> Iterator[Plans]:
    """Every configuration planned against the session's moto server, three at a time."""
    root = Path(tempfile.mkdtemp(prefix="churnops-tf-policy-"))
    cli_config = tf_local.write_cli_config(root / "terraform.rc")
    shared, _ = shared_plans(INVALID)
    jobs = {**CONFIGURATIONS, **{name: vars_ for name, (vars_, _) in REFUSED.items()}, **shared}

    def plan(item: tuple[int, str]) -> Plan | RuntimeError:
        number, name = item
        try:
            return Plan(plan_module(moto_server, root / str(number), cli_config, jobs[name]))
        except RuntimeError as exc:
            return exc

    try:
        with ThreadPoolExecutor(3) as pool:
            yield Plans(zip(jobs, pool.map(plan, enumerate(jobs)), strict=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def plan(request: pytest.FixtureRequest, planned: Plans) -> Plan:
    return planned[request.param]


@pytest.fixture(scope="module")
def production(planned: Plans) -> Plan:
    return planned["production"]


# --- the checkers -----------------------------------------------------------------------------
def open_ingress(plan: Plan) -> Iterator[tuple[Resource, dict[str, Any]]]:
    """(security group, rule) for every ingress from 0.0.0.0/0 or ::/0, however written."""
    for group in plan.of_type("aws_security_group"):
        for rule in group.after.get("ingress") or []:
            cidrs = (rule.get("cidr_blocks") or []) + (rule.get("ipv6_cidr_blocks") or [])
            if OPEN & set(cidrs):
                yield group, rule
    for rule in plan.of_type("aws_vpc_security_group_ingress_rule"):
        if {rule.after.get("cidr_ipv4"), rule.after.get("cidr_ipv6")} & OPEN:
            group = plan.resolve(rule, plan.expressions(rule).get("security_group_id"))
            yield group, {**rule.after, "protocol": rule.after.get("ip_protocol")}
    for rule in plan.of_type("aws_security_group_rule"):
        cidrs = (rule.after.get("cidr_blocks") or []) + (rule.after.get("ipv6_cidr_blocks") or [])
        if rule.after.get("type") == "ingress" and OPEN & set(cidrs):
            yield plan.resolve(rule, plan.expressions(rule).get("security_group_id")), rule.after


def listeners_of(plan: Plan, load_balancer: Resource) -> list[Resource]:
    return [
        listener
        for listener in plan.of_type(*LISTENERS)
        if plan.resolve(listener, plan.expressions(listener).get("load_balancer_arn"))
        == load_balancer
    ]


def public_https_groups(plan: Plan) -> set[str]:
    """Security groups of internet-facing load balancers that listen on HTTPS 443."""
    groups: set[str] = set()
    for balancer in plan.of_type(*LOAD_BALANCERS):
        https = any(
            (lis.after.get("port"), lis.after.get("protocol")) == (443, "HTTPS")
            for lis in listeners_of(plan, balancer)
        )
        if not balancer.after.get("internal") and https:
            expression = plan.expressions(balancer).get("security_groups")
            groups |= {g.address for g in plan.resolve_all(balancer, expression)}
    return groups


def ingress_violations(plan: Plan) -> list[str]:
    """Ingress from anywhere to anything but 443 of a public HTTPS listener."""
    allowed = public_https_groups(plan)
    return [
        f"{group.address}: {rule.get('protocol')} {rule.get('from_port')}-{rule.get('to_port')}"
        " from anywhere"
        for group, rule in open_ingress(plan)
        if not (
            rule.get("from_port") == rule.get("to_port") == 443
            and str(rule.get("protocol")) in ("tcp", "6")
            and group.address in allowed
        )
    ]


def forwards(plan: Plan) -> Iterator[tuple[Resource, Resource, list[dict], Resource, int]]:
    """(listener or rule, its load balancer, its actions, target group, the forward's
    position) for every forward action of every listener and listener rule."""
    for source in [*plan.of_type(*LISTENERS), *plan.of_type(*RULES)]:
        expressions = plan.expressions(source)
        listener = source
        if source.type in RULES:
            listener = plan.resolve(source, expressions.get("listener_arn"))
        balancer = plan.resolve(listener, plan.expressions(listener).get("load_balancer_arn"))
        key = "action" if source.type in RULES else "default_action"
        actions = sorted(source.after.get(key) or [], key=lambda a: a.get("order") or 0)
        configured = [
            c
            for c in expressions.get(key, [])
            if c.get("type", {}).get("constant_value") == "forward"
        ]
        for position, action in enumerate(actions):
            if action.get("type") != "forward":
                continue
            assert len(configured) == 1, f"{source.address}: forward not written as one block"
            group = plan.resolve(source, configured[0].get("target_group_arn"))
            yield source, balancer, actions, group, position


def is_control_plane(group: Resource) -> bool:
    return any(word in group.after.get("name", "") for word in CONTROL_PLANES)


def unauthenticated_forwards(plan: Plan, targets: Any = is_control_plane) -> list[str]:
    """Forwards to ``targets`` on an internet-facing load balancer without a sign-in first."""
    return [
        f"{source.address} forwards to {group.after.get('name')} on public {balancer.address}"
        for source, balancer, actions, group, position in forwards(plan)
        if targets(group)
        and not balancer.after.get("internal")
        and not any(a.get("type") in AUTHENTICATE for a in actions[:position])
    ]


def lambdas_outside_the_vpc(plan: Plan) -> list[str]:
    return [
        function.address
        for function in plan.of_type("aws_lambda_function")
        if not any(c.get("subnet_ids") for c in function.after.get("vpc_config") or [])
    ]


# --- the policy -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "checker",
    [ingress_violations, lambdas_outside_the_vpc, unauthenticated_forwards],
    ids=["no-ingress-but-443-of-the-public-listener", "lambda-in-the-vpc", "sign-in-first"],
)
def test_the_policy_holds(plan: Plan, checker: Any) -> None:
    """Not vacuous for the Lambda: every plan has exactly one (the test of its subnets)."""
    assert checker(plan) == []


def test_every_ui_behind_the_load_balancer_signs_in_first(planned: Plans) -> None:
    """Stricter than the policy (Grafana too), and not vacuous: each of the four UIs is
    forwarded to, by a rule that signs in with the configured provider."""
    for name, provider in (("production", "authenticate-cognito"), ("oidc", "authenticate-oidc")):
        plan = planned[name]
        found = {
            group.after["name"]: actions[0]["type"] for _, _, actions, group, _ in forwards(plan)
        }
        assert set(found) == {
            f"churnops-emu-{ui}" for ui in ("mlflow", "prefect-server", "evidently", "grafana")
        }
        assert set(found.values()) == {provider}, name
        assert unauthenticated_forwards(plan, targets=lambda group: True) == []


def test_development_without_a_certificate_forwards_nothing(planned: Plans) -> None:
    plan = planned["development"]
    assert list(forwards(plan)) == []
    assert [(lis.after["port"], lis.after["protocol"]) for lis in plan.of_type(*LISTENERS)] == [
        (80, "HTTP")
    ]
    assert not list(plan.of_type("aws_lb_target_group", "aws_cognito_user_pool"))


def shared_plans(cases: dict[str, tuple[dict[str, Any], str]]) -> tuple[dict, dict[str, str]]:
    """The cases in as few plans as hold them (a case joins the first plan that sets none
    of its variables): the plans' variables by name, and each case's plan."""
    plans: dict[str, dict[str, Any]] = {}
    where = {}
    for case, (variables, _) in cases.items():
        free = [p for p, v in plans.items() if not v.keys() & variables.keys()]
        where[case] = free[0] if free else f"invalid variables {len(plans) + 1}"
        plans.setdefault(where[case], {}).update(variables)
    return plans, where


@pytest.mark.parametrize("name", [*REFUSED, *INVALID])
def test_unsafe_configurations_are_refused(planned: Plans, name: str) -> None:
    job = shared_plans(INVALID)[1].get(name, name)
    result = planned.get(job)
    assert isinstance(result, RuntimeError), f"{name} planned"
    assert {**REFUSED, **INVALID}[name][1] in str(result)


def test_the_lambda_runs_in_the_private_subnets_or_has_its_endpoint(plan: Plan) -> None:
    """Its environment (the internal Prefect URL, the secret's ARN) is known only after
    apply: tests/terraform/test_apply_moto.py checks it."""
    (function,) = plan.of_type("aws_lambda_function")
    private = plan.raw["variables"]["private_subnet_ids"]["value"]
    public = plan.raw["variables"]["public_subnet_ids"]["value"]
    assert sorted(function.after["vpc_config"][0]["subnet_ids"]) == sorted(private or public)
    endpoints = [e.after["service_name"] for e in plan.of_type("aws_vpc_endpoint")]
    # Without private subnets the function has no way out but the endpoint.
    assert endpoints == ([] if private else ["com.amazonaws.us-east-1.secretsmanager"])


def test_the_lambda_may_only_reach_prefect_and_secrets_manager(plan: Plan) -> None:
    rules = {
        r.name: r.after
        for r in plan.of_type("aws_vpc_security_group_egress_rule")
        if r.module == "module.lambda"
    }
    ports = sorted((r["from_port"], r["to_port"]) for r in rules.values())
    assert ports == [(443, 443), (PREFECT_PORT, PREFECT_PORT)]
    assert all(r["ip_protocol"] == "tcp" for r in rules.values())
    (group,) = (g for g in plan.of_type("aws_security_group") if g.name == "lambda")
    assert not group.after.get("egress") and not group.after.get("ingress")
    (from_lambda,) = (
        r for r in plan.of_type("aws_vpc_security_group_ingress_rule") if "Lambda" in r.index
    )
    assert from_lambda.after["from_port"] == from_lambda.after["to_port"] == PREFECT_PORT


def test_failed_invocations_go_to_an_encrypted_queue_with_alarms(plan: Plan) -> None:
    (config,) = plan.of_type("aws_lambda_function_event_invoke_config")
    (queue,) = plan.of_type("aws_sqs_queue")
    destination = config.after["destination_config"][0]["on_failure"][0]
    assert destination.get("destination") is None  # the queue's ARN, known after apply
    on_failure = plan.expressions(config)["destination_config"][0]["on_failure"][0]
    assert plan.resolve(config, on_failure["destination"]) == queue
    assert queue.unknown["kms_master_key_id"] is True  # the platform key's ARN
    alarms = {a.after["metric_name"]: a for a in plan.of_type("aws_cloudwatch_metric_alarm")}
    assert {"ApproximateNumberOfMessagesVisible", "Errors"} <= set(alarms)
    for metric in ("ApproximateNumberOfMessagesVisible", "Errors"):
        assert alarms[metric].module == "module.lambda"
        assert plan.expressions(alarms[metric])["alarm_actions"]["references"] == [
            "var.alarm_topic_arn"
        ]


def test_ecs_exec_is_off_unless_asked_and_only_the_uis_can_be_tunnelled_into(
    planned: Plans,
) -> None:
    """ECS Exec (`make tunnel`) is off by default (a session sees the secrets in the
    environment); with tunnel_enabled, on the four UIs' services only, never the worker,
    with an operator policy that forwards ports and opens no shell."""
    enabled = {}
    for name in ("production", "tunnel"):
        plan = planned[name]
        enabled[name] = {
            s.after["name"]
            for s in plan.of_type("aws_ecs_service")
            if s.after["enable_execute_command"]
        }
        operators = [p for p in plan.of_type("aws_iam_policy") if p.name == "tunnel_operator"]
        assert len(operators) == (name == "tunnel")
    assert enabled == {
        "production": set(),
        "tunnel": {"mlflow", "prefect-server", "evidently", "grafana"},
    }
    actions = _document_actions(planned["tunnel"], "data.aws_iam_policy_document.tunnel_operator")
    assert actions == {
        "ecs:ListTasks",
        "ecs:DescribeTasks",
        "ssm:StartSession",
        "ssm:TerminateSession",
        "ssm:ResumeSession",
    }
    # Its one document (AWS-StartPortForwardingSession) is in the resource ARNs, which
    # name the cluster and so are known only after apply: the actions above hold no shell.


def test_exec_sessions_are_encrypted_and_logged(plan: Plan) -> None:
    (cluster,) = plan.of_type("aws_ecs_cluster")
    ((config,),) = [c["execute_command_configuration"] for c in cluster.after["configuration"]]
    assert config["logging"] == "OVERRIDE"
    (logs,) = config["log_configuration"]
    assert logs["cloud_watch_encryption_enabled"] is True
    assert logs["cloud_watch_log_group_name"].endswith("/exec-sessions")
    assert cluster.unknown["configuration"][0]["execute_command_configuration"][0]["kms_key_id"]


def test_container_insights_is_a_variable(planned: Plans) -> None:
    """On by default (its performance logs in a group with retention and the key), off in
    the minimal profile's setting."""
    for name, value in (("production", "enabled"), ("tunnel", "disabled")):
        plan = planned[name]
        (cluster,) = plan.of_type("aws_ecs_cluster")
        assert cluster.after["setting"] == [{"name": "containerInsights", "value": value}]
        groups = [
            g.after["name"]
            for g in plan.of_type("aws_cloudwatch_log_group")
            if "containerinsights" in g.after["name"]
        ]
        assert groups == (
            ["/aws/ecs/containerinsights/churnops-emu/performance"] * (value == "enabled")
        )


# --- one trust zone per service (M1, H1) -------------------------------------------------------
SERVICES = ("mlflow", "prefect-server", "worker", "evidently", "grafana")
#: The database bootstrap: a one-off task with a group of its own (module ecs), no service.
ONE_OFF = ("db-init",)
#: Who may log in to the database (Evidently keeps its workspace on EFS).
DATABASE_CLIENTS = ("mlflow", "prefect-server", "worker", "grafana", "db-init")
#: The UIs the worker calls (Grafana it does not).
WORKER_CALLS = ("prefect-server", "mlflow", "evidently")
UI_PORTS = {"mlflow": 5000, "prefect-server": 4200, "evidently": 8000, "grafana": 3000}


def test_every_service_has_its_own_security_group(plan: Plan) -> None:
    groups = {g.index for g in plan.of_type("aws_security_group") if g.name == "service"}
    assert groups == set(SERVICES + ONE_OFF)
    assert {s.index for s in plan.of_type("aws_ecs_service")} == set(SERVICES)
    for service in plan.of_type("aws_ecs_service"):
        (network,) = plan.expressions(service)["network_configuration"]
        group = plan.resolve(service, network["security_groups"])
        assert (group.name, group.index) == ("service", service.index)


def test_no_security_group_opens_more_than_one_port_or_itself(plan: Plan) -> None:
    wide = [
        f"{g.address}: {r.get('protocol')} {r.get('from_port')}-{r.get('to_port')}"
        for g in plan.of_type("aws_security_group")
        for r in (g.after.get("ingress") or []) + (g.after.get("egress") or [])
        if r.get("self") or r.get("from_port") != r.get("to_port") or str(r.get("protocol")) == "-1"
    ]
    wide += [
        f"{r.address}: {r.after.get('ip_protocol')} {r.after['from_port']}-{r.after['to_port']}"
        for r in plan.of_type(
            "aws_vpc_security_group_ingress_rule", "aws_vpc_security_group_egress_rule"
        )
        if r.after.get("from_port") != r.after.get("to_port") or r.after.get("ip_protocol") != "tcp"
    ]
    assert wide == []


def test_each_service_admits_only_its_callers_on_its_port(plan: Plan) -> None:
    """Into the services: the load balancer to each UI, the worker to Prefect, MLflow and
    Evidently, the Lambda to Prefect. Nothing into the worker; Grafana and Evidently
    call nobody."""
    ingress = sorted(
        (r.index, r.after["from_port"], r.after["description"])
        for r in plan.of_type("aws_vpc_security_group_ingress_rule")
        if r.module == "module.ecs"
    )
    lambda_in = "Prefect API from the S3-to-Prefect Lambda"
    assert ingress == sorted(
        [(ui, port, f"{ui} from the load balancer") for ui, port in UI_PORTS.items()]
        + [(f"worker>{ui}", UI_PORTS[ui], f"{ui} from worker") for ui in WORKER_CALLS]
        + [(lambda_in, PREFECT_PORT, lambda_in)]
    )
    egress = sorted(
        (r.address, r.after["from_port"])
        for r in plan.of_type("aws_vpc_security_group_egress_rule")
        if r.after.get("cidr_ipv4") is None and r.module in ("", "module.ecs")
    )
    assert egress == sorted(
        [(f'aws_vpc_security_group_egress_rule.database["{s}"]', 5432) for s in DATABASE_CLIENTS]
        + [("aws_vpc_security_group_egress_rule.efs", 2049)]
        + [
            (f'module.ecs.aws_vpc_security_group_egress_rule.calls["worker>{ui}"]', UI_PORTS[ui])
            for ui in WORKER_CALLS
        ]
        + [
            (f'module.ecs.aws_vpc_security_group_egress_rule.calls["{ui}"]', port)
            for ui, port in UI_PORTS.items()
        ]
    )
    # Out to anywhere: HTTPS only (AWS APIs, images; the load balancer's sign-in).
    anywhere = {
        (r.after["from_port"], r.after["to_port"])
        for r in plan.of_type("aws_vpc_security_group_egress_rule")
        if r.after.get("cidr_ipv4") == "0.0.0.0/0"
    }
    assert anywhere == {(443, 443)}


def test_the_database_admits_its_clients_and_efs_only_evidently(plan: Plan) -> None:
    root = plan.raw["configuration"]["root_module"]
    rds = root["module_calls"]["rds"]["expressions"]["allowed_security_group_ids"]
    assert "local.database_clients" in rds["references"]
    database = {
        r.index for r in plan.of_type("aws_vpc_security_group_egress_rule") if r.name == "database"
    }
    assert database == set(DATABASE_CLIENTS)
    efs = plan.configuration("aws_security_group.efs")
    assert (
        efs["expressions"]["ingress"]["references"][0]
        == 'module.ecs.security_group_ids["evidently"]'
    )


def test_the_secrets_manager_endpoint_admits_every_task(planned: Plans) -> None:
    """H1: with private DNS on, every task resolves Secrets Manager to the endpoint and
    fetches its secrets through it: its group must admit theirs, not only the Lambda's."""
    plan = planned["development"]
    (endpoint,) = plan.of_type("aws_vpc_endpoint")
    assert endpoint.after["private_dns_enabled"] is True
    (group,) = (g for g in plan.of_type("aws_security_group") if g.name == "endpoint")
    assert [(r["from_port"], r["to_port"]) for r in group.after["ingress"]] == [(443, 443)]
    ingress = plan.expressions(group)["ingress"]["references"]
    assert "var.endpoint_client_security_group_ids" in ingress
    lambda_call = plan.raw["configuration"]["root_module"]["module_calls"]["lambda"]
    clients = lambda_call["expressions"]["endpoint_client_security_group_ids"]["references"]
    assert "module.ecs.security_group_ids" in clients
    ecs = plan.raw["configuration"]["root_module"]["module_calls"]["ecs"]["module"]
    assert ecs["outputs"]["security_group_ids"]["expression"]["references"] == [
        "aws_security_group.service"
    ]


def test_cognito_requires_mfa(production: Plan) -> None:
    (pool,) = production.of_type("aws_cognito_user_pool")
    assert pool.after["mfa_configuration"] == "ON"
    assert pool.after["software_token_mfa_configuration"] == [{"enabled": True}]


def _document_actions(plan: Plan, address: str) -> set[str]:
    """The actions of a policy document's statements, from the configuration (the
    rendered JSON is unknown until apply when it names a resource's ARN)."""
    return {
        action
        for statement in plan.configuration(address)["expressions"]["statement"]
        for action in statement.get("actions", {}).get("constant_value", [])
    }


def test_github_roles_trust_one_exact_subject_each(planned: Plans) -> None:
    """M8: plan on pull requests (read only), push from main, apply in the environment."""
    production = planned["production"]
    assert not list(production.of_type("aws_iam_openid_connect_provider"))
    assert not [r for r in production.of_type("aws_iam_role") if r.name == "github"]
    plan = planned["tunnel"]
    subjects = {}
    for role in (r for r in plan.of_type("aws_iam_role") if r.name == "github"):
        (statement,) = json.loads(role.after["assume_role_policy"])["Statement"]
        assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
        assert statement["Principal"] == {"Federated": GITHUB_OIDC}
        equals = statement["Condition"]["StringEquals"]
        assert equals["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"
        assert set(statement["Condition"]) == {"StringEquals"}  # no StringLike wildcard
        subjects[role.index] = equals["token.actions.githubusercontent.com:sub"]
    assert subjects == {
        "plan": "repo:acme/churnops:pull_request",
        "push": "repo:acme/churnops:ref:refs/heads/main",
        "deploy": "repo:acme/churnops:environment:emu",
    }
    policies = {
        (p.index, p.after["name"])
        for p in plan.of_type("aws_iam_role_policy")
        if p.name.startswith("github")
    }
    assert policies == {("plan", "read-platform"), ("push", "read-platform"), (0, "push-images")}
    read = _document_actions(plan, "data.aws_iam_policy_document.github_read")
    writes = ("Put", "Create", "Update", "Delete", "Upload", "Start", "Run", "Invoke", "Modify")
    assert not [a for a in read if any(a.split(":")[1].startswith(w) for w in writes)]
    assert "secretsmanager:GetSecretValue" not in read and "logs:GetLogEvents" not in read
    assert "secretsmanager:GetRandomPassword" in read  # plan opens the ephemeral passwords
    assert "-refresh=false" in (REPO / ".github/workflows/plan.yml").read_text()  # no reads
    assert not [a for a in read if a.endswith(":*") or a == "*"]
    push = _document_actions(plan, "data.aws_iam_policy_document.github_push")
    assert {"ecr:PutImage", "ecr:DescribeImageScanFindings"} <= push
    # Beside the images and the lock: the deploy plan's refresh of the platform's secrets.
    assert [a for a in push if not a.startswith(("ecr:", "s3:"))] == [
        "secretsmanager:GetSecretValue"
    ]


def test_the_workers_role_grants_what_its_code_calls_and_no_more(production: Plan) -> None:
    """Each action for a call of the worker's code: the drop storage's (a versioned bucket:
    a move reads and deletes one version), the alert, the KMS key of both, its metrics, and
    the protection of its own task, which the runner sets and never reads."""
    actions = _document_actions(production, "data.aws_iam_policy_document.worker_task")
    s3 = {"ListBucket", "GetObject", "GetObjectVersion", "PutObject", "AbortMultipartUpload"}
    s3 |= {"DeleteObject", "DeleteObjectVersion"}
    assert actions == {f"s3:{a}" for a in s3} | {
        "sns:Publish",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "cloudwatch:PutMetricData",
        "ecs:UpdateTaskProtection",
    }


# --- the checkers can fail --------------------------------------------------------------------
def altered(plan: Plan, change: Any) -> Plan:
    """A copy of the plan with ``change(raw_resource_changes)`` applied."""
    raw = copy.deepcopy(plan.raw)
    change({r["address"]: r["change"]["after"] for r in raw["resource_changes"]})
    return Plan(raw)


def _drop_sign_in(
    after: dict, prefix: str = 'module.alb.aws_lb_listener_rule.ui["mlflow"]'
) -> None:
    for key, value in after.items():
        if key.startswith(prefix):
            value["action"] = [a for a in value["action"] if a["type"] == "forward"]


def _internal_without_sign_in(after: dict) -> None:
    after["module.alb.aws_lb.this"]["internal"] = True
    _drop_sign_in(after, "module.alb.aws_lb_listener_rule.ui")


def _open_mlflow(after: dict) -> None:
    group = after['module.ecs.aws_security_group.service["mlflow"]']
    group["ingress"] = [
        {"cidr_blocks": ["0.0.0.0/0"], "from_port": 5000, "to_port": 5000, "protocol": "tcp"}
    ]


@pytest.mark.parametrize(
    ("checker", "change", "found"),
    [
        (
            unauthenticated_forwards,
            _drop_sign_in,
            [
                'module.alb.aws_lb_listener_rule.ui["mlflow"] forwards to churnops-emu-mlflow'
                " on public module.alb.aws_lb.this"
            ],
        ),
        (unauthenticated_forwards, _internal_without_sign_in, []),  # internal: allowed
        (
            ingress_violations,
            _open_mlflow,
            ['module.ecs.aws_security_group.service["mlflow"]: tcp 5000-5000 from anywhere'],
        ),
        (
            ingress_violations,  # 443 open without an HTTPS listener
            lambda after: after["module.alb.aws_lb_listener.https[0]"].update(protocol="HTTP"),
            ["module.alb.aws_security_group.alb: tcp 443-443 from anywhere"],
        ),
        (
            lambdas_outside_the_vpc,
            lambda after: after["module.lambda.aws_lambda_function.this"].update(vpc_config=[]),
            ["module.lambda.aws_lambda_function.this"],
        ),
    ],
    ids=["forward-without-sign-in", "internal-lb", "open-5000", "443-plain-http", "lambda-no-vpc"],
)
def test_the_checkers_find_what_an_altered_plan_breaks(
    production: Plan, checker: Any, change: Any, found: list[str]
) -> None:
    assert checker(altered(production, change)) == found


# --- the runners' autoscaling (moto cannot apply it: no ListTagsForResource) ---------------
NAMESPACE = "ChurnOps/churnops-emu"


def _created(plan: Plan, address: str) -> dict[str, Any]:
    (change,) = [r for r in plan.raw["resource_changes"] if r["address"] == address]
    assert change["change"]["actions"] == ["create"], address
    return change["change"]["after"]


def test_the_worker_service_scales_between_its_minimum_and_maximum(production: Plan) -> None:
    target = _created(production, "aws_appautoscaling_target.runners[0]")
    assert target["service_namespace"] == "ecs"
    assert target["scalable_dimension"] == "ecs:service:DesiredCount"
    assert target["resource_id"] == "service/churnops-emu/worker"
    assert (target["min_capacity"], target["max_capacity"]) == (1, 4)


def test_queued_runs_add_tasks_and_an_idle_queue_removes_them(production: Plan) -> None:
    out = _created(production, "aws_appautoscaling_policy.runners_out[0]")
    (config,) = out["step_scaling_policy_configuration"]
    bounds = ("metric_interval_lower_bound", "metric_interval_upper_bound", "scaling_adjustment")
    steps = [tuple(s[k] for k in bounds) for s in config["step_adjustment"]]
    assert sorted(steps, key=lambda s: float(s[0])) == [
        ("0", "4", 1),
        ("4", "14", 2),
        ("14", "", 4),
    ]
    assert config["adjustment_type"] == "ChangeInCapacity"
    (inward,) = _created(production, "aws_appautoscaling_policy.runners_in[0]")[
        "step_scaling_policy_configuration"
    ]
    ((step,),) = [inward["step_adjustment"]]
    assert step["scaling_adjustment"] == -1 and step["metric_interval_upper_bound"] == "0"
    assert inward["cooldown"] == 300

    for name, operator, periods, policy in (
        ("runs_queued", "GreaterThanOrEqualToThreshold", 1, "runners_out"),
        ("runners_idle", "LessThanThreshold", 10, "runners_in"),
    ):
        alarm = _created(production, f"aws_cloudwatch_metric_alarm.{name}[0]")
        assert (alarm["namespace"], alarm["metric_name"]) == (NAMESPACE, "QueuedFlowRuns")
        assert alarm["statistic"] == "Maximum" and alarm["period"] == 60
        assert (alarm["comparison_operator"], alarm["threshold"]) == (operator, 1), name
        assert alarm["evaluation_periods"] == periods, name
        actions = production.configuration(f"aws_cloudwatch_metric_alarm.{name}")["expressions"]
        assert f"aws_appautoscaling_policy.{policy}[0]" in actions["alarm_actions"]["references"]
