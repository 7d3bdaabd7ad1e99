"""``per_file.process`` with the session model, a local drop and metrics in Postgres.
Feature-attribution drift: flipping every complaint flag of ``customer_churn_1.csv`` makes
``complains`` (3rd on the reference) the feature the model leans on most; synthetic file 1
moves none. Late labels: two files scored, one with a ``customer_id``, then their
predictions dropped back with ``Churn``."""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.data.features import FEATURES
from churnops.data.schema import RAW_COLUMNS
from churnops.drop.storage import log_key
from churnops.monitoring.attribution import importance_order, ordinal, reference_importance
from churnops.monitoring.metrics_db import ATTRIBUTION, ATTRIBUTION_RANK, MetricsStore
from churnops.pipeline import per_file, retraining
from churnops.pipeline.labels import LABELED_ROWS_SUFFIX
from churnops.pipeline.scoring import quality_scores
from churnops.results import ATTRIBUTION_NDCG, PREDICTION, PROBABILITY
from churnops.settings import Settings
from tests.fixtures.model import drop_and_process, session_drop

DRIFTED = "complaints_flipped.csv"
UNDRIFTED = "customer_churn_synthetic_1.csv"
#: Between the two files' NDCG (about 0.93 and 0.995 with the session model).
MINIMUM = 0.97


@pytest.fixture(scope="module")
def processed(session_scoring, data_dir: Path, postgres_url: str, tmp_path_factory):
    """Both files through ``per_file.process``: file name -> (outcome, its metric rows)."""
    settings, storage = session_drop(
        session_scoring,
        tmp_path_factory.mktemp("attribution-home"),
        database_url=postgres_url,
        min_attribution_ndcg=MINIMUM,
    )
    raw = pd.read_csv(data_dir / "customer_churn_1.csv")
    complains = next(raw_name for raw_name, clean in RAW_COLUMNS.items() if clean == "complains")
    raw[complains] = 1 - raw[complains]
    drifted, undrifted = raw.to_csv(index=False).encode(), (data_dir / UNDRIFTED).read_bytes()
    done = {}
    with closing(MetricsStore(postgres_url)) as store:
        for name, data in ((DRIFTED, drifted), (UNDRIFTED, undrifted)):
            outcome = drop_and_process(settings, storage, name, data)
            assert outcome.status == "processed", outcome.message
            done[name] = (outcome, store.metrics(outcome.run_id))
    return settings, storage, done


def _by_feature(metrics: pd.DataFrame, metric: str) -> dict[str, float]:
    rows = metrics[metrics["metric"] == metric]
    return dict(zip(rows["label"], rows["value"], strict=True))


def _ndcg(metrics: pd.DataFrame) -> float:
    (value,) = metrics.loc[metrics["metric"] == ATTRIBUTION_NDCG, "value"]
    return float(value)


def test_the_session_model_leans_on_complains_less_than_on_two_others(session_scoring) -> None:
    """The premise of the engineered drift: complains is important but not first."""
    settings, loaded = session_scoring
    importance, _ = reference_importance(loaded.model, settings.monitoring.attribution_sample_rows)
    assert 1 < importance_order(importance, loaded.model.features).index("complains") + 1 <= 4


def test_every_feature_has_its_attribution_and_rank_stored(processed) -> None:
    _, _, done = processed
    for _, metrics in done.values():
        assert set(_by_feature(metrics, ATTRIBUTION)) == set(FEATURES)
        ranks = _by_feature(metrics, ATTRIBUTION_RANK)
        assert sorted(ranks.values()) == list(range(1, len(FEATURES) + 1))
        stored = metrics.loc[metrics["metric"] == ATTRIBUTION_NDCG, "threshold"]
        assert stored.tolist() == [MINIMUM]


def test_the_drifted_feature_moves_to_the_top_and_is_named(processed, session_scoring) -> None:
    settings, loaded = session_scoring
    _, _, done = processed
    drifted, undrifted = done[DRIFTED][1], done[UNDRIFTED][1]
    assert _by_feature(drifted, ATTRIBUTION_RANK)["complains"] == 1
    assert _by_feature(undrifted, ATTRIBUTION_RANK)["complains"] > 1
    moved = _by_feature(drifted, ATTRIBUTION)["complains"]
    assert moved > 3 * _by_feature(undrifted, ATTRIBUTION)["complains"]
    assert _ndcg(drifted) < 0.95 < 0.98 <= _ndcg(undrifted) <= 1.0
    importance, _ = reference_importance(loaded.model, settings.monitoring.attribution_sample_rows)
    before = importance_order(importance, loaded.model.features).index("complains") + 1
    message = done[DRIFTED][0].message
    assert f"complains rose from {ordinal(before)} to 1st" in message


