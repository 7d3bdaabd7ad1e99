"""The walkthrough notebook runs from top to bottom in a fresh kernel, in a temporary folder,
with none of the session's service variables: one that needed MLflow or Prefect fails."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from evidently.ui.workspace import Workspace
from nbclient import NotebookClient
from nbformat import NotebookNode

from churnops.data.dataset import SPLIT_FILES
from churnops.model.registry import GATE_MIN_ROC_AUC
from churnops.monitoring.drift import PROJECT
from churnops.settings import MonitoringSettings
from tests.processes import FOREIGN

NOTEBOOK = Path(__file__).resolve().parents[2] / "code" / "notebooks" / "churn_walkthrough.ipynb"
TRAINING, LATER, DRIFTED = SPLIT_FILES
#: Generous: the notebook takes ~30 s alone on two cores, more beside a busy suite.
CELL_TIMEOUT = 600


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kernel's working directory and TMPDIR (the notebook's work folder goes there)."""
    return tmp_path_factory.mktemp("notebook")


@pytest.fixture(scope="module")
def cells(data_dir: Path, work: Path) -> dict[str, NotebookNode]:
    """The executed notebook's code cells by id (execution stops at the first error)."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN}
    env |= {"CHURN_DATA_DIR": str(data_dir), "TMPDIR": str(work)}
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(work)}},
    )
    client.execute(env=env)
    return {cell.id: cell for cell in notebook.cells if cell.cell_type == "code"}


def stdout(cell: NotebookNode) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def images(cell: NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def test_every_cell_ran_and_wrote_nothing_to_stderr(cells: dict[str, NotebookNode]) -> None:
    """A warning (a deprecation, a library's complaint) shows in the notebook: none may."""
    assert all(cell.execution_count for cell in cells.values())
    noise = {
        cell_id: o.text
        for cell_id, cell in cells.items()
        for o in cell.outputs
        if o.output_type == "stream" and o.name == "stderr"
    }
    assert noise == {}


def test_the_study_ran_three_trials(cells: dict[str, NotebookNode]) -> None:
    assert stdout(cells["study"]).startswith("3 trials; chosen: trial ")


def test_the_model_passes_the_promotion_gate_minimums(cells: dict[str, NotebookNode]) -> None:
    found = re.search(r"holdout F1 (\d\.\d+), ROC AUC (\d\.\d+)", stdout(cells["model"]))
    assert found, stdout(cells["model"])
    f1, roc_auc = map(float, found.groups())
    assert f1 >= MonitoringSettings.model_fields["min_f1"].default
    assert roc_auc >= GATE_MIN_ROC_AUC


def test_the_figures_are_drawn(cells: dict[str, NotebookNode]) -> None:
    """The package's figures (plots.py selects Agg) still reach the notebook."""
    assert images(cells["shap"]) == 1
    assert images(cells["holdout-figures"]) == 2
    assert images(cells["distributions"]) == 1


def test_the_majority_drifted_file_drifts_above_half_and_is_stored(
    cells: dict[str, NotebookNode], work: Path
) -> None:
    shares = {
        name: float(share)
        for name, share in re.findall(
            r"^(\S+): drifted share (\d\.\d+)$", stdout(cells["drift"]), re.M
        )
    }
    assert TRAINING not in shares
    assert {LATER, DRIFTED} <= set(shares)
    assert shares[DRIFTED] > 0.5
    workspace_dir = re.search(r"--workspace (\S+)", stdout(cells["where"])).group(1)
    assert Path(workspace_dir).is_relative_to(work)
    workspace = Workspace(workspace_dir)
    (project,) = workspace.search_project(PROJECT)
    assert len(workspace.list_runs(project.id)) == len(shares)
