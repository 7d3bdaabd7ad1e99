"""Behavioural tests of the registered model (Made-With-ML style): directional (what should
raise churn risk does not lower it) and invariance (row and column order, the label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.data.reading import load_customer_file
from churnops.data.schema import TARGET
from churnops.model.churn_model import ChurnModel, LoadedModel
from churnops.settings import Settings

SOURCE = "customer_churn_1.csv"


@pytest.fixture(scope="module")
def model(session_scoring: tuple[Settings, LoadedModel]) -> ChurnModel:
    return session_scoring[1].model


@pytest.fixture(scope="module")
def customers(data_dir: Path) -> pd.DataFrame:
    return load_customer_file(data_dir / SOURCE, require_target=True)


def test_a_complaint_never_lowers_the_churn_risk(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    calm = model.fast_proba(customers.assign(complains=0))
    complaining = model.fast_proba(customers.assign(complains=1))
    # The trees carry no monotone constraint: allow noise, never a real drop.
    assert (complaining >= calm - 0.01).all()
    assert (complaining - calm).mean() > 0.1


def test_inactive_customers_are_riskier_on_average(
    model: ChurnModel, customers: pd.DataFrame
) -> None:
    active = model.fast_proba(customers.assign(status=1))
    inactive = model.fast_proba(customers.assign(status=2))
    assert inactive.mean() > active.mean()


def test_row_order_does_not_matter(model: ChurnModel, customers: pd.DataFrame) -> None:
    shuffled = customers.sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(
        model.score(shuffled).sort_index(), model.score(customers), check_exact=True
    )


def test_the_label_is_not_a_feature(model: ChurnModel, customers: pd.DataFrame) -> None:
    flipped = customers.assign(**{TARGET: 1 - customers[TARGET]})
    unlabeled = customers.drop(columns=TARGET)
    expected = model.score(customers)
    pd.testing.assert_frame_equal(model.score(flipped), expected, check_exact=True)
    pd.testing.assert_frame_equal(model.score(unlabeled), expected, check_exact=True)


def test_column_order_of_the_file_does_not_matter(model: ChurnModel, data_dir: Path) -> None:
    raw = pd.read_csv(data_dir / SOURCE)
    columns = list(np.random.default_rng(5).permutation(raw.columns))
    reordered = load_customer_file(raw[columns].to_csv(index=False).encode())
    original = load_customer_file(raw.to_csv(index=False).encode())
    pd.testing.assert_frame_equal(model.score(reordered), model.score(original), check_exact=True)
