"""Policy checks on `terraform show -json` of plans of the root module (against moto):
nothing unauthenticated is reachable from outside, and the Lambda runs in the VPC.

Three configurations are planned: "production" (HTTPS, Cognito, the load balancer
open to 0.0.0.0/0: the widest the module allows), "oidc" (the same with an OIDC
provider) and "development" (allow_insecure_http, no certificate, no private
subnets). Configurations the module must refuse are planned too. The checkers
are also run on altered copies of the production plan, so each can be seen to fail.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from churnops.platform.services import stop_group

from .conftest import tf_local
from .plan import Plan, Resource, plan_module

pytestmark = pytest.mark.integration

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
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "production": {"allowed_cidr_blocks": ["0.0.0.0/0"]},
    "oidc": {
        "allowed_cidr_blocks": ["0.0.0.0/0"],
        "ui_authentication": "oidc",
        "ui_oidc": OIDC,
        "ui_oidc_client_secret": "not-a-real-client-secret",
    },
    "development": {"allow_insecure_http": True, "certificate_arn": None, "private_subnet_ids": []},
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


# --- the plans ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planned(terraform_bin: str) -> Iterator[dict[str, Plan | RuntimeError]]:
    """Every configuration planned against one moto server, three at a time."""
    root = Path(tempfile.mkdtemp(prefix="churnops-tf-policy-"))
    moto, endpoint = tf_local.start_moto(root / "moto.log")
    cli_config = tf_local.write_cli_config(root / "terraform.rc")
    jobs = {**CONFIGURATIONS, **{name: vars_ for name, (vars_, _) in REFUSED.items()}}

    def plan(item: tuple[int, str]) -> Plan | RuntimeError:
        number, name = item
        try:
            return Plan(plan_module(endpoint, root / str(number), cli_config, jobs[name]))
        except RuntimeError as exc:
            return exc

    try:
        with ThreadPoolExecutor(3) as pool:
            yield dict(zip(jobs, pool.map(plan, enumerate(jobs)), strict=True))
    finally:
        stop_group(moto, 5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=list(CONFIGURATIONS))
def plan(request: pytest.FixtureRequest, planned: dict[str, Plan | RuntimeError]) -> Plan:
    result = planned[request.param]
    if isinstance(result, RuntimeError):
        pytest.fail(f"{request.param} did not plan: {result}")
    return result


@pytest.fixture(scope="module")
def production(planned: dict[str, Plan | RuntimeError]) -> Plan:
    result = planned["production"]
    assert isinstance(result, Plan), result
    return result


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
        actions = sorted(source.after.get(key) or [], key=_order)
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


def _order(action: dict) -> int:
    return action.get("order") or 0


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
def test_no_ingress_from_anywhere_but_https_443_of_the_public_listener(plan: Plan) -> None:
    assert ingress_violations(plan) == []


def test_the_lambda_runs_in_the_vpc(plan: Plan) -> None:
    assert list(plan.of_type("aws_lambda_function"))
    assert lambdas_outside_the_vpc(plan) == []


def test_control_planes_are_forwarded_to_only_after_sign_in(plan: Plan) -> None:
    assert unauthenticated_forwards(plan) == []


def test_every_ui_behind_the_load_balancer_signs_in_first(
    planned: dict[str, Plan | RuntimeError],
) -> None:
    """Stricter than the policy (Grafana too), and not vacuous: each of the four UIs is
    forwarded to, by a rule that signs in with the configured provider."""
    for name, provider in (("production", "authenticate-cognito"), ("oidc", "authenticate-oidc")):
        plan = planned[name]
        assert isinstance(plan, Plan), plan
        found = {
            group.after["name"]: actions[0]["type"] for _, _, actions, group, _ in forwards(plan)
        }
        assert set(found) == {
            f"churnops-emu-{ui}" for ui in ("mlflow", "prefect-server", "evidently", "grafana")
        }
        assert set(found.values()) == {provider}, name
        assert unauthenticated_forwards(plan, targets=lambda group: True) == []


def test_development_without_a_certificate_forwards_nothing(
    planned: dict[str, Plan | RuntimeError],
) -> None:
    plan = planned["development"]
    assert isinstance(plan, Plan), plan
    assert list(forwards(plan)) == []
    assert [(lis.after["port"], lis.after["protocol"]) for lis in plan.of_type(*LISTENERS)] == [
        (80, "HTTP")
    ]
    assert not list(plan.of_type("aws_lb_target_group", "aws_cognito_user_pool"))


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsafe_configurations_are_refused(
    planned: dict[str, Plan | RuntimeError], name: str
) -> None:
    result = planned[name]
    assert isinstance(result, RuntimeError), f"{name} planned"
    assert REFUSED[name][1] in str(result)


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
    rules = {r.name: r.after for r in plan.of_type("aws_vpc_security_group_egress_rule")}
    ports = sorted((r["from_port"], r["to_port"]) for r in rules.values())
    assert ports == [(443, 443), (PREFECT_PORT, PREFECT_PORT)]
    assert all(r["ip_protocol"] == "tcp" for r in rules.values())
    (group,) = (g for g in plan.of_type("aws_security_group") if g.name == "lambda")
    assert not group.after.get("egress") and not group.after.get("ingress")
    (tasks,) = (g for g in plan.of_type("aws_security_group") if g.name == "tasks")
    from_lambda = [r for r in tasks.after["ingress"] if "Lambda" in r["description"]]
    assert [(r["from_port"], r["to_port"]) for r in from_lambda] == [(PREFECT_PORT, PREFECT_PORT)]


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


def test_only_the_ui_services_can_be_tunnelled_into(plan: Plan) -> None:
    """ECS Exec (`make tunnel`) on the four UIs' services, not on the worker."""
    exec_enabled = {
        s.after["name"]: s.after["enable_execute_command"] for s in plan.of_type("aws_ecs_service")
    }
    assert {name for name, on in exec_enabled.items() if on} == {
        "mlflow",
        "prefect-server",
        "evidently",
        "grafana",
    }
    assert exec_enabled["worker"] is False


