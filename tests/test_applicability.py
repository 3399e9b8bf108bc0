"""Switching to a corpus a stage cannot use: the stage is skipped before its notebook with
every declared output written, and the report shows it as not applicable, with why."""

import json
import subprocess
import sys
from pathlib import Path

from mmser.corpus import manifest
from mmser.papers import applicability as A
from mmser.report import compare
from mmser.report.claims import NOT_APPLICABLE

from tiny_models import write_fake_manifest


def _corpus(root: Path, rated: bool) -> Path:
    df = write_fake_manifest(root, n_per_speaker=4, n_read=0)
    if rated:
        df[["arousal", "valence", "dominance"]] = 3.0
        manifest.write(df, root / "manifest.csv")
    return root


def test_distil_needs_dimensional_ratings(tmp_path):
    without = _corpus(tmp_path / "ravdess-like", rated=False)
    reason = A.why_not("distil", without / "corpus", without / "manifest.csv")
    assert reason and "arousal, valence and dominance" in reason
    rated = _corpus(tmp_path / "iemocap-like", rated=True)
    assert A.why_not("distil", rated / "corpus", rated / "manifest.csv") is None
    assert A.why_not("vcemo", without / "corpus", without / "manifest.csv") is None


def test_a_stage_that_does_not_apply_writes_its_outputs_and_the_report_says_why(tmp_path,
                                                                                monkeypatch):
    root = _corpus(tmp_path, rated=False)
    monkeypatch.chdir(tmp_path)
    ran = tmp_path / "ran"
    assert A.main(["distil", "--corpus-dir", str(root / "corpus"), "--manifest",
                   str(root / "manifest.csv"), "--", "touch", str(ran)]) == 0
    assert not ran.exists()  # the notebook's command did not run
    for path in ("results/distil/tables/not_applicable.csv", "results/distil/figures",
                 "results/distil/run.json",
                 "models/distil", "reports/distil.ipynb"):
        assert (tmp_path / path).exists(), path
    metrics = json.loads((tmp_path / "results/distil/metrics.json").read_text())
    assert metrics["not_applicable"].startswith("not applicable, because the corpus")
    assert "not applicable" in (tmp_path / "reports/distil.ipynb").read_text()

    stage = compare.load_stage(tmp_path / "results", "distil")
    assert not stage.ran and stage.status == NOT_APPLICABLE
    row = compare.comparison({"distil": stage}).iloc[0]
    assert row["system"] == NOT_APPLICABLE and "arousal" in row["same design"]
    claim = compare.claims({"distil": stage}, n=10)
    assert set(claim["verdict"]) == {NOT_APPLICABLE}
    assert compare.load_stage(tmp_path / "results", "vcemo").status == "not run"


def test_a_stage_that_applies_runs_its_command(tmp_path):
    root = _corpus(tmp_path, rated=True)
    ran = tmp_path / "ran"
    subprocess.run([sys.executable, "-m", "mmser.papers.applicability", "distil",
                    "--corpus-dir", str(root / "corpus"), "--manifest",
                    str(root / "manifest.csv"), "--", "touch", str(ran)],
                   cwd=tmp_path, check=True)
    assert ran.exists() and not (tmp_path / "results").exists()
