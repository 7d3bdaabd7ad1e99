"""The rehearsal itself: the applied deployment's containers as local processes, in the
order ECS and `make apply` start them, then one file through the whole wiring.

1. the database: the RDS master user and first database, in a local Postgres;
2. every container, prepared (command, environment, secrets; see containers.py),
   each execution role allowed to read its secrets, the runner's settings naming
   this deployment's resources;
3. the init containers (what other containers depend on), then the servers (the
   tasks behind a port) until their health checks and the load balancer's pass,
   then the tasks without a port (the worker), with no model registered yet, as
   after a first apply;
4. what `make apply` runs after terraform (terraform/scripts/post_apply.py) and,
   meanwhile, a model trained with the worker's environment, given ``staging``;
5. a file uploaded to ``data/input/`` and the Lambda handler given the event the
   bucket's notification sends, then: the flow run completed, the file and its
   predictions in ``data/processed/<run>/``, its row in the metrics database, an
   alert on the topic, the report in the Evidently UI; the reconciler's scheduled
   run completed; the dashboards' role reading every dashboard table with its own
   login, and writing none.

Nothing is left behind: the processes are stopped, the objects and the alert queue
the rehearsal added to the emulator are removed.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import yaml
from psycopg2 import sql

from rehearsal import containers, iam, images
from rehearsal.deployment import Aws, Deployment, Function, Task, WiringError, read
from rehearsal.mapping import LOCAL_SSLMODE, LOOPBACK, STRICT_SSLMODES, Mapper
from rehearsal.processes import Process, Supervisor
from rehearsal.services import PrefectApi, healthy, notification_for, s3_event

SCRIPTS = Path(__file__).resolve().parents[1]
REPO = SCRIPTS.parents[1]
GRAFANA_DATASOURCES = REPO / "code/grafana/provisioning/datasources"
#: Small and quick (as the tests' session model); well above the promotion gate.
QUICK_PARAMS = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.2}
TRAINING_FILE = "customer_churn_0.csv"
#: A labeled file whose drift alerts: the run exercises the topic too.
DROPPED_FILE = "customer_churn_2_majority_drifted.csv"
#: A space and a plus: S3 URL-encodes both in the event.
DROPPED_NAME = "rehearsal {stamp}+drift.csv"
INIT_TIMEOUT = 180.0
HEALTH_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
TRAIN_TIMEOUT = 300.0
DEFAULT_DEPLOYMENTS = {
    "PREFECT_DEPLOYMENT": "churn_prediction_pipeline/churnops",
    "RECONCILE_DEPLOYMENT": "reconcile/churnops",
}


class RehearsalFailed(RuntimeError):
    """A step failed; the message says which container, variable or check, and why."""


@dataclass(frozen=True)
class Applied:
    """What `apply-local` left: the emulator and terraform's outputs."""

    endpoint: str
    outputs: dict[str, Any]


@dataclass
class Report:
    """What ran, what was skipped and why, what was mapped, and the end-to-end facts."""

    ran: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        lines = ["containers run as local processes:"]
        lines += [f"  {label:<32} {what}" for label, what in self.ran.items()]
        lines += ["skipped (cannot run on this machine):"]
        lines += [f"  {label:<32} {why}" for label, why in self.skipped.items()] or ["  none"]
        lines += ["mapped to this machine:"]
        lines += [f"  {note}" for note in self.mapped]
        lines += ["checked end to end:"]
        lines += [f"  {name}: {value}" for name, value in self.facts.items()]
        return "\n".join(lines)


