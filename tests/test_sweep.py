"""The seed-sweep aggregate: experiments read back from `dvc exp show --json`'s layout."""

import json
import math
from pathlib import Path

import pytest

from mmser import sweep


def _data(seeds, ua, lr=1e-3, verdict="agrees", with_report=True):
    params = {"params.yaml": {"data": {"training": {"seeds": seeds}, "clap": {"lr": lr}}}}
    metrics = {sweep.REPORT_METRICS: {"data": {
        "comparison": {"clap": {"UA": ua, "WA": ua + 0.01}},
        "claims": {"clap": {"verdict": verdict, "diff": 0.01}}}}} if with_report else {}
    return {"rev": "x", "params": params, "metrics": metrics}


def _exp(name, data):
    return {"revs": [{"rev": "e" * 40, "name": name, "data": data}]}


def _shown(*experiments, baseline=None):
    baseline = baseline or _data([0], 0.60)
    return [{"rev": "workspace", "name": None, "data": baseline},
            {"rev": "c" * 40, "name": "main", "data": baseline,
             "experiments": [_exp(n, d) for n, d in experiments]}]


def test_seeds_are_aggregated_over_the_commit_and_its_experiments(tmp_path):
    shown = _shown(("s1", _data([1], 0.62, verdict="inconclusive")), ("s2", _data([2], 0.64)))
    runs, notes = sweep.experiment_rows(shown)
    assert list(runs["run"]) == ["main", "s1", "s2"] and notes == []
    scores, claims = sweep.aggregate(runs)
    ua = scores[(scores.paper == "clap") & (scores.metric == "UA")].iloc[0]
    assert ua["runs"] == 3 and ua["mean"] == pytest.approx(0.62)
    assert ua["std"] == pytest.approx(0.02)  # sample std of 0.60, 0.62, 0.64
    assert "1: 0.620" in ua["per seed"]
    assert list(claims["verdict"]) == ["agrees", "inconclusive", "agrees"]

    path = tmp_path / "shown.json"
    path.write_text(json.dumps(shown))
    assert sweep.main(["--json", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "0.620" in (tmp_path / "out/seeds.md").read_text()
    assert (tmp_path / "out/claims.csv").is_file()


def test_other_parameters_unfinished_runs_and_repeated_seeds_are_left_out():
    shown = _shown(("lr", _data([1], 0.9, lr=1e-2)), ("failed", _data([2], 0, with_report=False)),
                   ("again", _data([0], 0.70)))
    runs, notes = sweep.experiment_rows(shown)
    assert list(runs["run"]) == ["again"]  # the later run of seed 0 replaces the commit's
    assert any(n.startswith("lr: other parameters differ") and "clap.lr" in n for n in notes)
    assert any(n.startswith("failed: no results/report/metrics.json") for n in notes)
    assert any(n.startswith("main: seeds (0,) already counted") for n in notes)
    scores, _ = sweep.aggregate(runs)
    assert math.isnan(scores.iloc[0]["std"])  # one run has no spread


def test_nothing_to_aggregate_is_a_clear_error():
    runs, _ = sweep.experiment_rows(_shown(baseline=_data([0], 0, with_report=False)))
    with pytest.raises(ValueError, match="make sweep"):
        sweep.aggregate(runs)


def test_a_real_sweep_is_read_back():
    # `dvc exp show --json` of `make sweep SEEDS="1 2"` on tiny params (dvc 3.67), trimmed to
    # the report's metrics and three params sections
    shown = json.loads((Path(__file__).parent / "data/dvc_exp_show.json").read_text())
    runs, notes = sweep.experiment_rows(shown)
    assert notes == [] and [list(s) for s in runs["seeds"]] == [[0], [1], [2]]
    scores, claims = sweep.aggregate(runs)
    assert set(scores["paper"]) == {"clap", "lemer", "distil", "vcemo", "tokenwise"}
    assert (scores["runs"] == 3).all() and scores["std"].notna().all()
    assert len(claims) == 3 * claims["claim"].nunique()
