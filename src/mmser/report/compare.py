"""The report stage: the five papers side by side, and each paper's claim put to the test.

It reads what the paper stages wrote (`results/<stage>/metrics.json` and the per-utterance
`results/<stage>/tables/predictions.csv`) and builds three tables:

- `paper_vs_ours`: every number a paper reports beside ours for the same system, with the
  paper's corpus and protocol and ours (corpus, protocol, profile) named on every row;
- `comparison`: each stage's main system on its main protocol, mean ± std over folds and
  seeds (UA/WA/macro-F1 for the classifiers, CCC of arousal/valence/dominance for
  `distil`), with a flag where a stage's test folds, seeds or protocol differ from the rest;
- `claims`: each paper's central claim, our measured difference, its paired bootstrap
  confidence interval over the pooled test utterances, and a verdict: *agrees* when the
  interval excludes 0 on the side the paper claims, *does not agree* when it excludes 0 on
  the other side, *inconclusive* otherwise.

A stage that has not run (or lacks a system) gives a "not run" row, never an error.

Command line (after `dvc repro`, from the repository root)::

    python -m mmser.report.compare --html     # reports/*.ipynb -> reports/html/*.html (figures embedded)
    python -m mmser.report.compare --readme   # README.md's results block from results/report/tables
    python -m mmser.report.compare --check    # exit 1 when README.md's block is stale
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmser.report.claims import (AGREES, CLAIMS, DISAGREES, GAIN, INCONCLUSIVE,
                                 NOT_APPLICABLE, NOT_RUN, Claim, find_system, verdict)
from mmser.encode.probe import BASELINE, BASELINE_AVD
from mmser.report.baseline import against_baseline, baseline_verdict, format_diffs
from mmser.report.headline import CCC_METRICS, CLASSIFICATION_METRICS
from mmser.report.results import (bootstrap_ccc_gain, bootstrap_metric, read_not_applicable,
                                  summarise)

STAGES = ("clap", "lemer", "distil", "vcemo", "tokenwise")
TITLES = {
    "clap": "HuBERT-CLAP (contrastive audio-text pre-training)",
    "lemer": "LE-MER (label embeddings, label-guided fusion)",
    "distil": "Audio-textual distilled models (A/V/D regression)",
    "vcemo": "VCEMO (co-attention + SupCon)",
    "tokenwise": "Tokenwise contrastive pre-training",
}
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"

# Each stage's main system, first present wins (`*` at the end: a prefix).
MAIN_SYSTEMS = {
    "clap": ("full", "small"),
    "lemer": ("C1", "C2", "C3", "C4", "A5"),
    "distil": ("distilled · A+T · FT", "base · A+T · FT"),
    "vcemo": ("VCEMO (SupCon)", "VCEMO"),
    "tokenwise": ("ours B_s",),
}


# ------------------------------------------------------------------------------ loading


@dataclass
class Stage:
    """What one paper stage left in results/: its metrics, its predictions (all of them, and
    the main slice that the cross-paper comparison uses), and where they come from."""

    name: str
    metrics: dict | None = None
    preds: pd.DataFrame | None = None  # every prediction the stage wrote
    main: pd.DataFrame | None = None  # its main slice (one protocol / scenario)
    slice: str = ""  # how the main slice was chosen ("" = everything)
    context: dict = field(default_factory=dict)  # corpus, protocol, profile
    missing: str | None = None  # why it cannot be reported
    not_applicable: dict = field(default_factory=dict)  # system ("*": all) -> why not

    @property
    def ran(self) -> bool:
        return self.missing is None

    @property
    def status(self) -> str:
        """What a row says for a stage that did not run: not run, or not applicable."""
        return NOT_APPLICABLE if "*" in self.not_applicable else NOT_RUN


def predictions_path(results_dir: str | Path, stage: str) -> Path | None:
    """`results/<stage>/tables/predictions.csv` (the convention), or the stage folder."""
    for path in (Path(results_dir, stage, "tables", "predictions.csv"),
                 Path(results_dir, stage, "predictions.csv")):
        if path.is_file():
            return path
    return None


def load_stage(results_dir: str | Path, stage: str) -> Stage:
    """One stage's results; `missing` says what is absent instead of raising."""
    out = Stage(stage, not_applicable=read_not_applicable(Path(results_dir, stage)))
    metrics_file = Path(results_dir, stage, "metrics.json")
    if metrics_file.is_file():
        out.metrics = json.loads(metrics_file.read_text())
    path = predictions_path(results_dir, stage)
    if "*" in out.not_applicable:  # the corpus does not allow the stage (e.g. no A/V/D)
        out.missing = out.not_applicable["*"]
    elif path is None:
        out.missing = (f"{NOT_RUN}: no results/{stage}/tables/predictions.csv"
                       if out.metrics is not None else f"{NOT_RUN}: no results/{stage}/")
    else:
        preds = pd.read_csv(path, dtype={"utt_id": str})
        if "system" not in preds.columns:
            preds = preds.assign(system="model")
        out.preds = preds
        out.main, out.slice = main_slice(preds)
    out.context = stage_context(out.metrics or {}, out.slice)
    return out


