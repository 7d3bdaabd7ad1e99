"""Quality and cost: our staging model beside the reference project's and our old one.

All are trained on customer_churn_0.csv only: the reference rebuilt from its published
configuration (11 columns, 80% split, random_state 42, threshold 0.5); the baseline
(501 trees of depth 8, shipped before the search weighed cost) fitted as ``churnops
train`` fits one; ours, the ``staging`` version of CHURNOPS_HOME (trained first when
none exists). Cost, the fastest of three with the load average printed: ``inplace_predict``
on 1M rows and TreeSHAP on 500, targets 1.0 s and 0.1 s, beside the costs the version
logged when trained. Run with `make benchmark-model`. A missed bar or target is a figure
(printed, exit 0); exit 2 when ours learned the later files in a retraining."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from benchmarks.pipeline import data_files
from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import INPUT_COLUMNS
from churnops.model import training
from churnops.model.churn_model import (
    ChurnModel,
    LoadedModel,
    NoAliasedVersion,
    load_aliased_model,
)
from churnops.model.registry import (
    CV_FOLDS,
    HOLDOUT_FRACTION,
    RANDOM_SEED,
    TrainingOptions,
    deployed,
    row_keys,
    train_and_register,
)
from churnops.monitoring.alerts import apart
from churnops.monitoring.attribution import mean_abs_shap
from churnops.settings import Settings, get_settings

REFERENCE_PARAMS = {
    "n_estimators": 374,
    "learning_rate": 0.0628,
    "max_depth": 3,
    "min_child_weight": 1,
    "gamma": 0.00072,
    "subsample": 0.828,
    "colsample_bytree": 0.759,
    "reg_alpha": 0.000135,
    "reg_lambda": 0.00225,
    "max_delta_step": 4,
}
REFERENCE_FEATURES = [c for c in INPUT_COLUMNS if c not in ("tariff_plan", "age")]
#: The parameters shipped before the cost-aware search (the best F1 of a 54-trial search).
BASELINE_PARAMS = {
    "n_estimators": 501,
    "learning_rate": 0.013043221150168436,
    "max_depth": 8,
    "min_child_weight": 0.532320402171388,
    "gamma": 0.016105752879379726,
    "subsample": 0.7449945280535923,
    "colsample_bytree": 0.7210629174533573,
    "reg_alpha": 0.017490577636534683,
    "reg_lambda": 0.00014557555711769573,
    "scale_pos_weight": 4.966899526931088,
}
FILES = ("customer_churn_1.csv", "customer_churn_2_majority_drifted.csv")
MIN_F1 = 0.815
MIN_ROC_AUC = 0.97
PREDICT_ROWS, SHAP_ROWS = 1_000_000, 500
#: Seconds, for ours: predict on PREDICT_ROWS, TreeSHAP on SHAP_ROWS.
TARGETS = (1.0, 0.1)


def reference_model(train_file: pd.DataFrame) -> ChurnModel:
    """The reference project's published model, rebuilt."""
    train, _ = train_test_split(train_file, test_size=0.2, random_state=42)
    classifier = training.make_classifier(REFERENCE_PARAMS, 42)
    classifier.fit(prepare_features(train, REFERENCE_FEATURES), target(train))
    return ChurnModel.in_memory(REFERENCE_FEATURES, 0.5, classifier)


def fitted(params: dict, train: pd.DataFrame) -> ChurnModel:
    """``params`` fitted on every row of ``train``, the threshold cross-validated, as
    ``churnops train`` fits a version."""
    X, y = prepare_features(train), target(train)
    threshold, _ = training.cross_validate(params, X, y, CV_FOLDS, RANDOM_SEED)
    classifier = training.make_classifier(params, RANDOM_SEED).fit(X, y)
    return ChurnModel.in_memory(FEATURES, threshold, classifier)


def baseline_model(train_file: pd.DataFrame) -> ChurnModel:
    """The old shipped configuration, fitted on the split ``churnops train`` fits on."""
    train, _ = training.split_holdout(train_file, target(train_file), HOLDOUT_FRACTION, RANDOM_SEED)
    return fitted(BASELINE_PARAMS, train)


def staging_model(settings: Settings) -> LoadedModel:
    try:
        return load_aliased_model(settings.model)
    except NoAliasedVersion:
        print(f"no staging model in {settings.home}: training one (fast path)")
        data_file = settings.model.churn_data_dir / settings.model.training_file
        train_and_register(settings, TrainingOptions(data_file=data_file))
        return load_aliased_model(settings.model)


def retrained_rows(seen: set[str], training: pd.DataFrame, frame: pd.DataFrame) -> int:
    """Rows of ``frame`` the version learned beyond the training file (``seen``: its
    ``lineage/fit_rows.txt``): a retraining learned the file, so its F1 there is no test."""

    def digests(frame: pd.DataFrame) -> pd.Series:
        return row_keys(frame).str.split(".").str[0]

    beyond = {k.split(".")[0] for k in seen} - set(digests(training))
    return int(digests(frame).isin(beyond).sum())


