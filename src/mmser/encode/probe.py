"""Linear probes on frozen, pooled features, leave-one-group-out.

They measure how hard the corpus is for each modality, and they are the frozen-feature
baseline every paper is compared with: same folds, same test utterances, predictions kept
per utterance so that the report's paired bootstrap can set a paper's system against them.
Nothing is tuned on a held-out group: the classifier's C is fixed in advance, and the
ridge's alpha is chosen by leave-one-out on the training groups only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmser.report.metrics import ccc, classification_report, mean_std

RIDGE_ALPHAS = np.logspace(-1, 4, 11)
# system names of the baseline rows: "frozen probe · audio + text" is the one papers face
BASELINE_PREFIX = "frozen probe · "
BASELINE = f"{BASELINE_PREFIX}audio + text"
BASELINE_AVD = f"{BASELINE_PREFIX}audio + text (ridge)"


def tested_groups(groups: Sequence, never_tested: Sequence = (-1,)) -> list:
    """The groups a probe holds out in turn (a cross-corpus run's training corpus, group
    -1, only ever trains)."""
    return sorted(set(np.asarray(groups)) - set(never_tested), key=str)


def leave_one_group_out(features: np.ndarray, labels: Sequence[str], groups: Sequence,
                        C: float = 0.1, seed: int = 0, never_tested: Sequence = (-1,),
                        ids: Sequence[str] | None = None) -> dict:
    """Train on all groups but one, test on it, for each group; per-fold and mean ± std,
    and `predictions` (utt_id, fold, label, pred) of every tested utterance.

    Groups are the protocol's folds; rows in a `never_tested` group (official training
    partitions, the training corpus of a cross-corpus run) only ever train.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    ids = np.asarray(ids if ids is not None else np.arange(len(labels)).astype(str))
    classes = sorted(set(labels))
    folds, predictions = {}, []
    for group in tested_groups(groups, never_tested):
        test = groups == group
        model = make_pipeline(StandardScaler(),
                              LogisticRegression(C=C, max_iter=2000, random_state=seed))
        model.fit(features[~test], labels[~test])
        pred = model.predict(features[test])
        folds[str(group)] = classification_report(labels[test], pred, labels=classes)
        predictions.append(pd.DataFrame({"utt_id": ids[test], "fold": group,
                                         "label": labels[test], "pred": pred}))
    summary = {m: mean_std([f[m] for f in folds.values()])
               for m in ("WA", "UA", "macro_F1")}
    return {"folds": folds, "summary": summary,
            "predictions": pd.concat(predictions, ignore_index=True)}


def ridge_leave_one_group_out(features: np.ndarray, targets: pd.DataFrame, groups: Sequence,
                              never_tested: Sequence = (-1,),
                              ids: Sequence[str] | None = None) -> dict:
    """The regression twin of `leave_one_group_out`: one ridge per held-out group predicts
    every column of `targets` (e.g. arousal, valence, dominance); CCC per fold and mean ±
    std, and `predictions` (utt_id, fold, true_<col>, pred_<col>)."""
    groups = np.asarray(groups)
    if not tested_groups(groups, never_tested):
        raise ValueError("no group to test: every row is in a never-tested group "
                         f"{list(never_tested)} (e.g. only the training corpus has the targets)")
    ids = np.asarray(ids if ids is not None else np.arange(len(targets)).astype(str))
    y = targets.to_numpy(dtype=float)
    folds, predictions = {}, []
    for group in tested_groups(groups, never_tested):
        test = groups == group
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        pred = model.fit(features[~test], y[~test]).predict(features[test])
        folds[str(group)] = {f"CCC_{c}": ccc(y[test, i], pred[:, i])
                             for i, c in enumerate(targets.columns)}
        frame = pd.DataFrame({"utt_id": ids[test], "fold": group})
        for i, c in enumerate(targets.columns):
            frame[f"true_{c}"], frame[f"pred_{c}"] = y[test, i], pred[:, i]
        predictions.append(frame)
    summary = {m: mean_std([f[m] for f in folds.values()]) for m in next(iter(folds.values()))}
    return {"folds": folds, "summary": summary,
            "predictions": pd.concat(predictions, ignore_index=True)}
