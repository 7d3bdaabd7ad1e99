"""What feature-attribution drift adds to a file: TreeSHAP time per row budget.

Fitted here, without MLflow, with the shipped parameters and with the tests' fast ones;
for each, the monitor step's extra work is timed: the file's attribution on
``ATTRIBUTION_SAMPLE_ROWS`` and on the whole 50,000-row drift sample, the reference's
(once per version and process), beside a plain prediction of the same 50,000 rows
drawn from the later data files.

    python -m benchmarks.attribution [--rows 1000 5000 50000]
    # default: ATTRIBUTION_SAMPLE_ROWS (500) and the whole drift sample (50,000)"""

from __future__ import annotations

import argparse
from functools import partial

import pandas as pd

from benchmarks.pipeline import data_files
from churnops.data.features import FEATURES, prepare_features, target
from churnops.data.reading import load_customer_file
from churnops.model.registry import RANDOM_SEED
from churnops.model.training import default_params, fastest, make_classifier
from churnops.monitoring.attribution import mean_abs_shap
from churnops.pipeline.scoring import DRIFT_SAMPLE_ROWS
from churnops.settings import get_settings

FAST_PARAMS = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.2}
LATER_FILES = ("customer_churn_1.csv", "customer_churn_2_majority_drifted.csv")
#: One timed call each: the reference's cost is paid once per version.
seconds = partial(fastest, repeats=1)


def row_budgets(sample_rows: int) -> list[int]:
    """The file's budget as configured (0 is attribution off: nothing to time), then the
    whole drift sample: the default said 1,000 rows, which no setting gives."""
    return [rows for rows in (sample_rows, DRIFT_SAMPLE_ROWS) if rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=None)
    args = parser.parse_args()
    settings = get_settings()
    rows_timed = args.rows or row_budgets(settings.monitoring.attribution_sample_rows)
    training_file, *later_files = data_files(settings, settings.model.training_file, *LATER_FILES)
    training = load_customer_file(training_file, require_target=True)
    later = pd.concat([load_customer_file(path) for path in later_files])
    for label, params in (("shipped", default_params()), ("fast (tests)", FAST_PARAMS)):
        classifier = make_classifier(params, RANDOM_SEED)
        classifier.fit(prepare_features(training), target(training))
        booster = classifier.get_booster()
        print(f"\n{label} model: {booster.num_boosted_rounds()} trees, depth {params['max_depth']}")
        reference = seconds(lambda b=booster: mean_abs_shap(b, training, FEATURES))
        print(f"  reference ({len(training):,} rows, once per version): {reference:7.2f} s")
        for rows in rows_timed:
            sample = later.sample(rows, replace=True, random_state=7)
            shap = seconds(lambda b=booster, s=sample: mean_abs_shap(b, s, FEATURES))
            features = prepare_features(sample).to_numpy()
            predict = seconds(lambda b=booster, f=features: b.inplace_predict(f))
            print(
                f"  {rows:>7,} rows: TreeSHAP {shap:7.2f} s ({shap / rows * 1e3:.2f} ms a row); "
                f"plain predict {predict:.3f} s"
            )


if __name__ == "__main__":
    main()