def load_all(results_dir: str | Path = "results", stages: Sequence[str] = STAGES) -> dict:
    return {s: load_stage(results_dir, s) for s in stages}


def slices(preds: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A stage's predictions by scenario (distil: `scenario X`) or protocol (a `protocol`
    column, or a ` [protocol]` suffix on the system names); {"": preds} otherwise."""
    for column, label in (("scenario", "scenario {}"), ("protocol", "{}")):
        if column in preds.columns and preds[column].notna().any():
            return {label.format(s): part.drop(columns=column)
                    for s, part in preds.groupby(column, sort=False)}
    suffix = preds["system"].astype(str).str.extract(r"^(.*) \[([^\]]+)\]$")
    if len(preds) and suffix[1].notna().all():
        return {s: preds[suffix[1] == s].assign(system=suffix.loc[suffix[1] == s, 0])
                for s in dict.fromkeys(suffix[1])}
    return {"": preds}


def main_slice(preds: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The predictions the cross-paper comparison uses, and their label: distil's unseen
    speakers (the protocol's test folds), or the first speaker-independent protocol of a
    stage that ran several (tokenwise), or everything."""
    parts = slices(preds)
    labels = list(parts)
    chosen = ("scenario unseen" if "scenario unseen" in parts else
              next((p for p in labels if "speaker-dependent" not in p and "random" not in p),
                   labels[0]))
    return parts[chosen], chosen


def _split_setting(text: str) -> dict:
    """"corpus, protocol, profile" strings (clap's `setting`, distil's `context`)."""
    parts = [p.strip() for p in str(text).split(", ")]
    if len(parts) >= 3:
        return {"corpus": parts[0], "protocol": ", ".join(parts[1:-1]), "profile": parts[-1]}
    return {"corpus": str(text), "protocol": "", "profile": ""}


def stage_context(metrics: dict, slice_label: str = "") -> dict:
    """Corpus, protocol and profile as the stage recorded them in metrics.json."""
    ctx = {"corpus": "", "protocol": "", "profile": ""}
    for key in ("setting", "context"):
        if isinstance(metrics.get(key), str):
            ctx.update(_split_setting(metrics[key]))
    for key in ctx:
        if isinstance(metrics.get(key), str) and metrics[key]:
            ctx[key] = metrics[key]
    if not ctx["protocol"] and isinstance(metrics.get("protocols"), list) and metrics["protocols"]:
        labels = [str(p) for p in metrics["protocols"]]
        ctx["protocol"] = next((p for p in labels if p == slice_label),
                               next((p for p in labels if "speaker-dependent" not in p), labels[0]))
    if slice_label.startswith("scenario "):
        ctx["protocol"] = f"{ctx['protocol']}; {slice_label}".strip("; ")
    labels = (metrics.get("pretraining") or {}).get("labels") if isinstance(
        metrics.get("pretraining"), dict) else None
    if isinstance(labels, dict) and labels:  # what a pre-training stage's speech came from
        ctx["pretraining"] = str(labels.get(ctx["protocol"], next(iter(labels.values()))))
    return ctx


# ------------------------------------------------------------------------- summaries


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def test_sets(stages: dict) -> dict[str, dict]:
    """Per stage, its main system's test design: utterance -> fold, seeds, folds."""
    out = {}
    for name, st in stages.items():
        if not st.ran:
            continue
        system = find_system(st.main["system"], MAIN_SYSTEMS.get(name, ())) \
            or st.main["system"].iloc[0]
        part = st.main[st.main["system"] == system]
        folds = part.drop_duplicates("utt_id").set_index("utt_id")["fold"].astype(str)
        out[name] = {"folds": tuple(sorted(folds.items())),
                     "seeds": tuple(sorted(part["seed"].unique().tolist())),
                     "n_folds": part["fold"].nunique(), "n": folds.size}
    return out


