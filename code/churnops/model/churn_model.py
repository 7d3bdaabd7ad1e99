"""The registered model: an MLflow pyfunc carrying its threshold and reference data.

``mlflow.pyfunc.load_model("models:/XGBoostChurnModel@staging").predict(df)``
returns labels at the model's own decision threshold; pass
``params={"probability": True}`` (or use :meth:`ChurnModel.predict_proba` via
``unwrap_python_model()``) for the churn probability too.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.pyfunc import PythonModel, PythonModelContext
from tenacity import Retrying, stop_after_delay, wait_exponential

from churnops.data.features import prepare_features
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import Settings

log = logging.getLogger(__name__)

XGB_ARTIFACT = "xgb_model"
REFERENCE_ARTIFACT = "reference_data"


class ChurnModel(PythonModel):
    """XGBoost booster + decision threshold + the training reference data."""

    def __init__(self, features: list[str], threshold: float) -> None:
        self.features = features
        self.threshold = threshold
        self._classifier: xgb.XGBClassifier | None = None
        self._reference_path: str | None = None

    @classmethod
    def in_memory(
        cls, features: list[str], threshold: float, classifier: xgb.XGBClassifier
    ) -> ChurnModel:
        """A model around a classifier fitted in this process (scores without MLflow)."""
        model = cls(features, threshold)
        model._classifier = classifier
        return model

    def load_context(self, context: PythonModelContext) -> None:
        self._classifier = xgb.XGBClassifier()
        self._classifier.load_model(context.artifacts[XGB_ARTIFACT])
        self._reference_path = context.artifacts[REFERENCE_ARTIFACT]

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
        scored = self._labelled(self.predict_proba(model_input), model_input.index)
        if params and params.get("probability"):
            return scored
        return scored[PREDICTION]

    def reference_data(self) -> pd.DataFrame:
        """Training rows with target and prediction: what new files are compared with."""
        if self._reference_path is None:
            raise RuntimeError("model context not loaded: no reference data path")
        return pd.read_parquet(self._reference_path)


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


def configure_mlflow(settings: Settings) -> None:
    """Point MLflow at the configured tracking store (local SQLite by default)."""
    if settings.mlflow_tracking_uri is None:
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


class MlflowUnavailable(RuntimeError):
    """The tracking server did not answer within the wait: retry the file later."""


def wait_for_tracking_server(settings: Settings) -> None:
    """Fail in seconds, not minutes, when an HTTP tracking server is down.

    MLflow's own client retries a dead server for about 12 minutes; a quick
    health check with a bounded wait keeps an outage from blocking every file.
    """
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    retrying = Retrying(
        stop=stop_after_delay(settings.dependency_wait_seconds),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    try:
        retrying(_health, uri.rstrip("/") + "/health")
    except OSError as exc:
        raise MlflowUnavailable(
            f"MLflow at {uri} unreachable for {settings.dependency_wait_seconds:.0f}s: {exc}"
        ) from exc


def _health(url: str) -> None:
    with urllib.request.urlopen(url, timeout=3) as response:
        response.read()


def load_aliased_model(settings: Settings, alias: str | None = None) -> LoadedModel:
    """Load ``<model_name>@<alias>``, cached per process by version.

    The alias is resolved on every call (one cheap registry request) so a moved
    alias is picked up; the model itself is loaded only once per version.
    """
    configure_mlflow(settings)
    wait_for_tracking_server(settings)
    alias = alias or settings.model_alias
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.model_name, alias).version

    def load() -> LoadedModel:
        log.info("loading %s version %s", settings.model_name, version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
        return LoadedModel(settings.model_name, str(version), pyfunc.unwrap_python_model())

    return _cache.get((settings.tracking_uri, settings.model_name, str(version)), load)
