"""Training and retraining through the promotion gate against the session's real MLflow
server. Retraining tests work on a copy of the session model (moving its alias must not
change what others score with) and labeled files processed by ``per_file.process``; a ROC
AUC minimum the fast model passes."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed

from benchmarks import model_quality
from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.drop.storage import DropStorage, open_storage, stage_key
from churnops.model import registry, training
from churnops.model.churn_model import (
    ChurnModel,
    NoAliasedVersion,
    UnloadableVersion,
    configure_mlflow,
    load_aliased_model,
)
from churnops.model.registry import Outcome, TrainingOptions, deployed, row_keys, train_and_register
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file
from churnops.pipeline.flow import retrain_model
from churnops.pipeline.labels import LABELED_ROWS_SUFFIX
from churnops.pipeline.retrain_trigger import submit_to_deployment
from churnops.pipeline.retraining import DIGEST_CHARS, LOCK, RetrainOptions, retrain, score
from churnops.platform.services import free_port
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings, get_settings
from tests.fixtures.model import FAST_PARAMS, model_settings
from tests.processes import LOOPBACK

#: A model that barely learns: worse than the champion on any file.
WORSE = {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.01}


@pytest.fixture(scope="module", autouse=True)
def quick_folds() -> Iterator[None]:
    """Three folds: these tests check what is logged, not how good the model is."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry, "CV_FOLDS", 3)
        yield


@pytest.fixture(scope="module")
def settings(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("churnops-home")
    return get_settings(churnops_home=home, mlflow_tracking_uri=mlflow_server, min_f1=0.5)


@pytest.fixture(scope="module")
def first(settings: Settings, data_dir: Path) -> Outcome:
    options = TrainingOptions(data_file=data_dir / "customer_churn_0.csv", trials=1)
    return train_and_register(settings, options)


def client(settings: Settings) -> mlflow.MlflowClient:
    configure_mlflow(settings.model)
    return mlflow.MlflowClient()


def test_first_model_is_registered_and_takes_the_alias(settings: Settings, first: Outcome) -> None:
    version = client(settings).get_model_version_by_alias(settings.model.model_name, "staging")
    assert version.version == first.version == "1"
    assert first.status == "promoted"
    assert version.tags["promotion.decision"] == "promoted"


def test_run_has_metrics_tags_and_plots(settings: Settings, first: Outcome) -> None:
    run = client(settings).get_run(first.run_id)
    for split in ("holdout", "training_holdout"):
        for metric in ("f1", "precision", "recall", "accuracy", "roc_auc", "pr_auc", "log_loss"):
            assert f"{split}_{metric}" in run.data.metrics
    for cost in ("predict_ms_per_1k_rows", "shap_ms_per_1k_rows"):
        assert run.data.metrics[cost] > 0
    contexts = {
        {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset.name
        for i in run.inputs.dataset_inputs
    }
    assert contexts == {"training": "customer_churn_0.csv", "holdout": "customer_churn_0.csv"}
    plots = {a.path for a in client(settings).list_artifacts(first.run_id, "plots")}
    assert {
        "plots/shap_summary.png",
        "plots/holdout_confusion_matrix.png",
        "plots/holdout_roc_curve.png",
        "plots/holdout_pr_curve.png",
    } <= plots
    assert float(run.data.params["threshold"]) == first.threshold
    # as MLflow logs the model_config (a list's str): one value, no failed re-log
    assert run.data.params["features"] == str(FEATURES)


def test_model_predicts_labels_at_its_threshold(
    settings: Settings, first: Outcome, data_dir: Path
) -> None:
    configure_mlflow(settings.model)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model.model_name}@staging")
    frame = load_customer_file(data_dir / "customer_churn_1.csv")
    labels = model.predict(frame[FEATURES])
    scored = model.predict(frame[FEATURES], params={"probability": True})
    assert set(labels.unique()) <= {0, 1}
    assert list(scored.columns) == [PREDICTION, PROBABILITY]
    inner = model.unwrap_python_model()
    assert inner.threshold == first.threshold
    assert (scored[PREDICTION] == (scored[PROBABILITY] >= first.threshold)).all()
    assert (labels.to_numpy() == scored[PREDICTION].to_numpy()).all()
    raw = pd.read_csv(data_dir / "customer_churn_1.csv")  # the UCI header, as users drop it
    assert "Call  Failure" in raw.columns
    assert (model.predict(raw).to_numpy() == labels.to_numpy()).all()


def test_reference_data_travels_with_the_version(settings: Settings, first: Outcome) -> None:
    configure_mlflow(settings.model)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model.model_name}/{first.version}")
    reference = model.unwrap_python_model().reference_data()
    assert list(reference.columns) == [*FEATURES, TARGET, PREDICTION, PROBABILITY]
    # the fit rows: the holdout split (840 of 1,050 rows left) and every row whose features
    # equal a holdout row's are in no version's fit
    assert 700 < len(reference) <= 840
    stored = mlflow.artifacts.list_artifacts(
        f"models:/{settings.model.model_name}/{first.version}/artifacts"
    )
    assert "reference.parquet" in {Path(f.path).name for f in stored}


