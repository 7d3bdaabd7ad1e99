"""The model's features and the one preparation step shared by training and scoring."""

from __future__ import annotations

import pandas as pd

from churnops.schema import INPUT_COLUMNS, TARGET

#: Columns the model is trained on. `age` repeats `age_group` at a finer grain
#: and `tariff_plan` is nearly constant (92% pay-as-you-go); dropping both does
#: not lower cross-validated F1 (README, "Feature choice";
#: `make benchmark-features` prints the evidence).
DROPPED_FEATURES: tuple[str, ...] = ("tariff_plan", "age")
FEATURES: list[str] = [c for c in INPUT_COLUMNS if c not in DROPPED_FEATURES]


def prepare_features(df: pd.DataFrame, features: list[str] | None = None) -> pd.DataFrame:
    """Select the model's columns, in order, as float (what XGBoost is fed)."""
    columns = features or FEATURES
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing feature column(s): {', '.join(missing)}")
    return df[columns].astype("float32")


def target(df: pd.DataFrame) -> pd.Series:
    """The label as 0/1 integers."""
    return df[TARGET].astype("int8")