def test_the_file_log_and_the_alert_say_it(processed) -> None:
    settings, storage, done = processed
    outcome = done[DRIFTED][0]
    log = storage.read(f"data/logs/{outcome.run}/{DRIFTED}.log").decode()
    monitor_line = next(line for line in log.splitlines() if "| monitor | ok |" in line)
    assert "attribution NDCG" in monitor_line and "complains rose from" in monitor_line
    assert "attribution drift" in outcome.message
    alerts = settings.alerts.alert_log.read_text()
    drifted_alert = alerts[alerts.index(f"attribution drift: {DRIFTED}") :]
    assert f"(alert below {MINIMUM:.3f}) - ATTRIBUTION DRIFT" in drifted_alert
    assert "  - complains rose from" in drifted_alert
    assert "attribution drift" not in done[UNDRIFTED][0].message


WITH_IDS, WITHOUT_IDS = "customer_churn_1.csv", "customer_churn_synthetic_1.csv"


@pytest.fixture(scope="module")
def scored(session_scoring, data_dir: Path, postgres_url: str, tmp_path_factory):
    """Both files scored; their outcomes and the truth (the ``Churn`` column they carried)."""
    settings, storage = session_drop(
        session_scoring,
        tmp_path_factory.mktemp("labels-home"),
        database_url=postgres_url,
        attribution_sample_rows=0,
        retrain_mode="suggest",
    )
    truth, outcomes = {}, {}
    for name in (WITH_IDS, WITHOUT_IDS):
        frame = pd.read_csv(data_dir / name)
        truth[name] = frame.pop("Churn").to_numpy()
        if name == WITH_IDS:
            frame.insert(0, "customer_id", [f"C{i:06d}" for i in range(len(frame))])
        outcomes[name] = drop_and_process(settings, storage, name, _csv(frame))
    assert all(o.status == "processed" for o in outcomes.values()), outcomes
    return settings, storage, outcomes, truth


def _predictions(scored, name: str) -> pd.DataFrame:
    _, storage, outcomes, _ = scored
    return pd.read_csv(
        io.BytesIO(storage.read(outcomes[name].predictions_key)), dtype=str, keep_default_na=False
    )


def _labeled(scored, name: str) -> pd.DataFrame:
    """The predictions of ``name`` with the ``Churn`` it carried when scored."""
    labels = _predictions(scored, name)
    labels["Churn"] = scored[3][name]
    return labels


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _drop_labels(scored, name: str, labels: pd.DataFrame | bytes, settings: Settings | None = None):
    base, storage, _, _ = scored
    data = labels if isinstance(labels, bytes) else _csv(labels)
    return drop_and_process(settings or base, storage, name, data, folder="labels")


def test_labels_joined_by_identifier_score_the_run_that_scored_them(scored) -> None:
    settings, storage, outcomes, truth = scored
    labels = _predictions(scored, WITH_IDS)
    labels["Churn"] = truth[WITH_IDS].astype(str)
    labels.loc[::7, "Churn"] = ""  # not known yet
    labels = labels.sample(frac=0.8, random_state=1)  # some customers only, in another order
    arrived = datetime.now(UTC).replace(microsecond=0)

    outcome = _drop_labels(scored, "month1_labels.csv", labels)

    assert outcome.status == "processed", outcome.message
    assert "matched by identifier 'customer_id'" in outcome.message
    known = labels[labels["Churn"] != ""]
    expected = quality_scores(
        known["Churn"].astype(int).to_numpy(),
        known[PREDICTION].astype(int).to_numpy(),
        known[PROBABILITY].astype(float).to_numpy(),
    )
    with closing(MetricsStore(settings.monitoring.database_url)) as store:
        realized = store.realized(outcomes[WITH_IDS].run_id)
        runs = store.runs().set_index("id")
    got = dict(zip(realized["metric"], realized["value"], strict=True))
    assert got == pytest.approx(expected)
    assert set(realized["labeled_rows"]) == {len(known)}
    assert set(realized["labels_run_id"]) == {outcome.run_id}
    assert realized["labels_arrived_at"].min() >= pd.Timestamp(arrived)
    f1 = realized.set_index("metric").loc["f1"]
    assert f1["threshold"] == settings.monitoring.min_f1
    assert runs.loc[outcome.run_id, "kind"] == "labels"
    assert runs.loc[outcomes[WITH_IDS].run_id, "kind"] == "scoring"
    rows = storage.read(f"data/processed/{outcome.run}/month1_labels.csv{LABELED_ROWS_SUFFIX}")
    learned = pd.read_csv(io.BytesIO(rows))
    assert len(learned) == len(known) and learned.columns[-1] == "Churn"
    assert storage.exists(f"data/processed/{outcome.run}/month1_labels.csv")


