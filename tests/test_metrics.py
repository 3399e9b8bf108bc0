import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from mmser.report.metrics import ccc, classification_report, mean_std


def test_wa_and_ua_match_sklearn_where_they_differ():
    # imbalanced: 8 neutral, 2 sad; predicting all neutral gives WA 0.8 but UA 0.5
    y_true = ["neu"] * 8 + ["sad"] * 2
    y_pred = ["neu"] * 10
    report = classification_report(y_true, y_pred)
    assert report["WA"] == pytest.approx(accuracy_score(y_true, y_pred)) == pytest.approx(0.8)
    assert report["UA"] == pytest.approx(balanced_accuracy_score(y_true, y_pred)) == 0.5
    assert report["recall"] == {"neu": 1.0, "sad": 0.0}
    assert report["confusion"] == [[8, 0], [2, 0]]


def test_ccc_hand_computation():
    t, p = [1.0, 2.0, 3.0], [2.0, 2.0, 4.0]
    # means 2 and 8/3; population variances 2/3 and 8/9; covariance 2/3
    expected = 2 * (2 / 3) / (2 / 3 + 8 / 9 + (2 - 8 / 3) ** 2)
    assert expected == pytest.approx(2 / 3)
    assert ccc(t, p) == pytest.approx(expected)
    assert ccc(t, t) == pytest.approx(1.0)


def test_mean_std_uses_sample_std():
    out = mean_std([0.5, 0.7])
    assert out["mean"] == pytest.approx(0.6)
    assert out["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_paired_bootstrap_interval_brackets_a_real_difference():
    from mmser.report.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.choice(["a", "b", "c"], 300)
    good = np.where(rng.random(300) < 0.9, y, "a")
    bad = np.where(rng.random(300) < 0.5, y, "a")
    out = paired_bootstrap(y, good, bad, n=300)
    assert out["low"] <= out["diff"] <= out["high"] and out["low"] > 0
    same = paired_bootstrap(y, good, good, n=50)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0}


def test_paired_bootstrap_scores_every_resample_as_scikit_learn_does():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from mmser.report.metrics import _resampled

    rng = np.random.default_rng(3)
    y = rng.choice(["ang", "hap", "neu", "sad", "rare"], 60, p=[.3, .3, .2, .18, .02])
    pred = np.where(rng.random(60) < 0.6, y, rng.choice(["ang", "hap", "neu", "sad"], 60))
    idx = rng.integers(0, 60, (40, 60))
    for metric, score in (("UA", balanced_accuracy_score), ("WA", accuracy_score)):
        expected = [score(y[i], pred[i]) for i in idx]
        np.testing.assert_allclose(_resampled(y, pred == y, idx, metric), expected)