def baseline_rows(baseline: pd.DataFrame | None, designs: dict[str, dict]) -> list[dict]:
    """The frozen-feature baseline as comparison rows (classifier and A/V/D ridge); `same
    design` names the stages whose test utterances and folds it shares."""
    rows = []
    for paper, system in (("frozen baseline", BASELINE), ("frozen baseline (A/V/D)", BASELINE_AVD)):
        if baseline is None or system not in set(baseline["system"]):
            continue
        part = baseline[baseline["system"] == system]
        summ = summarise(part).iloc[0]
        folds = tuple(sorted(part.drop_duplicates("utt_id").set_index("utt_id")["fold"]
                             .astype(str).items()))
        row = {"paper": paper, "system": system, "corpus": "", "protocol": "",
               "profile": "", "folds": int(summ["folds"]), "seeds": "—",
               "test utterances": len(folds), "vs frozen baseline": "—"}
        row.update({m: (_pm(summ[m], summ[f"{m}_std"]) if m in summ.index and pd.notna(summ[m])
                        else "—") for m in CLASSIFICATION_METRICS + CCC_METRICS})
        same = [name for name, d in designs.items() if d["folds"] == folds]
        row["same design"] = (f"yes: the test utterances of {', '.join(same)}; deterministic, "
                              "so one run stands for every seed" if same
                              else "NO: different test folds/utterances")
        rows.append(row)
    return rows


