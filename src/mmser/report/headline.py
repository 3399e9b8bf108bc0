"""A stage's `results/<stage>/metrics.json`: its headline numbers only; the rest beside it.

`dvc metrics show`, `dvc metrics diff` and `dvc exp show` make a column of every value in
every stage's metrics.json, so it holds only what a reader compares between runs, and
nothing that changes from run to run without a change of result (no timing, no count of
cache hits):

- the main systems' mean and std over folds and seeds (`HEADLINE`: UA, WA and macro-F1 of
  a classifier, the CCC of each dimension of a regressor); the caller names them;
- under `claim`, each paper claim the stage tests (`mmser.report.claims.measured`): the
  measured difference and its verdict (the report's metrics.json has every claim under
  `claims`: two names, so that `dvc exp show` need not prefix both with their file);
- the strings the report reads (corpus, protocol, profile) and, for a stage without
  systems (prepare, transcribe, report), its own few numbers.

What a stage records beyond that goes to its outputs beside metrics.json: every system,
seed and fold in `tables/fold_metrics.csv`, and `run.json`: timings, the frozen encoders'
use (`python -m mmser.bench` sums it over stages) and any other detail.

`MAX_NUMBERS` bounds the numbers in one metrics.json (tests check the writer and every
stage of the tiny pipeline): a paper stage writes 2-3 systems x 3 metrics x (mean, std)
and 1-2 claim differences (<= 20), the features stage 3 probes and its ridge (24), the
report 7 comparison rows x 3 metrics and 6 claim differences (27).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmser.report.metrics import mean_std

CLASSIFICATION_METRICS = ("UA", "WA", "macro_F1")
CCC_METRICS = ("CCC_arousal", "CCC_valence", "CCC_dominance")
HEADLINE = CLASSIFICATION_METRICS + CCC_METRICS
MAX_NUMBERS = 30
DIGITS = 4  # every number is rounded to this; the tables keep every digit


def write_metrics(path: str | Path, per_fold: pd.DataFrame | None = None,
                  main: Sequence[str] = (), *, claims: Mapping[str, Mapping] | None = None,
                  numbers: Mapping | None = None, run: Mapping | None = None,
                  **context) -> dict:
    """Write metrics.json at `path` (see the module's docstring), and beside it
    `tables/fold_metrics.csv` (`per_fold` as given: one row per system, seed and fold) and
    `run.json` (`run`, and this process's encoder use). Returns what metrics.json holds.

    `main`: the systems of `per_fold` whose `HEADLINE` metrics are written (an error names
    one that is absent); `claims`: claim key -> its difference and verdict
    (`mmser.report.claims.measured`);
    `numbers`: headline numbers of a stage without systems; `context`: strings (or lists or
    mappings of strings) the report reads."""
    if numbers_in(context):
        raise ValueError(f"context holds numbers {numbers_in(context)}: pass them as `numbers` "
                         "(a headline) or `run`")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = dict(context)
    if per_fold is not None:
        out.update(headline(per_fold, main))
        (path.parent / "tables").mkdir(exist_ok=True)
        per_fold.to_csv(path.parent / "tables" / "fold_metrics.csv", index=False)
    if claims:
        out["claim"] = dict(claims)
    out.update(numbers or {})
    out = _rounded(out)
    _write_json(path, out)
    _write_json(path.parent / "run.json", {**(run or {}), "encoder_use": encoder_use()})
    return out


def headline(per_fold: pd.DataFrame, main: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per main system: mean and std over its folds and seeds of each `HEADLINE` metric it
    has (`UA`, `UA_std`, ...; a classifier beside a regressor in one frame has no CCC)."""
    present = list(dict.fromkeys(per_fold["system"]))
    absent = [s for s in main if s not in present]
    if absent:
        raise ValueError(f"main systems {absent} are not among the systems {present}")
    out = {}
    for system in main:
        part = per_fold[per_fold["system"] == system]
        out[system] = {}
        for metric in (m for m in HEADLINE if m in part.columns and part[m].notna().any()):
            stats = mean_std(part[metric])
            out[system][metric], out[system][f"{metric}_std"] = stats["mean"], stats["std"]
    return out


def encoder_use() -> dict[str, int]:
    """This process's live encoder forwards and feature-cache reads
    (`mmser.encode.features.ENCODER_USE`), read without importing that module: a stage that
    never loaded it (prepare) encoded nothing, and importing it would load torch."""
    features = sys.modules.get("mmser.encode.features")
    return dict(features.ENCODER_USE) if features is not None else {}


def numbers_in(tree, prefix: str = "") -> list[str]:
    """The dotted key of every number (not a bool) in a JSON tree: the columns it gives
    `dvc metrics show` and `dvc exp show`."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return [prefix] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []
    return [key for k, v in items for key in numbers_in(v, f"{prefix}.{k}" if prefix else str(k))]


def _write_json(path: Path, tree: Mapping) -> None:
    path.write_text(json.dumps(tree, indent=2, ensure_ascii=False, default=_jsonable) + "\n",
                    encoding="utf-8")


def _rounded(tree):
    if isinstance(tree, Mapping):
        return {k: _rounded(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_rounded(v) for v in tree]
    return round(tree, DIGITS) if isinstance(tree, float) else tree


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
