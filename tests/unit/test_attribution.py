"""Feature-attribution drift without MLflow: the comparison, TreeSHAP on a tiny model,
the metric rows, the alert and the run summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from churnops.model.churn_model import ChurnModel, LoadedModel
from churnops.monitoring.alerts import assess, build_alert
from churnops.monitoring.attribution import (
    AttributionDrift,
    attribution_drift,
    compare,
    mean_abs_shap,
    ndcg,
    ordinal,
    subsample,
)
from churnops.monitoring.metrics_db import ATTRIBUTION, ATTRIBUTION_RANK, metric_rows
from churnops.pipeline.flow import outcome_markdown
from churnops.pipeline.per_file import FileOutcome, summary
from churnops.results import ATTRIBUTION_NDCG, MonitoringResult
from churnops.settings import get_settings

REFERENCE = {"status": 1.2, "frequency_of_use": 1.1, "complains": 0.7, "age": 0.0, "tariff": 0.0}


def test_the_same_importances_give_ndcg_1_and_no_move() -> None:
    drift = compare(REFERENCE, dict(REFERENCE), rows=100, reference_rows=100)
    assert drift.ndcg == 1.0
    assert drift.movers == ()
    # ties keep the reference order: the unused age and tariff (0 everywhere) do not swap
    assert [f.feature for f in drift.features] == list(REFERENCE)
    assert [f.rank for f in drift.features] == [1, 2, 3, 4, 5]
    assert "same order" in drift.summary()
    # Only the order counts: a file where everything matters twice as much has not moved.
    drift = compare(REFERENCE, {f: 2 * v for f, v in REFERENCE.items()}, rows=1, reference_rows=1)
    assert drift.ndcg == 1.0 and drift.movers == ()
    with pytest.raises(ValueError, match="different features"):
        compare(REFERENCE, {"status": 1.0}, rows=1, reference_rows=1)


def test_a_feature_rising_to_the_top_lowers_ndcg_and_is_the_biggest_mover() -> None:
    current = {**REFERENCE, "complains": 4.0}  # 3rd -> 1st; status and frequency_of_use sink
    drift = compare(REFERENCE, current, rows=100, reference_rows=100)
    assert drift.ndcg < 1.0
    assert [f.feature for f in drift.features[:3]] == ["complains", "status", "frequency_of_use"]
    top, *others = drift.movers
    assert (top.feature, top.reference_rank, top.rank, top.rank_change) == ("complains", 3, 1, 2)
    assert {(f.feature, f.rank_change) for f in others} == {
        ("status", -1),
        ("frequency_of_use", -1),
    }
    assert top.describe() == "complains rose from 3rd to 1st"
    assert others[0].describe().startswith(f"{others[0].feature} fell from ")
    assert drift.summary().endswith(": complains rose from 3rd to 1st")
    assert "; " not in drift.summary()  # one part of the run message


def test_ndcg_is_the_reference_gain_discounted_by_the_file_position() -> None:
    reference = {"a": 2.0, "b": 1.0, "c": 0.5}
    order = ["c", "a", "b"]
    dcg = 0.5 / math.log2(2) + 2.0 / math.log2(3) + 1.0 / math.log2(4)
    ideal = 2.0 / math.log2(2) + 1.0 / math.log2(3) + 0.5 / math.log2(4)
    assert ndcg(reference, order) == pytest.approx(dcg / ideal)
    assert ndcg(reference, ["a", "b", "c"]) == 1.0
    assert ndcg({"a": 0.0, "b": 0.0}, ["b", "a"]) == 1.0  # no attribution at all


def test_a_swap_at_the_top_costs_more_than_the_same_swap_lower_down() -> None:
    reference = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    at_top = compare(reference, {**reference, "b": 5.0}, rows=1, reference_rows=1)
    below = compare(reference, {**reference, "d": 2.5}, rows=1, reference_rows=1)
    assert at_top.ndcg < below.ndcg < 1.0
    assert [f.feature for f in below.movers] == ["d", "c"]  # then by the change of |SHAP|


@pytest.mark.parametrize(
    ("n", "text"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th")],
)
def test_ordinal(n: int, text: str) -> None:
    assert ordinal(n) == text
    assert ordinal(n + 100) == f"{n + 100}{text[-2:]}"  # 101st, 111th, 112th, 113th


# --- TreeSHAP with XGBoost itself ----------------------------------------------------------
FEATURES = ["usage", "complains", "unused"]


def _frame(rows: int, seed: int) -> pd.DataFrame:
    """Churn follows usage, and complaints (rare, 10%) weigh heavily: like the real data."""
    rng = np.random.default_rng(seed)
    usage, complains = rng.normal(size=rows), (rng.random(rows) < 0.1).astype(int)
    return pd.DataFrame(
        {
            "complains": complains,
            "unused": np.zeros(rows),  # constant: never split on
            "usage": usage,
            "churn": ((2 * complains - usage + rng.normal(0, 0.5, rows)) > 1).astype(int),
        }
    )


def _fit(data: pd.DataFrame) -> xgb.XGBClassifier:
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0, n_jobs=1)
    return model.fit(data[FEATURES].astype("float32"), data["churn"])


@pytest.fixture(scope="module")
def classifier() -> xgb.XGBClassifier:
    return _fit(_frame(600, seed=1))


def test_mean_abs_shap_drops_the_bias_and_follows_the_model(classifier: xgb.XGBClassifier) -> None:
    frame = _frame(300, seed=2)  # other columns, another order: prepared like scoring
    booster = classifier.get_booster()
    importance = mean_abs_shap(booster, frame, FEATURES)
    assert list(importance) == FEATURES
    assert importance["usage"] > importance["complains"] > importance["unused"] == 0.0
    # Per row, the contributions plus the bias are the margin: the bias was the last column.
    matrix = xgb.DMatrix(frame[FEATURES].astype("float32"))
    contributions = booster.predict(matrix, pred_contribs=True)
    margin = booster.predict(matrix, output_margin=True)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, rtol=1e-5, atol=1e-5)
    expected = np.abs(contributions[:, :-1]).mean(axis=0)
    np.testing.assert_allclose(list(importance.values()), expected, rtol=1e-6)


def test_subsample_is_seeded_and_bounded() -> None:
    frame = _frame(500, seed=3)
    assert subsample(frame, 1000) is frame
    first, again = subsample(frame, 100), subsample(frame, 100)
    assert len(first) == 100 and first.index.equals(again.index)


def _loaded(classifier: xgb.XGBClassifier, reference: pd.DataFrame, path: Path) -> LoadedModel:
    scored = ChurnModel.in_memory(FEATURES, 0.5, classifier).score(reference)
    pd.concat([reference, scored], axis=1).to_parquet(path)
    return LoadedModel("Tiny", "1", ChurnModel.in_memory(FEATURES, 0.5, classifier, path))


def test_a_file_like_the_reference_does_not_move_a_shifted_one_does_a_zero_budget_fails(
    classifier: xgb.XGBClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _loaded(classifier, _frame(400, seed=4), tmp_path / "reference.parquet")
    reads = []
    read = ChurnModel.reference_data
    monkeypatch.setattr(ChurnModel, "reference_data", lambda self: reads.append(1) or read(self))

    same = attribution_drift(model, pd.read_parquet(tmp_path / "reference.parquet"), 1000)
    assert same.ndcg == 1.0 and same.movers == ()
    assert same.rows == same.reference_rows == 400

    like = attribution_drift(model, _frame(400, seed=5), 1000)
    assert like.ndcg == 1.0 and like.movers == ()
    everyone_complains = attribution_drift(model, _frame(400, seed=5).assign(complains=1), 1000)
    assert everyone_complains.ndcg < 0.9
    assert everyone_complains.movers[0].describe() == "complains rose from 2nd to 1st"
    assert len(reads) == 1  # the reference's attribution is computed once per model
    with pytest.raises(ValueError, match="positive"):  # a row budget of zero
        attribution_drift(model, _frame(50, seed=8), 0)


def test_the_reference_is_not_shared_between_models_of_the_same_name_and_version(
    classifier: xgb.XGBClassifier, tmp_path: Path
) -> None:
    """Two models that rank the features differently, both called Tiny v1 (as two test
    servers may have): each file is compared with its own model's reference."""
    data = _frame(400, seed=6)
    only_complaints = _fit(data.assign(churn=data["complains"]))
    first = _loaded(classifier, data, tmp_path / "first.parquet")
    other = _loaded(only_complaints, data, tmp_path / "other.parquet")
    assert (first.name, first.version) == (other.name, other.version)
    orders = []
    for model in (first, other):
        drift = attribution_drift(model, data, 1000)
        assert drift.ndcg == 1.0 and drift.movers == ()
        orders.append([f.feature for f in drift.features])
    assert orders[0] != orders[1]


