"""A registered version as a runner loads it: its pip requirements (:data:`registry.MODEL_PACKAGES`,
written by hand, not inferred: checked against what the model's code imports), and the
per-process cache that keeps the recent versions of a model, not all of them."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from churnops.model import churn_model
from churnops.model.churn_model import LoadedModel, ModelCache
from churnops.model.registry import MODEL_PACKAGES
from churnops.settings import get_settings
from tests.processes import run_python

#: Prints the churnops modules that loading a version imports (model_code, as MLflow runs it).
LOADED = (
    "import sys, churnops.model.model_code; print(*[m for m in sys.modules if 'churnops' in m])"
)


def _imports(module: str) -> set[str]:
    """The top-level names ``module``'s source imports, anywhere in it."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    names = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _with_requirements(packages: Iterable[str]) -> set[str]:
    """``packages`` and everything they require, as installed here (no extras)."""
    found: set[str] = set()
    todo = [canonicalize_name(p) for p in packages]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return found


def test_a_version_requires_every_package_its_code_imports() -> None:
    """Each distribution a churnops module of the model imports is listed, or required
    by a listed one: a version served from its requirements alone loads."""
    modules = run_python(LOADED, check=True).stdout.split()
    assert "churnops.model.churn_model" in modules, modules
    owners = importlib.metadata.packages_distributions()
    needed = {
        canonicalize_name(dist)
        for module in modules
        for name in _imports(module)
        for dist in owners.get(name, [])
    }
    assert needed - _with_requirements(MODEL_PACKAGES) == set()


# --- the cache -----------------------------------------------------------------------------------
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
