"""A real corpus is a params switch: `dataset: emodb` with its root under data/, then
`dvc repro features` runs prepare, transcribe and features on it; a cross-corpus run adds a
second corpus. The corpora are tiny trees in the release layout built here."""

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

import background
from test_corpora import build_emodb, build_iemocap, wav
from test_pipeline import BIN, TINY, _copy_project, _run, _set_params

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("real")
    _copy_project(project)
    build_emodb(project / "data" / "emodb")
    build_iemocap(project / "data" / "iemocap", sessions=(1, 2, 3))
    _run(["dvc", "config", "core.no_scm", "true"], project)
    return project


def _features_folds(project):
    return pd.read_csv(project / "results/features/tables/fold_metrics.csv")


def test_emodb_through_prepare_transcribe_and_features(project):
    _set_params(project, dataset={"name": "emodb", "root": "data/emodb", "classes": 4,
                                  "protocol": "loso_speaker"},
                transcribe={"compare_n": 2, "splits": ["labelled"]},
                features={"splits": ["labelled"]})
    out = _run(["dvc", "repro", "features"], project).stdout
    assert all(f"Running stage '{s}'" in out for s in ("prepare", "transcribe", "features"))
    prepare = json.loads((project / "results/prepare/metrics.json").read_text())
    assert prepare["corpus"] == "emodb" and "leave-one-speaker-out" in prepare["protocol"]
    # EmoDB's boredom, disgust and fear are outside 4 classes: kept without a category
    assert prepare["utterances"] == {"labelled": 8} and prepare["without_category"] == 3
    summary = json.loads((project / "results/prepare/summary.json").read_text())
    assert sum(n for reason, n in summary["noted"].items()
               if reason.startswith("kept without a category")) == 3
    run = json.loads((project / "results/features/run.json").read_text())
    metrics = json.loads((project / "results/features/metrics.json").read_text())
    assert run["utterances"] == 8 and "UA" in metrics["audio"]
    assert "Running stage" not in _run(["dvc", "repro", "features"], project).stdout


def test_cross_corpus_iemocap_to_emodb(project):
    _set_params(project, dataset={"name": "iemocap", "root": "data/iemocap", "classes": 4,
                                  "protocol": "cross_corpus", "test_corpus": "emodb",
                                  "test_root": "data/emodb", "test_classes": 4})
    _run(["dvc", "repro", "features"], project)
    info = json.loads((project / "interim/corpus/corpus.json").read_text())
    assert info["test_corpus"] == "emodb" and info["protocol"]["name"] == "cross_corpus"
    folds = (project / "results/prepare/folds.csv").read_text()
    assert "cross-corpus" in folds
    folds = _features_folds(project)
    assert list(folds.loc[folds["system"] == "audio", "fold"]) == [0]  # one test fold: EmoDB
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["dataset"]["test_corpus"] == "emodb"


def test_a_stopped_prepare_leaves_the_list_of_bad_files(project):
    """Too much bad audio stops `dvc repro`, and summary.json names every bad file."""
    build_emodb(project / "data" / "emodb_bad")
    (project / "data/emodb_bad/wav/03a01Fa.wav").write_bytes(b"")
    (project / "data/emodb_bad/wav/08b10Tb.wav").write_bytes(b"RIFF0000WAVEjunk")
    _set_params(project, dataset={"name": "emodb", "root": "data/emodb_bad", "classes": 4,
                                  "protocol": "loso_speaker", "test_corpus": None,
                                  "max_lost_fraction": 0.05})
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "max_lost_fraction" in done.stdout + done.stderr
    summary = json.loads((project / "results/prepare/summary.json").read_text())
    assert sorted(summary["lost"]) == ["03a01Fa", "08b10Tb"]
    assert "audio file is empty" in summary["problems"]["03a01Fa"]
    assert "cannot decode" in summary["problems"]["08b10Tb"]


def build_ravdess(root, actors=("01", "02", "03", "04", "05")) -> None:
    """Neutral, calm (outside the 4 classes), happy, sad and angry, both statements, one
    repetition per actor: most of RAVDESS's 60 files per actor are absent (listed as lost)."""
    for actor in actors:
        for emotion in ("01", "02", "03", "04", "05"):
            for statement in ("01", "02"):
                wav(root / f"Actor_{actor}" / f"03-01-{emotion}-01-{statement}-01-{actor}.wav",
                    seconds=0.6, sr=48_000)


def _ravdess(project: Path) -> tuple[Path, str]:
    """A fresh project switched to RAVDESS on the tiny parameters, after its `dvc repro`;
    and what that printed."""
    _copy_project(project)
    _run(["dvc", "config", "core.no_scm", "true"], project)
    build_ravdess(project / "data" / "ravdess")
    _set_params(project, **{k: v for k, v in TINY.items() if k != "synthetic"})
    _set_params(project, dataset={"name": "ravdess", "root": "data/ravdess", "classes": 4,
                                  "protocol": "speaker_kfold", "test_corpus": None,
                                  "label": "RAVDESS (tiny test copy)",
                                  "max_lost_fraction": 1.0},  # 50 of 300 files here
                lemer={"systems": ["A1", "A2", "B5", "C1", "C4"]})
    return project, _run(["dvc", "repro"], project).stdout


ravdess = background.module_fixture(_ravdess)


def test_a_corpus_without_read_speech_dialogues_or_ratings_runs_every_stage(ravdess):
    """README "Real speech": switching to RAVDESS is one change and `dvc repro` completes:
    distil (no A/V/D) is not applicable, LE-MER leaves out A2 (no dialogues), tokenwise
    pre-trains each fold on its own training speech (no read speech), and the report and
    the exported predictor say so."""
    project, out = ravdess
    assert "distil: not applicable, because" in out
    comparison = (project / "results/report/tables/comparison.csv").read_text()
    assert "RAVDESS (tiny test copy)" in comparison
    rows = pd.read_csv(project / "results/report/tables/not_applicable_rows.csv")
    skipped = dict(zip(rows["paper"] + " " + rows["system"], rows["reason"]))
    assert set(skipped) == {"distil the whole stage", "lemer A2"}
    assert all(reason.startswith("not applicable, because") for reason in skipped.values())
    claims = (project / "results/report/tables/claims.csv").read_text()
    assert "not applicable" in claims  # distil's claim
    lemer = set(pd.read_csv(project / "results/lemer/tables/predictions.csv")["system"])
    assert "C1" in lemer and "A2" not in lemer
    tokenwise = (project / "reports/tokenwise.ipynb").read_text()
    assert "own training speech and transcripts" in tokenwise
    spec = json.loads((project / "models/tokenwise/predictor/spec.json").read_text())
    assert spec["trained_on"]["corpus_key"] == "ravdess" and not spec["trained_on"]["synthetic"]
    assert "Running stage" not in _run(["dvc", "repro"], project).stdout
