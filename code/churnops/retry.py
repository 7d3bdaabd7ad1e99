"""How ChurnOps waits for what is down: one policy, the same locally and on AWS.

A call to a dependency (the metrics database, MLflow, SNS, SMTP, the Evidently UI)
times out after :data:`NETWORK_TIMEOUT_SECONDS`; a step keeps trying one for
:data:`DEPENDENCY_WAIT_SECONDS`; a run that still failed on a dependency is re-driven
by the reconciler after a doubling wait, :data:`MAX_ATTEMPTS` attempts in all.
Constants, not settings: nobody should have to tune them (tests patch them).
"""

from __future__ import annotations

#: Timeout of one network call (s): metrics database statements and connections, the
#: Evidently UI, SNS and SMTP. MLflow's client takes its own from
#: churnops/platform/mlflow_client.json, locally and on ECS alike.
NETWORK_TIMEOUT_SECONDS = 30.0
#: How long a step keeps trying a dependency that is down before its attempt fails (s).
DEPENDENCY_WAIT_SECONDS = 10.0
#: Attempts at a run (failed on a dependency, or its runner killed) before its file goes
#: to errored/ as 'gave up after N attempts' with an alert.
MAX_ATTEMPTS = 5
#: Wait before re-driving a run that failed on a dependency (s), doubling up to the most.
RETRY_FIRST_SECONDS = 30.0
RETRY_MAX_SECONDS = 1800.0
#: Tries per alert channel, and the first wait between them (s), doubling.
ALERT_SEND_ATTEMPTS = 3
ALERT_RETRY_WAIT = 2.0