def test_worse_challenger_does_not_take_the_alias(
    settings: Settings, first: Outcome, data_dir: Path
) -> None:
    data = data_dir / "customer_churn_0.csv"
    worse = train_and_register(settings, TrainingOptions(data_file=data, params=WORSE))
    assert worse.status == "refused"
    assert f"of current staging version {first.version}" in worse.reason
    assert worse.champion_f1 > worse.holdout_f1  # the deployed version, on the same rows
    mlflow_client = client(settings)
    holder = mlflow_client.get_model_version_by_alias(settings.model.model_name, "staging")
    assert holder.version == first.version
    tags = mlflow_client.get_model_version(settings.model.model_name, worse.version).tags
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.reason"] == worse.reason

    again = train_and_register(settings, TrainingOptions(data_file=data, params=WORSE))
    assert again.status == "skipped" and f"version {worse.version} was fitted" in again.reason
    assert again.version == worse.version  # `churnops train` exits 0: that version stands

    forced = train_and_register(settings, TrainingOptions(data_file=data, params=WORSE, force=True))
    assert forced.status == "promoted" and forced.reason.startswith("forced despite")
    holder = mlflow_client.get_model_version_by_alias(settings.model.model_name, "staging")
    assert holder.version == forced.version


def test_a_first_training_in_a_home_that_does_not_exist_yet(
    mlflow_server: str, tmp_path: Path, data_dir: Path
) -> None:
    """No CHURNOPS_HOME folder yet (the Optuna study lives there): it is created. Trained
    as `make benchmark-model` trains ours in a home without one (it stopped on
    NoAliasedVersion, catching only MLflow's own error)."""
    home = tmp_path / "new" / "home"
    settings = model_settings(home, mlflow_server, "FirstInNewHome", churn_data_dir=data_dir)
    loaded = model_quality.staging_model(settings)
    assert (loaded.name, loaded.version) == ("FirstInNewHome", "1")
    assert (home / "optuna.db").exists()


def test_the_run_is_named_after_the_whole_training_file(
    mlflow_server: str, tmp_path: Path, data_dir: Path
) -> None:
    """`churnops train --data "my churn.csv"` made the MLflow run "train-my": the name was
    cut from the holdout's "my churn.csv (holdout split)" at its first space."""
    data = tmp_path / "my churn data.csv"
    data.write_bytes((data_dir / "customer_churn_0.csv").read_bytes())
    settings = model_settings(tmp_path / "home", mlflow_server, "SpacedFileName")
    outcome = train_and_register(settings, TrainingOptions(data_file=data, params=FAST_PARAMS))
    run = client(settings).get_run(outcome.run_id)
    assert run.info.run_name == "train-my churn data"