# --- the checkers can fail --------------------------------------------------------------------
def altered(plan: Plan, change: Any) -> Plan:
    """A copy of the plan with ``change(raw_resource_changes)`` applied."""
    raw = copy.deepcopy(plan.raw)
    change({r["address"]: r["change"]["after"] for r in raw["resource_changes"]})
    return Plan(raw)


def test_a_forward_without_sign_in_is_found(production: Plan) -> None:
    def drop_sign_in(after: dict) -> None:
        rule = after['module.alb.aws_lb_listener_rule.ui["mlflow"]']
        rule["action"] = [a for a in rule["action"] if a["type"] == "forward"]

    assert unauthenticated_forwards(altered(production, drop_sign_in)) == [
        'module.alb.aws_lb_listener_rule.ui["mlflow"] forwards to churnops-emu-mlflow'
        " on public module.alb.aws_lb.this"
    ]


def test_a_forward_without_sign_in_on_an_internal_load_balancer_is_allowed(
    production: Plan,
) -> None:
    def internal_without_sign_in(after: dict) -> None:
        after["module.alb.aws_lb.this"]["internal"] = True
        for key, value in after.items():
            if key.startswith("module.alb.aws_lb_listener_rule.ui"):
                value["action"] = [a for a in value["action"] if a["type"] == "forward"]

    assert unauthenticated_forwards(altered(production, internal_without_sign_in)) == []


def test_open_ingress_to_another_port_is_found(production: Plan) -> None:
    def open_mlflow(after: dict) -> None:
        tasks = after["module.ecs.aws_security_group.tasks"]
        tasks["ingress"].append(
            {"cidr_blocks": ["0.0.0.0/0"], "from_port": 5000, "to_port": 5000, "protocol": "tcp"}
        )

    assert ingress_violations(altered(production, open_mlflow)) == [
        "module.ecs.aws_security_group.tasks: tcp 5000-5000 from anywhere"
    ]


def test_open_443_without_an_https_listener_is_found(production: Plan) -> None:
    def plain_http(after: dict) -> None:
        listener = after["module.alb.aws_lb_listener.https[0]"]
        listener["protocol"] = "HTTP"

    assert ingress_violations(altered(production, plain_http)) == [
        "module.alb.aws_security_group.alb: tcp 443-443 from anywhere"
    ]


def test_a_lambda_outside_the_vpc_is_found(production: Plan) -> None:
    def no_vpc(after: dict) -> None:
        after["module.lambda.aws_lambda_function.this"]["vpc_config"] = []

    assert lambdas_outside_the_vpc(altered(production, no_vpc)) == [
        "module.lambda.aws_lambda_function.this"
    ]
