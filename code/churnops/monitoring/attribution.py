"""Feature-attribution drift: does the model lean on the same features as in training?

Value drift says the inputs moved, not whether the model's *reasons* did. As SageMaker's
explainability monitor does, each file's mean |TreeSHAP| per feature (log-odds) is ranked
against the reference's: a rank change per feature, one NDCG for the order. TreeSHAP
costs ``trees x leaves x depth^2`` per row, so it runs on a seeded sub-sample
(``ATTRIBUTION_SAMPLE_ROWS``; over 200 samples of 500 rows the NDCG stayed within 0.996
to 1.0, a flipped ``complains`` gives 0.94). Ties keep the reference order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xgboost as xgb

from churnops.data.features import prepare_features

if TYPE_CHECKING:
    from churnops.model.churn_model import ChurnModel, LoadedModel

#: The attribution sub-sample is the same for the same file (and the same reference).
SAMPLE_SEED = 563


@dataclass(frozen=True)
class FeatureAttribution:
    """One feature's mean |SHAP| and rank (1 = most important), file vs reference."""

    feature: str
    importance: float
    reference_importance: float
    rank: int
    reference_rank: int

    @property
    def rank_change(self) -> int:
        """Places gained in the file's order (positive: more important than in training)."""
        return self.reference_rank - self.rank

    def describe(self) -> str:
        """``"complains rose from 3rd to 1st"``, ``"status stayed 1st"``."""
        if not self.rank_change:
            return f"{self.feature} stayed {ordinal(self.rank)}"
        verb = "rose" if self.rank_change > 0 else "fell"
        return f"{self.feature} {verb} from {ordinal(self.reference_rank)} to {ordinal(self.rank)}"


@dataclass(frozen=True)
class AttributionDrift:
    """The file's attribution order (``features``) against the reference's (:func:`ndcg`)."""

    ndcg: float
    features: tuple[FeatureAttribution, ...]
    rows: int
    reference_rows: int
    seconds: float = 0.0  # the reference's included, for the file that computed it

    @property
    def movers(self) -> tuple[FeatureAttribution, ...]:
        """Features whose rank changed, weighed by position as NDCG does (3rd to 1st
        outweighs 11th to 8th), then by the change of mean |SHAP|."""

        def weight(rank: int) -> float:
            return 1 / math.log2(rank + 1)

        moved = [f for f in self.features if f.rank_change]
        moved.sort(
            key=lambda f: (
                -abs(weight(f.rank) - weight(f.reference_rank)),
                -abs(f.importance - f.reference_importance),
            )
        )
        return tuple(moved)

    def summary(self, movers: int = 1) -> str:
        """``"attribution NDCG 0.945 (1000 rows, 0.03s): complains rose from 3rd to 1st"``."""
        moved = ", ".join(f.describe() for f in self.movers[:movers]) or "same order"
        return f"attribution NDCG {self.ndcg:.3f} ({self.rows} rows, {self.seconds:.2f}s): {moved}"


def ordinal(n: int) -> str:
    """1 -> ``1st``, 2 -> ``2nd``, 11 -> ``11th``, 23 -> ``23rd``."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- the computation ----------------------------------------------------------------------
def mean_abs_shap(
    booster: xgb.Booster, frame: pd.DataFrame, features: list[str]
) -> dict[str, float]:
    """Feature -> mean |TreeSHAP contribution| (log-odds), prepared as for scoring; XGBoost's
    last column, the bias, is dropped."""
    prepared = prepare_features(frame, features)
    contributions = booster.predict(xgb.DMatrix(prepared), pred_contribs=True)[:, :-1]
    return dict(zip(features, np.abs(contributions).mean(axis=0).tolist(), strict=True))


def importance_order(importance: Mapping[str, float], ties: Sequence[str]) -> list[str]:
    """The features of ``ties`` by decreasing importance; equal ones keep their ``ties`` order."""
    return sorted(ties, key=lambda f: -importance[f])  # sorted is stable


def ndcg(reference: Mapping[str, float], order: Sequence[str]) -> float:
    """NDCG of the file's ``order`` with the reference mean |SHAP| as gains: DCG =
    sum of gain / log2(i + 1), over the reference's own order's DCG (1.0 when no
    attribution at all). SageMaker Clarify's attribution score (it flags below 0.9)."""
    gains = np.array([reference[f] for f in order], dtype=float)
    ideal = np.sort(gains)[::-1]
    discounts = 1.0 / np.log2(np.arange(2, len(order) + 2))
    best = float(ideal @ discounts)
    return float(gains @ discounts) / best if best > 0 else 1.0


def compare(
    reference: Mapping[str, float],
    current: Mapping[str, float],
    *,
    rows: int,
    reference_rows: int,
    seconds: float = 0.0,
) -> AttributionDrift:
    """The file's importances (``current``) against the reference's: the same features."""
    if set(reference) != set(current):
        raise ValueError(f"different features: {sorted(set(reference) ^ set(current))}")
    reference_order = importance_order(reference, list(reference))
    order = importance_order(current, reference_order)
    reference_rank = {f: i for i, f in enumerate(reference_order, start=1)}
    features = tuple(
        FeatureAttribution(f, float(current[f]), float(reference[f]), i, reference_rank[f])
        for i, f in enumerate(order, start=1)
    )
    return AttributionDrift(ndcg(reference, order), features, rows, reference_rows, seconds)


def subsample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """A seeded uniform sample of at most ``rows`` rows (the frame itself when smaller)."""
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=SAMPLE_SEED)


# --- against a loaded model -------------------------------------------------------------------
def reference_importance(model: ChurnModel, rows: int) -> tuple[dict[str, float], int]:
    """Mean |SHAP| on at most ``rows`` reference rows, and the rows used: once per model."""

    def compute() -> tuple[dict[str, float], int]:
        reference = subsample(model.reference_data(), rows)
        booster = model.classifier.get_booster()
        return mean_abs_shap(booster, reference, model.features), len(reference)

    return model.memo(("attribution reference", rows), compute)


def attribution_drift(model: LoadedModel, sample: pd.DataFrame, rows: int) -> AttributionDrift:
    """The attribution drift of a file's drift ``sample``, on at most ``rows`` of its rows."""
    if rows <= 0:
        raise ValueError(f"rows must be positive, not {rows}")
    started = time.perf_counter()
    reference, reference_rows = reference_importance(model.model, rows)
    measured = subsample(sample, rows)
    booster = model.model.classifier.get_booster()
    current = mean_abs_shap(booster, measured, model.model.features)
    seconds = time.perf_counter() - started
    return compare(
        reference, current, rows=len(measured), reference_rows=reference_rows, seconds=seconds
    )
