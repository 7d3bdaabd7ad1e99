"""`make rehearse-aws` on the session's deployment: the applied task definitions run as
local processes against moto and the session's Postgres, and a file dropped into the
bucket is processed through exactly that wiring (terraform/scripts/rehearse.py).

It reuses the apply that ``conftest.py`` begins early in the background, and runs
before the apply checks (it leaves the deployment as it found it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from terraform.scripts.rehearsal.run import Applied, Rehearsal, RehearsalFailed
from tests.fixtures.postgres import PostgresCluster

from .conftest import early


def test_the_applied_wiring_processes_a_dropped_file_end_to_end(
    terraform_bin: str, postgres_cluster: PostgresCluster, data_dir: Path, tmp_path: Path
) -> None:
    deployment = early().future.result()
    applied = Applied(deployment.endpoint, deployment.outputs)
    report = Rehearsal(applied, postgres_cluster.admin_url(), data_dir, tmp_path).run()
    print(report.text())

    assert set(report.skipped) == {"grafana/grafana"}, report.skipped
    assert "Grafana's server" in report.skipped["grafana/grafana"]
    ran = set(report.ran)
    for server in ("mlflow/mlflow", "prefect-server/prefect-server", "evidently/evidently"):
        assert server in ran and report.ran[server].startswith("healthy"), report.ran
    assert "worker/worker" in ran
    # The database bootstrap ran as its own one-off task (post_apply.py database).
    assert report.ran["db-init/db-init"].startswith("exited 0"), report.ran
    facts = report.facts
    name = facts["dropped"].rsplit("/", 1)[-1]
    assert " " in name and "+" in name  # S3 URL-encodes both in the event
    assert facts["processed"].startswith("data/processed/")
    assert facts["processed"].endswith(f"/{name}")
    assert facts["predictions"].rsplit("/", 1)[0] == facts["processed"].rsplit("/", 1)[0]
    assert "processed, written by the flow run as" in facts["metrics row"]
    assert "completed" in facts["reconciler"]
    assert "cannot delete" in facts["dashboard role"]
    assert facts["alert"].startswith("on the topic")


def test_the_rehearsal_left_the_deployment_as_it_found_it(terraform_bin: str) -> None:
    deployment = early().future.result()
    listed = deployment.client("s3").list_objects_v2(Bucket=deployment.outputs["bucket_name"])
    keys = {o["Key"] for o in listed.get("Contents", [])}
    # Only the folder markers the module creates are left under data/.
    assert not [k for k in keys if k.startswith("data/") and not k.endswith("/")]
    assert not [k for k in keys if k.startswith("mlflow-artifacts/")]
    queues = deployment.client("sqs").list_queues().get("QueueUrls", [])
    assert not [q for q in queues if "rehearsal" in q]


def test_a_wrong_port_in_a_task_definition_is_named_before_anything_starts(
    terraform_bin: str, postgres_cluster: PostgresCluster, data_dir: Path, tmp_path: Path
) -> None:
    """The worker's MLflow URL on a port MLflow does not listen on, in a new revision of
    its task definition; the service goes back to its own revision afterwards."""
    deployment = early().future.result()
    ecs = deployment.client("ecs")
    cluster = deployment.outputs["ecs_cluster_name"]
    (service,) = ecs.describe_services(cluster=cluster, services=["worker"])["services"]
    original = service["taskDefinition"]
    definition = ecs.describe_task_definition(taskDefinition=original)["taskDefinition"]
    for container in definition["containerDefinitions"]:
        for variable in container.get("environment", []):
            if variable["name"] == "MLFLOW_TRACKING_URI":
                variable["value"] = variable["value"].replace(":5000", ":5001")
    keep = ("family", "containerDefinitions", "taskRoleArn", "executionRoleArn", "networkMode")
    keep += ("requiresCompatibilities", "cpu", "memory", "volumes")
    broken = ecs.register_task_definition(**{k: definition[k] for k in keep if k in definition})
    broken_arn = broken["taskDefinition"]["taskDefinitionArn"]
    ecs.update_service(cluster=cluster, service="worker", taskDefinition=broken_arn)
    try:
        applied = Applied(deployment.endpoint, deployment.outputs)
        rehearsal = Rehearsal(applied, postgres_cluster.admin_url(), data_dir, tmp_path)
        with pytest.raises(RehearsalFailed) as failed:
            rehearsal.run()
    finally:
        ecs.update_service(cluster=cluster, service="worker", taskDefinition=original)
        ecs.deregister_task_definition(taskDefinition=broken_arn)
    message = str(failed.value)
    assert "container worker/worker, variable MLFLOW_TRACKING_URI:" in message
    assert "port 5001 of ECS service mlflow: its containers listen on 5000" in message
    assert not rehearsal.report.ran  # nothing started