def comparison(stages: dict, baseline: pd.DataFrame | None = None, n: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """One row per stage: its main system on its main slice, mean ± std over folds and
    seeds; `same design` says whether its test folds, seeds and protocol match the
    majority of the stages (the reference), and what differs when they do not;
    `vs frozen baseline` is the system minus the features stage's linear probe on the same
    utterances (`against_baseline`), and the baseline's own rows come last."""
    designs = test_sets(stages)
    ref_folds = Counter(d["folds"] for d in designs.values()).most_common(1)
    ref_folds = ref_folds[0][0] if ref_folds else None
    ref_seeds = Counter(d["seeds"] for d in designs.values()).most_common(1)
    ref_seeds = ref_seeds[0][0] if ref_seeds else None
    protocols = Counter(st.context.get("protocol", "").split(";")[0]
                        for st in stages.values() if st.ran).most_common(1)
    ref_protocol = protocols[0][0] if protocols else ""
    rows = []
    for name, st in stages.items():
        row = {"paper": name, "system": "—", "corpus": st.context.get("corpus", ""),
               "protocol": st.context.get("protocol", ""),
               "profile": st.context.get("profile", ""), "folds": "", "seeds": "",
               "test utterances": ""}
        row.update({m: "—" for m in CLASSIFICATION_METRICS + CCC_METRICS})
        if not st.ran:
            row.update({"system": st.status, "same design": st.missing})
            rows.append(row)
            continue
        system = find_system(st.main["system"], MAIN_SYSTEMS.get(name, ()))
        if system is None:
            row.update({"system": NOT_RUN, "same design":
                        f"{NOT_RUN}: none of {list(MAIN_SYSTEMS.get(name, ()))} in predictions"})
            rows.append(row)
            continue
        summ = summarise(st.main[st.main["system"] == system]).iloc[0]
        design = designs[name]
        row.update({"system": system, "folds": int(summ["folds"]), "seeds": int(summ["seeds"]),
                    "test utterances": design["n"]})
        for metric in CLASSIFICATION_METRICS + CCC_METRICS:
            if metric in summ.index and pd.notna(summ[metric]):
                row[metric] = _pm(summ[metric], summ[f"{metric}_std"])
        differs = []
        if design["folds"] != ref_folds:
            differs.append("different test folds/utterances")
        if design["seeds"] != ref_seeds:
            differs.append(f"seeds {list(design['seeds'])} vs {list(ref_seeds)}")
        proto = st.context.get("protocol", "").split(";")[0]
        if proto != ref_protocol:
            differs.append(f"protocol '{proto}' vs '{ref_protocol}'")
        if "speaker-dependent" in row["protocol"]:
            differs.append("speaker-dependent split")
        if "speaker-dependent" in st.context.get("pretraining", ""):
            differs.append(st.context["pretraining"])
        row["same design"] = "yes" if not differs else "NO: " + "; ".join(differs)
        diffs = against_baseline(st.main, system, baseline, n, seed)
        row["vs frozen baseline"] = format_diffs(diffs)
        row["against baseline"] = baseline_verdict(diffs)
        rows.append(row)
    rows += baseline_rows(baseline, designs)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ claims


def paper_difference(key: str) -> str:
    """The paper's own difference for a claim, computed from its module's constants."""
    if key == "clap":
        from mmser.papers.clap import PAPER_TABLE1 as t

        return (f"WA {t['full'] - t['none']:+.2f} points ({t['full']:.2f} vs {t['none']:.2f}, "
                "IEMOCAP, Table 1)")
    if key == "lemer":
        from mmser.papers.lemer import PAPER as t

        return (f"C1 − C4: UA {t['C1'][1] - t['C4'][1]:+.2f} points ({t['C1'][1]:.2f} vs "
                f"{t['C4'][1]:.2f}, IEMOCAP, Table 3)")
    if key == "distil":
        from mmser.papers.distil import PAPER_TABLE1 as t

        a, at = t[("A", "distilled")][2], t[("A+T", "distilled")][2]
        return (f"distilled, seen: valence {at[1] - a[1]:+.3f}, arousal {at[0] - a[0]:+.3f} CCC "
                f"(gain difference {(at[1] - a[1]) - (at[0] - a[0]):+.3f}; MSP-Podcast, Table 1)")
    if key == "vcemo":
        from mmser.papers.vcemo import PAPER_IEMOCAP as t

        a, b = t["VCEMO (SupCon)"][1], t["VCEMO"][1]
        return f"UA {a - b:+.2f} points ({a:.2f} vs {b:.2f}, IEMOCAP, Table 2)"
    if key in ("tokenwise_vs_speech", "tokenwise_vs_text"):
        from mmser.papers.tokenwise import PAPER_TABLE3

        t = PAPER_TABLE3[PAPER_TABLE3["dataset"] == "IEMOCAP"].set_index("features")["UAR"]
        other = "Whisper" if key == "tokenwise_vs_speech" else "BERT (Mono)"
        ours = t["Ours (Mono)"]
        return (f"UAR {ours - t[other]:+.2f} points vs {other} ({ours:.2f} vs {t[other]:.2f}, "
                "IEMOCAP, Table 3)")
    return "—"


def _claim_row(claim: Claim, st: Stage, n: int, seed: int) -> dict:
    row = {"key": claim.key, "paper": claim.stage, "claim": claim.text,
           "claimed": f"a {'>' if claim.direction > 0 else '<'} b", "comparison (a − b)": "—",
           "metric": claim.metric, "paper's difference": paper_difference(claim.key),
           "protocol": st.context.get("protocol", ""), "ours": "—", "95% CI": "—",
           "verdict": NOT_RUN, "diff": np.nan, "low": np.nan, "high": np.nan, "seeds": 0}
    if not st.ran:
        row.update({"verdict": st.status, "note": st.missing})
        return row
    systems = list(st.main["system"])
    pair = None
    for a, b in claim.pairs:
        sa, sb = find_system(systems, [a]), find_system(systems, [b])
        if sa and sb:
            pair = (sa, sb)
            break
    if pair is None:
        row["note"] = f"{NOT_RUN}: needs one of {[f'{a} vs {b}' for a, b in claim.pairs]}"
        return row
    a, b = pair
    row["comparison (a − b)"] = f"{a} − {b}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # resamples that miss a class
            res = (bootstrap_ccc_gain(st.main, a, b, n=n, seed=seed) if claim.metric == GAIN
                   else bootstrap_metric(st.main, a, b, claim.metric, n=n, seed=seed))
    except (ValueError, KeyError) as err:
        row.update({"verdict": INCONCLUSIVE, "note": f"not comparable: {err}"})
        return row
    row.update(res)
    row["ours"] = f"{res['diff']:+.3f}"
    row["95% CI"] = f"[{res['low']:+.3f}, {res['high']:+.3f}]"
    row["verdict"] = verdict(res["low"], res["high"], claim.direction)
    seeds = sorted(set(st.main.loc[st.main["system"] == a, "seed"])
                   & set(st.main.loc[st.main["system"] == b, "seed"]))
    row["seeds"] = len(seeds)
    row["note"] = ("CCC per fold, mean over folds and seeds; resampled within folds"
                   if claim.metric == GAIN else "pooled over folds and seeds") + \
        f"; seeds {', '.join(map(str, seeds))}"
    if (a, b) != claim.pairs[0] and not any(x.endswith("*") for x in claim.pairs[0]):
        first = " vs ".join(claim.pairs[0])
        row["note"] += f"; {first} not run, fell back to this pair"
    return row


def claims(stages: dict, n: int = 1000, seed: int = 0,
           which: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Every claim whose stage is among `stages`, tested on that stage's main slice."""
    return pd.DataFrame([_claim_row(c, stages[c.stage], n, seed)
                         for c in which if c.stage in stages])


# ------------------------------------------------------------------- paper beside ours


@dataclass(frozen=True)
class PaperNumber:
    """One number of a paper and the system of ours that corresponds to it."""

    stage: str
    paper_system: str
    setting: str  # the paper's corpus and protocol
    metric: str  # ours: UA, WA, macro_F1, CCC_<dim>
    value: float  # as the paper prints it (% for accuracies, CCC as a fraction)
    ours: str  # our system name (`*` = prefix)
    slice: str | None = None  # our scenario / protocol to read it from (None: main slice)
    percent: bool = True


def paper_numbers(stage: str, systems: Sequence[str] = ()) -> list[PaperNumber]:
    """The paper's numbers, from the constants of each paper module (not duplicated here)."""
    rows: list[PaperNumber] = []
    if stage == "clap":
        from mmser.papers import clap as C

        setting = "IEMOCAP, 4 classes, 5-fold cross-validation (Table 1)"
        rows += [PaperNumber(stage, C.PAPER_NAMES[s], setting, "WA", v, s)
                 for s, v in C.PAPER_TABLE1.items()]
    elif stage == "lemer":
        from mmser.papers import lemer as L

        setting = "IEMOCAP, 4 classes (5,531 utterances), leave-one-session-out (Tables 1-3)"
        for s, (wa, ua) in L.PAPER.items():
            rows += [PaperNumber(stage, s, setting, "WA", wa, s),
                     PaperNumber(stage, s, setting, "UA", ua, s)]
    elif stage == "distil":
        from mmser.papers import distil as Di

        for (modality, size), (enc, _, seen, unseen) in Di.PAPER_TABLE1.items():
            for scenario, values in (("seen", seen), ("unseen", unseen)):
                for dim, v in zip(("arousal", "valence", "dominance"), values):
                    rows.append(PaperNumber(
                        stage, f"{enc} · {modality}", f"{Di.PAPER_CORPUS} (Table 1)",
                        f"CCC_{dim}", v, f"{size} · {modality} · FT", f"scenario {scenario}",
                        percent=False))
    elif stage == "vcemo":
        from mmser.papers import vcemo as R

        ie = "IEMOCAP, leave-one-session-out (Table 2)"
        vc = "VCEMO (Mandarin), 4 classes, random 8/1/1 split, speaker-dependent (Table 1)"
        for s, (wa, ua) in R.PAPER_IEMOCAP.items():
            rows += [PaperNumber(stage, s, ie, "WA", wa, s), PaperNumber(stage, s, ie, "UA", ua, s)]
        for s, (acc, f1, _, _) in R.PAPER_VCEMO.items():
            rows += [PaperNumber(stage, s, vc, "WA", acc, s),
                     PaperNumber(stage, s, vc + "; paper F1 vs our macro-F1", "macro_F1", f1, s)]
    elif stage == "tokenwise":
        from mmser.papers import tokenwise as TW

        text = find_system(systems, ["text *"]) or "text"
        kind = "Multi" if "multilingual" in text.lower() else "Mono"
        ours = {"Whisper": "speech *", "WavLM": "speech *wavlm*", f"BERT ({kind})": "text *",
                f"Ours ({kind})": "ours B_s"}
        for r in TW.PAPER_TABLE3.to_dict("records"):
            if r["features"] not in ours:
                continue  # the other text-encoder variant
            setting = f"{r['dataset']}, {TW.PAPER_PROTOCOL} (Table 3)"
            for metric, col in (("macro_F1", "F1"), ("UA", "UAR")):
                rows.append(PaperNumber(stage, r["features"], setting, metric, r[col],
                                        ours[r["features"]], "*"))
    return rows


def _match(systems: Sequence[str], pattern: str) -> str | None:
    if "*" in pattern.rstrip("*"):  # "speech *wavlm*": prefix and a substring
        head, needle = pattern.split("*")[0], pattern.split("*")[1]
        return next((s for s in dict.fromkeys(systems)
                     if s.startswith(head) and needle.lower() in s.lower()), None)
    if pattern == "speech *":  # the first speech system that is not WavLM
        return next((s for s in dict.fromkeys(systems)
                     if s.startswith("speech ") and "wavlm" not in s.lower()), None)
    return find_system(systems, [pattern])


def not_applicable_rows(results_dir: str | Path = "results",
                        stages: Sequence[str] = STAGES) -> pd.DataFrame:
    """Every system (or "*", a whole stage) that a stage recorded as not applicable to the
    corpus (`results.write_not_applicable`), with why: what the report and README show so
    that a reader sees which rows ran."""
    rows = [{"paper": stage, "system": "the whole stage" if system == "*" else system,
             "reason": reason}
            for stage in stages
            for system, reason in read_not_applicable(Path(results_dir, stage)).items()]
    return pd.DataFrame(rows, columns=["paper", "system", "reason"])


def paper_vs_ours(stages: dict) -> pd.DataFrame:
    """Every paper number beside ours (mean ± std over folds and seeds, same unit as the
    paper's), with both settings named; "not run" where we have no such system."""
    rows = []
    for name, st in stages.items():
        if not st.ran:
            rows.append({"paper": name, "paper system": "—", "paper setting": "—",
                         "metric": "—", "paper value": "—", "our system": st.status,
                         "ours": "—", "our corpus": "", "our protocol": "",
                         "our profile": "", "note": st.missing})
            continue
        parts = slices(st.preds)
        summaries = {label: summarise(part) for label, part in parts.items()}
        for pn in paper_numbers(name, [s for p in parts.values() for s in p["system"]]):
            labels = (list(parts) if pn.slice == "*" else [st.slice] if pn.slice is None
                      else [pn.slice] if pn.slice in parts else [])
            if not labels:
                rows.append({"paper": name, "paper system": pn.paper_system,
                             "paper setting": pn.setting, "metric": pn.metric,
                             "paper value": f"{pn.value:g}", "our system": pn.ours,
                             "ours": "—", "our corpus": st.context.get("corpus", ""),
                             "our protocol": pn.slice, "our profile": st.context.get("profile", ""),
                             "note": f"{NOT_RUN} ({pn.slice})"})
            for label in labels:
                summ = summaries[label].set_index("system")
                ours = _match([str(s) for s in summ.index], pn.ours)
                row = {"paper": name, "paper system": pn.paper_system,
                       "paper setting": pn.setting, "metric": pn.metric,
                       "paper value": f"{pn.value:.2f}" if pn.percent else f"{pn.value:.3f}",
                       "our system": ours or f"{pn.ours.replace('*', '').strip()} ({NOT_RUN})",
                       "ours": "—", "our corpus": st.context.get("corpus", ""),
                       "our protocol": (label if label and not label.startswith("scenario")
                                        else st.context.get("protocol", "").split(";")[0]
                                        + (f"; {label}" if label else "")),
                       "our profile": st.context.get("profile", ""), "note": ""}
                if ours is not None and pn.metric in summ.columns and \
                        pd.notna(summ.loc[ours, pn.metric]):
                    scale = 100.0 if pn.percent else 1.0
                    row["ours"] = _pm(summ.loc[ours, pn.metric], summ.loc[ours, f"{pn.metric}_std"],
                                      scale, 2 if pn.percent else 3)
                elif ours is None:
                    row["note"] = NOT_RUN
                rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- figures


def plot_comparison(table: pd.DataFrame, path: str | Path):
    """Bar chart of each stage's main system: UA (classifiers) and CCC (distil), ± std."""
    import matplotlib.pyplot as plt

    from mmser.report.plots import _save

    items = []
    for r in table.to_dict("records"):
        for metric in ("UA",) + CCC_METRICS:
            value = str(r.get(metric, "—"))
            if "±" in value:
                m, s = (float(x) for x in value.split("±"))
                items.append((f"{r['paper']}\n{metric.replace('CCC_', 'CCC ')}", m, s))
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(items) + 1), 3.5))
    if items:
        colors = ["0.6" if i[0].startswith("frozen baseline") else "C0" if "CCC" not in i[0]
                  else "C1" for i in items]
        ax.bar(range(len(items)), [i[1] for i in items], yerr=[i[2] for i in items], capsize=3,
               color=colors)
        ax.set_xticks(range(len(items)), [i[0] for i in items], fontsize=8)
    else:
        ax.text(0.5, 0.5, "no stage has run", ha="center", va="center", transform=ax.transAxes)
    ax.set(ylim=(0, 1), ylabel="UA (blue) / CCC (orange); grey: frozen baseline",
           title="Main system of each paper (mean ± std over folds and seeds)")
    return _save(fig, path)


