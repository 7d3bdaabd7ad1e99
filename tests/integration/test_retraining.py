"""Retraining through the promotion gate, on the session's real MLflow server.

Each test works on a copy of the session model under a name of its own (moving
its alias must not change what other tests score with), and on labeled files
processed by ``per_file.process`` itself. The gate's minimums are lowered to
F1 0.5 / ROC AUC 0.85: no model reaches F1 0.70 on the synthetic files, and these
tests are about the champion comparison, the lineage and the records.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from churnops.data.reading import load_customer_file
from churnops.drop.storage import DropStorage, open_storage, stage_key
from churnops.model.churn_model import load_aliased_model
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from churnops.pipeline.flow import retrain_model
from churnops.pipeline.retrain_trigger import submit_to_deployment
from churnops.pipeline.retraining import DIGEST_CHARS, LOCK, RetrainOptions, retrain, score
from churnops.settings import Settings, get_settings
from tests.fixtures.model import FAST_PARAMS

pytestmark = pytest.mark.integration

#: A model that barely learns: worse than the champion on any file.
BAD_PARAMS = {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.01}
SYNTHETIC = [f"customer_churn_synthetic_{i}.csv" for i in (1, 2, 3)]


@dataclass
class World:
    settings: Settings
    storage: DropStorage
    data_dir: Path

    def drop(
        self, name: str, as_name: str | None = None, steps: per_file.Steps = per_file.PLAIN_STEPS
    ) -> per_file.FileOutcome:
        key = stage_key("input", as_name or name)
        self.storage.create(key, (self.data_dir / name).read_bytes())
        outcome = per_file.process(self.settings, self.storage, key, steps=steps)
        assert outcome.status == "processed", outcome.message
        return outcome

    def alias_version(self) -> str:
        client = mlflow.MlflowClient()
        found = client.get_model_version_by_alias(self.settings.model_name, "staging")
        return str(found.version)

    def version_tags(self, version: str) -> dict[str, str]:
        return mlflow.MlflowClient().get_model_version(self.settings.model_name, version).tags

    def events(self):
        store = MetricsStore.from_settings(self.settings)
        try:
            return store.model_events()
        finally:
            store.close()


@pytest.fixture
def world(mlflow_server: str, session_model: str, data_dir: Path, tmp_path: Path) -> World:
    """A scratch home whose model is a copy of the session model (version 1 = staging)."""
    name = f"Retrain-{uuid.uuid4().hex[:8]}"
    settings = get_settings(
        churnops_home=tmp_path / "home",
        churn_data_dir=data_dir,
        mlflow_tracking_uri=mlflow_server,
        database_url=None,
        model_name=name,
        cv_folds=2,
        retrain_mode="off",
        gate_min_f1=0.5,
        gate_min_roc_auc=0.85,
        alert_retry_wait=0.01,
    )
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    copy = client.copy_model_version(f"models:/{session_model}/1", name)
    client.set_registered_model_alias(name, "staging", copy.version)
    return World(settings, open_storage(settings), data_dir)


def file_sha(world: World, name: str) -> str:
    return hashlib.sha256((world.data_dir / name).read_bytes()).hexdigest()


def test_a_worse_challenger_is_refused_a_better_one_promoted_with_lineage(world: World) -> None:
    for name in SYNTHETIC[:2]:
        world.drop(name)
    champion = load_aliased_model(world.settings)
    holdout = load_customer_file(world.data_dir / SYNTHETIC[1], require_target=True)
    champion_f1 = score(champion.model, holdout).f1

    worse = retrain(world.settings, world.storage, RetrainOptions(params=BAD_PARAMS))
    assert worse.status == "refused", worse.reason
    assert worse.champion_f1 == pytest.approx(champion_f1)  # the deployed version itself
    assert f"< f1 {champion_f1:.3f} of current staging version 1" in worse.reason
    assert world.alias_version() == "1"
    tags = world.version_tags(worse.version)
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.reason"] == worse.reason
    assert tags["retrain.parent_version"] == "1"

    better = retrain(world.settings, world.storage, RetrainOptions(params=FAST_PARAMS))
    assert better.status == "promoted", better.reason
    assert better.holdout_f1 >= champion_f1 and better.parent_version == "1"
    assert world.alias_version() == better.version
    assert world.version_tags(better.version)["promotion.decision"] == "promoted"
    assert better.training_files == ("customer_churn_0.csv", SYNTHETIC[0])
    assert better.holdout_file == SYNTHETIC[1]

    run = mlflow.MlflowClient().get_run(better.run_id)
    assert run.data.tags["retrain.parent_version"] == "1"
    assert run.data.tags["promotion.decision"] == "promoted"
    inputs = {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags})
        for i in run.inputs.dataset_inputs
    }
    for name, context in [
        ("customer_churn_0.csv", "training"),
        (SYNTHETIC[0], "training"),
        (SYNTHETIC[1], "holdout"),
    ]:
        digest, tags = inputs[name]
        assert digest == file_sha(world, name)[:DIGEST_CHARS]
        assert tags["sha256"] == file_sha(world, name)
        assert tags["mlflow.data.context"] == context
        expected_rows = len(load_customer_file(world.data_dir / name, require_target=True))
        assert tags["rows"] == str(expected_rows)

    events = world.events()
    assert list(events["event"]) == ["refused", "promoted"]
    assert list(events["version"]) == [worse.version, better.version]
    assert list(events["parent_version"]) == ["1", "1"]
    assert set(events["trigger"]) == {"manual"}
    assert events["champion_f1"].iloc[1] == pytest.approx(champion_f1)
    alerts = world.settings.alert_log.read_text()
    assert f"ChurnOps: retraining refused version {worse.version}" in alerts
    assert f"ChurnOps: retraining promoted version {better.version}" in alerts

    again = retrain(world.settings, world.storage, RetrainOptions(params=FAST_PARAMS))
    assert again.status == "skipped" and f"trained on {SYNTHETIC[1]}" in again.reason
    assert world.alias_version() == better.version


def test_auto_retraining_from_the_alert_step_serves_the_next_file_not_the_current_one(
    world: World,
) -> None:
    """RETRAIN_MODE=auto with an in-process submit: the retraining runs inside the alert
    step of the file that scored low, so the alias moves while that file is scored."""
    settings = world.settings.model_copy(
        update={"retrain_mode": "auto", "retrain_cooldown_minutes": 0}
    )
    world.settings = settings
    outcomes = []

    def submit(settings: Settings, key: str, drop: str, run: str) -> None:
        options = RetrainOptions(trigger="auto", include_run=run, params=FAST_PARAMS, force=True)
        outcomes.append(retrain(settings, open_storage(settings), options))

    steps = per_file.Steps(send_alerts=_with_submit(submit))
    first = world.drop(SYNTHETIC[0], steps=steps)
    (retrained,) = outcomes
    assert retrained.status == "promoted" and retrained.holdout_file == SYNTHETIC[0]
    assert first.model_version == "1"  # the file that asked keeps the version it started with
    assert first.predictions_key.endswith("_v1.csv")
    assert "retraining started" in first.message
    assert world.alias_version() == retrained.version
    assert world.events()["trigger"].tolist() == ["auto"]

    second = world.drop(SYNTHETIC[0], as_name="again.csv")
    assert second.model_version == retrained.version  # the next file gets the new one


def _with_submit(submit: Callable) -> Callable:
    def send_alerts(*args, **kwargs):
        return per_file.send_alerts(*args, **{**kwargs, "submit": submit})

    return send_alerts


def test_the_retrain_deployment_gets_one_run_per_cooldown_window(
    prefect_server: str, tmp_path: Path
) -> None:
    """Thirty bad files in one window submit with one idempotency key: one flow run."""
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    settings = get_settings(churnops_home=tmp_path, retrain_deployment=f"retrain_model/{name}")
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("retrain_model")
            deployment = client.create_deployment(flow_id=flow_id, name=name)
        for run in range(5):
            submit_to_deployment(settings, "retrain:20261127T060000Z", "s3://b", f"R{run}")
        submit_to_deployment(settings, "retrain:20261127T070000Z", "s3://b", "R9")
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
            )
    assert sorted(r.parameters["include_run"] for r in runs) == ["R0", "R9"]
    assert {r.parameters["trigger"] for r in runs} == {"auto"}


def test_the_retrain_flow_completes_with_the_verdict(
    prefect_server: str, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing processed yet: the flow run ends Completed, saying why it skipped."""
    monkeypatch.setenv("CHURNOPS_HOME", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        state = retrain_model(trigger="manual", return_state=True)
    assert state.is_completed()
    assert state.message.startswith("retraining skipped: no labeled file")


# --- kill -9 mid-retraining --------------------------------------------------------------------
def _retrain_and_die(settings: Settings) -> None:
    """In a child: retrain, and SIGKILL itself at the first progress line (mid cross-validation)."""

    def die(*_args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    retrain(settings, open_storage(settings), RetrainOptions(params=FAST_PARAMS), progress=die)
    os._exit(0)  # not killed: the test fails on the exit code


def test_a_retraining_killed_mid_way_holds_the_lock_until_it_expires_then_one_runs(
    world: World,
) -> None:
    world.drop(SYNTHETIC[0])
    settings = world.settings.model_copy(update={"retrain_lock_minutes": 10 / 60})
    child = multiprocessing.get_context("forkserver").Process(
        target=_retrain_and_die, args=(settings,)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL, "the retraining was not killed"

    blocked = retrain(settings, world.storage, RetrainOptions(params=FAST_PARAMS))
    assert blocked.status == "skipped" and "another retraining is running" in blocked.reason
    assert world.alias_version() == "1" and world.events().empty  # nothing half-done

    store = MetricsStore.from_settings(settings)
    expires = store.lock_state(LOCK).expires_at
    store.close()
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    after = retrain(settings, world.storage, RetrainOptions(params=FAST_PARAMS))
    assert after.status in ("promoted", "refused"), after
    assert len(world.events()) == 1
