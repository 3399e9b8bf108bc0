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


def test_grouped_bootstrap_keeps_an_utterances_seeds_together():
    """Several seeds' predictions of the same utterances: resampling utterances (groups)
    gives the interval of the seeds' pooled evidence; resampling rows would pretend the test
    set had grown (a narrower interval from copies of the same utterances)."""
    from mmser.report.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    a = np.where(rng.random(60) < 0.7, y, (y + 1) % 3)
    b = np.where(rng.random(60) < 0.6, y, (y + 2) % 3)
    one = paired_bootstrap(y, a, b, n=400, seed=1)
    utts = np.tile(np.arange(60), 3)  # three seeds that predicted alike
    grouped = paired_bootstrap(np.tile(y, 3), np.tile(a, 3), np.tile(b, 3), n=400, seed=1,
                               groups=utts)
    rows = paired_bootstrap(np.tile(y, 3), np.tile(a, 3), np.tile(b, 3), n=400, seed=1)
    width = {k: r["high"] - r["low"] for k, r in (("one", one), ("grouped", grouped),
                                                  ("rows", rows))}
    assert grouped["diff"] == pytest.approx(one["diff"])
    assert width["grouped"] == pytest.approx(width["one"], rel=0.25)
    assert width["rows"] < 0.75 * width["grouped"]
    # an utterance tested by some seeds only (a seed-dependent random split) still counts
    part = paired_bootstrap(np.r_[y, y[:30]], np.r_[a, a[:30]], np.r_[b, b[:30]], n=400,
                            seed=1, groups=np.r_[np.arange(60), np.arange(30)])
    assert part["low"] <= part["diff"] <= part["high"]


def test_weighted_resamples_score_as_scikit_learn_does():
    from mmser.report.metrics import _weighted

    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    counts = rng.integers(0, 3, (5, 40))
    got = {m: _weighted(y, pred == y, counts, m) for m in ("UA", "WA")}
    for i, c in enumerate(counts):
        rows = np.repeat(np.arange(40), c)
        assert got["WA"][i] == pytest.approx(accuracy_score(y[rows], pred[rows]))
        assert got["UA"][i] == pytest.approx(balanced_accuracy_score(y[rows], pred[rows]))


def test_resampling_the_seeds_keeps_one_runs_luck_from_deciding():
    """Seed 0 finds a +0.2 gain, seeds 1 and 2 find none: pooled over utterances alone the
    interval excludes 0 (one run's luck decides), with the seeds resampled too it reaches 0;
    when every seed agrees the seed level changes little."""
    from mmser.report.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    b = np.where(rng.random(n) < 0.6, y, 1 - y)
    lucky = np.where(rng.random(n) < 0.5, y, b)  # right on about half of b's errors
    t, utt, seeds = np.tile(y, 3), np.tile(np.arange(n), 3), np.repeat([0, 1, 2], n)
    pa, pb = np.r_[lucky, b, b], np.tile(b, 3)
    utterances = paired_bootstrap(t, pa, pb, n=400, groups=utt)
    both = paired_bootstrap(t, pa, pb, n=400, groups=utt, runs=seeds)
    assert utterances["low"] > 0.02 and both["low"] <= 0.001
    assert both["diff"] == pytest.approx(utterances["diff"])
    alike = np.tile(lucky, 3)
    steady = paired_bootstrap(t, alike, pb, n=400, groups=utt, runs=seeds)
    plain = paired_bootstrap(t, alike, pb, n=400, groups=utt)
    assert steady["high"] - steady["low"] == pytest.approx(plain["high"] - plain["low"], rel=0.2)