@dataclass
class Rehearsal:
    applied: Applied
    #: superuser URL of the local Postgres (any database of the cluster)
    admin_url: str
    data_dir: Path
    root: Path
    say: Any = print
    report: Report = field(default_factory=Report)

    def __post_init__(self) -> None:
        self.aws = Aws(self.applied.endpoint)
        outputs = self.applied.outputs
        self.deployment: Deployment = read(
            self.aws, outputs["bucket_name"], outputs["lambda_function_name"]
        )
        self.supervisor = Supervisor(self.root / "logs")
        self.processes: dict[str, Process] = {}
        self.local: dict[str, containers.Local] = {}
        self.cleanups: list[Any] = []

    # ------------------------------------------------------------------ the whole
    def run(self) -> Report:
        started = time.monotonic()
        s3, bucket = self.aws.client("s3"), self.deployment.bucket
        before = _versions(s3, bucket)
        self.cleanups.append(lambda: _remove_new_versions(s3, bucket, before))
        try:
            self._step("database", self.provision_database)
            self._step("containers", self.prepare_containers)
            self._step("secrets' permissions", self.check_secret_permissions)
            self._step("runner settings", self.check_runner_settings)
            self._step("init containers", self.run_inits)
            self._step("servers", self.start_servers)
            self._step("workers", self.start_workers)
            # A first apply has no model yet: the runner must start without one.
            training = self._step("training", self.start_training)
            self._step("after apply", self.after_apply)
            self._step("model", lambda: self.finish_training(training))
            run_id = self._step("drop", self.drop_file)
            self._step("flow run", lambda: self.check_processed(run_id))
            self._step("reconciler", self.check_reconciler)
            self._step("dashboard role", self.check_reader)
        finally:
            notes = self.mapper.notes if hasattr(self, "mapper") else []
            self.report.mapped = list(dict.fromkeys(notes))
            self.supervisor.stop_all()
            for cleanup in reversed(self.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
        self.report.facts["took"] = f"{time.monotonic() - started:.0f}s"
        return self.report

    def _step(self, name: str, action: Any) -> Any:
        began = time.monotonic()
        self.say(f"rehearsal: {name} ...")
        try:
            result = action()
        except WiringError as exc:
            raise RehearsalFailed(f"{name}: {exc}") from None
        self.say(f"rehearsal: {name} done in {time.monotonic() - began:.1f}s")
        return result

    # ------------------------------------------------------------------ 1. database
    def provision_database(self) -> None:
        """What RDS creates: the master user (not a superuser: CREATEDB, CREATEROLE) with its
        password, owning the instance's first database."""
        db = self.deployment.database
        users, password, source = master_login(self.aws, self.deployment)
        with _connect(self.admin_url) as conn, conn.cursor() as cur:
            for user in users:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL("{} ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}").format(
                        sql.SQL(verb), sql.Identifier(user), sql.Literal(password)
                    )
                )
                if user != users[0]:  # another name of the same master: all its rights
                    cur.execute(
                        sql.SQL("GRANT {} TO {}").format(
                            sql.Identifier(users[0]), sql.Identifier(user)
                        )
                    )
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database,))
            if not cur.fetchone():
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(db.database), sql.Identifier(users[0])
                    )
                )
        self.report.facts["database"] = (
            f"master user {' and '.join(users)} (password from {source}),"
            f" database {db.database}, at {LOOPBACK}:{_port(self.admin_url)}"
        )

    # ------------------------------------------------------------------ 2. containers
    def prepare_containers(self) -> None:
        """Every container's local form; every wiring error at once."""
        ports = {
            (task.service, port): _free_port()
            for task in self.deployment.tasks.values()
            for port in task.ports
        }
        self.mapper = Mapper(self.deployment, ports, _port(self.admin_url))
        problems = []
        for task in self.deployment.tasks.values():
            for container in task.containers:
                try:
                    self.local[container.label] = containers.prepare(
                        task,
                        container,
                        self.mapper,
                        self.aws,
                        self.root / "fs",
                        self.root / "volumes",
                    )
                except WiringError as exc:
                    problems.append(str(exc))
        if problems:
            raise WiringError("\n  ".join(["the task definitions do not wire up:", *problems]))
        for label, local in self.local.items():
            if local.skipped:
                self.report.skipped[label] = local.skipped

    def check_secret_permissions(self) -> None:
        """Each task's execution role may read (and decrypt) every secret its containers
        name, as ECS needs before starting it; the Lambda's role the secrets its
        environment names."""
        problems = []
        for task in self.deployment.tasks.values():
            if not task.execution_role_arn:
                continue
            policies = iam.Policies(self.aws, task.execution_role_arn)
            for container in task.containers:
                for name, value_from in container.secrets.items():
                    if ":secretsmanager:" in value_from:
                        place = containers.where(container, name, secret=True)
                        secret = ":".join(value_from.split(":")[:7])
                        problems += [
                            f"{place}: {p}" for p in iam.secret_problems(self.aws, policies, secret)
                        ]
        function = self.deployment.function
        if function is not None:
            policies = iam.Policies(self.aws, function.role_arn)
            for name, value in function.environment.items():
                if value.startswith("arn:") and ":secretsmanager:" in value:
                    place = f"Lambda {function.name}, variable {name}"
                    problems += [
                        f"{place}: {p}" for p in iam.secret_problems(self.aws, policies, value)
                    ]
        if problems:
            raise WiringError("\n".join(problems))
        self.report.facts["secrets"] = "every secret readable by its execution (or Lambda) role"

    def check_runner_settings(self) -> None:
        """What churnops reads from the worker's environment names this deployment's
        resources: its bucket and topic, and a database, MLflow, Evidently UI and Prefect
        API of its own, not the local defaults (SQLite, folders, a temporary server)."""
        worker = self._worker()
        code = (
            "import json\nfrom churnops.settings import get_settings\ns = get_settings()\n"
            "print(json.dumps({'drop': s.drop_uri, 'DATABASE_URL': s.database_url,"
            " 'MLFLOW_TRACKING_URI': s.mlflow_tracking_uri,"
            " 'EVIDENTLY_UI_URL': s.evidently_ui_url, 'ALERTS_TOPIC_ARN': s.alerts_topic_arn}))"
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
                f"container {worker.label}: churnops cannot read its settings:\n"
                f"{done.stderr[-2000:]}"
            )
        read = json.loads(done.stdout.splitlines()[-1])
        problems = [
            f"{name} is unset: churnops would use its local default"
            for name in (
                "DATABASE_URL",
                "MLFLOW_TRACKING_URI",
                "EVIDENTLY_UI_URL",
                "ALERTS_TOPIC_ARN",
            )
            if not read[name]
        ]
        if not worker.env.get("PREFECT_API_URL"):
            problems.append("PREFECT_API_URL is unset: Prefect would start a temporary server")
        bucket = f"s3://{self.deployment.bucket}"
        if read["drop"] != bucket:
            problems.append(
                f"churnops reads its drop as {read['drop']}, not the bucket {bucket}"
                f" (DROP_STORAGE={worker.env.get('DROP_STORAGE')},"
                f" DROP_BUCKET={worker.env.get('DROP_BUCKET')})"
            )
        topic = self.applied.outputs.get("alerts_topic_arn")
        if read["ALERTS_TOPIC_ARN"] and topic and read["ALERTS_TOPIC_ARN"] != topic:
            problems.append(f"ALERTS_TOPIC_ARN is not the deployment's topic {topic}")
        if problems:
            raise WiringError("\n".join(f"container {worker.label}: {p}" for p in problems))
        self.report.facts["runner settings"] = (
            f"drop {bucket}, its own database, MLflow, Evidently, topic"
        )

    # ------------------------------------------------------------------ 3. processes
    def run_inits(self) -> None:
        """Containers others depend on to finish (SUCCESS, COMPLETE): every task's at once,
        as ECS starts the tasks."""
        jobs = [
            (task, name) for task in self.deployment.tasks.values() for name in _to_finish(task)
        ]
        errors: list[str] = []
        threads = [
            threading.Thread(target=self._run_to_end, args=(task, name, errors))
            for task, name in jobs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise WiringError("\n".join(errors))

    def _run_to_end(self, task: Task, name: str, errors: list[str]) -> None:
        local = self.local[task.container(name).label]
        if local.skipped:
            errors.append(
                f"container {local.label}: its image {images.repository(local.container.image)}"
                f" cannot run here ({local.skipped}), yet another container waits for it"
            )
            return
        began = time.monotonic()
        process = self._start(local)
        code = self.supervisor.wait(process, INIT_TIMEOUT)
        if code != 0:
            what = f"exited with {code}" if code is not None else f"ran over {INIT_TIMEOUT:.0f}s"
            errors.append(f"container {local.label} {what}; its output ends:\n{process.tail()}")
            return
        self.report.ran[local.label] = f"exited 0 after {time.monotonic() - began:.1f}s"

    def start_servers(self) -> None:
        """The tasks behind a port, until each container's health check and the load
        balancer's target group health check pass."""
        self._start_tasks([t for t in self.deployment.tasks.values() if t.ports])

    def start_workers(self) -> None:
        self._start_tasks([t for t in self.deployment.tasks.values() if not t.ports])

    def _start_tasks(self, tasks: list[Task]) -> None:
        waiting = []
        for task in tasks:
            for container in task.containers:
                local = self.local[container.label]
                if container.name in _to_finish(task) or local.skipped:
                    continue
                waiting.append((task, local, self._start(local)))
        errors: list[str] = []
        threads = [
            threading.Thread(target=self._wait_healthy, args=(task, local, process, errors))
            for task, local, process in waiting
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise WiringError("\n".join(errors))

    def _start(self, local: containers.Local) -> Process:
        process = self.supervisor.start(local.label, local.argv, local.env, local.cwd)
        self.processes[local.label] = process
        return process

    def _wait_healthy(
        self, task: Task, local: containers.Local, process: Process, errors: list[str]
    ) -> None:
        began = time.monotonic()
        checks = self._health_checks(task, local)
        deadline = began + HEALTH_TIMEOUT
        pending = dict(checks)
        last: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            if process.popen.poll() is not None:
                errors.append(
                    f"container {local.label} exited with {process.popen.returncode};"
                    f" its output ends:\n{process.tail()}"
                )
                return
            for name, check in list(pending.items()):
                ok, last[name] = check()
                if ok:
                    del pending[name]
            time.sleep(1)
        if pending:
            failing = "; ".join(f"{name} last said {last.get(name)}" for name in pending)
            errors.append(
                f"container {local.label} not healthy after {HEALTH_TIMEOUT:.0f}s: {failing};"
                f" its output ends:\n{process.tail()}"
            )
            return
        names = ", ".join(checks) or "running (no health check defined)"
        self.report.ran[local.label] = f"healthy after {time.monotonic() - began:.1f}s: {names}"

    def _health_checks(self, task: Task, local: containers.Local) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        if local.health:
            checks["its health check"] = lambda: self._container_check(local)
        for arn, (name, port) in task.target_groups.items():
            if name != local.container.name:
                continue
            group = self.deployment.target_group_health[arn]
            path = group.get("HealthCheckPath", "/")
            codes = group.get("Matcher", {}).get("HttpCode", "200")
            url = f"http://{LOOPBACK}:{local.ports[port]}{path}"
            checks[f"the load balancer's GET {path} (port {port})"] = lambda url=url, codes=codes: (
                healthy(url, codes)
            )
        return checks

    def _container_check(self, local: containers.Local) -> tuple[bool, str]:
        assert local.health is not None
        try:
            done = subprocess.run(
                local.health,
                env=local.env,
                cwd=local.cwd,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            return False, "timed out"
        output = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
        return done.returncode == 0, f"exit {done.returncode} {output[0][:200]}"

    # ------------------------------------------------------------------ 4. after apply
    def after_apply(self) -> None:
        """What `make apply` runs once terraform has applied (post_apply.py): the .env from
        the outputs mapped to the local services (its service wait is the health checks
        above), then the deployments' registration, the one-off task it starts."""
        outputs = self.root / "outputs.json"
        noted = len(self.mapper.notes)
        mapped = {
            k: json.loads(self.mapper.value(json.dumps(v), f"terraform output {k}"))
            for k, v in self.applied.outputs.items()
        }
        del self.mapper.notes[noted:]  # the same names as the containers': no new mapping
        outputs.write_text(json.dumps({k: {"value": v} for k, v in mapped.items()}))
        post_apply = [sys.executable, str(SCRIPTS / "post_apply.py")]
        env_file = self.root / ".env"
        self._run_checked(
            "post_apply.py env", [*post_apply, "env", str(outputs), "--env-file", str(env_file)]
        )
        if "deployments_task" not in self.applied.outputs:
            raise WiringError("no terraform output deployments_task (post_apply.py deployments)")
        self.run_registration_task(self.applied.outputs["deployments_task"])

    def run_registration_task(self, task: dict[str, Any]) -> None:
        """post_apply.py deployments: ECS RunTask of a task definition with its container's
        command overridden; here that container, locally, with the override."""
        definition = task["task_definition"]
        owners = [t for t in self.deployment.tasks.values() if definition in _names_of(t)]
        if not owners:
            raise WiringError(f"terraform output deployments_task: no service runs {definition}")
        container = owners[0].container(task["container"])
        local = containers.with_command(self.local[container.label], task["command"], self.mapper)
        local.container = replace(container, name=f"{container.name}-deployments")
        began = time.monotonic()
        process = self._start(local)
        code = self.supervisor.wait(process, INIT_TIMEOUT)
        if code != 0:
            raise WiringError(
                f"the deployments' registration ({' '.join(task['command'])} in {local.label})"
                f" ended with {code}; its output ends:\n{process.tail()}"
            )
        self.report.ran[local.label] = f"exited 0 after {time.monotonic() - began:.1f}s"

    def _run_checked(self, what: str, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise WiringError(f"{what} exited with {done.returncode}:\n{tail}")
        self.report.ran[what] = "exited 0"

    # ------------------------------------------------------------------ 5. model
    def start_training(self) -> subprocess.Popen:
        """Train and register a quick model with the worker's environment (its MLflow URL,
        credentials, model name), as a user would from inside the VPC."""
        worker = self._worker()
        home = Path(tempfile.mkdtemp(prefix="train-", dir=self.root))
        code = (
            "import json, sys\nfrom pathlib import Path\n"
            "from churnops.model.registry import TrainingOptions, train_and_register\n"
            "from churnops.settings import get_settings\n"
            "settings = get_settings(churnops_home=Path(sys.argv[1]), cv_folds=2)\n"
            "params = json.loads(sys.argv[3])\n"
            "options = TrainingOptions(data_file=Path(sys.argv[2]), params=params)\n"
            "outcome = train_and_register(settings, options)\n"
            "print(outcome.decision.reason)\n"
            "sys.exit(0 if outcome.decision.promote else 3)\n"
        )
        argv = [
            str(containers.VENV_BIN / "python"),
            "-c",
            code,
            str(home),
            str(self.data_dir / TRAINING_FILE),
            json.dumps(QUICK_PARAMS),
        ]
        log = (self.root / "logs" / "training.log").open("wb")
        return subprocess.Popen(
            argv,
            env=worker.env,
            cwd=worker.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def finish_training(self, training: subprocess.Popen) -> None:
        try:
            code = training.wait(timeout=TRAIN_TIMEOUT)
        except subprocess.TimeoutExpired:
            training.kill()
            code = None
        log = (self.root / "logs" / "training.log").read_text(errors="replace")
        if code != 0:
            tail = "\n".join(log.splitlines()[-30:])
            raise WiringError(f"training with the worker's environment ended with {code}:\n{tail}")
        model = self._worker().env.get("MODEL_NAME", "XGBoostChurnModel")
        self.report.facts["model"] = f"{model} trained and given the alias staging"

    # ------------------------------------------------------------------ 6. a file
    def drop_file(self) -> str:
        """Upload a file to data/input/ and give the Lambda handler S3's event for it;
        returns the flow run the handler started."""
        s3 = self.aws.client("s3")
        bucket = self.deployment.bucket
        self._listen_for_alerts()
        key = f"data/input/{DROPPED_NAME.format(stamp=time.strftime('%H%M%S'))}"
        s3.upload_file(str(self.data_dir / DROPPED_FILE), bucket, key)
        head = s3.head_object(Bucket=bucket, Key=key)
        try:
            configuration = notification_for(
                self.deployment.notification, self._function().arn, key
            )
        except ValueError as exc:
            raise WiringError(f"the bucket notification: {exc}") from None
        event = s3_event(bucket, key, head, configuration, self.aws.region)
        outcome = self.invoke_lambda(event)
        (result,) = outcome["results"]
        if result.get("status") != "created":
            raise WiringError(f"the Lambda handler did not start a flow run: {json.dumps(result)}")
        self.report.facts["dropped"] = f"s3://{bucket}/{key}"
        self.report.facts["lambda"] = f"created flow run {result['flow_run_id']}"
        self.dropped_key = key
        return result["flow_run_id"]

    def invoke_lambda(self, event: dict[str, Any]) -> dict[str, Any]:
        """The function's handler, in a folder holding what its image holds, with the
        function's environment; as the Lambda runtime calls it."""
        from rehearsal.lambda_runtime import invoke

        return invoke(self._function(), event, self.mapper, self.aws, self.root / "lambda")

    def check_processed(self, run_id: str) -> None:
        worker = self._worker()
        api = PrefectApi(worker.env)
        run = api.wait_terminal(run_id, RUN_TIMEOUT)
        logs = "\n".join(p.tail() for label, p in self.processes.items() if "worker" in label)
        if run is None:
            raise WiringError(f"flow run {run_id} did not end within {RUN_TIMEOUT:.0f}s:\n{logs}")
        state = run["state"]
        if state["type"] != "COMPLETED" or not (state.get("message") or "").startswith("processed"):
            raise WiringError(
                f"flow run {run_id} ended {state['type']}: {state.get('message')}\n{logs}"
            )
        self._check_outputs(run_id)

    def _check_outputs(self, run_id: str) -> None:
        s3 = self.aws.client("s3")
        name = self.dropped_key.rsplit("/", 1)[-1]
        listed = s3.list_objects_v2(Bucket=self.deployment.bucket, Prefix="data/processed/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        originals = [k for k in keys if k.endswith(f"/{name}")]
        if len(originals) != 1:
            raise WiringError(f"{name} is not once in data/processed/ (found {originals})")
        folder = originals[0].rsplit("/", 1)[0]
        predictions = [k for k in keys if k.startswith(f"{folder}/") and "_predictions_" in k]
        if not predictions:
            raise WiringError(f"no predictions beside {originals[0]}")
        self.report.facts["processed"] = originals[0]
        self.report.facts["predictions"] = predictions[0]
        run, report_url = self._run_row(run_id)
        user = self._login_of(self._worker().env.get("DATABASE_URL", ""))
        self.report.facts["metrics row"] = (
            f"pipeline_runs {run} processed, written by the flow run as {user}"
        )
        self.report.facts["report"] = self._report_stored(report_url)
        self.report.facts["alert"] = self._alert_received()

    def _run_row(self, flow_run_id: str) -> tuple[str, str | None]:
        url = self._admin_url_of(self.deployment.database.database)
        with _connect(url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT id, status, report_url FROM pipeline_runs WHERE flow_run_id = %s",
                (flow_run_id,),
            )
            rows = cur.fetchall()
        if len(rows) != 1 or rows[0][1] != "processed":
            raise WiringError(f"pipeline_runs has {rows} for flow run {flow_run_id}")
        return rows[0][0], rows[0][2]

    def _report_stored(self, report_url: str | None) -> str:
        """The run's Evidently report is listed by the Evidently UI it links to."""
        found = re.search(r"/projects/([0-9a-f-]{36})/reports/([0-9a-f-]{36})", report_url or "")
        if not found:
            raise WiringError(f"the run's report URL {report_url!r} names no Evidently report")
        project, snapshot = found.groups()
        base = report_url[: found.start()]
        try:
            listed = _get_json(f"{base}/api/projects/{project}/snapshots")
        except OSError as exc:
            raise WiringError(
                f"the Evidently UI at {base} does not list {project}: {exc}"
            ) from None
        if snapshot not in {str(s.get("id")) for s in listed}:
            raise WiringError(f"the Evidently UI at {base} has no report {snapshot}")
        return f"report {snapshot} in the Evidently UI's project {project}"

    def check_reconciler(self) -> None:
        """A run of the reconciler's deployment, made by its schedule, completed."""
        worker = self._worker()
        api = PrefectApi(worker.env)
        name = worker.env.get("RECONCILE_DEPLOYMENT", DEFAULT_DEPLOYMENTS["RECONCILE_DEPLOYMENT"])
        deployment = api.deployment(name)
        intervals = [
            (s.get("schedule") or {}).get("interval") for s in deployment.get("schedules", [])
        ]
        if not any(intervals):
            raise WiringError(f"the deployment {name} has no interval schedule")
        deadline = time.monotonic() + float(max(i for i in intervals if i)) + RUN_TIMEOUT
        while time.monotonic() < deadline:
            ended = api.runs_of(deployment["id"], ("COMPLETED", "FAILED", "CRASHED"))
            scheduled = [r for r in ended if r.get("auto_scheduled")]
            if scheduled:
                state = scheduled[0]["state"]
                if state["type"] != "COMPLETED":
                    raise WiringError(
                        f"the reconciler's scheduled run ended {state['type']}:"
                        f" {state.get('message')}"
                    )
                self.report.facts["reconciler"] = (
                    f"{name}: scheduled run {scheduled[0]['name']} completed"
                )
                return
            time.sleep(2)
        raise WiringError(f"no scheduled run of {name} ended in time")

    def check_reader(self) -> None:
        """The dashboards' login, as Grafana's data source provisioning builds it from the
        Grafana container's environment: SELECT on every dashboard table, no writes."""
        from churnops.monitoring.metrics_db import DASHBOARD_TABLES

        grafana = [
            local
            for local in self.local.values()
            if images.repository(local.container.image) == "grafana" and local.container.essential
        ]
        if not grafana:
            raise WiringError("no Grafana container in the task definitions")
        login = datasource_login(grafana[0])
        counts = {}
        with _connect_kw(login) as conn, conn.cursor() as cur:
            for table in DASHBOARD_TABLES:
                try:
                    cur.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.name))
                    )
                except psycopg2.Error as exc:
                    raise WiringError(
                        f"container {grafana[0].label}: its login {login['user']} cannot"
                        f" SELECT from {table.name}: {exc.pgerror or exc}"
                    ) from None
                counts[table.name] = cur.fetchone()[0]
            try:
                cur.execute("DELETE FROM pipeline_runs WHERE false")
            except psycopg2.errors.InsufficientPrivilege:
                pass
            else:
                raise WiringError(
                    f"container {grafana[0].label}: its login {login['user']} may delete"
                    " from pipeline_runs: the dashboards' role must be read-only"
                )
        if counts.get("pipeline_runs", 0) < 1:
            raise WiringError(f"the dashboards' role sees no run: {counts}")
        self.report.facts["dashboard role"] = (
            f"{login['user']} reads {', '.join(f'{t} ({n})' for t, n in counts.items())};"
            " cannot delete"
        )

    # ------------------------------------------------------------------ helpers
    def _function(self) -> Function:
        function = self.deployment.function
        if function is None:
            name = self.applied.outputs["lambda_function_name"]
            raise WiringError(f"the emulator has no Lambda function {name}")
        return function

    def _worker(self) -> containers.Local:
        workers = [
            self.local[c.label]
            for t in self.deployment.tasks.values()
            if not t.ports
            for c in t.containers
            if c.essential
        ]
        if len(workers) != 1:
            raise WiringError(f"expected one worker container, found {[w.label for w in workers]}")
        return workers[0]

    def _admin_url_of(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + f"/{database}"

    def _login_of(self, url: str) -> str:
        return urlsplit(url).username or "?"

    def _listen_for_alerts(self) -> None:
        """An SQS queue subscribed to the worker's ALERTS_TOPIC_ARN (removed afterwards)."""
        topic = self._worker().env.get("ALERTS_TOPIC_ARN")
        if not topic:
            raise WiringError(f"container {self._worker().label}: no ALERTS_TOPIC_ARN")
        sqs, sns = self.aws.client("sqs"), self.aws.client("sns")
        queue = sqs.create_queue(QueueName=f"rehearsal-alerts-{secrets.token_hex(4)}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
        subscription = sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"]
        )["SubscriptionArn"]
        self.alerts_queue = queue
        self.cleanups.append(lambda: sqs.delete_queue(QueueUrl=queue))
        self.cleanups.append(lambda: sns.unsubscribe(SubscriptionArn=subscription))

    def _alert_received(self) -> str:
        sqs = self.aws.client("sqs")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = sqs.receive_message(QueueUrl=self.alerts_queue, WaitTimeSeconds=1)
            for message in batch.get("Messages", []):
                subject = json.loads(message["Body"]).get("Subject", "")
                return f"on the topic: {subject}"
        raise WiringError("no alert reached the topic (ALERTS_TOPIC_ARN of the worker)")


# ---------------------------------------------------------------------------- helpers
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


def datasource_login(grafana: containers.Local) -> dict[str, Any]:
    """Host, port, database, user, password and sslmode of Grafana's provisioned data
    source, its ``${VAR}`` references filled from the container's environment."""
    (path,) = sorted(GRAFANA_DATASOURCES.glob("*.yaml"))
    (source,) = yaml.safe_load(path.read_text())["datasources"]

    def fill(text: str) -> str:
        def var(match: re.Match[str]) -> str:
            name = match[1] or match[2]
            if name not in grafana.env:
                raise WiringError(f"container {grafana.label}: {path.name} needs ${name}, unset")
            return grafana.env[name]

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, str(text))

    host, _, port = fill(source["url"]).partition(":")
    sslmode = fill(source["jsonData"].get("sslmode", "prefer"))
    return {
        "host": host,
        "port": int(port or 5432),
        "dbname": fill(source["jsonData"]["database"]),
        "user": fill(source["user"]),
        "password": fill(source["secureJsonData"]["password"]),
        "sslmode": LOCAL_SSLMODE if sslmode in STRICT_SSLMODES else sslmode,
    }


def _names_of(task: Task) -> set[str]:
    """How a task definition may be named: ARN, family:revision, family."""
    family_revision = task.definition_arn.rsplit("/", 1)[-1]
    return {task.definition_arn, family_revision, family_revision.rsplit(":", 1)[0]}


def _to_finish(task: Task) -> list[str]:
    """Containers another container waits for to exit (dependsOn SUCCESS or COMPLETE)."""
    return list(
        dict.fromkeys(
            name
            for c in task.containers
            for name, condition in c.depends_on
            if condition in ("SUCCESS", "COMPLETE")
        )
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port(url: str) -> int:
    return urlsplit(url).port or 5432


def _libpq(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


@contextlib.contextmanager
def _connect(url: str):
    conn = psycopg2.connect(_libpq(url), connect_timeout=10)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def _connect_kw(login: dict[str, Any]):
    try:
        conn = psycopg2.connect(connect_timeout=10, **login)
    except psycopg2.OperationalError as exc:
        raise WiringError(f"login {login['user']} to {login['dbname']} failed: {exc}") from None
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _versions(s3: Any, bucket: str) -> set[tuple[str, str]]:
    found = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            found.add((entry["Key"], entry["VersionId"]))
    return found


def _remove_new_versions(s3: Any, bucket: str, before: set[tuple[str, str]]) -> None:
    """Leave the bucket as the rehearsal found it: every version it added, deleted."""
    for key, version in sorted(_versions(s3, bucket) - before):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
