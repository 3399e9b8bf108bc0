"""The whole dvc pipeline on tiny parameters: the shared stages, the five paper stages and
the report each run their notebook under papermill; a second `dvc repro` does nothing; a
changed parameter re-runs only its readers; the exported default model predicts a clip; a
run is shared through a DVC remote and a Git clone; `dvc exp apply` and `dvc checkout` bring
back an experiment's and a commit's outputs; each README teaching exercise re-runs the
stages the README names. Each paper's own notebook test (tests/test_<paper>.py) checks its
tables in detail."""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import background
from mmser.report.headline import MAX_NUMBERS, numbers_in

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "synthetic": {"n_speakers": 4, "n_sessions": 2, "n_labelled": 80, "n_read": 24},
    "transcribe": {"compare_n": 3},
    "clap": {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 8},
    "lemer": {"systems": ["A1", "A5", "B5", "C1", "C4"], "k_grid": [4], "n_units": 16,
              "speech_k": 8, "max_epochs": 1, "kmeans_frames": 2000},
    "distil": {"max_epochs": 1, "layer_epochs": 1, "batch_size": 8, "head_hidden": 16,
               "adapter_dim": 8, "patience": None},
    "vcemo": {"dim": 8, "n_mels": 16, "batch_size": 8, "queue_size": 16, "max_epochs": 1,
              "ablation": False, "mandarin": False},
    "tokenwise": {"pretrain_epochs": 1, "pretrain_batch_sizes": [8], "pretrain_lrs": [1e-3],
                  "epochs": 2, "hidden": 8, "baseline_batch_sizes": [8], "baseline_lrs": [1e-3],
                  "ours_batch_sizes": [8], "ours_lrs": [1e-3], "val_fraction": 0.25,
                  "pretrain_val_fraction": 0.25, "bootstrap_n": 20},
    "report": {"bootstrap_n": 50},
    "training": {"claim_seeds": [0, 1],  # the claims' extra seeds, end to end
                 "workers": 1},  # tiny runs: starting worker processes costs more than it saves
}
pytestmark = pytest.mark.notebook
PAPERS = ("distil", "lemer", "clap", "vcemo", "tokenwise")
STAGES = ("prepare", "transcribe", "features", *PAPERS, "report")


def _run(args, cwd):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _status(project):
    # the pipeline's stages; data.dvc has nothing in the DVC cache on a fresh clone
    status = json.loads(_run(["dvc", "status", "--json", "dvc.yaml"], project).stdout or "{}")
    return {stage: state for stage, state in status.items() if stage in STAGES}


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


def _project(project: Path) -> Path:
    _copy_project(project)
    _set_params(project, **TINY)
    _run(["dvc", "config", "core.no_scm", "true"], project)
    _run(["dvc", "repro"], project)
    return project


project = background.module_fixture(_project)


def test_every_stage_wrote_its_results(project):
    for stage in STAGES:
        assert json.loads((project / f"results/{stage}/metrics.json").read_text())
        report = json.loads((project / f"reports/{stage}.ipynb").read_text())
        assert report["metadata"]["papermill"]["exception"] in (None, False)
    prepare = json.loads((project / "results/prepare/metrics.json").read_text())
    assert prepare["utterances"] == {"labelled": 80, "read": 24}
    for paper in PAPERS:  # what the report reads from every paper stage
        assert (project / f"results/{paper}/tables/predictions.csv").is_file(), paper
    status = (project / "results/report/tables/status.csv").read_text()
    assert "not run" not in status
    assert (project / "reports/html/report.html").is_file()
    readme = (project / "README.md").read_text()
    assert "Not generated yet" not in readme  # the report stage wrote the results block
    features = json.loads((project / "results/features/metrics.json").read_text())
    assert {"audio", "text", "audio + text"} <= set(features)  # the linear probes
    run = json.loads((project / "results/features/run.json").read_text())
    assert all(v["misses"] > 0 for v in run["cache"].values())
    assert (project / "results/features/corpus_card.md").read_text().count("Measured") == 1
    shown = _run(["dvc", "metrics", "show"], project).stdout
    assert "results/features/metrics.json" in shown


# a key of metrics.json that names a timing or a count of cache use: it would change from run
# to run without a change of result, and make every run differ in `dvc exp show --only-changed`
RUN_TO_RUN = re.compile(r"second|minute|time|generation_s|encoder_use|cache|hit|miss|forward")


def test_metrics_hold_a_few_headline_numbers(project):
    """`dvc metrics show` and `dvc exp show` make a column of every number of every
    metrics.json: each stage writes a few (`mmser.report.headline`), none of them a timing,
    and everything else to outputs that are no DVC metric (run.json, tables/)."""
    for stage in STAGES:
        metrics = json.loads((project / f"results/{stage}/metrics.json").read_text())
        numbers = numbers_in(metrics)
        assert 0 < len(numbers) <= MAX_NUMBERS, (stage, numbers)
        assert not [n for n in numbers if RUN_TO_RUN.search(n)], (stage, numbers)
        assert (project / f"results/{stage}/run.json").is_file()
    for paper in PAPERS:
        assert (project / f"results/{paper}/tables/fold_metrics.csv").is_file()
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = {f for rev in shown.values() for f in rev["data"]}
    assert files == {f"results/{s}/metrics.json" for s in STAGES}