def logged_costs(loaded: LoadedModel) -> str:
    """The inference costs the version logged when it was trained, if it did."""
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(loaded.name, loaded.version).run_id
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    names = ("predict_ms_per_1k_rows", "shap_ms_per_1k_rows")
    if not all(name in metrics for name in names):
        return "none logged (trained before versions logged their cost)"
    return ", ".join(f"{name} {metrics[name]:.3f}" for name in names)


def bar_misses(file_name: str, f1: float, roc_auc: float) -> list[str]:
    """What of the bar ours misses on ``file_name`` (empty: met there), each value with the
    decimals that show it below its minimum (0.96996 is "0.970" at three: no miss of 0.97)."""
    bar = (("F1", f1, MIN_F1), ("ROC AUC", roc_auc, MIN_ROC_AUC))
    return [
        f"{name} {apart(value, minimum, 3, 'f')[0]} < {minimum} on {file_name}"
        for name, value, minimum in bar
        if value < minimum
    ]


def bar_verdict(misses: list[str]) -> str:
    """The bar's line: a miss is a figure of the run, as the cost targets' are, not a failure
    of the benchmark (docs/model.md records the shipped model missing it on file 2)."""
    return "ours: the bar missed: " + "; ".join(misses) if misses else "ours: the bar met"


def shape(model: ChurnModel) -> str:
    """``501 x 8``: the booster's trees and its deepest leaf."""
    dumps = model.classifier.get_booster().get_dump()
    depth = max(line.count("\t") for tree in dumps for line in tree.splitlines())
    return f"{len(dumps)} x {depth}"


def costs(model: ChurnModel, rows: pd.DataFrame) -> tuple[float, float]:
    """Seconds to predict PREDICT_ROWS rows and to explain SHAP_ROWS rows."""
    booster = model.classifier.get_booster()
    features = prepare_features(rows, model.features).to_numpy(dtype=np.float32)
    many = np.tile(features, (-(-PREDICT_ROWS // len(features)), 1))[:PREDICT_ROWS]
    explained = rows.sample(SHAP_ROWS, random_state=7)
    predict = training.fastest(lambda: booster.inplace_predict(many))
    shap = training.fastest(lambda: mean_abs_shap(booster, explained, model.features))
    return predict, shap


def main() -> int:
    settings = get_settings()
    data_dir = settings.model.churn_data_dir
    training_file, *_ = data_files(settings, settings.model.training_file, *FILES)
    train_file = load_customer_file(training_file, require_target=True)
    ours = staging_model(settings)
    print(f"ours: {ours.name} v{ours.version}, threshold {ours.model.threshold:.2f}")
    print(f"  costs logged with the version: {logged_costs(ours)}")
    files = {name: load_customer_file(data_dir / name, require_target=True) for name in FILES}
    _, seen = deployed(settings.model, lambda _: ours)
    for name, frame in files.items():
        if learned := retrained_rows(seen, train_file, frame):
            print(
                f"ours (v{ours.version}) learned {learned} rows of {name} in a retraining: its "
                f"F1 there is no test. Benchmark a version trained on "
                f"{settings.model.training_file} only (`churnops train` in a fresh CHURNOPS_HOME)"
            )
            return 2
    print("fitting the baseline (cross-validated threshold) ...", flush=True)
    models = {
        "reference": reference_model(train_file),
        "baseline": baseline_model(train_file),
        "ours": ours.model,
    }
    later = pd.concat(files.values(), ignore_index=True)
    print(f"\nF1 >= {MIN_F1} and ROC AUC >= {MIN_ROC_AUC} on each file (the bar is ours)")
    print(f"{'model':10} {'trees x depth':>13} {'threshold':>9}", end="")
    print("".join(f" {name[:16] + ' F1 / AUC':>25}" for name in FILES))
    misses = []
    for label, model in models.items():
        print(f"{label:10} {shape(model):>13} {model.threshold:9.2f}", end="")
        for name, frame in files.items():
            scores = training.evaluate(
                target(frame).to_numpy(), model.predict_proba(frame), model.threshold
            )
            print(f" {scores.f1:15.3f} / {scores.roc_auc:.4f}", end="")
            if label == "ours":
                misses += bar_misses(name, scores.f1, scores.roc_auc)
        print()
    print(bar_verdict(misses))

    load = os.getloadavg()
    print(
        f"\ncost on {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} (fastest of 3)"
    )
    print(f"{'model':10} {f'predict {PREDICT_ROWS:,} rows':>22} {f'TreeSHAP {SHAP_ROWS} rows':>18}")
    measured = {label: costs(model, later) for label, model in models.items()}
    for label, (predict, shap) in measured.items():
        print(f"{label:10} {predict:20.3f} s {shap:16.3f} s")
    (base_predict, base_shap), (predict, shap) = measured["baseline"], measured["ours"]
    print(
        f"ours: predict {predict:.3f} s (target <= {TARGETS[0]} s; baseline {base_predict:.3f} s, "
        f"{base_predict / predict:.1f}x), TreeSHAP {shap:.3f} s (target <= {TARGETS[1]} s; "
        f"baseline {base_shap:.3f} s, {base_shap / shap:.0f}x): "
        + ("both met" if predict <= TARGETS[0] and shap <= TARGETS[1] else "MISSED")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