def test_labels_without_identifier_join_by_rows_and_feed_retraining(scored) -> None:
    settings, storage, outcomes, _ = scored
    labels = _labeled(scored, WITHOUT_IDS)

    outcome = _drop_labels(scored, "synthetic_1_labeled.csv", labels)

    assert outcome.status == "processed", outcome.message
    assert "matched by rows" in outcome.message
    with closing(MetricsStore(settings.monitoring.database_url)) as store:
        realized = store.realized(outcomes[WITHOUT_IDS].run_id)
    assert set(realized["labeled_rows"]) == {len(labels)}
    window = retraining.labeled_files(settings.model, settings.drop, storage, datetime.now(UTC))
    learned = {f.name: f.rows for f in window}
    assert learned[f"synthetic_1_labeled.csv{LABELED_ROWS_SUFFIX}"] == len(labels)
    assert WITHOUT_IDS not in learned  # the unlabeled original teaches nothing

    labels.loc[: len(labels) // 2, "Churn"] = ""  # a correction: half the labels withdrawn
    time.sleep(1.1)  # newer by its drop time: run ids order by the second of the drop
    again = _drop_labels(scored, "synthetic_1_corrected.csv", labels)
    assert again.status == "processed", again.message
    window = retraining.labeled_files(settings.model, settings.drop, storage, datetime.now(UTC))
    learned = {f.name: f.rows for f in window}
    assert learned[f"synthetic_1_corrected.csv{LABELED_ROWS_SUFFIX}"] < len(labels)
    assert f"synthetic_1_labeled.csv{LABELED_ROWS_SUFFIX}" not in learned  # newest labels only


def _errored(scored, name: str, labels: pd.DataFrame | bytes) -> str:
    """The reason a labels file was refused: bad input, in errored/, named in its log."""
    _, storage, _, _ = scored
    outcome = _drop_labels(scored, name, labels)
    assert outcome.status == "errored", outcome.message
    assert storage.exists(f"data/errored/{outcome.run}/{name}")
    assert name in storage.read(log_key(outcome.run, name)).decode()
    return outcome.message


def test_a_labels_file_of_rows_never_scored_matches_no_run(scored, data_dir: Path) -> None:
    frame = pd.read_csv(data_dir / "customer_churn_2_majority_drifted.csv")

    message = _errored(scored, "unknown.csv", frame)

    assert "matches no processed run's predictions" in message


def test_labels_with_other_rows_are_refused_with_the_reason(scored) -> None:
    by_id = _labeled(scored, WITH_IDS)
    by_id.loc[3, "customer_id"] = "NOBODY"
    assert "identifier(s) are not among its rows: 'NOBODY'" in _errored(scored, "ids.csv", by_id)
    respelled = by_id.rename(columns={"customer_id": "Customer ID"}).head(100)
    assert "it has no column 'Customer ID'" in _errored(scored, "respelled.csv", respelled)

    by_rows = _labeled(scored, WITHOUT_IDS)
    assert "must keep every row" in _errored(scored, "fewer.csv", by_rows.head(500))

    changed = by_rows.copy()
    changed.loc[10, "Age"] = "99"
    assert "'Age' differs on 1 row(s), first on line 12" in _errored(scored, "age.csv", changed)


def test_a_labels_file_without_usable_labels_is_refused(scored) -> None:
    labels = _predictions(scored, WITHOUT_IDS)
    assert "no 'Churn' column" in _errored(scored, "nochurn.csv", labels)
    labels["Churn"] = np.where(np.arange(len(labels)) % 2, "1", "yes")
    assert "'Churn' must be 1, 0 or blank" in _errored(scored, "yes.csv", labels)


def test_low_realized_scores_alert_and_suggest_retraining(scored) -> None:
    strict = scored[0].replace(min_f1=0.99)

    outcome = _drop_labels(scored, "strict.csv", _labeled(scored, WITHOUT_IDS), strict)

    assert outcome.status == "processed", outcome.message
    assert "low realized scores alert sent by log" in outcome.message
    alerts = strict.alerts.alert_log.read_text()
    assert "low realized scores (late labels)" in alerts
    assert "f1:" in alerts and "< minimum 0.990" in alerts
    assert "retraining suggested" in alerts


def test_an_identifier_given_twice_when_scored_joins_by_rows(scored, data_dir: Path) -> None:
    settings, storage, _, _ = scored
    frame = pd.read_csv(data_dir / WITH_IDS)
    churn = frame.pop("Churn")
    frame.insert(0, "customer_id", [f"D{i:06d}" for i in range(len(frame))])
    frame.loc[5, "customer_id"] = frame.loc[4, "customer_id"]  # a warning when scored
    outcome = drop_and_process(settings, storage, "dup_ids.csv", _csv(frame))
    assert outcome.status == "processed" and outcome.predictions_key, outcome.message
    labels = pd.read_csv(io.BytesIO(storage.read(outcome.predictions_key)), dtype=str)
    labels["Churn"] = churn.astype(str)

    joined = _drop_labels(scored, outcome.predictions_key.rsplit("/", 1)[-1], labels)

    assert joined.status == "processed", joined.message
    assert f"(run {outcome.run}," in joined.message and "matched by rows" in joined.message


def test_identifiers_and_churn_alone_join_the_one_run_with_those_customers(
    scored, data_dir: Path
) -> None:
    """No other column tells runs apart: one run with those customers joins, two are
    refused; 'Churn' alone, without an identifier, never joins."""
    settings, storage, _, _ = scored

    def score(name: str, source: str) -> per_file.FileOutcome:
        frame = pd.read_csv(data_dir / source).drop(columns="Churn")
        frame.insert(0, "customer_id", [f"E{i:06d}" for i in range(len(frame))])
        outcome = drop_and_process(settings, storage, name, _csv(frame))
        assert outcome.status == "processed", outcome.message
        return outcome

    first = score("e_ids.csv", WITH_IDS)
    ids = [f"E{i:06d}" for i in range(120)]
    labels = pd.DataFrame({"customer_id": ids, "Churn": [str(i % 2) for i in range(120)]})

    joined = _drop_labels(scored, "e_labels.csv", labels)
    assert joined.status == "processed", joined.message
    assert f"(run {first.run}," in joined.message
    assert "matched by identifier 'customer_id'" in joined.message

    churn_only = pd.DataFrame({"Churn": [str(i % 2) for i in range(1050)]})
    assert "only 'Churn' to go by" in _errored(scored, "churn_only.csv", churn_only)

    second = score("e_ids_again.csv", "customer_churn_2_majority_drifted.csv")
    message = _errored(scored, "e_labels_again.csv", labels)
    assert "they fit several runs" in message
    assert first.run in message and second.run in message


def _labels_bytes(scored) -> bytes:
    return _csv(_labeled(scored, WITHOUT_IDS))


def _unlabeled(data: bytes) -> bytes:
    """Every row's Churn (the last column) blank."""
    header, *rows = data.decode().splitlines()
    return "\n".join([header, *(row.rsplit(",", 1)[0] + "," for row in rows)]).encode()


def _ragged(data: bytes) -> bytes:
    """Line 6 with one field more than the header."""
    return b"\n".join(line + b",x" * (at == 5) for at, line in enumerate(data.split(b"\n")))


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("latin1.csv", lambda b: b.replace(b"\n", b"\n\xe9", 1), "not UTF-8 text: byte 0xe9"),
        ("ragged.csv", _ragged, "Expected 16 fields in line 6, saw 17"),
        ("empty.csv", lambda b: b"", "file is empty"),
        ("header.csv", lambda b: b.split(b"\n")[0] + b"\n", "a header but no data rows"),
        ("unlabeled.csv", _unlabeled, "no row has a label"),
    ],
)
def test_a_bad_labels_file_is_bad_input_errored_not_retried(
    scored, name: str, make: Callable[[bytes], bytes], reason: str
) -> None:
    assert reason in _errored(scored, name, make(_labels_bytes(scored)))


@pytest.mark.parametrize(("name", "pack"), [("semicolons.csv", "';'"), ("packed.csv.gz", "gzip")])
def test_a_labels_file_is_read_like_a_customer_file(scored, name: str, pack: str) -> None:
    text = _labels_bytes(scored)
    outcome = _drop_labels(
        scored, name, gzip.compress(text) if pack == "gzip" else text.replace(b",", b";")
    )

    assert outcome.status == "processed", outcome.message
    assert "matched by rows" in outcome.message


def test_labels_that_fit_two_identical_runs_say_so(scored) -> None:
    """Last in the module: it scores the same file a second time."""
    settings, storage, outcomes, _ = scored
    original = f"data/processed/{outcomes[WITHOUT_IDS].run}/{WITHOUT_IDS}"
    time.sleep(1.1)  # a newer run id
    rescored = drop_and_process(settings, storage, "again.csv", storage.read(original))
    assert rescored.status == "processed", rescored.message

    outcome = _drop_labels(scored, "twice.csv", _labels_bytes(scored))

    assert outcome.status == "processed", outcome.message
    assert f"(run {rescored.run}," in outcome.message
    assert f"the same predictions are in run(s) {outcomes[WITHOUT_IDS].run}" in outcome.message
