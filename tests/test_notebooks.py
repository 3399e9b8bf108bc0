"""The notebooks as a student meets them in `make lab`: each runs top to bottom with its own
tiny defaults (its `parameters` cell, nothing injected), in pipeline order, on a fresh copy
of the project, with the kernel started in notebooks/ as JupyterLab starts it; and each
opens with what it teaches and which parameters to try."""

import json
import os
import re
import time
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest

import background
from mmser.config import Params
from test_pipeline import NOISE, STAGES, _copy_project

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"  # a progress bar in the lab: meant


def _cells(stage: str) -> list[dict]:
    return json.loads((ROOT / "notebooks" / f"{stage}.ipynb").read_text())["cells"]


def _defaults(cells: list[dict]) -> dict:
    """The names the `parameters` cell defines (plain literals)."""
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    names: dict = {}
    exec("".join(cell["source"]), {}, names)
    return names


def test_every_stage_has_a_notebook():
    assert {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_first_cell_says_what_to_learn_and_what_to_try(stage):
    cells = _cells(stage)
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown"
    assert "### What you will learn" in first and "### Parameters to try" in first
    learn = first.split("### What you will learn")[1].split("### Parameters to try")[0]
    assert 2 <= learn.count("\n- ") <= 4
    # every key a student is told to try is one this notebook's parameters cell takes
    keys = re.findall(r"^- `([\w.]+)`:", first.split("### Parameters to try")[1], re.M)
    assert 2 <= len(keys) <= 4, keys
    defaults, schema = _defaults(cells), Params()
    for key in keys:
        section, _, name = key.partition(".")
        assert section in defaults, f"{stage}: {key} is not in the parameters cell"
        if name:
            assert name in {f.name for f in fields(getattr(schema, section))}, key


def _lab_run(project: Path) -> tuple[Path, dict[str, float]]:
    """A fresh clone with every notebook run in pipeline order as the lab runs it (each
    executed copy beside the project's folders), and when each started."""
    import papermill as pm

    _copy_project(project)
    notebooks, started = project / "notebooks", {}
    with mock.patch.dict(os.environ):  # the kernel inherits it: the lab is no report
        os.environ.pop("MMSER_REPORT", None)
        for stage in STAGES:
            started[stage] = time.time()
            pm.execute_notebook(notebooks / f"{stage}.ipynb", project / f"{stage}.out.ipynb",
                                kernel_name="python3", cwd=str(notebooks), progress_bar=False)
    return project, started


lab_run = background.module_fixture(_lab_run)


@pytest.mark.notebook
def test_every_notebook_runs_as_the_lab_runs_it(lab_run):
    """A fresh clone, no `dvc repro`: the lab's kernel starts in notebooks/, while the
    parameters' paths are the project root's (`mmser.config.work_from_project_root`).
    Outputs are read by a student: no warning, log line or text progress bar in them."""
    project, started = lab_run
    notebooks = project / "notebooks"
    for stage in STAGES:
        # written where the pipeline writes, over the clone's committed metrics
        assert (project / f"results/{stage}/metrics.json").stat().st_mtime >= started[stage], \
            stage
        for cell in json.loads((project / f"{stage}.out.ipynb").read_text())["cells"]:
            for output in cell.get("outputs", []):
                assert output.get("name") != "stderr", (stage, output.get("text", "")[:300])
                if WIDGET not in output.get("data", {}):
                    text = json.dumps(output)
                    assert not [n for n in NOISE if n in text], (stage, text[:300])
    assert {p.name for p in notebooks.iterdir()} == {f"{s}.ipynb" for s in STAGES}


def test_notebooks_work_from_the_project_root(tmp_path, monkeypatch):
    from mmser.config import work_from_project_root

    lab = tmp_path / "notebooks"  # where JupyterLab starts a notebook's kernel
    lab.mkdir()
    monkeypatch.chdir(lab)
    assert work_from_project_root() == lab and Path.cwd() == lab  # outside a project: stays
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text("")
    assert work_from_project_root() == tmp_path and Path.cwd() == tmp_path
    assert work_from_project_root() == tmp_path  # at the root (dvc, papermill): no change