NOISE = ("Warning", "warn(", "Traceback", "ipywidgets", "it/s]", "s/it]", "%|", "LitLogger",
         "GPU available")


def test_reports_read_clean(project):
    """Executed notebooks are read by people: no library warning, traceback or progress
    bar in any cell output (progress and warnings go to the stage's log)."""
    for stage in STAGES:
        report = json.loads((project / f"reports/{stage}.ipynb").read_text())
        for cell in report["cells"]:
            for output in cell.get("outputs", []):
                assert output.get("name") != "stderr", (stage, output.get("text", "")[:300])
                assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
                text = json.dumps(output)
                noisy = [n for n in NOISE if n in text]
                assert not noisy, (stage, noisy, text[:300])


def test_the_exported_default_model_predicts_a_clip(project):
    clip = next((project / "interim/corpus").rglob("*.wav"))
    done = _run([sys.executable, "-m", "mmser.predict", str(clip), "--text", "I am so happy",
                 "--model", "models/tokenwise/predictor"], project)
    assert "real-time factor" in done.stderr
    assert all(name in done.stdout for name in ("angry", "happy", "neutral", "sad"))


def test_second_repro_does_nothing(project):
    out = _run(["dvc", "repro"], project).stdout
    assert "Running stage" not in out
    assert _status(project) == {}



def _git_repo(src: Path, dst: Path) -> Path:
    """A copy of the reproduced project (up to date: these tests run before one changes it)
    as a Git repository with DVC using Git (the fixture runs without), every file .gitignore
    lets through committed: a clone of the real repository after `dvc repro`, with data.dvc's
    folder (empty on the default) cached."""
    shutil.copytree(src, dst, symlinks=True)
    _run(["dvc", "config", "--unset", "core.no_scm"], dst)
    _run(["git", "init", "-q"], dst)
    _run(["git", "config", "user.name", "mmser test"], dst)
    _run(["git", "config", "user.email", "test@mmser.invalid"], dst)
    (dst / "data").mkdir(exist_ok=True)
    tracked = (dst / "data.dvc").read_text() if (dst / "data.dvc").is_file() else None
    _run(["dvc", "add", "data"], dst)  # README: `mkdir -p data && dvc add data`
    if tracked is not None:  # the same empty folder: data.dvc is unchanged
        assert (dst / "data.dvc").read_text() == tracked
    _run(["git", "add", "-A"], dst)
    _run(["git", "commit", "-q", "-m", "a run"], dst)
    return dst


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_is_shared_through_a_remote(project, tmp_path):
    """README "Sharing a run": push from the machine that ran the pipeline; on another,
    `git clone` + `dvc pull` give a workspace with nothing to re-run. Git holds only the
    metrics of results/; every other output and data/ come from the remote."""
    gpu = _git_repo(project, tmp_path / "gpu")
    tracked = _run(["git", "ls-files", "results", "interim", "reports", "models"], gpu).stdout
    # besides the metrics: the RAVDESS run's report tables behind README's second block
    run_here = [f for f in tracked.split() if not f.startswith("results/ravdess/")]
    assert run_here == [f"results/{s}/metrics.json" for s in sorted(STAGES)]
    _run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "store")], gpu)
    (gpu / "data" / "corpus").mkdir()  # a corpus of one's own travels too
    (gpu / "data" / "corpus" / "manifest.csv").write_text("path,label\n")
    _run(["dvc", "add", "data"], gpu)
    _run(["dvc", "push"], gpu)
    _run(["git", "add", "-A"], gpu)
    _run(["git", "commit", "-q", "-m", "its remote and corpus"], gpu)

    laptop = tmp_path / "laptop"
    _run(["git", "clone", "-q", str(gpu), str(laptop)], tmp_path)
    for absent in ("interim", "models", "reports", "results/clap/tables", "results/clap/figures"):
        assert not (laptop / absent).exists(), absent
    _run(["dvc", "pull"], laptop)
    assert json.loads(_run(["dvc", "status", "--json"], laptop).stdout or "{}") == {}
    for stage in STAGES:
        assert (laptop / f"reports/{stage}.ipynb").read_bytes() == \
            (project / f"reports/{stage}.ipynb").read_bytes()
    for path in ("models/clap/full/seed0/fold0/best.pt", "results/clap/figures/confusion_full.png",
                 "results/report/tables/comparison.csv", "reports/html/report.html",
                 "interim/manifest.csv", "data/corpus/manifest.csv"):
        assert (laptop / path).is_file(), path
    assert "Running stage" not in _run(["dvc", "repro"], laptop).stdout
    # every output is ignored by Git: DVC wrote no .gitignore, nothing shows as untracked
    assert _run(["git", "status", "--porcelain"], laptop).stdout == ""


