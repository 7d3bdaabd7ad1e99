"""After `terraform apply`: print the URLs, wait for the services, register the Prefect deployments.

OUTPUTS is `terraform output -json` in a file (or "-" for stdin):
  urls         OUTPUTS                    print the UIs' URLs, the bucket and the topic
  database     OUTPUTS [--timeout 900]    run the one-off task db-init (the only holder of
                                          the RDS master secret): migrations, roles, grants
  wait         OUTPUTS [--timeout 900]    until every ECS service is stable and healthy
  deployments  OUTPUTS [--timeout 900]    a one-off task of the worker's definition runs
                                          `python -m churnops.platform.deployments`

Both one-off tasks run inside the VPC with the task's role and secrets: the Prefect API
is internal, and no secret is taken on the command line or printed here."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def load_outputs(source: str) -> dict:
    raw = json.load(sys.stdin) if source == "-" else json.loads(Path(source).read_text())
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


# ----------------------------------------------------------------- urls
def print_urls(out: dict) -> None:
    """Where the deployment is. Written to no file: a `.env` at the root, which `pipenv run`
    loads into every command, pointed `make demo` and `make train` at the deployment's bucket
    and servers instead of this machine's."""
    for name, url in sorted(out["ui_urls"].items()):
        print(f"  {name:<15} {url}")
    print(f"  {'bucket':<15} s3://{out['bucket_name']}/data/input/")
    print(f"  {'alerts topic':<15} {out['alerts_topic_arn']}")


# ----------------------------------------------------------------- wait
def wait(out: dict, timeout: float) -> None:
    """Every service stable: its tasks run and pass their container health checks (and,
    behind the load balancer, its target checks), or the circuit breaker rolled back."""
    import boto3

    ecs = boto3.client("ecs", region_name=out["aws_region"])
    services = sorted(out["ecs_service_names"].values())
    print(f"waiting for ECS services {', '.join(services)} to be stable")
    ecs.get_waiter("services_stable").wait(
        cluster=out["ecs_cluster_name"],
        services=services,
        WaiterConfig={"Delay": 15, "MaxAttempts": max(1, int(timeout // 15))},
    )
    print("  every service is stable")


# ----------------------------------------------------------------- one-off tasks
#: The one-off tasks of `make apply`, by step: the terraform output naming it, what it does.
ONE_OFF = {
    "database": ("db_bootstrap_task", "bootstrapping the database"),
    "deployments": ("deployments_task", "registering the deployments"),
}


def run_one_off(
    out: dict, step: str, ecs: Any = None, timeout: float = 900, poll: float = 10
) -> str:
    """Run a one-off task of :data:`ONE_OFF` in the VPC and wait for it; its task ARN.

    ``command``, when the output has one, overrides the container's. SystemExit when the
    task cannot start or does not exit 0 (its log is in the container's log group).
    """
    output, what = ONE_OFF[step]
    task = out[output]
    if ecs is None:
        import boto3

        ecs = boto3.client("ecs", region_name=out["aws_region"])
    network = {
        "subnets": task["subnets"],
        "securityGroups": task["security_groups"],
        "assignPublicIp": "ENABLED" if task["assign_public_ip"] else "DISABLED",
    }
    overrides = {}
    if task.get("command"):
        overrides = {
            "containerOverrides": [{"name": task["container"], "command": task["command"]}]
        }
    started = ecs.run_task(
        cluster=task["cluster"],
        taskDefinition=task["task_definition"],
        launchType="FARGATE",
        count=1,
        startedBy="make-apply",
        networkConfiguration={"awsvpcConfiguration": network},
        overrides=overrides,
    )
    if started.get("failures") or not started.get("tasks"):
        raise SystemExit(f"the {what} task did not start: {started.get('failures')}")
    arn = started["tasks"][0]["taskArn"]
    print(f"{what}: task {arn} ({task['container']})")
    stopped = _wait_stopped(ecs, task["cluster"], arn, timeout, poll)
    container = next(
        (c for c in stopped.get("containers", []) if c["name"] == task["container"]), {}
    )
    code = container.get("exitCode")
    if code != 0:
        log_group = f"/ecs/{task['cluster']}/{task['container']}"
        raise SystemExit(
            f"{what} failed (exit code {code},"
            f" {stopped.get('stoppedReason')});"
            f" its log is in {log_group}, task {arn.rsplit('/', 1)[-1]}"
        )
    print(f"  {what}: done")
    return arn


def _wait_stopped(ecs: Any, cluster: str, arn: str, timeout: float, poll: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        (described,) = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"]
        if described.get("lastStatus") == "STOPPED":
            return described
        if time.monotonic() > deadline:
            raise SystemExit(f"the one-off task {arn} still runs after {timeout:.0f}s")
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("urls").add_argument("outputs")
    for name in ("database", "wait", "deployments"):
        waiting = sub.add_parser(name)
        waiting.add_argument("outputs")
        waiting.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)

    out = load_outputs(args.outputs)
    if args.command == "urls":
        print_urls(out)
    elif args.command == "wait":
        wait(out, args.timeout)
    else:
        run_one_off(out, args.command, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
