"""Linear probes on frozen, pooled features, leave-one-group-out.

Used to check that the default corpus is neither trivial nor hopeless for either modality.
The regularisation is fixed in advance: the held-out group never tunes anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmser.report.metrics import classification_report, mean_std


def leave_one_group_out(features: np.ndarray, labels: Sequence[str], groups: Sequence,
                        C: float = 0.1, seed: int = 0, never_tested: Sequence = (-1,)) -> dict:
    """Train on all groups but one, test on it, for each group; per-fold and mean ± std.

    Groups are the protocol's folds; rows in a `never_tested` group (official training
    partitions, the training corpus of a cross-corpus run) only ever train.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    classes = sorted(set(labels))
    folds = {}
    for group in sorted(set(groups) - set(never_tested), key=str):
        test = groups == group
        model = make_pipeline(StandardScaler(),
                              LogisticRegression(C=C, max_iter=2000, random_state=seed))
        model.fit(features[~test], labels[~test])
        folds[str(group)] = classification_report(labels[test], model.predict(features[test]),
                                                  labels=classes)
    summary = {m: mean_std([f[m] for f in folds.values()])
               for m in ("WA", "UA", "macro_F1")}
    return {"folds": folds, "summary": summary}
