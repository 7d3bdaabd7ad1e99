"""Quality bar: our staging model beside the reference project's model, same files.

Both are trained on customer_churn_0.csv only. The reference model is rebuilt
from its published configuration (11 columns without tariff_plan and age,
fitted on an 80% split with random_state 42, threshold 0.5). Ours is the
``staging`` version of CHURNOPS_HOME's registry, trained there first (fast
path) when none exists. Run with `make benchmark-model`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from sklearn.model_selection import train_test_split

from churnops.data.features import prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import INPUT_COLUMNS
from churnops.model import training
from churnops.model.churn_model import load_aliased_model
from churnops.model.registry import TrainingOptions, train_and_register
from churnops.settings import get_settings

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
FILES = {
    "customer_churn_1.csv": {"f1": 0.78, "goal": 0.80},
    "customer_churn_2_majority_drifted.csv": {"f1": 0.81, "goal": 0.82},
}
MIN_ROC_AUC = 0.97


def reference_model(train_file: pd.DataFrame):
    """The reference project's published model, rebuilt."""
    train, _ = train_test_split(train_file, test_size=0.2, random_state=42)
    classifier = training.make_classifier(REFERENCE_PARAMS, 42)
    return classifier.fit(prepare_features(train, REFERENCE_FEATURES), target(train))


def staging_model(data_dir: Path):
    settings = get_settings()
    try:
        return load_aliased_model(settings)
    except MlflowException:
        print(f"no staging model in {settings.home}: training one (fast path)")
        train_and_register(settings, TrainingOptions(data_file=data_dir / "customer_churn_0.csv"))
        return load_aliased_model(settings)


def main() -> int:
    data_dir = get_settings().churn_data_dir
    reference = reference_model(
        load_customer_file(data_dir / "customer_churn_0.csv", require_target=True)
    )
    ours = staging_model(data_dir)
    print(
        f"ours: {ours.name} v{ours.version}, threshold {ours.model.threshold:.2f}, "
        f"{len(ours.model.features)} features"
    )
    print(f"{'file':40} {'model':10} {'F1':>6} {'ROC AUC':>8}  bar")
    passed = True
    for name, bar in FILES.items():
        frame = load_customer_file(data_dir / name, require_target=True)
        y = target(frame).to_numpy()
        ref_proba = reference.predict_proba(prepare_features(frame, REFERENCE_FEATURES))[:, 1]
        rows = {
            "reference": training.evaluate(y, ref_proba, 0.5),
            "ours": training.evaluate(y, ours.model.predict_proba(frame), ours.model.threshold),
        }
        for label, scores in rows.items():
            ok = scores.f1 >= bar["f1"] and scores.roc_auc >= MIN_ROC_AUC
            verdict = "" if label == "reference" else ("PASS" if ok else "MISS")
            passed &= ok or label == "reference"
            print(
                f"{name:40} {label:10} {scores.f1:6.3f} {scores.roc_auc:8.4f}  "
                f"F1 >= {bar['f1']} (goal {bar['goal']}), AUC >= {MIN_ROC_AUC} {verdict}"
            )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
