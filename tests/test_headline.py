"""metrics.json holds a stage's headline only (`mmser.report.headline`); per-fold values go
to tables/fold_metrics.csv and timings to run.json; claims are written as difference and
verdict (`mmser.report.claims.measured`)."""

import json

import numpy as np
import pandas as pd
import pytest

from mmser.report.claims import AGREES, INCONCLUSIVE, measured
from mmser.report.headline import MAX_NUMBERS, numbers_in, write_metrics
from mmser.report.metrics import mean_std

# vcemo's default run: its four systems and six ablation rows, a claim seed more for two
SYSTEMS = ["VCEMO (SupCon)", "VCEMO", "Yoon et al. 2019 (MHA-2)", "Xu et al. 2019",
           "Acoustic", "BERT", "BERT + Acoustic", "Embeddings", "Embeddings + Acoustic",
           "Embeddings + BERT"]


def _per_fold(systems=SYSTEMS, seeds=(0, 1, 2), folds=5,
              metrics=("WA", "UA", "macro_F1", "weighted_F1")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"system": s, "seed": seed, "fold": f, "n": 160,
                          **{m: rng.uniform(0.3, 0.8) for m in metrics}}
                         for s in systems for seed in seeds for f in range(folds)])


def _claim(a="VCEMO (SupCon)", b="VCEMO", low=0.01, high=0.05, metric="UA"):
    return {"a": a, "b": b, "metric": metric, "diff": 0.03, "low": low, "high": high,
            "seeds": [0, 1, 2]}


def test_metrics_json_holds_the_headline_and_the_rest_goes_beside_it(tmp_path):
    per_fold = _per_fold()
    path = tmp_path / "results" / "metrics.json"
    written = write_metrics(path, per_fold, ["VCEMO (SupCon)", "VCEMO"],
                            claims=measured({"vcemo": _claim()}), corpus="synthetic",
                            protocol="leave-one-session-out", profile="default",
                            run={"minutes": 7.7, "bootstrap": {"SupCon - CE (UA)": _claim()}})
    assert json.loads(path.read_text()) == written
    # 2 systems x UA, WA, macro-F1 x (mean, std), and the claim's difference: 13 numbers
    # (vcemo's metrics.json of the last full run, before: 392, every fold, system and CI)
    assert len(numbers_in(written)) == 13 <= MAX_NUMBERS
    assert set(written) == {"corpus", "protocol", "profile", "VCEMO (SupCon)", "VCEMO", "claim"}
    ua = mean_std(per_fold.loc[per_fold["system"] == "VCEMO", "UA"])
    assert written["VCEMO"]["UA"] == round(ua["mean"], 4)
    assert written["VCEMO"]["UA_std"] == round(ua["std"], 4)
    assert "weighted_F1" not in written["VCEMO"]
    assert written["claim"] == {"vcemo": {"diff": 0.03, "verdict": AGREES}}
    # nothing lost: every system, seed and fold; the timings and the detail in run.json
    folds = pd.read_csv(tmp_path / "results" / "tables" / "fold_metrics.csv")
    pd.testing.assert_frame_equal(folds, per_fold)
    run = json.loads((tmp_path / "results" / "run.json").read_text())
    assert run["minutes"] == 7.7 and "encoder_use" in run and "bootstrap" in run


def test_a_regressor_writes_its_ccc_and_a_stage_without_systems_its_numbers(tmp_path):
    ccc = ("CCC_arousal", "CCC_valence", "CCC_dominance")
    names = [f"{s} · {m} · FT | {sc}" for s in ("base", "distilled") for m in ("A", "A+T")
             for sc in ("seen", "unseen")]
    # the features stage: classifier probes and a ridge in one frame
    per_fold = pd.concat([_per_fold(names, metrics=ccc), _per_fold(["audio"])])
    written = write_metrics(tmp_path / "m.json", per_fold,
                            ["distilled · A+T · FT | unseen", "distilled · A · FT | unseen",
                             "audio"])
    assert set(written["distilled · A · FT | unseen"]) == {*ccc, *(f"{m}_std" for m in ccc)}
    assert set(written["audio"]) == {"UA", "UA_std", "WA", "WA_std", "macro_F1", "macro_F1_std"}
    assert len(numbers_in(written)) == 18
    prepared = write_metrics(tmp_path / "p" / "metrics.json", corpus="synthetic",
                             numbers={"utterances": {"labelled": 800, "read": 1000},
                                      "duration_s": {"total": 6484.0592}},
                             run={"generation_s": 47.84})
    assert prepared == {"corpus": "synthetic", "utterances": {"labelled": 800, "read": 1000},
                        "duration_s": {"total": 6484.0592}}
    assert not (tmp_path / "p" / "tables").exists()  # no per-fold frame, no table
    assert json.loads((tmp_path / "p" / "run.json").read_text())["generation_s"] == 47.84


def test_the_writer_refuses_an_absent_main_system_and_numbers_as_context(tmp_path):
    with pytest.raises(ValueError, match=r"\['VCEMO \(supcon\)'\] are not among"):
        write_metrics(tmp_path / "m.json", _per_fold(), ["VCEMO (supcon)"])
    with pytest.raises(ValueError, match="context holds numbers"):
        write_metrics(tmp_path / "m.json", corpus="synthetic", seconds=12.0)
    assert not (tmp_path / "m.json").exists()


def test_a_claim_is_measured_against_its_own_systems_and_metric():
    assert measured({"vcemo": _claim(low=-0.01)})["vcemo"]["verdict"] == INCONCLUSIVE
    # tokenwise's claim against speech is that ours trails it: a CI below 0 agrees
    trails = _claim("ours B_s", "speech whisper-tiny.en", low=-0.2, high=-0.1)
    assert measured({"tokenwise_vs_speech": trails})["tokenwise_vs_speech"]["verdict"] == AGREES
    with pytest.raises(ValueError, match="compares one of"):
        measured({"vcemo": _claim(b="Xu et al. 2019")})
    with pytest.raises(ValueError, match="about UA, not WA"):
        measured({"vcemo": _claim(metric="WA")})
    with pytest.raises(KeyError, match="no claim 'supcon'"):
        measured({"supcon": _claim()})


def test_numbers_are_counted_as_dvc_lists_them():
    tree = {"a": {"UA": 0.5, "ok": True, "name": "x"}, "b": [1, {"c": 2.0}], "d": None}
    assert numbers_in(tree) == ["a.UA", "b.0", "b.1.c"]
