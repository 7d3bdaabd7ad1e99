"""How ChurnOps waits for what is down: one policy, the same locally and on AWS.

Every wait doubles (:class:`Backoff`), at two scales:

* a **call** to a dependency inside a step (the metrics database, MLflow's health, an
  alert channel) is tried again after :data:`CALL`'s waits while the error says the
  dependency is down, for at most :data:`DEPENDENCY_WAIT_SECONDS`; each try is bounded
  by :data:`NETWORK_TIMEOUT_SECONDS`. Then the step fails, and so does the attempt;
* a **run** whose attempt failed on a dependency stays in ``processing/`` and the
  reconciler re-drives it after :data:`RUN`'s wait, :data:`MAX_ATTEMPTS` attempts in all
  (a run whose runner was killed counts too), then its file goes to ``errored/``.

Not Prefect task retries: a step's retry must not outlive the run's lease, and the
run-level retry must survive the process (the reconciler finds it in the drop).
Two waits stay outside on purpose: the Lambda's trigger (standard library only, see
:mod:`churnops.drop.trigger`, bounded by its 30 s timeout) and boto3's own standard
retries inside one S3 request (:func:`churnops.drop.storage.s3_client`).
Constants, not settings: nobody should have to tune them (tests patch them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_delay


@dataclass(frozen=True)
class Backoff:
    """Waits that double from ``first`` up to ``longest`` seconds."""

    first: float
    longest: float

    def delay(self, tries: int) -> float:
        """The wait after ``tries`` failed tries (1: ``first``)."""
        return min(self.longest, self.first * 2 ** max(0, tries - 1))


#: Timeout of one network call (s): metrics database statements and connections, the
#: Evidently UI, SNS and SMTP. MLflow's client takes its own from
#: churnops/platform/mlflow_client.json, locally and on ECS alike.
NETWORK_TIMEOUT_SECONDS = 30.0
#: How long a step keeps trying a dependency that is down (s): a restart's blip passes,
#: an outage fails the attempt in seconds and leaves the rest to the reconciler.
DEPENDENCY_WAIT_SECONDS = 10.0
#: Between tries of one call: 0.5, 1, 2, 4, 4 ... s.
CALL = Backoff(first=0.5, longest=4.0)
#: Between attempts at a run: 30 s, 1, 2, 4 ... min, at most 30 min.
RUN = Backoff(first=30.0, longest=1800.0)
#: Attempts at a run (failed on a dependency, or its runner killed) before its file goes
#: to errored/ as 'gave up after N attempts' with an alert.
MAX_ATTEMPTS = 5


def call(
    retry_on: Callable[[BaseException], bool],
    *,
    within: float | None = None,
    log: logging.Logger | None = None,
) -> Retrying:
    """Tries of one call: again while ``retry_on(error)`` (the dependency is down), with
    :data:`CALL`'s waits, until ``within`` (:data:`DEPENDENCY_WAIT_SECONDS`) has passed;
    then the last error is raised. ``log`` gets a warning before each wait."""
    return Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_delay(DEPENDENCY_WAIT_SECONDS if within is None else within),
        wait=lambda state: CALL.delay(state.attempt_number),
        before_sleep=before_sleep_log(log, logging.WARNING) if log else None,
        reraise=True,
    )