def plot_claims(table: pd.DataFrame, path: str | Path):
    """Forest plot: each claim's measured difference and its 95% CI; the claimed side."""
    import matplotlib.pyplot as plt

    from mmser.report.plots import _save

    done = table[table["diff"].notna()] if "diff" in table else table.iloc[:0]
    fig, ax = plt.subplots(figsize=(7, 0.55 * max(len(done), 1) + 1.5))
    colours = {AGREES: "C2", DISAGREES: "C3", INCONCLUSIVE: "C7"}
    for i, r in enumerate(done.to_dict("records")):
        ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]],
                    fmt="o", color=colours.get(r["verdict"], "C0"), capsize=3)
        ax.annotate(f"{r['verdict']} (claimed {r['claimed']})", (r["high"], i),
                    xytext=(5, 0), textcoords="offset points", va="center", fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()  # the first claim on top
    ax.set_yticks(range(len(done)), [f"{r['paper']}: {r['comparison (a − b)']}\n({r['metric']})"
                                     for r in done.to_dict("records")], fontsize=8)
    ax.set(xlabel="a − b (95% paired bootstrap CI)", title="Each paper's claim, measured here")
    if not len(done):
        ax.text(0.5, 0.5, "no claim could be tested", ha="center", va="center",
                transform=ax.transAxes)
    return _save(fig, path)


# ----------------------------------------------------------------------------- outputs


def metrics_json(comp: pd.DataFrame, claim_table: pd.DataFrame) -> dict:
    """The numbers of results/report/metrics.json (`mmser.report.headline`): each row's
    mean of the comparison's metrics, and each claim's difference and verdict; intervals,
    seeds and stds stay in the tables (and README.md's block)."""
    out = {"comparison": {}, "claims": {}}
    for r in comp.to_dict("records"):
        entry = {}
        for metric in CLASSIFICATION_METRICS + CCC_METRICS:
            value = str(r.get(metric, "—"))
            if "±" in value:
                entry[metric] = float(value.split("±")[0])
        out["comparison"][r["paper"]] = entry or {
            "status": r["system"] if r["system"] in (NOT_RUN, NOT_APPLICABLE) else NOT_RUN}
    for r in claim_table.to_dict("records"):
        entry = {"verdict": r["verdict"]}
        if pd.notna(r.get("diff")):
            entry["diff"] = float(r["diff"])
        out["claims"][r.get("key", r["paper"])] = entry
    return out


COMPARISON_COLUMNS = ["paper", "system", "corpus", "protocol", "profile", "folds", "seeds",
                      "UA", "WA", "macro_F1", "CCC_arousal", "CCC_valence", "CCC_dominance",
                      "same design", "vs frozen baseline"]
CLAIM_COLUMNS = ["paper", "claim", "comparison (a − b)", "metric", "paper's difference",
                 "ours", "95% CI", "verdict", "seeds"]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def markers(block: str = "default") -> tuple[str, str]:
    """README.md's markers of a results block: the default run's, or a named corpus run's
    (e.g. "ravdess", from the tables that run wrote, kept under results/<block>/tables)."""
    if block == "default":
        return README_START, README_END
    return f"<!-- results:{block}:start -->", f"<!-- results:{block}:end -->"


def readme_block(report_dir: str | Path = "results/report", block: str = "default") -> str:
    """The Markdown between README.md's results markers, from the report stage's tables."""
    report_dir = Path(report_dir)
    comp = _read(report_dir / "tables" / "comparison.csv")
    claim_table = _read(report_dir / "tables" / "claims.csv")
    comp = comp[[c for c in COMPARISON_COLUMNS if c in comp.columns]]
    claim_table = claim_table[[c for c in CLAIM_COLUMNS if c in claim_table.columns]]
    start, end = markers(block)
    tables = "results/report" if block == "default" else f"results/{block}"  # by convention
    command = "python -m mmser.report.compare --readme" + (
        "" if block == "default" else f" --block {block} --report-dir {tables}")
    run = ("this repository's default run" if block == "default" else
           f"the `profiles/{block}.yaml` run (corpus, protocol and profile on every row)")
    lines = [start,
             f"<!-- generated by `{command}` from {tables}/tables; "
             "do not edit by hand -->",
             "",
             f"Each paper's main system on {run} (mean ± std over folds "
             "and seeds; UA/WA/macro-F1 for classification, CCC for `distil`). `same design` "
             "flags a stage whose test folds, seeds or protocol differ from the others. "
             "`vs frozen baseline`: the system minus a linear probe on the frozen, pooled "
             "audio + text features (the features stage; a ridge for A/V/D) on the same test "
             "utterances, with its 95% paired bootstrap interval; the baseline's own rows "
             "come last.",
             "",
             comp.to_markdown(index=False, disable_numparse=True),
             "",
             "Each paper's central claim, measured here: the difference a − b over the pooled "
             "test utterances of the `seeds` both systems ran (the compared systems also train "
             "on `training.claim_seeds`), with its 95% paired bootstrap interval (utterances "
             "resampled with all their seeds' predictions, and the seeds resampled too, so "
             "the interval holds the spread between training runs). *agrees*: the interval "
             "excludes 0 on the side the paper claims; *does not agree*: it excludes 0 on the "
             "other side; *inconclusive*: it contains 0.",
             "",
             claim_table.to_markdown(index=False, disable_numparse=True)]
    skipped = report_dir / "tables" / "not_applicable_rows.csv"
    if skipped.is_file() and len(_read(skipped)):
        lines += ["", "Not applicable on this corpus (each paper's notebook shows what ran "
                  "instead):", "", _read(skipped).to_markdown(index=False, disable_numparse=True)]
    lines += ["", end]
    return "\n".join(lines)


def _block_span(text: str, block: str = "default") -> tuple[int, int]:
    start_marker, end_marker = markers(block)
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {start_marker} ... {end_marker} block")
    return start, end + len(end_marker)


def readme_current(readme: str | Path = "README.md", block: str = "default") -> str:
    text = Path(readme).read_text()
    start, end = _block_span(text, block)
    return text[start:end]


def write_readme(readme: str | Path = "README.md",
                 report_dir: str | Path = "results/report", block: str = "default") -> bool:
    """Rewrite README.md's results block; True when it changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = _block_span(text, block)
    new = text[:start] + readme_block(report_dir, block) + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


def to_html(reports_dir: str | Path = "reports", out_dir: str | Path | None = None) -> list[Path]:
    """Every executed notebook in `reports_dir` as a self-contained HTML page (figures
    embedded) under `reports_dir`/html."""
    import nbformat
    from nbconvert import HTMLExporter

    reports_dir = Path(reports_dir)
    out_dir = Path(out_dir) if out_dir else reports_dir / "html"
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(embed_images=True)
    written = []
    for nb_path in sorted(reports_dir.glob("*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4),
                                              resources={"metadata": {"path": str(nb_path.parent)}})
        target = out_dir / f"{nb_path.stem}.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmser.report.compare", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", action="store_true", help="reports/*.ipynb -> reports/html/")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite README.md's results block from results/report/tables")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when README.md's results block is stale")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--report-dir", default="results/report")
    parser.add_argument("--readme-path", default="README.md")
    parser.add_argument("--block", default="default",
                        help="which results block: default, or a corpus run's (e.g. ravdess)")
    args = parser.parse_args(argv)
    if not (args.html or args.readme or args.check):
        parser.print_help()
        return 2
    if args.html:
        for path in to_html(args.reports):
            print(f"wrote {path}")
    if args.readme or args.check:
        if not Path(args.report_dir, "tables", "comparison.csv").is_file():
            print(f"error: {args.report_dir}/tables/comparison.csv is missing; run "
                  "`dvc repro report` first", file=sys.stderr)
            return 2
    if args.readme and not Path(args.readme_path).is_file():
        print(f"note: {args.readme_path} not found; no results block written")
    elif args.readme:
        changed = write_readme(args.readme_path, args.report_dir, args.block)
        print(f"{args.readme_path}: results block {'rewritten' if changed else 'up to date'}")
    if args.check and readme_current(args.readme_path, args.block) != readme_block(
            args.report_dir, args.block):
        print(f"{args.readme_path}: results block is stale; run `python -m mmser.report.compare "
              "--readme`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
