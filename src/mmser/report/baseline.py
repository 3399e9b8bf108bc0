"""The frozen-feature baseline beside a paper's systems.

The features stage fits a linear probe on the time-averaged frozen audio + text features
(a ridge for arousal, valence and dominance) on the protocol's folds and keeps its
per-utterance predictions (`mmser.encode.probe`). Here a paper's system is set against it
on the same test utterances, with the same paired bootstrap as the claims: for each paper's
table and reading, and for the report's comparison.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mmser.encode.probe import BASELINE, BASELINE_AVD
from mmser.report.claims import AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN, verdict
from mmser.report.results import (add_baseline, bootstrap_ccc_gain, bootstrap_metric,
                                  formatted, summarise, with_baseline)

METRICS = ("UA", "WA", "macro_F1", "CCC_arousal", "CCC_valence", "CCC_dominance")


def against_baseline(main: pd.DataFrame, system: str, baseline: pd.DataFrame | None,
                     n: int = 1000, seed: int = 0) -> list[dict] | str:
    """`system` minus the frozen-feature baseline on the same test utterances, folds and
    seeds, with 95% paired bootstrap intervals: UA for a classifier, CCC of valence and of
    arousal for a regressor (one dict each: metric, diff, low, high); a sentence saying why
    when they cannot be paired."""
    if baseline is None:
        return f"{NOT_RUN}: no results/features/tables/predictions.csv"
    part = main.loc[main["system"] == system]
    regression = "pred" not in part.columns or part["pred"].isna().all()
    base = BASELINE_AVD if regression else BASELINE
    if base not in set(baseline["system"]):
        return f"{NOT_RUN}: the features stage wrote no {base!r} rows"
    try:
        paired = with_baseline(main, baseline, system, base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # resamples that miss a class
            if regression:
                return [{"metric": f"CCC_{dim}", **bootstrap_ccc_gain(
                    paired, system, base, more=dim, less=None, n=n, seed=seed)}
                    for dim in ("valence", "arousal")]
            return [{"metric": "UA", **bootstrap_metric(paired, system, base, "UA", n=n,
                                                        seed=seed)}]
    except (ValueError, KeyError) as err:
        return f"not comparable: {err}"


def baseline_verdict(diffs: list[dict] | str) -> str:
    """In words, where a system stands against the frozen baseline (`against_baseline`)."""
    if isinstance(diffs, str):
        return diffs
    found = {verdict(d["low"], d["high"]) for d in diffs}
    if found == {AGREES}:
        return "beats"
    if found == {DISAGREES}:
        return "falls below"
    return "does not clearly differ from" if found == {INCONCLUSIVE} else "is mixed against"


def format_diffs(diffs: list[dict] | str) -> str:
    """`against_baseline`'s differences as "UA +0.012 [-0.004, +0.029]" (or its reason)."""
    if isinstance(diffs, str):
        return diffs
    return "; ".join(f"{d['metric']} {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                     for d in diffs)


def baseline_sentence(main: pd.DataFrame, system: str, baseline: pd.DataFrame | None,
                      n: int = 1000, seed: int = 0) -> str:
    """For a paper's reading: where `system` stands against the frozen-feature baseline."""
    diffs = against_baseline(main, system, baseline, n, seed)
    if isinstance(diffs, str):
        return f"{system} against the frozen linear baseline: {diffs}."
    return (f"{system} **{baseline_verdict(diffs)}** the frozen linear baseline on the same "
            f"test utterances (a logistic regression or ridge on the time-averaged frozen "
            f"audio + text features; difference and 95% paired bootstrap interval: "
            f"{format_diffs(diffs)}).")


def beside_baseline(preds: pd.DataFrame, system: str, baseline: pd.DataFrame | None,
                    others: Sequence[str] = ()) -> pd.DataFrame:
    """For a paper's notebook: `system` (and `others` of the paper's systems) beside the
    frozen-feature baseline on the same test utterances, mean ± std over folds and seeds."""
    rows = add_baseline(preds, system, baseline)
    keep = [system, *others, BASELINE, BASELINE_AVD]
    table = summarise(rows[rows["system"].isin(keep)])
    table["order"] = table["system"].map({s: i for i, s in enumerate(keep)})
    table = table.sort_values("order").drop(columns="order")
    metrics = [m for m in METRICS if m in table.columns and table[m].notna().any()]
    # one deterministic fit, repeated beside each of the system's seeds
    table["seeds"] = table["seeds"].where(~table["system"].isin([BASELINE, BASELINE_AVD]),
                                          "1 (deterministic)")
    return formatted(table[["system", "folds", "seeds"] + metrics +
                           [f"{m}_std" for m in metrics]], metrics).reset_index(drop=True)


# ------------------------------------------------- why a system trails the frozen baseline


def histories_of(run_dir: str | Path) -> list[pd.DataFrame]:
    """Every run's `history.csv` of one system (`<run_dir>/seed*/fold*/`, as `fit` writes)."""
    return [pd.read_csv(f) for f in sorted(Path(run_dir).glob("seed*/fold*/history.csv"))]


def training_diagnosis(histories: Sequence[pd.DataFrame], max_epochs: int,
                       patience: int | None = None) -> dict:
    """How a system's runs ended, from their `history.csv` (epoch, val_score): how many ran
    every epoch of the schedule (the others were stopped by early stopping after `patience`
    epochs without a better validation score), in how many of those the best validation
    epoch was the last (the score still rising when training stopped), and the mean
    change of the validation score over each run's last epoch."""
    runs = [h.sort_values("epoch") for h in histories if len(h)]
    full = [h for h in runs if int(h["epoch"].iloc[-1]) >= max_epochs - 1]
    rising = [h for h in full if int(h["val_score"].to_numpy().argmax()) == len(h) - 1]
    last = [float(h["val_score"].iloc[-1] - h["val_score"].iloc[-2]) for h in runs
            if len(h) > 1]
    return {"runs": len(runs), "ran_every_epoch": len(full), "best_at_last_epoch": len(rising),
            "last_epoch_change": sum(last) / len(last) if last else float("nan"),
            "max_epochs": max_epochs, "patience": patience}


SHORT_PATIENCE = 2  # epochs: a noisy validation curve often dips once before it rises


def gap_reading(system: str, diffs: list[dict] | str, diagnosis: dict, section: str,
                epochs_key: str = "max_epochs") -> str:
    """For a notebook: when `system` falls below the frozen baseline, why, as measured by
    its runs' validation curves (`training_diagnosis`), and which setting of its parameter
    `section` to try, chosen on the validation folds. Empty otherwise."""
    if baseline_verdict(diffs) != "falls below":
        return ""
    d = diagnosis
    runs, full, rising = d["runs"], d["ran_every_epoch"], d["best_at_last_epoch"]
    head = (f"Why {system} trails the frozen probe ({format_diffs(diffs)}), from its "
            f"{runs} runs' validation curves: ")
    change = ("mean change of the validation score over the last epoch "
              f"{d['last_epoch_change']:+.3f}")
    stopped = runs - full
    short = d["patience"] is not None and d["patience"] <= SHORT_PATIENCE
    if short and stopped and (rising + stopped) * 2 >= runs:
        return head + (
            f"early stopping ended {stopped} of {runs} runs after {d['patience']} epoch(s) "
            f"without a better validation score, and in {rising} of the others the best "
            f"validation epoch was the last of the {d['max_epochs']} allowed ({change}): a "
            "patience that short stops a noisy curve at its first dip, and the schedule "
            "ends while it still rises. The setting to try is a longer patience with more "
            f"epochs (`{section}.patience`, `{section}.{epochs_key}`); whether it closes the "
            "gap is measured only by running it.")
    if runs and rising * 2 >= runs:
        return head + (
            f"in {rising} of {runs} runs the best validation epoch was the last of the "
            f"{d['max_epochs']} the schedule allows ({change}): training stopped while still "
            f"improving. The setting to try is a longer schedule (`{section}.{epochs_key}`, "
            "the epoch still chosen on the validation folds); whether it closes the gap is "
            "measured only by running it.")
    return head + (
        f"in {runs - rising} of {runs} runs the best validation epoch came before the end "
        f"({full} ran all {d['max_epochs']} epochs; {change}): the runs had stopped "
        f"improving on validation, so more epochs (`{section}.{epochs_key}`) are not what is "
        "missing; the gap lies in what the model learns from these clips, not in how long "
        "it trains.")


def shared_gap_reading(system: str, diffs: list[dict] | str, other: str,
                       other_diffs: list[dict] | str, shared: str) -> str:
    """For a system built on the same features and classifier as `other` (e.g. tokenwise's
    B_s and its speech-only row): when `system` falls below the frozen baseline, how much
    of the gap `other` shows too (what they share, `shared`) and how much comes from what
    `system` does differently. Empty when `system` does not fall below."""
    if baseline_verdict(diffs) != "falls below" or isinstance(other_diffs, str):
        return ""
    own, base = diffs[0]["diff"], other_diffs[0]["diff"]
    head = (f"Why {system} trails the frozen probe ({format_diffs(diffs)}): {other}, with "
            f"the same {shared}, stands at {format_diffs(other_diffs)} against it")
    if baseline_verdict(other_diffs) == "falls below":
        return head + (f", so what they share accounts for {base:+.3f} of the gap and what "
                       f"{system} does differently for {own - base:+.3f}.")
    return head + (f" (not below it), so the gap comes from what {system} does "
                   "differently, not from what they share.")