# --- where the result goes ------------------------------------------------------------------
MOVED = compare(REFERENCE, {**REFERENCE, "complains": 4.0}, rows=50, reference_rows=60)


def result(drift: AttributionDrift | None = MOVED) -> MonitoringResult:
    return MonitoringResult(
        rows=50,
        drifted_count=0,
        drifted_share=0.0,
        columns=[],
        predicted_churn_rate=0.1,
        report_url="http://127.0.0.1:8000/projects/p/reports/r",
        attribution=drift,
    )


def test_metric_rows_carry_a_value_and_rank_per_feature_and_the_ndcg() -> None:
    settings = get_settings(min_attribution_ndcg=0.9)
    rows = list(metric_rows(result(), settings.monitoring.alert_thresholds))
    by_metric = {m: [r for r in rows if r["metric"] == m] for m in {r["metric"] for r in rows}}
    (score,) = by_metric[ATTRIBUTION_NDCG]
    assert (score["value"], score["threshold"]) == (MOVED.ndcg, 0.9)
    values = {r["label"]: r["value"] for r in by_metric[ATTRIBUTION]}
    assert values == {**REFERENCE, "complains": 4.0}
    ranks = {r["label"]: r["value"] for r in by_metric[ATTRIBUTION_RANK]}
    assert ranks["complains"] == 1.0 and ranks["status"] == 2.0
    assert not [r for r in metric_rows(result(None)) if r["metric"].startswith("attribution")]


