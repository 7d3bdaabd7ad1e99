"""Evidence for the feature choice: cross-validated F1 with each column dropped.

Only the training file is used (nothing of the later files may steer the
choice). Each configuration is cross-validated with several shuffles, so the
spread shows what is noise. Run with `make benchmark-features`.
"""

from __future__ import annotations

import statistics

from benchmarks.pipeline import data_files
from churnops.data.features import prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.data.schema import INPUT_COLUMNS
from churnops.model import training
from churnops.settings import get_settings

SEEDS = (0, 1, 2)


def cv_f1(frame, features: list[str], params: dict) -> tuple[float, float]:
    """Mean and spread of out-of-fold F1 (threshold chosen out of fold) over seeds."""
    X, y = prepare_features(frame, features), target(frame)
    scores = [training.cross_validate(params, X, y, 5, seed)[1] for seed in SEEDS]
    return statistics.mean(scores), statistics.stdev(scores)


def main() -> int:
    settings = get_settings()
    (training_file,) = data_files(settings, settings.model.training_file)
    frame = load_customer_file(training_file, require_target=True)
    params = training.default_params()
    base, spread = cv_f1(frame, INPUT_COLUMNS, params)
    print(f"{'configuration':32} {'cv F1':>7} {'spread':>7} {'vs all':>7}")
    print(f"{'all 13 columns (baseline)':32} {base:7.3f} {spread:7.3f} {0:7.3f}")
    variants = {f"without {c}": [x for x in INPUT_COLUMNS if x != c] for c in INPUT_COLUMNS}
    variants["without tariff_plan and age"] = [
        c for c in INPUT_COLUMNS if c not in ("tariff_plan", "age")
    ]
    for name, features in variants.items():
        mean, spread = cv_f1(frame, features, params)
        print(f"{name:32} {mean:7.3f} {spread:7.3f} {mean - base:+7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
