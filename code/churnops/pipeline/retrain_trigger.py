"""What ``RETRAIN_MODE`` does when a labeled file scores below a minimum: ``off``;
``suggest`` (the default: a new version changes every later score, so a person decides);
``auto``: submit one ``retrain_model`` run. A burst starts one retraining: none within
``RETRAIN_COOLDOWN_MINUTES`` of the last start, and one idempotency key per window.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

from churnops import pipeline
from churnops.drop import claims
from churnops.monitoring.alerts import LowScore
from churnops.monitoring.metrics_db import MetricsStore
from churnops.settings import ModelSettings, MonitoringSettings, hide_credentials

log = logging.getLogger(__name__)

#: The lock that keeps retrainings one at a time (here: scoring imports no training stack).
LOCK = "retrain"


def lock_holder(trigger: str) -> str:
    """This process's name on the lock: ``<trigger>-<host>-<pid>-<nonce>``, read by
    :func:`alive`."""
    return f"{trigger}-{claims.HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def alive(holder: str) -> bool:
    """False when the lock's holder (:func:`lock_holder`) ran on this host and is gone."""
    parts = holder.split("-", 1)[-1].rsplit("-", 2)
    if len(parts) != 3 or parts[0] != claims.HOST or not parts[1].isdigit():
        return True
    return claims.pid_alive(int(parts[1]))


SUGGESTION = "retraining suggested: run `churnops retrain`"

#: ``submit(idempotency_key, drop, run)``: start one retraining for the file of ``run``;
#: returns the idempotency key of the flow run it made or found (the alert names it).
Submit = Callable[[str, str, str], str]


def idempotency_key(now: datetime, cooldown_minutes: float) -> str:
    """``retrain:<start of the cooldown window>``: one flow run per window."""
    if cooldown_minutes <= 0:
        return f"retrain:{now.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"
    width = cooldown_minutes * 60
    start = datetime.fromtimestamp(now.timestamp() // width * width, UTC)
    return f"retrain:{start:%Y%m%dT%H%M%SZ}"


def cooling_down(last_verdict: datetime | None, now: datetime, cooldown_minutes: float) -> bool:
    return last_verdict is not None and now - last_verdict < timedelta(minutes=cooldown_minutes)


def on_low_scores(
    model: ModelSettings,
    monitoring: MonitoringSettings,
    low: list[LowScore],
    drop: str,
    run: str,
    submit: Submit,
) -> str:
    """The alert's note on what ``RETRAIN_MODE`` did about ``low`` scores ('' for nothing);
    a failed submission is noted, never raised."""
    if not low or model.retrain_mode == "off":
        return ""
    if model.retrain_mode == "suggest":
        return SUGGESTION
    now = datetime.now(UTC)
    try:
        with closing(MetricsStore.from_settings(monitoring)) as store:
            last = store.last_verdict_at()
        if cooling_down(last, now, model.retrain_cooldown_minutes):
            return (
                f"retraining not started: the last one ended at {last:%Y-%m-%d %H:%M:%S} UTC "
                f"(cooldown {model.retrain_cooldown_minutes:g} minutes)"
            )
        key = submit(idempotency_key(now, model.retrain_cooldown_minutes), drop, run)
    except Exception as exc:
        log.warning("retraining not started: %s", exc)
        return f"retraining could not be started ({type(exc).__name__}: {exc}); {SUGGESTION}"
    return f"retraining started ({pipeline.RETRAIN_DEPLOYMENT}, {key})"


def submit_to_deployment(
    key: str, drop: str, run: str, deployment: str = pipeline.RETRAIN_DEPLOYMENT
) -> str:
    """One flow run of the retrain deployment per idempotency key (Prefect dedupes), until
    it ends: Prefect answers an ended run for ever, and one that ended within its window
    recorded no verdict (else the cooldown stops us first): it skipped or failed, which
    holds nothing back, so ``<key>@<its id>`` starts the next (the same for every file of
    the burst), the key returned: the alert named ``key``, not the run it started. Only to
    a Prefect API that was named (the platform's runners have it): without one, Prefect
    started a throwaway server of its own under ~/.prefect, which has no deployment, and
    the alert said "ObjectNotFound: None"."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    if not (api := get_current_settings().api.url):
        raise LookupError("no Prefect API to start it on (PREFECT_API_URL): not a platform run")

    def start(idempotency: str) -> Any:
        return run_deployment(
            deployment,
            parameters={"trigger": "auto", "drop": drop or None, "include_run": run or None},
            timeout=0,
            as_subflow=False,
            idempotency_key=idempotency,
            flow_run_name=f"retrain after {run}" if run else "retrain (auto)",
        )

    submitted = key
    try:
        started = start(submitted)
        while started.state is not None and started.state.is_final():
            submitted = f"{key}@{started.id}"
            started = start(submitted)
    except ObjectNotFound:  # its words: "None"
        where = hide_credentials(api)
        raise LookupError(f"no deployment {deployment} on the Prefect API {where}") from None
    return submitted
