"""After `terraform apply`: write .env, wait for the services, create the Prefect work pool.

Reads `terraform output -json` from a file (or stdin with "-"). Subcommands:
  env      OUTPUTS [--env-file .env]   write the non-secret settings and print the URLs
  wait     OUTPUTS [--timeout 900]     wait until the ECS services are stable and the UIs answer
  prefect  OUTPUTS                     create the work pool through the API (PREFECT_API_URL
                                       from the outputs unless set; PREFECT_API_KEY or
                                       PREFECT_API_AUTH_STRING from the environment only)

No secret is taken on the command line or printed: the database URL stays in
Secrets Manager and reaches the worker through its task definition.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEALTH_PATHS = {
    "mlflow": "/health",
    "prefect-server": "/api/health",
    "evidently": "/",
    "grafana": "/api/health",
}


def load_outputs(source: str) -> dict:
    raw = json.load(sys.stdin) if source == "-" else json.loads(Path(source).read_text())
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


# ----------------------------------------------------------------- .env
def env_lines(out: dict) -> list[str]:
    values = {
        "DROP_STORAGE": "s3",
        "AWS_REGION": out["aws_region"],
        "DROP_BUCKET": out["bucket_name"],
        "ALERTS_TOPIC_ARN": out["alerts_topic_arn"],
        "MLFLOW_TRACKING_URI": out["mlflow_url"],
        "PREFECT_API_URL": out["prefect_api_url"],
        "PREFECT_UI_URL": out["prefect_ui_url"],
        "EVIDENTLY_UI_URL": out["evidently_url"],
        "GRAFANA_URL": out["grafana_url"],
        "LAMBDA_FUNCTION_NAME": out["lambda_function_name"],
        "ECS_CLUSTER": out["ecs_cluster_name"],
        "DATABASE_URL_SECRET_ARN": out["database_url_secret_arn"],
    }
    header = "# Written by `make apply` from the terraform outputs. No secrets here."
    return [header, *(f"{k}={v}" for k, v in values.items())]


def write_env(out: dict, env_file: Path) -> None:
    env_file.write_text("\n".join(env_lines(out)) + "\n")
    print(f"wrote {env_file}")
    for name, url in sorted(out["ui_urls"].items()):
        print(f"  {name:<15} {url}")
    print(f"  {'bucket':<15} s3://{out['bucket_name']}/data/input/")
    print(f"  {'alerts topic':<15} {out['alerts_topic_arn']}")


# ----------------------------------------------------------------- wait
def http_ok(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 400
    except (urllib.error.URLError, OSError):
        return False


def wait(out: dict, timeout: float) -> None:
    import boto3

    deadline = time.monotonic() + timeout
    ecs = boto3.client("ecs", region_name=out["aws_region"])
    services = sorted(out["ecs_service_names"].values())
    print(f"waiting for ECS services {', '.join(services)} to be stable")
    ecs.get_waiter("services_stable").wait(
        cluster=out["ecs_cluster_name"],
        services=services,
        WaiterConfig={"Delay": 15, "MaxAttempts": max(1, int(timeout // 15))},
    )
    pending = {name: url + HEALTH_PATHS.get(name, "/") for name, url in out["ui_urls"].items()}
    while pending and time.monotonic() < deadline:
        for name, url in list(pending.items()):
            if http_ok(url):
                print(f"  {name} answers at {url}")
                del pending[name]
        if pending:
            time.sleep(10)
    if pending:
        raise SystemExit(f"not answering after {timeout:.0f}s: {', '.join(sorted(pending))}")


# ----------------------------------------------------------------- prefect
class PrefectApi:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if os.environ.get("PREFECT_API_KEY"):
            self.headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
        elif os.environ.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
                return response.status, json.loads(payload) if payload else None
        except urllib.error.HTTPError as exc:
            return exc.code, None


def store_prefect_settings(out: dict, api: PrefectApi) -> None:
    """Create the work pool the deployments run on (the flow's settings are in its task
    definition's environment, so nothing else is stored in Prefect)."""
    pool = out["prefect_work_pool"]
    status, _ = api.call("POST", "/work_pools/", {"name": pool, "type": "process"})
    if status not in (200, 201, 409):
        raise SystemExit(f"creating work pool {pool} failed with HTTP {status}")
    print(f"work pool {pool}: {'exists' if status == 409 else 'created'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    env_p = sub.add_parser("env")
    env_p.add_argument("outputs")
    env_p.add_argument("--env-file", type=Path, default=Path(".env"))
    wait_p = sub.add_parser("wait")
    wait_p.add_argument("outputs")
    wait_p.add_argument("--timeout", type=float, default=900)
    prefect_p = sub.add_parser("prefect")
    prefect_p.add_argument("outputs")
    args = parser.parse_args(argv)

    out = load_outputs(args.outputs)
    if args.command == "env":
        write_env(out, args.env_file)
    elif args.command == "wait":
        wait(out, args.timeout)
    else:
        api_url = os.environ.get("PREFECT_API_URL") or out["prefect_api_url"]
        store_prefect_settings(out, PrefectApi(api_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
