"""From per-utterance predictions to the numbers a stage reports.

Every paper stage keeps a predictions table (one row per test utterance, fold and seed;
see `mmser.training.loop.cross_validate`) with a `system` column naming the model or ablation
row. These functions turn it into per-fold metrics, mean ± std over folds and seeds,
paired bootstrap intervals between systems, and tables in CSV and Markdown
(`mmser.report.headline.write_metrics` writes the few of them that go to metrics.json).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmser.training.data import DIMENSIONS
from mmser.encode.probe import BASELINE, BASELINE_AVD
from mmser.report.metrics import ccc, classification_report, mean_std, paired_bootstrap

CLASSIFICATION = ("WA", "UA", "macro_F1", "weighted_F1")


def fold_metrics(preds: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (system, seed, fold): WA, UA, macro- and weighted-F1, and/or the CCC of
    each dimension that has `true_<dim>` and `pred_<dim>` columns."""
    preds = _with_system(preds)
    records = []
    for (system, seed, fold), part in preds.groupby(["system", "seed", "fold"], sort=True):
        row = {"system": system, "seed": seed, "fold": fold, "n": len(part)}
        if "pred" in part.columns and part["pred"].notna().all():
            report = classification_report(part["label"], part["pred"], labels=classes)
            row.update({m: report[m] for m in CLASSIFICATION})
        for dim in DIMENSIONS:
            if f"pred_{dim}" in part.columns:
                row[f"CCC_{dim}"] = ccc(part[f"true_{dim}"], part[f"pred_{dim}"])
        records.append(row)
    return pd.DataFrame(records)


