"""The dvc pipeline's shared stages (prepare, transcribe, features) on tiny parameters: each
notebook runs under papermill, a second `dvc repro` does nothing, and a changed parameter
re-runs only its readers. The paper stages' notebooks run under papermill in their own
test files (tests/test_<paper>.py)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "synthetic": {"n_speakers": 4, "n_sessions": 2, "n_labelled": 24, "n_read": 8},
    "transcribe": {"compare_n": 3},
}
pytestmark = pytest.mark.notebook
TARGET = "features"  # the shared stages: prepare -> transcribe -> features
SHARED = {"prepare", "transcribe", "features"}


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _status(project):
    # the pipeline's stages; data.dvc has nothing in the DVC cache on a fresh clone
    status = json.loads(_run(["dvc", "status", "--json", "dvc.yaml"], project).stdout or "{}")
    return {stage: state for stage, state in status.items() if stage in SHARED}


def _copy_project(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)


def _set_params(project: Path, **sections) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("project")
    _copy_project(project)
    _set_params(project, **TINY)
    _run(["dvc", "config", "core.no_scm", "true"], project)
    _run(["dvc", "repro", TARGET], project)
    return project


def test_every_stage_wrote_its_results(project):
    for stage in ("prepare", "transcribe", "features"):
        assert json.loads((project / f"results/{stage}/metrics.json").read_text())
        report = json.loads((project / f"reports/{stage}.ipynb").read_text())
        assert report["metadata"]["papermill"]["exception"] in (None, False)
    prepare = json.loads((project / "results/prepare/metrics.json").read_text())
    assert prepare["utterances"] == {"labelled": 24, "read": 8}
    features = json.loads((project / "results/features/metrics.json").read_text())
    assert {"audio", "text", "audio + text"} <= set(features["probe"])
    assert all(v["misses"] > 0 for v in features["cache"].values())
    assert (project / "results/features/corpus_card.md").read_text().count("Measured") == 1
    shown = _run(["dvc", "metrics", "show"], project).stdout
    assert "results/features/metrics.json" in shown


def test_second_repro_does_nothing(project):
    out = _run(["dvc", "repro", TARGET], project).stdout
    assert "Running stage" not in out
    assert _status(project) == {}


def test_changed_parameter_reruns_only_its_readers(project):
    _set_params(project, features={"batch_size": 4})
    assert set(_status(project)) == {"features"}
    out = _run(["dvc", "repro", TARGET], project).stdout
    assert "Running stage 'features'" in out and "Running stage 'prepare'" not in out
    features = json.loads((project / "results/features/metrics.json").read_text())
    # the persisted cache served every clip and text: nothing was encoded again
    assert all(v["misses"] == 0 for v in features["cache"].values())
