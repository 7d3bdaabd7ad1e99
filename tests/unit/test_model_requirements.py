"""A registered version's pip requirements (:data:`registry.MODEL_PACKAGES`) are written
by hand, not inferred: this checks them against what the model's code imports."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from churnops.model.registry import MODEL_PACKAGES
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
