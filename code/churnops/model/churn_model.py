"""The registered model: an MLflow pyfunc carrying its threshold and reference data.

``predict`` returns labels at the model's threshold (``params={"probability": True}``: the
probability too), for a frame with a customer file's raw header or clean names, so
``mlflow models predict -i customers.csv -t csv`` takes a dropped file as it is. Logged as
*models from code* (:mod:`churnops.model.model_code`, the ``model_config`` and artifacts),
not a pickle, which would run code on load and tie a version to the class layout.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import (
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR,
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
)
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel, PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.logging_utils import disable_logging

from churnops import retry
from churnops.data.features import prepare_features
from churnops.data.schema import RAW_NAMES, clean_columns
from churnops.results import PREDICTION, PROBABILITY
from churnops.settings import ModelSettings, hide_credentials, without_credentials

log = logging.getLogger(__name__)

XGB_ARTIFACT = "xgb_model"
REFERENCE_ARTIFACT = "reference_data"
FEATURES_CONFIG = "features"
THRESHOLD_CONFIG = "threshold"
#: Found by path, not imported: running it calls ``mlflow.models.set_model``.
MODEL_CODE = Path(__file__).with_name("model_code.py")
#: Re-entrant: a memoized value may use another (the attribution uses the reference).
_memo_lock = threading.RLock()
_T = TypeVar("_T")


class ChurnModel(PythonModel):
    """XGBoost booster + decision threshold + the training reference data (made empty by
    the logged code and filled by :meth:`load_context`)."""

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
        """A model around a classifier fitted in this process; ``reference``: a Parquet
        file of its reference data."""
        model = cls(features, threshold)
        model._classifier = classifier
        model._reference_path = str(reference) if reference else None
        return model

    def config(self) -> dict[str, Any]:
        return {FEATURES_CONFIG: list(self.features), THRESHOLD_CONFIG: float(self.threshold)}

    def model_signature(self, data: pd.DataFrame) -> ModelSignature:
        """Every feature under its raw header and its clean name, none required (MLflow
        drops unnamed columns and refuses a frame lacking a required one; :meth:`predict`
        names what is missing). Counts are ``long``: MLflow will not cast int64 to double."""
        specs = []
        for spelling in (RAW_NAMES, {}):
            for feature in self.features:
                kind = "double" if pd.api.types.is_float_dtype(data[feature]) else "long"
                specs.append(ColSpec(kind, spelling.get(feature, feature), required=False))
        outputs = Schema([ColSpec("integer", PREDICTION)])
        params = ParamSchema([ParamSpec("probability", "boolean", False)])
        return ModelSignature(inputs=Schema(specs), outputs=outputs, params=params)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle a version logged before models from code (plain attributes then)."""
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
        return _loaded(self._features)

    @property
    def threshold(self) -> float:
        """A probability at or above it is a churner."""
        return _loaded(self._threshold)

    @property
    def classifier(self) -> xgb.XGBClassifier:
        return _loaded(self._classifier)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.classifier.predict_proba(prepare_features(df, self.features))[:, 1]

    def fast_proba(self, df: pd.DataFrame) -> np.ndarray:
        """:meth:`predict_proba` through the booster: the same numbers, without the wrapper's
        checks and copies."""
        features = prepare_features(df, self.features).to_numpy()
        return self.classifier.get_booster().inplace_predict(features)

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        """Label and probability columns for every row (the fast path)."""
        return self._labelled(self.fast_proba(df), df.index)

    def _labelled(self, proba: np.ndarray, index: pd.Index) -> pd.DataFrame:
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
        """Training rows with target and prediction, read once per loaded model (callers
        must not change the frame)."""
        path = self._reference_path
        if path is None:
            raise RuntimeError("model context not loaded: no reference data path")
        return self.memo("reference", lambda: pd.read_parquet(path))

    def memo(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per loaded model and ``key``: kept with the model, so
        :class:`ModelCache` is the only cache."""
        with _memo_lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    model: ChurnModel


class ModelCache:
    """Loaded versions, the ``keep`` most recently used per model (a file being scored
    holds its own reference to its version)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._loaded: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], load: Callable[[], LoadedModel]) -> LoadedModel:
        """The model under ``key`` (tracking URI, name, then what tells the version apart),
        loaded on first use."""
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
                versions = [k for k in self._loaded if k[:2] == key[:2]]  # least recent first
                for old in versions[: max(0, len(versions) - self.keep)]:
                    del self._loaded[old]
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)