@pytest.mark.parametrize("champion", [False, True], ids=["no-champion", "champion"])
def test_no_promotion_when_the_alias_moved_while_the_version_was_logged(
    champion: bool,
    mlflow_server: str,
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another training promoted while this one logged its version (seconds): this one was
    judged against what held the alias before, so it must not take it. Two `churnops
    train` at once both said promoted, and the alias went to the one that ended last,
    the worse of the two (the check ran before the logging, not after)."""
    name = f"Raced{'After' if champion else 'First'}"
    settings = model_settings(tmp_path, mlflow_server, name)
    data = data_dir / "customer_churn_0.csv"
    if champion:
        options = TrainingOptions(data_file=data, params=WORSE, force=True)
        assert train_and_register(settings, options).status == "promoted"
    real = registry.log_model

    def another_training_promotes_meanwhile(*args: object) -> str:
        monkeypatch.setattr(registry, "log_model", real)
        other = real(*args)
        client(settings).set_registered_model_alias(name, "staging", other)
        return real(*args)

    monkeypatch.setattr(registry, "log_model", another_training_promotes_meanwhile)
    raced = train_and_register(settings, TrainingOptions(data_file=data))
    was = "version 1" if champion else "no version"
    other = str(int(raced.version) - 1)
    assert raced.status == "refused"
    assert raced.reason.startswith(
        f"'staging' moved to version {other} while training against {was}"
    )
    mlflow_client = client(settings)
    assert mlflow_client.get_model_version_by_alias(name, "staging").version == other
    tags = mlflow_client.get_model_version(name, raced.version).tags
    assert tags["promotion.decision"] == "refused"
    assert mlflow_client.get_run(raced.run_id).data.tags["promotion.reason"] == raced.reason


class _NotChurnOps(mlflow.pyfunc.PythonModel):
    def predict(self, context: object, model_input: pd.DataFrame, params: object = None) -> list:
        return [0] * len(model_input)


def _log_users_model(kind: str, name: str, data: Path) -> str:
    """A model a user registered by hand, as the MLflow docs show: a pyfunc of their own
    class, or a scikit-learn LogisticRegression on other feature names."""
    from sklearn.linear_model import LogisticRegression

    frame = load_customer_file(data, require_target=True)
    features = frame[FEATURES].rename(columns=lambda c: f"f_{c}")
    with mlflow.start_run():
        if kind == "pyfunc":
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=_NotChurnOps(),
                pip_requirements=["mlflow"],
                registered_model_name=name,
            )
        else:
            fitted = LogisticRegression(max_iter=50).fit(features, frame[TARGET])
            info = mlflow.sklearn.log_model(
                fitted,
                name="model",
                pip_requirements=["scikit-learn"],
                registered_model_name=name,
            )
    return str(info.registered_model_version)


@pytest.mark.parametrize("kind", ["pyfunc", "sklearn", "deleted"])
def test_an_alias_moved_by_hand_to_what_does_not_score_is_one_line(
    kind: str, mlflow_server: str, tmp_path: Path, data_dir: Path
) -> None:
    """A user moved `staging` to a model of their own (the MLflow UI), or deleted it: each
    dropped file failed with MLflow's "Unable to retrieve base model object from pyfunc."
    (scikit-learn), "AttributeError: 'P' object has no attribute 'score'" (a pyfunc) or
    "Registered model alias staging not found." (no model, no remedy), and `churnops train
    --force` and `retrain` ended in an AttributeError traceback."""
    name = f"UsersOwn{kind.title()}"
    settings = model_settings(tmp_path, mlflow_server, name)
    data = data_dir / "customer_churn_0.csv"
    configure_mlflow(settings.model)
    version = _log_users_model("pyfunc" if kind == "deleted" else kind, name, data)
    client(settings).set_registered_model_alias(name, "staging", version)
    if kind == "deleted":
        client(settings).delete_registered_model_alias(name, "staging")
        with pytest.raises(NoAliasedVersion, match=f"no version of {name} has alias 'staging'"):
            load_aliased_model(settings.model)
        return
    said = f"{name} version {version} \\('staging'\\) does not load \\(NotAChurnModel: not a"
    with pytest.raises(UnloadableVersion, match=said):
        load_aliased_model(settings.model)
    options = TrainingOptions(data_file=data, params=WORSE, force=True)
    said = f"version {version} .* does not load: .* \\(NotAChurnModel: not a ChurnOps model"
    with pytest.raises(registry.UnloadableChampion, match=said):
        train_and_register(settings, options)


def test_a_model_deleted_and_registered_again_is_not_scored_by_its_old_self(
    mlflow_server: str, tmp_path: Path, data_dir: Path
) -> None:
    """Deleted in the MLflow UI and trained again, the model numbers its versions from 1
    anew: a long-lived runner kept scoring with the deleted version 1 it had loaded (its
    cache knew a version by number only), under the new version 1's name."""
    name = "DeletedAndAgain"
    settings = model_settings(tmp_path, mlflow_server, name)
    data = data_dir / "customer_churn_0.csv"
    fast = {"n_estimators": 30, "max_depth": 4, "learning_rate": 0.2}
    first = train_and_register(settings, TrainingOptions(data_file=data, params=fast))
    old = load_aliased_model(settings.model)
    assert old.model.classifier.get_booster().num_boosted_rounds() == 30
    client(settings).delete_registered_model(name)
    again = train_and_register(settings, TrainingOptions(data_file=data))
    assert first.version == again.version == "1" and again.status == "promoted"
    new = load_aliased_model(settings.model)
    assert new.model.classifier.get_booster().num_boosted_rounds() == 61  # the shipped ones


SYNTHETIC = [f"customer_churn_synthetic_{i}.csv" for i in (1, 2, 3)]
LABELED = [f"labels{again}.csv{LABELED_ROWS_SUFFIX}" for again in ("", "-again")]


@dataclass
class World:
    settings: Settings
    storage: DropStorage
    data_dir: Path
    dropped: int = 0

    def drop(
        self, name: str, as_name: str | None = None, steps: per_file.Steps = per_file.PLAIN_STEPS
    ) -> per_file.FileOutcome:
        key = stage_key("input", as_name or name)
        return self.process(key, (self.data_dir / name).read_bytes(), steps)

    def process(
        self, key: str, data: bytes, steps: per_file.Steps = per_file.PLAIN_STEPS
    ) -> per_file.FileOutcome:
        """Drop ``data`` at ``key`` a second after the previous drop, and process it. The
        window orders drops by their run ids, to the second (S3 keeps no finer time):
        two drops within one second would be in either order."""
        self.storage.create(key, data)
        self.dropped += 1
        stamp = time.time() - 3600 + self.dropped
        os.utime(self.storage.path(key), (stamp, stamp))
        outcome = per_file.process(self.settings, self.storage, key, steps=steps)
        assert outcome.status == "processed", outcome.message
        return outcome

    def alias_version(self) -> str:
        client = mlflow.MlflowClient()
        found = client.get_model_version_by_alias(self.settings.model.model_name, "staging")
        return str(found.version)

    def version_tags(self, version: str) -> dict[str, str]:
        return mlflow.MlflowClient().get_model_version(self.settings.model.model_name, version).tags

    def retrain(self, params: dict = FAST_PARAMS, **kwargs: Any) -> Outcome:
        return retrain(self.settings, self.storage, RetrainOptions(params=params), **kwargs)

    def assert_unchanged(self) -> None:
        """Nothing moved: the alias on version 1, the only version, and no event."""
        assert self.alias_version() == "1" and self.events().empty
        name = self.settings.model.model_name
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
        assert [v.version for v in versions] == ["1"]

    def events(self):
        with closing(MetricsStore.from_settings(self.settings.monitoring)) as store:
            return store.model_events()


@pytest.fixture
def world(
    mlflow_server: str,
    session_model: str,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    """A scratch home whose model is a copy of the session model (version 1 = staging);
    quick folds, a ROC AUC minimum the fast parameters pass."""
    name = f"Retrain-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(registry, "CV_FOLDS", 2)
    monkeypatch.setattr(registry, "GATE_MIN_ROC_AUC", 0.85)
    settings = model_settings(
        tmp_path / "home",
        mlflow_server,
        name,
        churn_data_dir=data_dir,
        database_url=None,
        retrain_mode="off",
    )
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient(mlflow_server, registry_uri=mlflow_server)
    copy = client.copy_model_version(f"models:/{session_model}/1", name)
    client.set_registered_model_alias(name, "staging", copy.version)
    return World(settings, open_storage(settings.drop), data_dir)


def file_sha(world: World, name: str) -> str:
    return hashlib.sha256((world.data_dir / name).read_bytes()).hexdigest()


def test_a_worse_challenger_is_refused_a_better_one_promoted_with_lineage(world: World) -> None:
    for name in SYNTHETIC[:2]:
        world.drop(name)
    holdout = unseen(world, load_customer_file(world.data_dir / SYNTHETIC[1], require_target=True))
    champion_f1 = score(load_aliased_model(world.settings.model).model, holdout).f1

    worse = world.retrain(WORSE)
    assert worse.status == "refused", worse.reason
    assert worse.champion_f1 == pytest.approx(champion_f1)  # the deployed version itself
    assert f"< {champion_f1:.3f} + 0.010 of current staging version 1" in worse.reason
    assert world.alias_version() == "1"
    tags = world.version_tags(worse.version)
    assert tags["promotion.decision"] == "refused"
    assert tags["promotion.reason"] == worse.reason
    assert tags["lineage.parent_version"] == "1"

    better = world.retrain(FAST_PARAMS)
    assert better.status == "promoted", better.reason
    assert better.holdout_f1 >= champion_f1 and better.parent_version == "1"
    assert world.alias_version() == better.version
    assert world.version_tags(better.version)["promotion.decision"] == "promoted"
    # and the rows of synthetic 2 the champion learned from (copies of training rows)
    assert better.training_files[:2] == ("customer_churn_0.csv", SYNTHETIC[0])
    assert better.holdout_file == SYNTHETIC[1]

    run = mlflow.MlflowClient().get_run(better.run_id)
    assert run.data.tags["lineage.parent_version"] == "1"
    assert run.data.tags["promotion.decision"] == "promoted"
    inputs = {}
    for i in run.inputs.dataset_inputs:
        tags = {t.key: t.value for t in i.tags}
        inputs[i.dataset.name, tags["mlflow.data.context"]] = (i.dataset.digest, tags)
    for name in ("customer_churn_0.csv", SYNTHETIC[0]):  # the fit's files, by content
        digest, tags = inputs[name, "training"]
        assert digest == file_sha(world, name)[:DIGEST_CHARS]
        assert tags["sha256"] == file_sha(world, name)
        file_rows = len(load_customer_file(world.data_dir / name, require_target=True))
        assert 0 < int(tags["rows"]) <= file_rows  # the training file's holdout split is out
    digest, tags = inputs[SYNTHETIC[1], "holdout"]  # the rows judged, by their own digest
    assert digest == tags["sha256"][:DIGEST_CHARS] != file_sha(world, SYNTHETIC[1])[:DIGEST_CHARS]
    assert 0 < int(tags["rows"]) <= 1000

    events = world.events()
    assert list(events["event"]) == ["refused", "promoted"]
    assert list(events["version"]) == [worse.version, better.version]
    assert list(events["parent_version"]) == ["1", "1"]
    assert set(events["trigger"]) == {"manual"}
    assert events["champion_f1"].iloc[1] == pytest.approx(champion_f1)
    alerts = world.settings.alerts.alert_log.read_text()
    assert f"[ChurnOps] retraining refused version {worse.version}" in alerts
    assert f"[ChurnOps] retraining promoted version {better.version}" in alerts

    again = world.retrain()
    assert again.status == "skipped" and "unseen by the champion" in again.reason
    assert world.alias_version() == better.version


def test_auto_retraining_from_the_alert_step_serves_the_next_file_not_the_current_one(
    world: World,
) -> None:
    """RETRAIN_MODE=auto with an in-process submit: the retraining runs inside the alert
    step of the file that scored low, so the alias moves while that file is scored."""
    settings = world.settings.replace(retrain_mode="auto", retrain_cooldown_minutes=0)
    world.settings = settings
    outcomes = []

    def submit(key: str, drop: str, run: str) -> str:
        options = RetrainOptions(trigger="auto", include_run=run, params=FAST_PARAMS, force=True)
        outcomes.append(retrain(settings, open_storage(settings.drop), options))
        return key

    steps = per_file.Steps(send_alerts=partial(per_file.send_alerts, submit=submit))
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


def test_the_retrain_deployment_gets_one_run_per_cooldown_window(prefect_server: str) -> None:
    """Thirty bad files in one window submit with one idempotency key: one flow run. One
    that ended with no verdict (skipped: a holdout too small) holds nothing back: the next
    bad file of its window starts another (Prefect answered the ended run, and its alert
    said "retraining started"). Each submission returns the key of the run it made or
    found, which its alert names (R5's and R6's named the window's key, not R5's run)."""
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    window = "retrain:20261127T060000Z"
    keys = []
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow_from_name("retrain_model")
            deployment = client.create_deployment(flow_id=flow_id, name=name)
        mine = DeploymentFilter(id=DeploymentFilterId(any_=[deployment]))
        for run in range(7):
            keys.append(submit_to_deployment(window, "s3://b", f"R{run}", f"retrain_model/{name}"))
            if run == 4:  # R0's retraining ends, skipped
                with get_client(sync_client=True) as client:
                    (first,) = client.read_flow_runs(deployment_filter=mine)
                    client.set_flow_run_state(first.id, Completed(), force=True)
        submit_to_deployment("retrain:20261127T070000Z", "s3://b", "R9", f"retrain_model/{name}")
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=mine)
    assert sorted(r.parameters["include_run"] for r in runs) == ["R0", "R5", "R9"]
    assert {r.parameters["trigger"] for r in runs} == {"auto"}
    (second,) = [r for r in runs if r.parameters["include_run"] == "R5"]
    assert keys == [window] * 5 + [f"{window}@{first.id}"] * 2
    assert second.idempotency_key == keys[-1]


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
    assert state.message.startswith("skipped: no labeled file")


# --- kill -9 mid-retraining --------------------------------------------------------------------
def _retrain_and_die(settings: Settings) -> None:
    """In a child: retrain, and SIGKILL itself at the first progress line (mid cross-validation)."""

    def die(*_args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    retrain(settings, open_storage(settings.drop), RetrainOptions(params=FAST_PARAMS), progress=die)
    os._exit(0)  # not killed: the test fails on the exit code


def test_a_retraining_killed_mid_way_leaves_nothing_and_its_lock_is_taken_over(
    world: World,
) -> None:
    world.drop(SYNTHETIC[0])
    child = multiprocessing.get_context("forkserver").Process(
        target=_retrain_and_die, args=(world.settings,)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL, "the retraining was not killed"
    with closing(MetricsStore.from_settings(world.settings.monitoring)) as store:
        assert store.lock_state(LOCK).held(datetime.now(UTC))  # the dead holder's, for an hour
    assert world.alias_version() == "1" and world.events().empty  # nothing half-done

    after = world.retrain()
    assert after.status in ("promoted", "refused"), after  # taken over, not waited for
    assert len(world.events()) == 1


# --- the holdout: rows the challenger never saw ------------------------------------------------
def _late_labels(world: World, scored: per_file.FileOutcome, churn: pd.Series, name: str) -> None:
    """Drop the predictions file of ``scored`` back with ``churn`` as its labels."""
    labels = pd.read_csv(io.BytesIO(world.storage.read(scored.predictions_key)))
    labels["Churn"] = churn.to_numpy()
    world.process(stage_key("labels", name), labels.to_csv(index=False).encode())


def unseen(world: World, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows the deployed version did not learn from (its logged row keys), nor copies."""
    _, seen = deployed(world.settings.model, load_aliased_model)
    learned = {key.split(".")[0] for key in seen}
    return rows[~row_keys(rows).str.split(".").str[0].isin(learned)]


def _never_saw(world: World, holdout: pd.DataFrame, relabeled: pd.DataFrame) -> float:
    """F1 on ``holdout`` of the fast parameters fitted on the training file's fit split
    (with the newest labels of its rows that ``relabeled`` carries too), without any row
    that has the features of a row of either holdout."""
    rows = load_customer_file(world.data_dir / "customer_churn_0.csv", require_target=True)
    fit, kept_out = training.split_holdout(
        rows, target(rows), registry.HOLDOUT_FRACTION, registry.RANDOM_SEED
    )
    both = pd.concat([fit, relabeled], keys=["fit", "new"]).assign(
        _key=pd.concat([row_keys(fit), row_keys(relabeled)]).to_numpy()
    )
    fit = both.drop_duplicates("_key", keep="last")
    digests = {key.split(".")[0] for key in [*row_keys(holdout), *row_keys(kept_out)]}
    fit = fit[~row_keys(fit).str.split(".").str[0].isin(digests)]
    X, y = prepare_features(fit, FEATURES), target(fit)
    threshold, _ = training.cross_validate(
        FAST_PARAMS, X, y, registry.CV_FOLDS, registry.RANDOM_SEED
    )
    model = ChurnModel.in_memory(
        FEATURES, threshold, training.make_classifier(FAST_PARAMS, registry.RANDOM_SEED).fit(X, y)
    )
    return score(model, holdout).f1


def test_a_labeled_file_and_its_late_labels_are_one_holdout_never_in_the_fit(
    world: World,
) -> None:
    """The leak once seen: a file scored with its own Churn, then its labels dropped twice,
    contradicting it. The rows count once, with the newest labels, only in the holdout."""
    scored = world.drop(SYNTHETIC[0])
    rows = load_customer_file(world.data_dir / SYNTHETIC[0], require_target=True)
    flipped = 1 - rows[TARGET]
    _late_labels(world, scored, flipped, "labels.csv")
    _late_labels(world, scored, flipped, "labels-again.csv")

    relabeled = rows.assign(**{TARGET: flipped})
    holdout = unseen(world, relabeled)  # before: a promoted version learns the holdout too

    outcome = world.retrain()

    assert outcome.status in ("promoted", "refused"), outcome.reason
    assert outcome.training_files[0] == "customer_churn_0.csv"
    assert len(holdout) == sum(map(sum, outcome.scores["challenger"].confusion)) > 900
    assert outcome.holdout_f1 == pytest.approx(_never_saw(world, holdout, relabeled))
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    used = {
        (i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
        for i in run.inputs.dataset_inputs
    }
    (held,) = [name for name, context in used if context == "holdout"]
    assert held.endswith(LABELED_ROWS_SUFFIX)  # one holdout: the newest labels, once
    assert {name for name, _ in used} <= {"customer_churn_0.csv", held, *LABELED}
    assert "champion_holdout_f1" in run.data.metrics
    assert "champion_training_holdout_f1" in run.data.metrics


@pytest.mark.parametrize(
    ("rows", "why"),
    [
        (slice(0, 10), "fewer than the 100 a holdout needs"),
        ("stayed", "0 churned and"),
    ],
)
def test_a_holdout_too_small_or_of_one_class_moves_nothing(
    world: World, rows: slice | str, why: str
) -> None:
    frame = pd.read_csv(world.data_dir / SYNTHETIC[0])
    frame = frame[frame["Churn"] == 0] if rows == "stayed" else frame.iloc[rows]
    world.process(stage_key("input", "small.csv"), frame.to_csv(index=False).encode())

    outcome = world.retrain()

    assert outcome.status == "skipped" and why in outcome.reason, outcome.reason
    world.assert_unchanged()


def test_mlflow_down_during_the_refit_promotes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.drop(SYNTHETIC[0])
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    live = mlflow.get_tracking_uri()

    def mlflow_goes_down(*_args: object) -> None:
        mlflow.set_tracking_uri(f"http://{LOOPBACK}:{free_port(LOOPBACK)}")

    with pytest.raises(Exception, match=r"127\.0\.0\.1|onnect"):
        world.retrain(progress=mlflow_goes_down)
    mlflow.set_tracking_uri(live)
    world.assert_unchanged()
    back = world.retrain()
    assert back.status in ("promoted", "refused"), back.reason  # the lock was released
