"""The warm runner of the ``churnops`` deployments: imports and the staging model are
loaded once, then each due flow run is proposed Pending and executed here with
:func:`prefect.flow_engine.run_flow` (the entry Prefect's own runners reach in their child
process; no supported API runs a deployment warm, so CI's ``newest-prefect`` job runs
``tests/platform/test_platform_runner.py``). Prefect admits one Pending and the file's
claim one winner, so several runners never take one run. SIGTERM stops a runner after
its run in progress. On ECS each protects its task from scale-in while a run executes
and, with ``OPS_METRICS_NAMESPACE``, publishes the queue depth (:class:`QueueGauge`)."""

from __future__ import annotations

import contextvars
import json
import logging
import math
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TypeVar
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas import filters
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.states import Pending

from churnops.monitoring import ops_metrics
from churnops.pipeline import RECONCILE_DEPLOYMENT
from churnops.pipeline.flow import churn_prediction_pipeline, without_prefect_heartbeat
from churnops.platform.deployments import register
from churnops.platform.services import UtcFormatter, ready_file
from churnops.settings import PlatformSettings, Settings, get_settings

log = logging.getLogger("churnops.runner")
T = TypeVar("T")
#: A run's scale-in protection lapses after this long should the runner hang (ECS default).
PROTECTION_MINUTES = 120
#: How often an idle runner asks for a due run (s): at most this much added to a latency.
POLL_SECONDS = 0.25
#: How often a poll also marks the deployments as polled (s), which Prefect's foreman wants
#: within 60 s (else it shows them "Not Ready"). That poll cost the server 6.4 ms of CPU,
#: a plain read of the same runs 2.7 ms: two idle runners' polls were 8% of a core.
MARK_POLLED_SECONDS = 15.0
#: How often each runner publishes the queued flow runs (s): CloudWatch's resolution.
OPS_METRICS_SECONDS = 60.0


class FlowRunner:
    """Poll the API for the deployment's scheduled runs and execute them in this process."""

    def __init__(self, settings: Settings, client: SyncPrefectClient) -> None:
        self.settings = settings
        self.client = client
        self.stopping = False
        self.deployment_ids: list[UUID] = []
        self.flows: dict[UUID, Flow] = {}
        #: When a poll last marked the deployments as polled (monotonic s; never yet).
        self.marked = -math.inf

    def deploy(self) -> list[UUID]:
        self.flows = register(self.settings.drop)
        self.deployment_ids = list(self.flows)
        return self.deployment_ids

    def warm_up(self) -> None:
        """Load the staging model and run one small report, so the first file is fast.
        Without a model (none yet, MLflow down) the runner serves anyway: a file's run
        then fails on its model step and is retried."""
        try:
            from evidently import Dataset

            from churnops.model.churn_model import load_aliased_model
            from churnops.monitoring.drift import build_report, data_definition

            model = load_aliased_model(self.settings.model)
            reference = model.model.reference_data().head(200)
            definition = data_definition(model.model.features, labeled=True)
            build_report(model.model.features, labeled=True).run(
                Dataset.from_pandas(reference, data_definition=definition),
                Dataset.from_pandas(reference, data_definition=definition),
            )
        except Exception as exc:
            log.warning("not warm, the first run loads the model: %s", exc)
            return
        log.info("warm: %s version %s loaded", model.name, model.version)

    def reconcile_now(self) -> None:
        """One reconcile run right away, after deleting the scheduled ones that fell due
        while the platform was down: each would only repeat it, ahead of dropped files."""
        from prefect.deployments import run_deployment

        reconciler = self.client.read_deployment_by_name(RECONCILE_DEPLOYMENT)
        missed = self.client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=[reconciler.id], scheduled_before=datetime.now(UTC)
        )
        for run in missed:
            with suppress(ObjectNotFound):  # another runner deleted it first
                self.client.delete_flow_run(run.id)
        run_deployment(
            RECONCILE_DEPLOYMENT,
            timeout=0,
            as_subflow=False,
            flow_run_name="reconcile at runner start",
        )

    def due_runs(self, client: SyncPrefectClient | None = None) -> list[FlowRun]:
        """Runs of the deployments due now and not taken: the queue the runners share.
        Every :data:`MARK_POLLED_SECONDS` the query also marks the deployments as polled
        (Prefect's runner poll); in between, a plain read of the same runs."""
        client = client or self.client
        due_before = datetime.now(UTC) + timedelta(seconds=1)
        if time.monotonic() - self.marked >= MARK_POLLED_SECONDS:
            self.marked = time.monotonic()
            return client.get_scheduled_flow_runs_for_deployments(
                deployment_ids=self.deployment_ids, scheduled_before=due_before
            )
        return client.read_flow_runs(
            deployment_filter=filters.DeploymentFilter(
                id=filters.DeploymentFilterId(any_=self.deployment_ids)
            ),
            flow_run_filter=filters.FlowRunFilter(
                next_scheduled_start_time=filters.FlowRunFilterNextScheduledStartTime(
                    before_=due_before
                ),
                state=filters.FlowRunFilterState(
                    type=filters.FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                ),
            ),
            sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        )

    def next_run(self) -> FlowRun | None:
        """The run due first, or None. One at a time: another runner could finish a
        batched run, and Prefect lets a Completed run without a persisted result go back
        to Pending."""
        runs = self.due_runs()
        return min(
            runs, key=lambda r: r.next_scheduled_start_time or datetime.now(UTC), default=None
        )

    def execute(self, run: FlowRun) -> None:
        """Pending, then the flow engine runs it here (it proposes Running and the end)."""
        current = self.client.read_flow_run(run.id).state
        if current is None or not current.is_scheduled():
            log.info("flow run %s not taken: it is %s already", run.id, current and current.name)
            return
        answer = self.client.set_flow_run_state(run.id, Pending())
        if answer.status != SetStateStatus.ACCEPT:
            reason = getattr(answer.details, "reason", None) or answer.status.value
            log.info("flow run %s not taken: %s", run.id, reason)
            return
        started = time.perf_counter()
        with task_protection(self.settings.platform):
            final = off_the_main_thread(
                run_flow,
                self.flows.get(run.deployment_id, churn_prediction_pipeline),
                flow_run=self.client.read_flow_run(run.id),
                return_type="state",
            )
        log.info(
            "flow run %s (%s): %s in %.2fs %s",
            run.name,
            run.id,
            getattr(final, "name", final),
            time.perf_counter() - started,
            getattr(final, "message", "") or "",
        )

    def serve(self) -> None:
        """Poll and execute until asked to stop; an API hiccup is logged and retried."""
        while not self.stopping:
            try:
                run = self.next_run()
                if run is not None:
                    self.execute(run)
            except Exception as exc:  # the server restarting, a timeout: poll again
                log.warning("talking to Prefect failed: %s", exc)
                run = None
            if run is None:
                time.sleep(POLL_SECONDS)