_cache = ModelCache()


def configure_mlflow(model: ModelSettings) -> None:
    """Point MLflow at the configured tracking store, quietly: no INFO lines (unless
    ``churnops -v``), run links or progress bars."""
    if model.mlflow_tracking_uri is None:
        model.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(model.tracking_uri)
    mlflow.set_registry_uri(model.tracking_uri)
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.set(True)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        disable_logging()  # its failures still raise


class MlflowUnavailable(RuntimeError):
    """The tracking server did not answer within the wait: retry the file later."""


def wait_for_tracking_server(model: ModelSettings) -> None:
    """Fail in seconds when an HTTP tracking server is down (MLflow retries ~12 minutes).
    Its /health needs no login: credentials in the URI are left out of the probe."""
    uri = model.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    retrying = retry.call(lambda exc: isinstance(exc, OSError))
    try:  # urllib takes a URL's user:password@ for part of the host name (a DNS look-up)
        retrying(_health, without_credentials(uri).rstrip("/") + "/health")
    except OSError as exc:
        where = hide_credentials(uri)
        raise MlflowUnavailable(
            f"MLflow at {where} unreachable for {retry.DEPENDENCY_WAIT_SECONDS:.0f}s: {exc}"
        ) from exc


def _health(url: str) -> None:
    with urllib.request.urlopen(url, timeout=3) as response:
        response.read()


def load_aliased_model(model: ModelSettings, alias: str | None = None) -> LoadedModel:
    """Load ``<model_name>@<alias>``: the alias resolved per call, the model loaded once
    per version."""
    configure_mlflow(model)
    wait_for_tracking_server(model)
    alias = alias or model.model_alias
    found = _aliased(model.model_name, alias)
    if found is None:
        raise NoAliasedVersion(
            f"no version of {model.model_name} has alias '{alias}': train one (`churnops "
            "train`), or point the alias at a version in MLflow"
        )
    # by its logged model too: a model deleted and registered again numbers from 1 anew
    version, source = str(found.version), str(found.source)

    def load() -> LoadedModel:
        log.info("loading %s version %s", model.model_name, version)
        try:  # no dependency check: half of a cold load, for a warning silenced anyway
            pyfunc = mlflow.pyfunc.load_model(
                f"models:/{model.model_name}/{version}", suppress_warnings=True
            )
            inner = churn_model(pyfunc)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            raise UnloadableVersion(
                f"{model.model_name} version {version} ('{alias}') does not load ({cause})"
            ) from exc
        return LoadedModel(model.model_name, version, inner)

    return _cache.get((model.tracking_uri, model.model_name, version, source), load)


class NoAliasedVersion(LookupError):
    """No version holds the alias, or no model has the name: MLflow says "Registered model
    alias staging not found" without the model or what to do."""


class UnloadableVersion(RuntimeError):
    """The alias holder does not load as a ChurnModel (its artifacts gone or broken, or not
    a ChurnOps model), named with its version: MLflow's own words ("No such artifact: ''")
    name neither."""


def aliased_version(name: str, alias: str) -> str | None:
    """The version of ``name`` holding ``alias``; None when none does or there is no such
    model (on AWS the model is made before any version)."""
    found = _aliased(name, alias)
    return None if found is None else str(found.version)


def _aliased(name: str, alias: str) -> ModelVersion | None:
    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


class NotAChurnModel(RuntimeError):
    """The alias names a version ChurnOps did not log (a user's own scikit-learn or pyfunc
    model, moved to by hand): it has no threshold or reference data to score and monitor a
    file with, so no file is scored by it."""


def churn_model(pyfunc: PyFuncModel) -> ChurnModel:
    """The :class:`ChurnModel` inside a loaded version, else :class:`NotAChurnModel` naming
    what it is (MLflow's own words, "Unable to retrieve base model object", or an
    AttributeError at the first file, said neither)."""
    try:
        inner = pyfunc.unwrap_python_model()
    except MlflowException:  # another flavor: scikit-learn, XGBoost's own, ...
        inner = None
    if isinstance(inner, ChurnModel):
        return inner
    what = type(inner).__name__ if inner is not None else pyfunc.loader_module
    raise NotAChurnModel(
        f"not a ChurnOps model ({what}): no threshold, features or reference data; point "
        "the alias at a version `churnops train` registered"
    )


def _loaded(value: _T | None) -> _T:
    if value is None:
        raise RuntimeError("model context not loaded: load it with mlflow.pyfunc.load_model")
    return value
