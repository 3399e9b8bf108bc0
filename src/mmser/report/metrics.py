"""The one metrics module. WA = accuracy over utterances; UA = mean per-class recall.

Several public codebases swap the two names; tests pin ours to scikit-learn's
accuracy_score (WA) and balanced_accuracy_score (UA).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, recall_score)


def classification_report(y_true: Sequence, y_pred: Sequence,
                          labels: Sequence | None = None) -> dict:
    """WA, UA, macro/weighted F1, per-class recall and the confusion matrix."""
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "WA": float(accuracy_score(y_true, y_pred)),
        "UA": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_F1": float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                   zero_division=0)),
        "weighted_F1": float(f1_score(y_true, y_pred, labels=labels, average="weighted",
                                      zero_division=0)),
        "recall": {str(k): float(r) for k, r in zip(labels, recalls)},
        "labels": [str(k) for k in labels],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def ccc(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Concordance correlation coefficient (Lin, 1989), population moments."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    cov = ((t - t.mean()) * (p - p.mean())).mean()
    return float(2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2))


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    arr = np.asarray(values, float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def paired_bootstrap(y_true: Sequence, pred_a: Sequence, pred_b: Sequence,
                     metric: str = "UA", n: int = 1000, seed: int = 0,
                     level: float = 0.95, groups: Sequence | None = None,
                     runs: Sequence | None = None) -> dict[str, float]:
    """Difference metric(a) - metric(b) on the same utterances, with a bootstrap CI.

    Utterances are resampled with replacement, the same indices for both systems, so the
    interval reflects the paired design. With `groups` (e.g. utterance ids, when the rows
    hold several seeds' predictions of each utterance) whole groups are resampled: an
    utterance's predictions by every seed stay together (each row weighs as often as its
    group is drawn; an utterance may be in the test part of some seeds only), so more seeds
    average out training noise without pretending the test set grew.

    With `runs` (the training seed of each row) the seeds are resampled too, independently
    of the utterances (a two-level bootstrap): the interval then holds the spread between
    training runs as well as between test utterances, so a difference that one run's
    floating-point rounding can move is not called significant. All resamples are scored
    at once: the same values as scikit-learn's scores.
    """
    score = {"UA": balanced_accuracy_score, "WA": accuracy_score}[metric]
    t, a, b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    rng = np.random.default_rng(seed)
    if groups is None and runs is None:
        idx = rng.integers(0, len(t), (n, len(t)))
        diffs = _resampled(t, a == t, idx, metric) - _resampled(t, b == t, idx, metric)
    else:  # each row weighs as often as its group was drawn (groups may differ in size)
        weights = _draws(np.arange(len(t)) if groups is None else groups, n, rng)
        if runs is not None:
            weights = weights * _draws(runs, n, rng)
        diffs = _weighted(t, a == t, weights, metric) - _weighted(t, b == t, weights, metric)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(score(t, a) - score(t, b)), "low": float(low), "high": float(high)}


def _draws(labels: Sequence, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, rows): how often each row's label was drawn in each of n resamples of the
    distinct labels with replacement."""
    codes = pd.factorize(np.asarray(labels))[0]
    k = codes.max() + 1
    return rng.multinomial(k, np.full(k, 1 / k), size=n)[:, codes]


def _weighted(y_true: np.ndarray, correct: np.ndarray, weights: np.ndarray,
              metric: str) -> np.ndarray:
    """WA or UA of each resample given as row weights (n, rows): UA is the mean recall over
    the classes present in that resample."""
    if metric == "WA":
        return (weights * correct).sum(1) / weights.sum(1)
    recalls, present = [], []
    for label in np.unique(y_true):
        w = weights * (y_true == label)
        total = w.sum(1)
        recalls.append(np.where(total > 0, (w * correct).sum(1) / np.maximum(total, 1), 0))
        present.append(total > 0)
    return np.sum(recalls, 0) / np.sum(present, 0)


def _resampled(y_true: np.ndarray, correct: np.ndarray, idx: np.ndarray,
               metric: str) -> np.ndarray:
    """WA or UA of each resample (row of `idx`): UA is the mean recall over the classes
    present in that resample, as `balanced_accuracy_score` computes it."""
    if metric == "WA":
        return correct[idx].mean(1)
    codes = np.unique(y_true, return_inverse=True)[1].reshape(-1)
    k, rows = codes.max() + 1, np.arange(len(idx))[:, None]
    flat = (codes[idx] + k * rows).ravel()
    counts = np.bincount(flat, minlength=k * len(idx)).reshape(len(idx), k)
    hits = np.bincount(flat, weights=correct[idx].ravel(), minlength=k * len(idx))
    recall = hits.reshape(len(idx), k) / np.maximum(counts, 1)
    return np.where(counts > 0, recall, 0).sum(1) / (counts > 0).sum(1)
