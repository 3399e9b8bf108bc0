"""The frozen-feature probes: leave-one-group-out, never tuned on the held-out group, with
per-utterance predictions for the report's paired comparisons."""

import numpy as np
import pandas as pd
import pytest

from mmser.encode import probe
from mmser.report.metrics import ccc


def _data(n=120, groups=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, n)]
    onehot = (labels[:, None] == np.array(["a", "b", "c"])).astype(float)
    features = np.hstack([onehot + 0.3 * rng.normal(size=(n, 3)), rng.normal(size=(n, 5))])
    return features, labels, np.arange(n) % groups, [f"u{i}" for i in range(n)]


def test_classifier_predicts_every_utterance_of_its_held_out_group():
    X, y, groups, ids = _data()
    out = probe.leave_one_group_out(X, y, groups, ids=ids)
    preds = out["predictions"]
    assert sorted(preds["utt_id"]) == sorted(ids)
    assert (preds["fold"].to_numpy() == groups[[ids.index(u) for u in preds["utt_id"]]]).all()
    assert out["summary"]["UA"]["mean"] > 0.8  # the planted cue is found
    fold0 = preds[preds["fold"] == 0]
    assert np.isclose((fold0["pred"] == fold0["label"]).mean(), out["folds"]["0"]["WA"])


def test_a_never_tested_group_only_trains():
    X, y, groups, ids = _data()
    out = probe.leave_one_group_out(X, y, groups, never_tested=(3,), ids=ids)
    assert set(out["predictions"]["fold"]) == {0, 1, 2} and "3" not in out["folds"]


def test_held_out_labels_do_not_change_its_own_predictions():
    """Scrambling the test group's labels changes nothing it predicts (nothing is tuned on it)."""
    X, y, groups, ids = _data()
    scrambled = y.copy()
    scrambled[groups == 1] = np.roll(y[groups == 1], 1)
    a = probe.leave_one_group_out(X, y, groups, ids=ids)["predictions"]
    b = probe.leave_one_group_out(X, scrambled, groups, ids=ids)["predictions"]
    assert a.loc[a["fold"] == 1, "pred"].tolist() == b.loc[b["fold"] == 1, "pred"].tolist()


def test_ridge_recovers_dimensions_and_reports_ccc_per_fold():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(160, 6))
    targets = pd.DataFrame({"arousal": X[:, 0] + 0.1 * rng.normal(size=160),
                            "valence": rng.normal(size=160)})  # valence: nothing to find
    groups = np.arange(160) % 4
    out = probe.ridge_leave_one_group_out(X, targets, groups, ids=[f"u{i}" for i in range(160)])
    assert out["summary"]["CCC_arousal"]["mean"] > 0.9
    assert abs(out["summary"]["CCC_valence"]["mean"]) < 0.3
    preds = out["predictions"]
    part = preds[preds["fold"] == 2]
    assert np.isclose(ccc(part["true_arousal"], part["pred_arousal"]),
                      out["folds"]["2"]["CCC_arousal"])
    assert len(preds) == 160


def test_ridge_with_nothing_to_test_says_so():
    """A cross-corpus run whose test corpus has no A/V/D: every rated row trains only."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    targets = pd.DataFrame({"arousal": X[:, 0]})
    assert probe.tested_groups(np.full(20, -1)) == []
    with pytest.raises(ValueError, match="no group to test"):
        probe.ridge_leave_one_group_out(X, targets, np.full(20, -1))
