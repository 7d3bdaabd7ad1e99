"""The registered model: an MLflow pyfunc carrying its threshold and reference data.

``mlflow.pyfunc.load_model("models:/XGBoostChurnModel@staging").predict(df)``
returns labels at the model's own decision threshold; pass
``params={"probability": True}`` (or use :meth:`ChurnModel.predict_proba` via
``unwrap_python_model()``) for the churn probability too. ``df`` may carry the raw
UCI header of a customer file (``Call  Failure``, ...) or the clean names: the
signature lists both spellings as optional columns and :meth:`ChurnModel.predict`
cleans the names itself, so ``mlflow models predict -i customers.csv -t csv`` takes
the file users drop as it is.

The model is logged as MLflow *models from code*, not as a pickled instance:
:mod:`churnops.model.model_code` is the logged code, the features and threshold are
the logged ``model_config``, the booster and reference data are artifacts. A pickle
is code that runs when it is loaded and ties a version to the class layout and the
CloudPickle version of the day it was logged (MLflow warns on every such log, and
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` makes it refuse to load one); a version
logged from code is plain data plus a file that imports this class, so any churnops
that knows the config keys loads it.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.environment_variables import (
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR,
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
)
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.logging_utils import disable_logging

from churnops import retry
from churnops.data.features import prepare_features
from churnops.data.schema import RAW_COLUMNS, clean_columns
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import ModelSettings

log = logging.getLogger(__name__)

XGB_ARTIFACT = "xgb_model"
REFERENCE_ARTIFACT = "reference_data"
#: Keys of the logged ``model_config``: what a version needs besides its artifacts.
FEATURES_CONFIG = "features"
THRESHOLD_CONFIG = "threshold"
#: The file logged as the model's code (models from code: nothing is pickled). Found
#: by path, not imported: running it calls ``mlflow.models.set_model``.
MODEL_CODE = Path(__file__).with_name("model_code.py")
#: Clean column name -> the raw UCI header it comes from.
RAW_NAMES: dict[str, str] = {clean: raw for raw, clean in RAW_COLUMNS.items()}
#: Re-entrant: a memoized value may use another (the attribution uses the reference).
_memo_lock = threading.RLock()


class ChurnModel(PythonModel):
    """XGBoost booster + decision threshold + the training reference data.

    Loaded from the registry, an instance is made empty by the logged code
    (:mod:`churnops.model.model_code`) and filled by :meth:`load_context` from the
    logged ``model_config`` and artifacts.
    """

    def __init__(self, features: list[str] | None = None, threshold: float | None = None) -> None:
        self._features = features
        self._threshold = threshold
        self._classifier: xgb.XGBClassifier | None = None
        self._reference_path: str | None = None
        self._memo: dict[Hashable, Any] = {}

    @classmethod
    def in_memory(
        cls,
        features: list[str],
        threshold: float,
        classifier: xgb.XGBClassifier,
        reference: Path | None = None,
    ) -> ChurnModel:
        """A model around a classifier fitted in this process (scores without MLflow);
        ``reference`` is a Parquet file of its reference data, for monitoring."""
        model = cls(features, threshold)
        model._classifier = classifier
        model._reference_path = str(reference) if reference else None
        return model

    def config(self) -> dict[str, Any]:
        """The ``model_config`` to log: what :meth:`load_context` reads back."""
        return {FEATURES_CONFIG: list(self.features), THRESHOLD_CONFIG: float(self.threshold)}

    def model_signature(self, data: pd.DataFrame) -> ModelSignature:
        """What MLflow checks before :meth:`predict`: every feature under its raw UCI
        header and under its clean name, typed as in ``data`` (clean names).

        MLflow drops input columns the schema does not name and refuses a frame that
        lacks a required one, so both spellings are listed and none is required: a
        customer file (raw header, maybe ``Churn``, which is dropped) and a clean
        frame both get through, and :meth:`predict` says which feature is missing.
        Integer columns are ``long``, not ``double``: MLflow does not convert int64
        to double (it may lose digits), and a CSV file reads counts as int64.
        """
        specs = []
        for spelling in (RAW_NAMES, {}):
            for feature in self.features:
                kind = "double" if pd.api.types.is_float_dtype(data[feature]) else "long"
                specs.append(ColSpec(kind, spelling.get(feature, feature), required=False))
        outputs = Schema([ColSpec("integer", PREDICTION)])
        params = ParamSchema([ParamSpec("probability", "boolean", False)])
        return ModelSignature(inputs=Schema(specs), outputs=outputs, params=params)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle a version logged before models from code (``features``, ``threshold``
        were plain attributes then); such versions have no ``model_config``.
        """
        state = dict(state)
        for old, new in (("features", "_features"), ("threshold", "_threshold")):
            if old in state:
                state[new] = state.pop(old)
        self.__dict__.update({"_memo": {}, **state})

    def load_context(self, context: PythonModelContext) -> None:
        config = context.model_config or {}
        if FEATURES_CONFIG in config:
            self._features = list(config[FEATURES_CONFIG])
        if THRESHOLD_CONFIG in config:
            self._threshold = float(config[THRESHOLD_CONFIG])
        if self._features is None or self._threshold is None:
            raise RuntimeError("model_config lacks features or threshold: not a ChurnModel")
        self._classifier = xgb.XGBClassifier()
        self._classifier.load_model(context.artifacts[XGB_ARTIFACT])
        self._reference_path = context.artifacts[REFERENCE_ARTIFACT]

    @property
    def features(self) -> list[str]:
        """The model's input columns, in order (clean names)."""
        if self._features is None:
            raise RuntimeError("model context not loaded: load it with mlflow.pyfunc.load_model")
        return self._features

    @property
    def threshold(self) -> float:
        """The decision threshold: a probability at or above it is a churner."""
        if self._threshold is None:
            raise RuntimeError("model context not loaded: load it with mlflow.pyfunc.load_model")
        return self._threshold

    @property
    def classifier(self) -> xgb.XGBClassifier:
        if self._classifier is None:
            raise RuntimeError("model context not loaded: load it with mlflow.pyfunc.load_model")
        return self._classifier

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Churn probability of every row (clean column names)."""
        return self.classifier.predict_proba(prepare_features(df, self.features))[:, 1]

    def fast_proba(self, df: pd.DataFrame) -> np.ndarray:
        """:meth:`predict_proba` through the booster itself: the same preparation, the same
        numbers, without the scikit-learn wrapper's checks and copies (the pipeline's path).
        """
        features = prepare_features(df, self.features).to_numpy()
        return self.classifier.get_booster().inplace_predict(features)

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Label and probability columns for every row (the fast path)."""
        return self._labelled(self.fast_proba(df), df.index)

    def _labelled(self, proba: np.ndarray, index: pd.Index) -> pd.DataFrame:
        """The churn label at the model's threshold beside the probability."""
        return pd.DataFrame(
            {PREDICTION: (proba >= self.threshold).astype("int8"), PROBABILITY: proba},
            index=index,
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame | pd.Series:
        """Labels (or labels and probabilities) of a frame with raw or clean column names."""
        frame = clean_columns(model_input)
        twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        if twice:
            raise ValueError(f"column(s) given under two spellings: {', '.join(twice)}")
        missing = [f"'{RAW_NAMES.get(f, f)}' ({f})" for f in self.features if f not in frame]
        if missing:
            raise ValueError(f"missing column(s): {', '.join(missing)}")
        scored = self._labelled(self.predict_proba(frame), model_input.index)
        if params and params.get("probability"):
            return scored
        return scored[PREDICTION]

    def reference_data(self) -> pd.DataFrame:
        """Training rows with target and prediction: what new files are compared with.

        Read once per loaded model (:meth:`memo`), not per file; callers must not change
        the frame."""
        path = self._reference_path
        if path is None:
            raise RuntimeError("model context not loaded: no reference data path")
        return self.memo("reference", lambda: pd.read_parquet(path))

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per loaded model and ``key``: what depends only on the model
        version (its reference frame, the reference's attribution) is kept with the model,
        so the registry's :class:`ModelCache` (one model per version) is its only cache."""
        with _memo_lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]


@dataclass(frozen=True)
class LoadedModel:
    """A loaded registry model version."""

    name: str
    version: str
    model: ChurnModel


class ModelCache:
    """Loaded versions, the ``keep`` most recently used ones per model.

    An alias that moves loads the new version once; older versions are dropped
    (a file being scored holds its own reference to the version it started with).
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._loaded: OrderedDict[tuple[str, str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str], load: Callable[[], LoadedModel]) -> LoadedModel:
        """The model under ``key`` (tracking URI, name, version), loaded on first use."""
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
                self._evict(key[:2])
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def _evict(self, model: tuple[str, str]) -> None:
        versions = [k for k in self._loaded if k[:2] == model]  # least recently used first
        for key in versions[: max(0, len(versions) - self.keep)]:
            del self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)


_cache = ModelCache()


def configure_mlflow(model: ModelSettings) -> None:
    """Point MLflow at the configured tracking store (local SQLite by default), quietly.

    Every command, flow and benchmark that talks to MLflow comes through here: MLflow
    prints no INFO lines (unless the root logger is at INFO: ``churnops -v``), no run
    links with emoji and no artifact progress bars. The switches are MLflow's own
    configuration objects, set the way ``mlflow.config`` sets its others.
    """
    if model.mlflow_tracking_uri is None:
        model.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(model.tracking_uri)
    mlflow.set_registry_uri(model.tracking_uri)
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.set(True)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # MLflow's switch for its event stream: INFO lines and notices such as
        # "Successfully registered model" (its failures still raise).
        disable_logging()


class MlflowUnavailable(RuntimeError):
    """The tracking server did not answer within the wait: retry the file later."""


def wait_for_tracking_server(model: ModelSettings) -> None:
    """Fail in seconds, not minutes, when an HTTP tracking server is down.

    MLflow's own client retries a dead server for about 12 minutes; a quick
    health check with a bounded wait keeps an outage from blocking every file.
    """
    uri = model.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    retrying = retry.call(lambda exc: isinstance(exc, OSError))
    try:
        retrying(_health, uri.rstrip("/") + "/health")
    except OSError as exc:
        raise MlflowUnavailable(
            f"MLflow at {uri} unreachable for {retry.DEPENDENCY_WAIT_SECONDS:.0f}s: {exc}"
        ) from exc


def _health(url: str) -> None:
    with urllib.request.urlopen(url, timeout=3) as response:
        response.read()


def load_aliased_model(model: ModelSettings, alias: str | None = None) -> LoadedModel:
    """Load ``<model_name>@<alias>``, cached per process by version.

    The alias is resolved on every call (one cheap registry request) so a moved
    alias is picked up; the model itself is loaded only once per version.
    """
    configure_mlflow(model)
    wait_for_tracking_server(model)
    alias = alias or model.model_alias
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(model.model_name, alias).version

    def load() -> LoadedModel:
        log.info("loading %s version %s", model.model_name, version)
        # No dependency check: it scans every installed distribution (about half of a
        # cold load) for a warning configure_mlflow silences unless verbose.
        pyfunc = mlflow.pyfunc.load_model(
            f"models:/{model.model_name}/{version}", suppress_warnings=True
        )
        return LoadedModel(model.model_name, str(version), pyfunc.unwrap_python_model())

    return _cache.get((model.tracking_uri, model.model_name, str(version)), load)
