"""The model's features and the one preparation step shared by training and scoring."""

from __future__ import annotations

import pandas as pd

from churnops.data.schema import INPUT_COLUMNS, TARGET

#: None: dropping any column gives no CV F1 gain beyond the noise (docs/model.md,
#: "Feature choice"; `make benchmark-features`).
DROPPED_FEATURES: tuple[str, ...] = ()
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
