"""Training end to end against a real MLflow tracking server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from churnops.data.features import FEATURES
from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.model import registry
from churnops.model.churn_model import configure_mlflow
from churnops.model.registry import Outcome, TrainingOptions, train_and_register
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings, get_settings

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
    """No CHURNOPS_HOME folder yet (the Optuna study lives there): it is created."""
    settings = get_settings(
        churnops_home=tmp_path / "new" / "home",
        mlflow_tracking_uri=mlflow_server,
        model_name="FirstInNewHome",
    )
    options = TrainingOptions(data_file=data_dir / "customer_churn_0.csv", trials=1)
    outcome = train_and_register(settings, options)
    assert outcome.status == "promoted", outcome.reason
    assert (tmp_path / "new" / "home" / "optuna.db").exists()


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
    settings = get_settings(
        churnops_home=tmp_path, mlflow_tracking_uri=mlflow_server, model_name=name
    )
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
    assert (
        mlflow_client.get_model_version(name, raced.version).tags["promotion.decision"] == "refused"
    )
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
    from churnops.model.churn_model import NoAliasedVersion, UnloadableVersion, load_aliased_model

    name = f"UsersOwn{kind.title()}"
    settings = get_settings(
        churnops_home=tmp_path, mlflow_tracking_uri=mlflow_server, model_name=name
    )
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
    from churnops.model.churn_model import load_aliased_model

    name = "DeletedAndAgain"
    settings = get_settings(
        churnops_home=tmp_path, mlflow_tracking_uri=mlflow_server, model_name=name
    )
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
