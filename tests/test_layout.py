"""The package's layout is its architecture: models are pure torch, the training loop does
not import its launcher, and progress stays out of executed reports."""

import ast
import io
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmser"
ALLOWED_IN_MODELS = {"__future__", "collections", "copy", "dataclasses", "math", "typing",
                     "torch", "mmser"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth, lazily or not)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((SRC / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_are_pure_torch(path):
    imported = _imports(path)
    outside = {n for n in imported if n.split(".")[0] not in ALLOWED_IN_MODELS}
    assert not outside, f"{path.name} imports {sorted(outside)}"
    project = {n for n in imported if n.split(".")[0] == "mmser"}
    assert all(n.startswith("mmser.models") for n in project), f"{path.name}: {project}"


def test_training_loop_does_not_import_its_launcher():
    assert "mmser.training.launch" not in _imports(SRC / "training" / "loop.py")
    assert not any("launch" in n for n in _imports(SRC / "training" / "loop.py")
                   if n.startswith("mmser"))


def test_progress_goes_to_the_log_in_a_report(monkeypatch):
    from mmser import progress as P

    cell, log = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", cell)  # what a notebook cell would show
    monkeypatch.setattr(P, "log_stream", lambda: log)  # the stage's log
    monkeypatch.setenv(P.REPORT, "1")
    for _ in P.progress(range(3), desc="counting"):
        pass
    assert "counting" in log.getvalue() and cell.getvalue() == ""
    monkeypatch.setenv(P.REPORT, "0")
    assert not P.in_report()


def stage_modules(notebook: Path) -> set[Path]:
    """Every project file a notebook's code imports, transitively (package __init__ files
    included, since importing a module runs them): `mmser.fingerprint.module_closure`,
    which also fingerprints the code of a training run."""
    import json

    from mmser.fingerprint import module_closure, project_imports

    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines()
                     if not line.lstrip().startswith(("%", "!")))
    return module_closure(project_imports(code))


def _stages() -> dict:
    import yaml

    return yaml.safe_load((SRC.parents[1] / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(
    name for name, s in _stages().items()
    if any(str(d).startswith("notebooks/") for d in s.get("deps", []))))
def test_every_imported_module_is_a_stage_dependency(stage):
    root = SRC.parents[1]
    spec = _stages()[stage]
    notebook = next(root / d for d in spec["deps"] if str(d).startswith("notebooks/"))
    deps = {str(d) for d in spec["deps"]}
    needed = {str(p.relative_to(root)) for p in stage_modules(notebook)}
    covered = {n for n in needed
               if n in deps or any(n.startswith(d.rstrip("/") + "/") for d in deps)}
    assert needed == covered, f"dvc.yaml stage {stage!r} misses {sorted(needed - covered)}"
