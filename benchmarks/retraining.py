"""Does retraining help? Synthetic files 1, 2, 3 dropped in order, with and without it.

Each sequence starts in a fresh temporary home whose version 1 is trained on
customer_churn_0.csv with the shipped parameters, then processes the three files
through ``per_file.process``. With ``RETRAIN_MODE=auto`` and no cooldown (the files
come seconds apart here), the alert step of a file below a minimum retrains in this
process. Printed per sequence: the version that scored each file and its F1, beside
the F1 on file 3 of models fitted on customer_churn_0 alone and with synthetic 1 + 2:
what retraining could reach if it always promoted.

Run with `make benchmark-retraining` (a few minutes on 2 cores)."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from benchmarks.model_quality import fitted
from churnops.data.features import target
from churnops.data.reading import load_customer_file
from churnops.drop.storage import DropStorage, open_storage, stage_key
from churnops.model import training
from churnops.model.registry import Outcome, TrainingOptions, train_and_register
from churnops.monitoring.metrics_db import MetricsStore
from churnops.pipeline import per_file, retrain_trigger
from churnops.pipeline.retraining import RetrainOptions, retrain
from churnops.settings import Settings, get_settings

TRAINING = "customer_churn_0.csv"
FILES = [f"customer_churn_synthetic_{i}.csv" for i in (1, 2, 3)]
SEQUENCES = {
    "RETRAIN_MODE=auto": {"retrain_mode": "auto"},
    "retraining off": {"retrain_mode": "off"},
}


@dataclass
class Scored:
    name: str
    version: str
    f1: float


@dataclass
class Sequence:
    label: str
    scored: list[Scored] = field(default_factory=list)
    retrainings: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def run_sequence(label: str, overrides: dict[str, object], data_dir: Path) -> Sequence:
    """A fresh home, version 1 from the training file, then the three drops."""
    result = Sequence(label)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="churnops-retrain-bench-") as home:
        settings = get_settings(
            churnops_home=Path(home),
            churn_data_dir=data_dir,
            mlflow_tracking_uri=None,
            database_url=None,
            evidently_ui_url=None,
            alerts_topic_arn=None,
            smtp_host=None,
            retrain_cooldown_minutes=0,
            **overrides,
        )
        train_and_register(settings, TrainingOptions(data_file=data_dir / TRAINING))
        storage = open_storage(settings.drop)
        submit = retrain_here(settings, storage, result.retrainings)
        steps = per_file.Steps(send_alerts=partial(per_file.send_alerts, submit=submit))
        for name in FILES:
            key = stage_key("input", name)
            storage.create(key, (data_dir / name).read_bytes())
            outcome = per_file.process(settings, storage, key, steps=steps)
            if outcome.status != "processed":
                raise SystemExit(f"{name}: {outcome.status}: {outcome.message}")
            result.scored.append(Scored(name, outcome.model_version, f1_of(settings, outcome)))
    result.seconds = time.perf_counter() - started
    return result


def retrain_here(
    settings: Settings, storage: DropStorage, outcomes: list[Outcome]
) -> retrain_trigger.Submit:
    """The alert step's ``submit``, retraining in this process instead of on the Prefect
    deployment; each outcome goes to ``outcomes``. It is called as the deployment's is: a
    submit of another shape raised in the alert step, which notes and logs it ("retraining
    not started"), and the sequence with retraining ran none, like the one without."""

    def submit(key: str, drop: str, run: str) -> str:
        options = RetrainOptions(trigger="auto", include_run=run)
        outcomes.append(retrain(settings, storage, options))
        return key

    return submit


def f1_of(settings: Settings, outcome: per_file.FileOutcome) -> float:
    """The file's F1 as the pipeline stored it in the metrics database."""
    with closing(MetricsStore.from_settings(settings.monitoring)) as store:
        metrics = store.metrics(outcome.run_id)
    return float(metrics.loc[metrics["metric"] == "f1", "value"].iloc[0])


def direct_f1(data_dir: Path, trained_on: list[str], scored: str) -> float:
    """F1 on ``scored`` of the shipped parameters fitted on ``trained_on``."""
    frames = [load_customer_file(data_dir / n, require_target=True) for n in trained_on]
    model = fitted(training.default_params(), pd.concat(frames, ignore_index=True))
    test = load_customer_file(data_dir / scored, require_target=True)
    return training.evaluate(target(test).to_numpy(), model.predict_proba(test), model.threshold).f1


def report(sequences: list[Sequence], baselines: dict[str, float]) -> None:
    width = max(len(s.label) for s in sequences) + 2
    print("\nversion that scored each file, and its F1:\n")
    print("| file | " + " | ".join(s.label for s in sequences) + " |")
    print("| --- |" + " --- |" * len(sequences))
    for i, name in enumerate(FILES):
        cells = [f"v{s.scored[i].version}: {s.scored[i].f1:.3f}" for s in sequences]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nretrainings:")
    for s in sequences:
        for outcome in s.retrainings:
            print(f"  {s.label:<{width}} {outcome.summary()}")
        print(f"  {s.label:<{width}} ({len(s.retrainings)} retrainings, {s.seconds:.0f}s)")
    print("\nF1 on customer_churn_synthetic_3.csv of the shipped parameters trained on:")
    for label, f1 in baselines.items():
        print(f"  {label:<45} {f1:.3f}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    settings = get_settings()
    data_dir = settings.model.churn_data_dir.resolve()
    missing = [n for n in [TRAINING, *FILES] if not (data_dir / n).exists()]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} not in {data_dir}: set CHURN_DATA_DIR to a folder with "
            "the split files and the synthetic ones (`churnops data fetch --from DIR` copies them)"
        )
    sequences = []
    for label, overrides in SEQUENCES.items():
        sequences.append(run_sequence(label, overrides, data_dir))
        if overrides["retrain_mode"] == "auto" and not sequences[-1].retrainings:
            raise SystemExit(f"{label}: no retraining started (the warnings above say why)")
        print(f"{label}: " + ", ".join(f"v{s.version} {s.f1:.3f}" for s in sequences[-1].scored))
    baselines = {
        "customer_churn_0 only": direct_f1(data_dir, [TRAINING], FILES[2]),
        "customer_churn_0 + synthetic 1 + synthetic 2": direct_f1(
            data_dir, [TRAINING, *FILES[:2]], FILES[2]
        ),
    }
    report(sequences, baselines)


if __name__ == "__main__":
    main()