def summary(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over folds and seeds of every metric, per system."""
    metrics = [c for c in per_fold.columns if c not in ("system", "seed", "fold", "n")]
    records = []
    for system, part in per_fold.groupby("system", sort=False):
        row = {"system": system, "folds": part["fold"].nunique(), "seeds": part["seed"].nunique()}
        for metric in metrics:
            stats = mean_std(part[metric])
            row[metric], row[f"{metric}_std"] = stats["mean"], stats["std"]
        records.append(row)
    return pd.DataFrame(records)


def summarise(preds: pd.DataFrame) -> pd.DataFrame:
    """`summary` of `fold_metrics` (mean ± std over folds and seeds), quiet about a fold
    that misses a class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return summary(fold_metrics(preds))


def formatted(table: pd.DataFrame, metrics: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """`metric` and `metric_std` columns merged into "mean ± std" strings."""
    out = table.drop(columns=[c for c in table.columns if c.endswith("_std")])
    for metric in metrics:
        out[metric] = [f"{m:.{digits}f} ± {s:.{digits}f}"
                       for m, s in zip(table[metric], table[f"{metric}_std"])]
    return out


def bootstrap(preds: pd.DataFrame, system_a: str, system_b: str, metric: str = "UA",
              n: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap CI of metric(a) - metric(b) over the pooled test predictions of all
    folds and of the seeds both systems ran (the same utterances for both systems); an
    utterance is resampled with all its seeds' predictions (`paired_bootstrap`'s groups),
    and the seeds are resampled too (its `runs`), so the interval holds the spread between
    training runs. `seeds` in the result: the seeds pooled."""
    a, b = paired_rows(_with_system(preds), system_a, system_b)
    seeds = sorted(a.index.unique("seed"))
    several = len(seeds) > 1
    result = paired_bootstrap(a["label"].to_numpy(), a["pred"].to_numpy(),
                              b["pred"].to_numpy(), metric=metric, n=n, seed=seed,
                              groups=a.index.get_level_values("utt_id") if several else None,
                              runs=a.index.get_level_values("seed") if several else None)
    return {"a": system_a, "b": system_b, "metric": metric, **result, "seeds": seeds}


def bootstrap_ccc_gain(preds: pd.DataFrame, a: str, b: str, more: str = "valence",
                       less: str | None = "arousal", n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of [CCC_more(a) - CCC_more(b)] - [CCC_less(a) - CCC_less(b)]: does
    what `a` adds to `b` help `more` (valence) more than `less` (arousal)? With
    `less=None`, of CCC_more(a) - CCC_more(b) alone.

    CCC is computed per (seed, fold) and averaged, as the tables report it; utterances are
    resampled within each fold, the same indices for both systems and for every seed (an
    utterance keeps all its seeds' predictions, as in `paired_bootstrap`), and the seeds
    are resampled too, so the interval holds the spread between training runs. (A CCC
    pooled over folds mixes each fold's offset and scale into the score and can even
    reverse the sign of a per-fold difference.)"""
    pa, pb = paired_rows(preds, a, b)
    cols = {d: (pa[f"true_{d}"].to_numpy(float), pa[f"pred_{d}"].to_numpy(float),
                pb[f"pred_{d}"].to_numpy(float)) for d in (more, less) if d}
    runs = pa.index.droplevel("utt_id")  # (seed, fold) of each utterance
    groups = [np.flatnonzero(runs == key) for key in runs.unique()]

    def stat(idx):
        gain = {d: ccc(t[idx], x[idx]) - ccc(t[idx], y[idx]) for d, (t, x, y) in cols.items()}
        return gain[more] - gain[less] if less else gain[more]

    folds = [key[1] for key in runs.unique()]
    seeds = [key[0] for key in runs.unique()]
    distinct = sorted(set(seeds))

    def resample(rng):
        draws = {}  # one draw per fold, shared by its seeds (their rows are in utt_id order)
        for f, g in zip(folds, groups):
            if (f, len(g)) not in draws:
                draws[f, len(g)] = rng.integers(0, len(g), len(g))
        times = Counter(rng.choice(distinct, len(distinct))) if len(distinct) > 1 else None
        stats = [stat(g[draws[f, len(g)]]) for f, g in zip(folds, groups)]
        weights = [times[s] if times else 1 for s in seeds]
        return np.average(stats, weights=weights)

    rng = np.random.default_rng(seed)
    draws = np.array([resample(rng) for _ in range(n)])
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(np.mean([stat(g) for g in groups])), "low": float(low),
            "high": float(high)}


def bootstrap_metric(preds: pd.DataFrame, a: str, b: str, metric: str = "UA", n: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """`bootstrap` (WA/UA) over the pooled test utterances: diff, low, high."""
    out = bootstrap(preds, a, b, metric=metric, n=n, seed=seed)
    return {k: out[k] for k in ("diff", "low", "high")}


def paired_rows(preds: pd.DataFrame, system_a: str, system_b: str
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both systems' prediction rows on the seeds both ran, indexed and ordered by
    (seed, fold, utt_id); an error when they were not tested on the same utterances."""
    a, b = (preds[preds["system"] == s] for s in (system_a, system_b))
    common = set(a["seed"]) & set(b["seed"])
    a, b = (x[x["seed"].isin(common)].set_index(["seed", "fold", "utt_id"]).sort_index()
            for x in (a, b))
    if not common or not a.index.equals(b.index):
        raise ValueError(f"systems {system_a!r} and {system_b!r} were not tested on the same "
                         "utterances; a paired comparison needs the same test sets")
    return a, b


BASELINE_TABLES = ("predictions.csv", "predictions_avd.csv")


def load_baseline(features_results: str | Path = "results/features") -> pd.DataFrame | None:
    """The frozen-feature probes' per-utterance predictions written by the features stage
    (classification rows, and the A/V/D ridge's rows); None when the stage has not run."""
    parts = [pd.read_csv(Path(features_results, "tables", name), dtype={"utt_id": str})
             for name in BASELINE_TABLES if Path(features_results, "tables", name).is_file()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else None


def with_baseline(preds: pd.DataFrame, baseline: pd.DataFrame, system: str,
                  baseline_system: str) -> pd.DataFrame:
    """`preds` plus `baseline_system`'s rows on exactly the (seed, fold, utt_id) test rows of
    `system`, so the two pair in `bootstrap` and `fold_metrics` like any two systems.

    The frozen-feature baseline is deterministic (fixed regularisation, a convex fit), so
    its one run stands for every seed of `system`: an utterance is then resampled with all
    its seeds, as for any other pair. An error names the test utterances it lacks."""
    keys = _with_system(preds)
    keys = keys.loc[keys["system"] == system, ["seed", "fold", "utt_id"]].drop_duplicates()
    base = baseline[baseline["system"] == baseline_system].drop(columns="seed")
    base = base.assign(fold=base["fold"].astype(str)).drop_duplicates(["fold", "utt_id"])
    rows = keys.assign(_fold=keys["fold"].astype(str)).merge(
        base.rename(columns={"fold": "_fold"}), on=["_fold", "utt_id"], how="left",
        indicator=True)
    lacking = rows.loc[rows["_merge"] == "left_only", "utt_id"].unique()
    if len(lacking):
        raise ValueError(f"the frozen baseline {baseline_system!r} has no prediction for "
                         f"{len(lacking)} test utterances of {system!r} in the same fold "
                         f"(e.g. {list(lacking[:3])}); it was made on another manifest")
    rows = rows.drop(columns=["_fold", "_merge"]).assign(system=baseline_system)
    return pd.concat([preds, rows[[c for c in rows.columns if c in preds.columns]]],
                     ignore_index=True)


def add_baseline(preds: pd.DataFrame, system: str, baseline: pd.DataFrame | None
                 ) -> pd.DataFrame:
    """`preds` with the frozen-feature baseline's row paired with `system`, for a paper's
    own table: the classifier probe, or the A/V/D ridge when `system` is a regressor.
    Unchanged when the features stage wrote no baseline."""
    part = preds[preds["system"] == system]
    regression = "pred" not in part.columns or part["pred"].isna().all()
    base = BASELINE_AVD if regression else BASELINE
    if baseline is None or base not in set(baseline["system"]):
        return preds
    return with_baseline(preds, baseline, system, base)


NOT_APPLICABLE = "not_applicable"  # tables/not_applicable.csv: rows a corpus does not allow


def write_not_applicable(reasons: dict[str, str], tables_dir: str | Path) -> None:
    """Record the systems (or "*", the whole stage) that the corpus does not allow, with
    why, in `tables_dir`/not_applicable.csv|md; the report shows them as rows. Written
    empty when everything applies, so a stale file never outlives a corpus switch."""
    table = pd.DataFrame({"system": list(reasons), "reason": list(reasons.values())},
                         columns=["system", "reason"])
    write_table(table, Path(tables_dir) / NOT_APPLICABLE)


def read_not_applicable(stage_dir: str | Path) -> dict[str, str]:
    """What `write_not_applicable` recorded for a stage's results folder ({} if nothing)."""
    path = Path(stage_dir) / "tables" / f"{NOT_APPLICABLE}.csv"
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return dict(zip(table["system"], table["reason"]))


def write_table(table: pd.DataFrame, stem: str | Path, floatfmt: str = ".3f") -> str:
    """Write `stem`.csv and `stem`.md; return the Markdown."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    markdown = table.to_markdown(index=False, floatfmt=floatfmt)
    stem.with_suffix(".md").write_text(markdown + "\n")
    return markdown


def pooled_confusion(preds: pd.DataFrame, system: str, classes: Sequence[str]) -> np.ndarray:
    """Confusion matrix (rows: true class) summed over folds and seeds of one system."""
    part = _with_system(preds)
    part = part[part["system"] == system]
    return np.asarray(classification_report(part["label"], part["pred"], classes)["confusion"])


def _with_system(preds: pd.DataFrame) -> pd.DataFrame:
    return preds if "system" in preds.columns else preds.assign(system="model")

