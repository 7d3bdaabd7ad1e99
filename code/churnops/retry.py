"""How ChurnOps waits for what is down: one doubling policy, locally and on AWS.

A **call** to a dependency inside a step is tried again while it is down, for at most
:data:`DEPENDENCY_WAIT_SECONDS`; a **run** whose attempt failed stays in ``processing/``
and the reconciler re-drives it after :data:`RUN`'s wait, :data:`MAX_ATTEMPTS` in all. Not
Prefect task retries: a step's retry must not outlive the lease, and a run's retry must
survive the process. Two waits stay outside on purpose: the Lambda's trigger (standard
library only, within its 30 s timeout) and boto3's own retries inside one S3 request.
Constants, not settings (tests patch them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import Retrying, before_sleep_log, retry_if_exception, stop_after_delay


@dataclass(frozen=True)
class Backoff:
    first: float
    longest: float

    def delay(self, tries: int) -> float:
        """The wait after ``tries`` failed tries (1: ``first``)."""
        return min(self.longest, self.first * 2 ** max(0, tries - 1))


#: Timeout of one network call (s): the metrics database, Evidently UI, SNS and SMTP
#: (MLflow's client takes its own: churnops.settings.MLFLOW_CLIENT_ENV).
NETWORK_TIMEOUT_SECONDS = 30.0
#: How long a step keeps trying a dependency that is down (s): a restart's blip passes.
DEPENDENCY_WAIT_SECONDS = 10.0
#: Between tries of one call: 0.5, 1, 2, 4, 4 ... s.
CALL = Backoff(first=0.5, longest=4.0)
#: Between attempts at a run: 30 s, 1, 2, 4 ... min, at most 30 min.
RUN = Backoff(first=30.0, longest=1800.0)
#: Attempts at a run (failed, or its runner killed) before its file goes to errored/.
MAX_ATTEMPTS = 5


def call(
    retry_on: Callable[[BaseException], bool],
    *,
    within: float | None = None,
    log: logging.Logger | None = None,
) -> Retrying:
    """Tries of one call while ``retry_on(error)``, :data:`CALL` apart, for ``within``
    (:data:`DEPENDENCY_WAIT_SECONDS`) s; then the last error is raised."""
    return Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_delay(DEPENDENCY_WAIT_SECONDS if within is None else within),
        wait=lambda state: CALL.delay(state.attempt_number),
        before_sleep=before_sleep_log(log, logging.WARNING) if log else None,
        reraise=True,
    )