def test_exp_apply_brings_back_an_experiments_outputs(project, tmp_path):
    """README "Teaching": an experiment overwrites the workspace's outputs; `dvc exp apply`
    brings back its checkpoints, figures and reports, and `git checkout ... && dvc checkout`
    the commit's, from the DVC cache, without re-running anything."""
    lab = _git_repo(project, tmp_path / "lab")
    files = ("models/clap/full/seed0/fold0/best.pt", "results/clap/figures/confusion_full.png",
             "reports/clap.ipynb")

    def digests():
        return [_digest(lab / f) for f in files]

    committed = digests()
    out = _run(["dvc", "exp", "run", "-n", "first", "-S", "clap.head_lr=0.002", "clap"], lab).stdout
    assert "Running stage 'clap'" in out and "Running stage 'features'" not in out
    first = digests()
    assert all(a != b for a, b in zip(first, committed))  # the parameter changed all three

    _run(["git", "checkout", "--", "params.yaml", "dvc.lock", "results", "README.md"], lab)
    _run(["dvc", "checkout"], lab)
    assert digests() == committed
    assert _status(lab) == {}

    _run(["dvc", "exp", "apply", "first"], lab)
    assert digests() == first
    assert "clap" not in _status(lab)  # with the experiment's params.yaml and dvc.lock
    assert yaml.safe_load((lab / "params.yaml").read_text())["clap"]["head_lr"] == 0.002


def _exercises() -> list[tuple[list[str], list[str]]]:
    """README "Teaching": each exercise's `dvc exp run` arguments and the stages its row of
    the exercises table says re-run, read from the README so that the two cannot drift."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Teaching\n")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[1].startswith("`dvc exp run "):
            rows.append((shlex.split(cells[1].strip("`"))[3:], re.findall(r"`(\w+)`", cells[2])))
    return rows


EXERCISES = _exercises()


def test_the_teaching_exercises_are_read_from_the_readme():
    assert len(EXERCISES) >= 5 and all(args and stages for args, stages in EXERCISES)


@pytest.fixture(scope="module")
def lab(project, tmp_path_factory):
    """A Git copy of the reproduced tiny pipeline (`dvc exp run` needs Git), made before
    test_changed_parameter_reruns_only_its_readers changes the project."""
    return _git_repo(project, tmp_path_factory.mktemp("lab") / "lab")


def _downstream(project: Path, stages: set[str]) -> set[str]:
    """`stages` and every stage that depends on one of them (`dvc dag`)."""
    edges = re.findall(r'"(\w+)" -> "(\w+)"', _run(["dvc", "dag", "--dot"], project).stdout)
    while (more := {b for a, b in edges if a in stages} - stages):
        stages |= more
    return stages


@pytest.mark.parametrize("args, stages", EXERCISES, ids=[" ".join(a) for a, _ in EXERCISES])
def test_each_teaching_exercise_reruns_the_stages_the_readme_names(lab, args, stages):
    """An exercise that re-runs one paper stage and the report runs for real. One that
    re-runs every paper stage gets its `-S` changes written by DVC's own code for `dvc exp
    run -S`, then `dvc status` names the stages whose own dependencies changed: with every
    stage downstream of them, that is what a run re-runs (their outputs change). (`dvc exp
    run --dry` cannot say it: DVC 3 runs it in a temporary copy without the outputs, where
    the second stage fails.)"""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    assert stages and set(stages) <= set(STAGES), stages
    if len(stages) <= 2:
        out = _run(["dvc", "exp", "run", *args], lab).stdout
        assert set(re.findall(r"Running stage '(\w+)'", out)) == set(stages), out[-2000:]
    else:
        sets = [value for flag, value in zip(args, args[1:]) if flag in ("-S", "--set-param")]
        assert sets and len(sets) * 2 == len(args), args  # nothing but -S changes
        for path, overrides in to_path_overrides(sets).items():
            apply_overrides(lab / path, overrides)
        assert _downstream(lab, set(_status(lab))) == set(stages)
    # back to the commit's run for the next exercise
    _run(["git", "checkout", "--", "params.yaml", "dvc.lock", "results", "README.md"], lab)
    _run(["dvc", "checkout", "--force"], lab)
    assert _status(lab) == {}


def test_changed_parameter_reruns_only_its_readers(project):
    _set_params(project, features={"batch_size": 4})
    assert set(_status(project)) == {"features"}  # its readers follow only if its outputs change
    out = _run(["dvc", "repro", "features"], project).stdout
    assert "Running stage 'features'" in out and "Running stage 'prepare'" not in out
    run = json.loads((project / "results/features/run.json").read_text())
    # the persisted cache served every clip and text: nothing was encoded again
    assert all(v["misses"] == 0 for v in run["cache"].values())
