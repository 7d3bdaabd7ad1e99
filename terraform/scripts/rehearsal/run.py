"""The rehearsal: the applied deployment's containers as local processes, in the order ECS
and `make apply` start them, then one file through the whole wiring.

1. the RDS master user and first database, in a local Postgres;
2. every container prepared (containers.py), its execution role allowed its secrets;
3. init containers, then servers until their and the load balancer's health checks
   pass, then the worker, with no model registered yet, as after a first apply;
4. post_apply.py's steps and, meanwhile, a model trained in the worker's environment;
5. a file uploaded and the Lambda given the bucket notification's event; then checked:
   the flow run, processed/ outputs, the metrics row, the alert, the Evidently report,
   the reconciler's run, and the dashboards' role reading (never writing) its tables.

Everything it started or added to the emulator is removed at the end."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from psycopg2 import sql

from churnops.platform.services import free_port, stop_group
from terraform.scripts.rehearsal import checks, containers, images
from terraform.scripts.rehearsal.deployment import (
    Aws,
    Deployment,
    Function,
    Task,
    WiringError,
    read,
)
from terraform.scripts.rehearsal.mapping import LOOPBACK, Mapper
from terraform.scripts.rehearsal.services import connect, database_port, healthy

SCRIPTS = Path(__file__).resolve().parents[1]
#: Small and quick (as the tests' session model); well above the promotion gate.
QUICK_PARAMS = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.2}
TRAINING_FILE = "customer_churn_0.csv"
INIT_TIMEOUT = 180.0
HEALTH_TIMEOUT = 240.0
TRAIN_TIMEOUT = 300.0


@dataclass
class Process:
    """A container as a local process in its own session (stopping it stops its group)."""

    label: str
    popen: subprocess.Popen
    log: Path

    def tail(self) -> str:
        """The end of its output, indented, for a failure message."""
        try:
            last = self.log.read_text(errors="replace").splitlines()[-30:]
        except OSError:
            last = []
        return "\n".join(f"    {line}" for line in last) or "    (no output)"

    def wait(self, timeout: float) -> int | None:
        """Its exit code, or None (and it is stopped) when it ran longer than ``timeout``."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(self.popen, 10)
            return None


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
    report: Report = field(default_factory=Report)

    def __post_init__(self) -> None:
        self.aws = Aws(self.applied.endpoint)
        self.deployment: Deployment = read(self.aws, self.applied.outputs)
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
            self._step("secrets' permissions", lambda: checks.check_secret_permissions(self))
            self._step("runner settings", lambda: checks.check_runner_settings(self))
            self._step("database logins", lambda: checks.check_database_logins(self))
            self._step("init containers", self.run_inits)
            # post_apply.py database, before the services need their roles (on AWS they
            # retry until it has run).
            self._step(
                "database bootstrap",
                lambda: self.run_one_off("db_bootstrap_task", "the database bootstrap"),
            )
            self._step("servers", lambda: self.start_services(servers=True))
            self._step("workers", lambda: self.start_services(servers=False))
            # A first apply has no model yet: the runner must start without one.
            training = self._step("training", self.start_training)
            self._step("after apply", self.after_apply)
            self._step("model", lambda: self.finish_training(training))
            drop = self._step("drop", lambda: checks.drop_file(self))
            self._step("flow run", lambda: checks.check_processed(self, drop))
            self._step("reconciler", lambda: checks.check_reconciler(self))
            self._step("dashboard role", lambda: checks.check_reader(self))
        finally:
            notes = self.mapper.notes if hasattr(self, "mapper") else []
            self.report.mapped = list(dict.fromkeys(notes))
            for process in reversed(self.processes.values()):
                stop_group(process.popen, 10)
            for cleanup in reversed(self.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
        self.report.facts["took"] = f"{time.monotonic() - started:.0f}s"
        return self.report

    def _step(self, name: str, action: Any) -> Any:
        began = time.monotonic()
        print(f"rehearsal: {name} ...")
        try:
            result = action()
        except WiringError as exc:
            raise RehearsalFailed(f"{name}: {exc}") from None
        print(f"rehearsal: {name} done in {time.monotonic() - began:.1f}s")
        return result

    # ------------------------------------------------------------------ 1. database
    def provision_database(self) -> None:
        """What RDS creates: the master user (not a superuser: CREATEDB, CREATEROLE) with its
        password, owning the instance's first database."""
        db = self.deployment.database
        users, password = checks.master_login(self.aws, self.deployment)
        self.master_users = users
        master = sql.Identifier(users[0])
        with connect(self.admin_url) as conn, conn.cursor() as cur:
            for user in users:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                verb = sql.SQL("ALTER" if cur.fetchone() else "CREATE")
                role = sql.SQL("{} ROLE {} LOGIN CREATEDB CREATEROLE PASSWORD {}")
                cur.execute(role.format(verb, sql.Identifier(user), sql.Literal(password)))
                if user != users[0]:  # another name of the same master: all its rights
                    cur.execute(sql.SQL("GRANT {} TO {}").format(master, sql.Identifier(user)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database,))
            if not cur.fetchone():
                owned = sql.SQL("CREATE DATABASE {} OWNER {}")
                cur.execute(owned.format(sql.Identifier(db.database), master))
        self.report.facts["database"] = (
            f"master user {' and '.join(users)} (password from its RDS-managed secret),"
            f" database {db.database}, at {LOOPBACK}:{database_port(self.admin_url)}"
        )

    # ------------------------------------------------------------------ 2. containers
    def prepare_containers(self) -> None:
        """Every container's local form; every wiring error at once."""
        ports = {
            (task.service, port): free_port(LOOPBACK)
            for task in self.deployment.tasks.values()
            for port in task.ports
        }
        self.mapper = Mapper(self.deployment, ports, database_port(self.admin_url))
        problems = []
        for task in self.deployment.tasks.values():
            for container in task.containers:
                try:
                    self.local[container.label] = containers.prepare(
                        task, container, self.mapper, self.aws, self.root
                    )
                except WiringError as exc:
                    problems.append(str(exc))
        if problems:
            raise WiringError("\n  ".join(["the task definitions do not wire up:", *problems]))
        for label, local in self.local.items():
            if local.skipped:
                self.report.skipped[label] = local.skipped

    # ------------------------------------------------------------------ 3. processes
    def run_inits(self) -> None:
        """Containers others depend on to finish (SUCCESS, COMPLETE): every task's at once,
        as ECS starts the tasks."""
        _in_parallel(
            self._run_to_end,
            [(t, name) for t in self.deployment.tasks.values() for name in t.waited_for()],
        )

    def _run_to_end(self, task: Task, name: str) -> None:
        local = self.local[task.container(name).label]
        if local.skipped:
            raise WiringError(
                f"container {local.label}: its image {images.repository(local.container.image)}"
                f" cannot run here ({local.skipped}), yet another container waits for it"
            )
        self._run_to_exit(local, f"container {local.label}")

    def _run_to_exit(self, local: containers.Local, what: str) -> None:
        began = time.monotonic()
        process = self._start(local)
        code = process.wait(INIT_TIMEOUT)
        if code != 0:
            ended = f"exited with {code}" if code is not None else f"ran over {INIT_TIMEOUT:.0f}s"
            raise WiringError(f"{what} {ended}; its output ends:\n{process.tail()}")
        self.report.ran[local.label] = f"exited 0 after {time.monotonic() - began:.1f}s"

    def services(self) -> list[Task]:
        return [t for t in self.deployment.tasks.values() if not t.one_off]

    def start_services(self, servers: bool) -> None:
        """The services behind a port (``servers``) or the others, until each container's
        health check and its load balancer target group's health check pass."""
        waiting = []
        for task in (t for t in self.services() if bool(t.ports) == servers):
            for container in task.containers:
                local = self.local[container.label]
                if container.name in task.waited_for() or local.skipped:
                    continue
                waiting.append((task, local, self._start(local)))
        _in_parallel(self._wait_healthy, waiting)

    def _start(self, local: containers.Local, label: str = "") -> Process:
        """``local``'s process, stopped at the end, named ``label`` (else the container's)."""
        label = label or local.label
        log = self.root / "logs" / f"{label.replace('/', '.')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                local.argv,
                env=local.env,
                cwd=local.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[label] = Process(label, popen, log)
        return self.processes[label]

    def _wait_healthy(self, task: Task, local: containers.Local, process: Process) -> None:
        began = time.monotonic()
        checks = self._health_checks(task, local)
        deadline = began + HEALTH_TIMEOUT
        pending = dict(checks)
        last: dict[str, str] = {}
        while pending and time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise WiringError(
                    f"container {local.label} exited with {process.popen.returncode};"
                    f" its output ends:\n{process.tail()}"
                )
            for name, check in list(pending.items()):
                ok, last[name] = check()
                if ok:
                    del pending[name]
            time.sleep(1)
        if pending:
            failing = "; ".join(f"{name} last said {last.get(name)}" for name in pending)
            raise WiringError(
                f"container {local.label} not healthy after {HEALTH_TIMEOUT:.0f}s: {failing};"
                f" its output ends:\n{process.tail()}"
            )
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
        """What `make apply` runs once terraform has applied (post_apply.py): the URLs from
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
        argv = [*post_apply, "urls", str(outputs)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise WiringError(f"post_apply.py urls exited with {done.returncode}:\n{tail}")
        self.report.ran["post_apply.py urls"] = "exited 0"
        self.run_one_off("deployments_task", "the deployments' registration")

    def run_one_off(self, output: str, what: str) -> None:
        """post_apply.py's RunTask of the task definition terraform output ``output`` names,
        its container's command overridden when the output names one; here that container."""
        if output not in self.applied.outputs:
            raise WiringError(f"no terraform output {output} ({what}, post_apply.py)")
        task = self.applied.outputs[output]
        definition = task["task_definition"]
        owners = [t for t in self.deployment.tasks.values() if t.definition_arn == definition]
        if not owners:
            raise WiringError(f"{what}: no task definition {definition} in the deployment")
        container = owners[0].container(task["container"])
        local = self.local[container.label]
        if task.get("command"):
            local = containers.with_command(local, task["command"], self.mapper)
            local.container = replace(container, name=f"{container.name}-run")
        command = " ".join(task.get("command") or local.container.command or [])
        self._run_to_exit(local, f"{what} ({command} in {local.label})")

    # ------------------------------------------------------------------ 5. model
    def start_training(self) -> Process:
        """Train and register a quick model with the worker's environment (its MLflow URL,
        credentials, model name), as a user would from inside the VPC."""
        worker = self.worker()
        home = Path(tempfile.mkdtemp(prefix="train-", dir=self.root))
        code = (
            "import json, sys\nfrom pathlib import Path\n"
            "from churnops.model.registry import TrainingOptions, train_and_register\n"
            "from churnops.model import registry\n"
            "from churnops.settings import get_settings\n"
            "registry.CV_FOLDS = 2  # a rehearsal's model need not be good, only quick\n"
            "settings = get_settings(churnops_home=Path(sys.argv[1]))\n"
            "params = json.loads(sys.argv[3])\n"
            "options = TrainingOptions(data_file=Path(sys.argv[2]), params=params)\n"
            "outcome = train_and_register(settings, options)\n"
            "print(outcome.reason)\n"
            'sys.exit(0 if outcome.status == "promoted" else 3)\n'
        )
        argv = [
            str(containers.VENV_BIN / "python"),
            "-c",
            code,
            str(home),
            str(self.data_dir / TRAINING_FILE),
            json.dumps(QUICK_PARAMS),
        ]
        return self._start(replace(worker, argv=argv), "training")

    def finish_training(self, training: Process) -> None:
        code = training.wait(TRAIN_TIMEOUT)
        if code != 0:
            raise WiringError(
                f"training with the worker's environment ended with {code}:\n{training.tail()}"
            )
        model = self.worker().env.get("MODEL_NAME", "XGBoostChurnModel")
        self.report.facts["model"] = f"{model} trained and given the alias staging"

    # ------------------------------------------------------------------ helpers
    def function(self) -> Function:
        """The Lambda, which a failed apply may have left out."""
        function = self.deployment.function
        if function is None:
            name = self.applied.outputs["lambda_function_name"]
            raise WiringError(f"the emulator has no Lambda function {name}")
        return function

    def worker(self) -> containers.Local:
        """The one container of the tasks without a port: the flow runner."""
        workers = [
            self.local[c.label]
            for t in self.services()
            if not t.ports
            for c in t.containers
            if c.essential
        ]
        if len(workers) != 1:
            raise WiringError(f"expected one worker container, found {[w.label for w in workers]}")
        return workers[0]


def _in_parallel(target: Any, jobs: list[tuple[Any, ...]]) -> None:
    """``target(*job)`` for every job at once; one WiringError with every job's."""
    with ThreadPoolExecutor(max(1, len(jobs))) as pool:
        futures = [pool.submit(target, *job) for job in jobs]
    errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise WiringError("\n".join(errors))


def _versions(s3: Any, bucket: str) -> set[tuple[str, str]]:
    return {
        (entry["Key"], entry["VersionId"])
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", [])
    }


def _remove_new_versions(s3: Any, bucket: str, before: set[tuple[str, str]]) -> None:
    """Leave the bucket as the rehearsal found it: every version it added, deleted."""
    for key, version in sorted(_versions(s3, bucket) - before):
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
