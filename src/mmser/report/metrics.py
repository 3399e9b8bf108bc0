"""The one metrics module. WA = accuracy over utterances; UA = mean per-class recall.

Several public codebases swap the two names; tests pin ours to scikit-learn's
accuracy_score (WA) and balanced_accuracy_score (UA).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
                     level: float = 0.95) -> dict[str, float]:
    """Difference metric(a) - metric(b) on the same utterances, with a bootstrap CI.

    Utterances are resampled with replacement, the same indices for both systems, so the
    interval reflects the paired design. All resamples are scored at once (per-class
    counts with `bincount`): the same values as scikit-learn's scores, far faster.
    """
    score = {"UA": balanced_accuracy_score, "WA": accuracy_score}[metric]
    t, a, b = (np.asarray(x) for x in (y_true, pred_a, pred_b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), (n, len(t)))
    diffs = _resampled(t, a == t, idx, metric) - _resampled(t, b == t, idx, metric)
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(score(t, a) - score(t, b)), "low": float(low), "high": float(high)}


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