def test_the_minimum_is_set_by_its_variable_and_stored_and_judged_only_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset = get_settings(churnops_home=tmp_path).monitoring
    assert ATTRIBUTION_NDCG not in unset.alert_thresholds
    assert not assess(result(), unset).needs_alert
    loose = get_settings(churnops_home=tmp_path, min_attribution_ndcg=0.5).monitoring
    assert loose.alert_thresholds[ATTRIBUTION_NDCG] == 0.5
    assert not assess(result(), loose).needs_alert
    monkeypatch.setenv("MIN_ATTRIBUTION_NDCG", "0.9")
    monkeypatch.setenv("ATTRIBUTION_SAMPLE_ROWS", "0")
    from_env = get_settings().monitoring
    assert (from_env.min_attribution_ndcg, from_env.attribution_sample_rows) == (0.9, 0)


def test_the_alert_names_the_biggest_movers(tmp_path: Path) -> None:
    settings = get_settings(churnops_home=tmp_path, min_attribution_ndcg=0.99)
    assessment = assess(result(), settings.monitoring)
    assert assessment.attribution_drift and assessment.summary == "attribution drift"
    alert = build_alert("file.csv", "M", 3, assessment, result())
    assert alert.subject.startswith("[ChurnOps] attribution drift: file.csv")
    assert f"NDCG {MOVED.ndcg:.3f}" in alert.body and "alert below 0.990" in alert.body
    assert "  - complains rose from 3rd to 1st (mean |SHAP| 0.7 -> 4)" in alert.body
    assert "status fell from 1st to 2nd" in alert.body
    assert not assess(result(None), settings.monitoring).needs_alert  # not measured


def test_the_run_summary_and_its_markdown_say_the_biggest_move() -> None:
    line = summary(result())
    assert "complains rose from 3rd to 1st, status fell from 1st to 2nd; report" in line
    outcome = FileOutcome("file.csv", "processed", f"{line}; no threshold crossed", run="R")
    markdown = outcome_markdown(outcome)
    ndcg = f"{MOVED.ndcg:.3f}".replace(".", "\\.")  # markdown-escaped
    assert f"\n- attribution NDCG {ndcg} \\(50 rows, 0\\.00s\\): complains rose" in markdown
    assert "attribution" not in summary(result(None))