class QueueGauge(threading.Thread):
    """Publishes the number of due, untaken runs every ``every`` seconds, from a thread
    with its own client: scaling must see the queue exactly when every runner is busy."""

    def __init__(self, runner: FlowRunner, every: float = OPS_METRICS_SECONDS) -> None:
        super().__init__(name="queue-gauge", daemon=True)
        self.runner = runner
        self.every = every
        self.stopped = threading.Event()
        # Prefect's settings are context variables: the thread talks to the same API.
        self.context = contextvars.copy_context()

    def run(self) -> None:
        self.context.run(self._publish)

    def _publish(self) -> None:
        platform = self.runner.settings.platform
        with get_client(sync_client=True) as client:
            while not self.stopped.wait(self.every):
                try:
                    queued = len(self.runner.due_runs(client))
                except Exception as exc:  # the API restarting: the next tick tries again
                    log.warning("queue depth not read: %s", exc)
                    continue
                ops_metrics.publish(platform, {ops_metrics.QUEUED_RUNS: float(queued)})


def off_the_main_thread(call: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``call`` in a thread of its own (with this context: Prefect's settings), waited for.
    In the main thread Prefect's flow engine swaps the runner's SIGTERM handler for one
    raising TerminationSignal: a stop crashed the run in progress instead of ending the
    runner after it. Signal handlers are only installed from the main thread."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flow-run") as pool:
        return pool.submit(context.run, call, *args, **kwargs).result()


@contextmanager
def task_protection(platform: PlatformSettings) -> Iterator[None]:
    """Inside an ECS service task: no scale-in or deployment stops it while this runs."""
    _protect(platform.ecs_agent_uri, True)
    try:
        yield
    finally:
        _protect(platform.ecs_agent_uri, False)


def _protect(agent_uri: str | None, enabled: bool) -> None:
    if not agent_uri:
        return
    body = {"ProtectionEnabled": enabled}
    if enabled:
        body["ExpiresInMinutes"] = PROTECTION_MINUTES
    request = urllib.request.Request(
        f"{agent_uri.rstrip('/')}/task-protection/v1/state",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as exc:
        log.warning("task protection %s not set: %s", enabled, exc)
        return
    if "failure" in answer or "error" in answer:
        log.warning("task protection %s refused: %s", enabled, answer)


def main() -> None:
    """``python -m churnops.platform.runner [INDEX]``: runner INDEX of ``churnops up``."""
    index = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # Prefect owns the root logger's configuration; ours gets its own handler.
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter(f"%(asctime)s runner-{index} %(name)s %(message)s"))
    logging.getLogger("churnops").addHandler(handler)
    logging.getLogger("churnops").setLevel(logging.INFO)
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)  # on ECS: CHURNOPS_HOME in /tmp
    ready = ready_file(settings.home, index)
    with get_client(sync_client=True) as client:
        runner = FlowRunner(settings, client)

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s: stopping after the run in progress", signum)
            runner.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        deployment_ids = runner.deploy()
        log.info("deployments %s", ", ".join(map(str, deployment_ids)))
        runner.warm_up()
        runner.reconcile_now()  # a runner starts after a stop or a crash: look around
        gauge = QueueGauge(runner)
        if settings.platform.ops_metrics_namespace:
            gauge.start()
        ready.write_text(str(deployment_ids[0]))
        try:
            with without_prefect_heartbeat():
                runner.serve()
        finally:
            gauge.stopped.set()
            ready.unlink(missing_ok=True)
    log.info("runner stopped")


if __name__ == "__main__":
    main()
