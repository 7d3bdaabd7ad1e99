"""The per-process model cache keeps the recent versions of a model, not all of them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from churnops.model.churn_model import LoadedModel, ModelCache


def _loader(loads: list[str], version: str):
    def load() -> LoadedModel:
        loads.append(version)
        return LoadedModel("M", version, None)  # type: ignore[arg-type]

    return load


def test_a_version_is_loaded_once_and_old_ones_are_dropped() -> None:
    cache, loads = ModelCache(keep=2), []
    for version in ["1", "1", "2", "1", "3", "1", "2"]:
        assert cache.get(("uri", "M", version), _loader(loads, version)).version == version
    # 1, 2 loaded; 3 evicts 2 (1 was used more recently); 2 is loaded again and evicts 3
    assert loads == ["1", "2", "3", "2"]
    assert len(cache) == 2


def test_other_models_keep_their_versions() -> None:
    cache, loads = ModelCache(keep=1), []
    cache.get(("uri", "A", "1"), _loader(loads, "A1"))
    cache.get(("uri", "B", "1"), _loader(loads, "B1"))
    cache.get(("uri", "A", "1"), _loader(loads, "A1"))
    assert loads == ["A1", "B1"] and len(cache) == 2


def test_a_version_whose_artifacts_are_gone_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The alias held a version whose artifact folder was deleted: each dropped file failed
    with MLflow's "MlflowException: No such artifact: ''", naming no model or version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from churnops.model import churn_model
    from churnops.settings import get_settings

    def gone(*_: object, **__: object) -> None:
        raise MlflowException("No such artifact: ''")

    holder = SimpleNamespace(version="7", source="models:/m-1")
    monkeypatch.setattr(churn_model, "_aliased", lambda name, alias: holder)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", gone)
    settings = get_settings(churnops_home=tmp_path, model_name="Gone").model
    with pytest.raises(churn_model.UnloadableVersion) as raised:
        churn_model.load_aliased_model(settings)
    assert str(raised.value) == (
        "Gone version 7 ('staging') does not load (MlflowException: No such artifact: '')"
    )
