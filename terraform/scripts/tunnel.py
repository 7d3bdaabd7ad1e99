"""`make tunnel SERVICE=<ui>`: a platform UI on http://localhost:<port> through an SSM
port forward into one of its ECS tasks (ECS Exec), so IAM decides who may open it and
nothing is opened in the load balancer or security groups.

  python -m terraform.scripts.tunnel OUTPUTS SERVICE [--local-port N] [--print]

OUTPUTS is `terraform output -json` (or "-"); needs the AWS CLI and its Session Manager
plugin. --print only prints the command. No secret is read or printed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
from typing import Any

from terraform.scripts.post_apply import load_outputs

#: The secret a user needs on the far side of the tunnel, by service (an output name).
SIGN_IN = {
    "mlflow": ("mlflow_auth_secret_arn", "MLflow asks for its user: JSON keys username, password"),
    "prefect-server": ("prefect_auth_secret_arn", "the Prefect UI asks for the auth string"),
    "grafana": ("grafana_admin_secret_arn", "Grafana's admin user (key password)"),
}


class TunnelError(RuntimeError):
    """No tunnel can be opened; the message says why and what to do."""


def service_port(outputs: dict[str, Any], service: str) -> int:
    """The port the service listens on in its task (from its internal URL)."""
    urls = outputs.get("internal_urls")
    if not urls:  # `terraform output -json` of a state without a deployment: {}
        raise TunnelError("the outputs hold no deployment (no internal_urls): make apply first")
    if service not in urls:
        raise TunnelError(f"no UI called {service!r}: choose one of {', '.join(sorted(urls))}")
    port = urllib.parse.urlsplit(urls[service]).port
    assert port is not None, urls[service]
    return port


def session_target(ecs: Any, cluster: str, service: str) -> str:
    """``ecs:<cluster>_<task id>_<runtime id>`` of a running task whose exec agent runs."""
    arns = ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="RUNNING")
    if not arns["taskArns"]:
        raise TunnelError(f"no running task of {service} in {cluster}")
    for task in ecs.describe_tasks(cluster=cluster, tasks=arns["taskArns"])["tasks"]:
        if not task.get("enableExecuteCommand"):
            continue
        for container in task.get("containers", []):
            agents = {a["name"]: a.get("lastStatus") for a in container.get("managedAgents", [])}
            if (
                container["name"] == service
                and container.get("runtimeId")
                and agents.get("ExecuteCommandAgent") == "RUNNING"
            ):
                task_id = task["taskArn"].rsplit("/", 1)[-1]
                return f"ecs:{cluster}_{task_id}_{container['runtimeId']}"
    raise TunnelError(
        f"no task of {service} has ECS Exec running: is tunnel_enabled true, and was the"
        " service redeployed since?"
    )


def start_session_command(region: str, target: str, port: int, local_port: int) -> list[str]:
    parameters = {"portNumber": [str(port)], "localPortNumber": [str(local_port)]}
    return [
        *("aws", "ssm", "start-session", "--region", region, "--target", target),
        *("--document-name", "AWS-StartPortForwardingSession"),
        *("--parameters", json.dumps(parameters)),
    ]


def hint(outputs: dict[str, Any], service: str, local_port: int) -> str:
    lines = [f"{service} on http://localhost:{local_port} (Ctrl-C closes the tunnel)"]
    if service in SIGN_IN:
        output, what = SIGN_IN[service]
        lines.append(f"  {what}: aws secretsmanager get-secret-value --secret-id {outputs[output]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs", help="terraform output -json (a file, or - for stdin)")
    parser.add_argument("service", help="mlflow, prefect-server, evidently or grafana")
    parser.add_argument("--local-port", type=int, help="default: the service's own port")
    parser.add_argument("--print", action="store_true", help="print the command only")
    args = parser.parse_args(argv)

    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        outputs = load_outputs(args.outputs)
    except (OSError, ValueError) as exc:  # no such file; not JSON (terraform's error saved)
        print(
            f"tunnel: cannot read the outputs {args.outputs} ({exc}): save them with"
            " `terraform output -json > outputs.json`",
            file=sys.stderr,
        )
        return 1
    try:
        port = service_port(outputs, args.service)
        if not args.print and not (shutil.which("aws") and shutil.which("session-manager-plugin")):
            raise TunnelError("needs the AWS CLI and its Session Manager plugin on PATH")
        ecs = boto3.client("ecs", region_name=outputs["aws_region"])
        target = session_target(ecs, outputs["ecs_cluster_name"], args.service)
    except TunnelError as exc:
        print(f"tunnel: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as exc:  # no credentials, no access, no network
        print(f"tunnel: cannot find a task of {args.service}: {exc}", file=sys.stderr)
        return 1
    local_port = args.local_port or port
    command = start_session_command(outputs["aws_region"], target, port, local_port)
    if args.print:
        print(" ".join(command))
        return 0
    print(hint(outputs, args.service, local_port), flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
