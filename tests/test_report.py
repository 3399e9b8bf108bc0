"""The report stage: verdict logic, the cross-paper comparison and the claims on synthetic
predictions, missing stages, the README block, the dvc stage, and the notebook."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmser.encode.probe import BASELINE, BASELINE_AVD
from mmser.report import baseline as B
from mmser.report import compare as R
from mmser.report.headline import MAX_NUMBERS, numbers_in
from mmser.report.results import load_baseline, with_baseline
from mmser.report.metrics import ccc

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["angry", "happy", "neutral", "sad"]
PROTOCOL = "leave-one-session-out (speaker-independent)"
N, FOLDS = 60, 5


# ------------------------------------------------------------------ synthetic results


def _base(seeds=(0,), n=N, folds=FOLDS, shift=0) -> pd.DataFrame:
    rng = np.random.default_rng(123)
    utt = [f"u{i:03d}" for i in range(n)]
    labels = rng.choice(CLASSES, n)
    rows = [{"seed": s, "fold": (i + shift) % folds, "utt_id": u, "label": lab}
            for s in seeds for i, (u, lab) in enumerate(zip(utt, labels))]
    return pd.DataFrame(rows)


def _classifier(base: pd.DataFrame, system: str, accuracy: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    right = rng.random(len(base)) < accuracy
    wrong = [CLASSES[(CLASSES.index(lab) + 1) % 4] for lab in base["label"]]
    out = base.assign(system=system, pred=np.where(right, base["label"], wrong))
    for k in CLASSES:
        out[f"prob_{k}"] = (out["pred"] == k).astype(float)
    return out


def _write(root: Path, stage: str, preds: pd.DataFrame | None, metrics: dict | None,
           where: str = "tables"):
    folder = root / stage
    folder.mkdir(parents=True, exist_ok=True)
    if preds is not None:
        path = folder / where / "predictions.csv" if where else folder / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        preds.to_csv(path, index=False)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def _distil(base: pd.DataFrame) -> pd.DataFrame:
    """A+T adds valence (text) and nothing to arousal, in each scenario."""
    rng = np.random.default_rng(7)
    parts = []
    for scenario in ("seen", "unseen"):
        b = base.assign(scenario=scenario)
        t = {d: rng.normal(size=len(b)) for d in ("arousal", "valence", "dominance")}
        noise = {d: rng.normal(size=len(b)) for d in t}
        for system, v_noise in (("distilled · A · FT", 2.0), ("distilled · A+T · FT", 0.3)):
            p = b.assign(system=system)
            for d in t:
                p[f"true_{d}"] = t[d]
                scale = v_noise if d == "valence" else 0.5
                p[f"pred_{d}"] = t[d] + scale * noise[d]
            parts.append(p)
    return pd.concat(parts, ignore_index=True)


def make_results(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """Synthetic results/ of all five stages, shaped as the paper stages write them."""
    base = _base()
    ctx = {"corpus": "synthetic", "protocol": PROTOCOL, "profile": "default"}
    if "clap" not in skip:
        preds = pd.concat([_classifier(base, "none", 0.4, 1), _classifier(base, "small", 0.8, 2),
                           _classifier(base, "full", 0.95, 3)])
        _write(root, "clap", preds, {"setting": f"synthetic, {PROTOCOL}, default profile"})
    if "lemer" not in skip:
        c1 = _classifier(base, "C1", 0.7, 4)
        preds = pd.concat([c1, c1.assign(system="C4"), _classifier(base, "A1", 0.5, 5),
                           _classifier(base, "A5", 0.6, 6)])
        _write(root, "lemer", preds, ctx, where="")  # the stage folder, as lemer once did
    if "distil" not in skip:
        _write(root, "distil", _distil(base),
               {"context": f"synthetic, {PROTOCOL}, profile default"})
    if "vcemo" not in skip:
        preds = pd.concat([_classifier(base, "VCEMO (SupCon)", 0.3, 8),
                           _classifier(base, "VCEMO", 0.9, 9)])
        _write(root, "vcemo", preds, ctx)
    if "tokenwise" not in skip:
        other = _base(folds=1)  # the paper's random split: one fold
        parts = []
        for label, b in ((PROTOCOL, base), ("random 70/20/10 (speaker-dependent)", other)):
            parts += [_classifier(b, "ours B_s", 0.5, 10).assign(protocol=label),
                      _classifier(b, "speech whisper-tiny.en", 0.9, 11).assign(protocol=label),
                      _classifier(b, "text all-MiniLM-L6-v2", 0.2, 12).assign(protocol=label)]
        _write(root, "tokenwise", pd.concat(parts),
               {"corpus": "synthetic", "protocols": [PROTOCOL, "random 70/20/10 "
                                                     "(speaker-dependent)"],
                "profile": "default (bundled encoders, CPU)"})
    if "features" not in skip:
        _write_baseline(root, base)
    return root


def _write_baseline(root: Path, base: pd.DataFrame) -> None:
    """The features stage's frozen probes: a classifier between the papers' systems, and an
    A/V/D ridge with noisy valence and arousal as good as distil's (seed 0 only)."""
    tables = root / "features" / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    _classifier(base, BASELINE, 0.7, 20).to_csv(tables / "predictions.csv", index=False)
    ridge = _distil(base)
    ridge = ridge[(ridge["scenario"] == "unseen") & (ridge["system"] == "distilled · A+T · FT")]
    noise = np.random.default_rng(21).normal(size=len(ridge))
    ridge = ridge.drop(columns="scenario").assign(
        system=BASELINE_AVD, pred_valence=ridge["true_valence"] + 1.5 * noise)
    ridge.to_csv(tables / "predictions_avd.csv", index=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.01, 0.2, 1, R.AGREES), (-0.2, -0.01, 1, R.DISAGREES), (-0.1, 0.1, 1, R.INCONCLUSIVE),
    (-0.2, -0.01, -1, R.AGREES), (0.01, 0.2, -1, R.DISAGREES), (-0.1, 0.1, -1, R.INCONCLUSIVE),
    (0.0, 0.0, 1, R.INCONCLUSIVE), (0.0, 0.3, 1, R.INCONCLUSIVE), (float("nan"), 1.0, 1,
                                                                    R.INCONCLUSIVE),
])
def test_verdict(low, high, direction, expected):
    assert R.verdict(low, high, direction) == expected


def test_verdict_rejects_a_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        R.verdict(0.1, 0.2, 0)


def test_comparison_on_synthetic_predictions(synthetic):
    from mmser.report.results import fold_metrics, summary

    stages = R.load_all(synthetic)
    comp = R.comparison(stages).set_index("paper")
    assert list(comp.index) == list(R.STAGES)
    assert comp.loc["clap", "system"] == "full" and comp.loc["lemer", "system"] == "C1"
    assert comp.loc["vcemo", "system"] == "VCEMO (SupCon)"
    assert comp.loc["tokenwise", "system"] == "ours B_s"
    assert comp.loc["distil", "system"] == "distilled · A+T · FT"
    preds = stages["clap"].main
    expected = summary(fold_metrics(preds[preds.system == "full"])).iloc[0]
    assert comp.loc["clap", "UA"] == f"{expected['UA']:.3f} ± {expected['UA_std']:.3f}"
    assert comp.loc["clap", "CCC_valence"] == "—" and "±" in comp.loc["distil", "CCC_valence"]
    assert comp.loc["distil", "UA"] == "—"
    # tokenwise's main slice is its speaker-independent protocol, so every stage agrees
    assert (comp["same design"] == "yes").all(), comp["same design"]
    assert comp.loc["clap", "folds"] == FOLDS and comp.loc["clap", "protocol"] == PROTOCOL


def test_each_paper_is_set_against_the_frozen_baseline(synthetic):
    comp = R.comparison(R.load_all(synthetic), load_baseline(synthetic / "features"),
                        n=200).set_index("paper")
    # clap's full (95 % right) beats the probe (70 %), vcemo's SupCon row (30 %) does not
    assert comp.loc["clap", "against baseline"] == "beats"
    assert comp.loc["clap", "vs frozen baseline"].startswith("UA +")
    assert comp.loc["vcemo", "against baseline"] == "falls below"
    # distil: better valence than the ridge, the same arousal predictions
    assert comp.loc["distil", "vs frozen baseline"].startswith("CCC_valence +")
    assert "CCC_arousal +0.000" in comp.loc["distil", "vs frozen baseline"]
    assert comp.loc["distil", "against baseline"] == "is mixed against"
    base = comp.loc["frozen baseline"]
    assert base["system"] == BASELINE and base["same design"].startswith("yes")
    assert base["seeds"] == "—" and "±" in base["UA"]
    ridge = comp.loc["frozen baseline (A/V/D)"]
    assert "distil" in ridge["same design"] and "±" in ridge["CCC_valence"]
    assert R.comparison(R.load_all(synthetic)).loc[0, "vs frozen baseline"].startswith(
        R.NOT_RUN)


def test_the_baseline_stands_for_every_seed_and_must_cover_the_test_set():
    base = _base()
    baseline = _classifier(base, BASELINE, 0.7, 1)
    preds = pd.concat([_classifier(_base(seeds=(0, 1, 2)), "C1", 0.6, 2)])
    paired = with_baseline(preds, baseline, "C1", BASELINE)
    rows = paired[paired["system"] == BASELINE]
    assert sorted(rows["seed"].unique()) == [0, 1, 2] and len(rows) == 3 * N
    one = rows[rows["seed"] == 2].set_index("utt_id")["pred"]
    assert one.equals(baseline.set_index("utt_id")["pred"].loc[one.index])
    with pytest.raises(ValueError, match="no prediction for 1 test utterances"):
        with_baseline(preds, baseline.iloc[1:], "C1", BASELINE)


def test_a_papers_table_and_reading_get_the_baseline(synthetic):
    from mmser.report.results import add_baseline

    baseline = load_baseline(synthetic / "features")
    clap = R.load_stage(synthetic, "clap").main
    rows = add_baseline(clap, "full", baseline)
    assert set(rows["system"]) == {"none", "small", "full", BASELINE}
    distil = R.load_stage(synthetic, "distil").main
    assert BASELINE_AVD in set(add_baseline(distil, "distilled · A+T · FT", baseline)["system"])
    assert add_baseline(clap, "full", None) is clap
    said = B.baseline_sentence(clap, "full", baseline, n=100)
    assert said.startswith("full **beats** the frozen linear baseline") and "UA +" in said
    assert "falls below" in B.baseline_sentence(clap, "none", baseline, n=100)
    table = B.beside_baseline(clap, "full", baseline, others=["none"])
    assert list(table["system"]) == ["full", "none", BASELINE]
    assert list(table.columns[3:]) == list(R.CLASSIFICATION_METRICS)
    avd = B.beside_baseline(distil, "distilled · A+T · FT", baseline)
    assert list(avd["system"]) == ["distilled · A+T · FT", BASELINE_AVD]
    assert list(avd.columns[3:]) == list(R.CCC_METRICS)
    assert avd.loc[1, "seeds"] == "1 (deterministic)"


def test_comparison_flags_a_stage_with_other_folds_or_seeds(tmp_path):
    root = make_results(tmp_path, skip=("vcemo",))
    moved = _base(shift=1, seeds=(0, 1))  # other folds and a second seed
    _write(root, "vcemo", pd.concat([_classifier(moved, "VCEMO (SupCon)", 0.6, 1),
                                     _classifier(moved, "VCEMO", 0.6, 2)]),
           {"corpus": "synthetic", "protocol": "random 8/1/1 (speaker-dependent)",
            "profile": "default"})
    comp = R.comparison(R.load_all(root)).set_index("paper")
    flag = comp.loc["vcemo", "same design"]
    assert flag.startswith("NO") and "folds" in flag and "seeds" in flag
    assert "protocol" in flag and "speaker-dependent" in flag
    assert comp.loc["clap", "same design"] == "yes"


def test_comparison_flags_speaker_dependent_pretraining(tmp_path):
    root = make_results(tmp_path)
    metrics = json.loads((root / "tokenwise" / "metrics.json").read_text())
    metrics["pretraining"] = {"labels": {PROTOCOL: "speaker-dependent pre-training (the read "
                                                   "speech of every voice)"}}
    (root / "tokenwise" / "metrics.json").write_text(json.dumps(metrics))
    comp = R.comparison(R.load_all(root)).set_index("paper")
    assert comp.loc["tokenwise", "same design"].startswith("NO: speaker-dependent pre-training")
    assert comp.loc["clap", "same design"] == "yes"


def test_claims_on_synthetic_predictions(synthetic):
    table = R.claims(R.load_all(synthetic), n=200, seed=0)
    got = {(r["paper"], r["comparison (a − b)"]): r for r in table.to_dict("records")}
    assert got[("clap", "full − none")]["verdict"] == R.AGREES
    assert got[("clap", "full − none")]["paper's difference"].startswith("WA +7.18 points")
    assert "+1.64" in got[("vcemo", "VCEMO (SupCon) − VCEMO")]["paper's difference"]
    lemer = got[("lemer", "C1 − C4")]  # identical predictions: a zero-width interval at 0
    assert lemer["verdict"] == R.INCONCLUSIVE and lemer["diff"] == 0
    assert got[("vcemo", "VCEMO (SupCon) − VCEMO")]["verdict"] == R.DISAGREES
    assert got[("distil", "distilled · A+T · FT − distilled · A · FT")]["verdict"] == R.AGREES
    # the paper's claim is "ours trails speech": direction -1, and ours is worse here
    assert got[("tokenwise", "ours B_s − speech whisper-tiny.en")]["verdict"] == R.AGREES
    assert got[("tokenwise", "ours B_s − text all-MiniLM-L6-v2")]["verdict"] == R.AGREES
    for r in table.to_dict("records"):
        assert r["low"] <= r["diff"] <= r["high"]


def test_claims_use_the_projects_bootstrap(synthetic):
    from mmser.report.results import bootstrap

    stages = R.load_all(synthetic)
    row = R.claims(stages, n=150, seed=3).set_index("paper").loc["clap"]
    ref = bootstrap(stages["clap"].main, "full", "none", "UA", n=150, seed=3)
    assert (row["diff"], row["low"], row["high"]) == (ref["diff"], ref["low"], ref["high"])


def test_ccc_gain_is_the_mean_over_folds_of_the_per_fold_gain(synthetic):
    main = R.load_all(synthetic)["distil"].main
    a, b = "distilled · A+T · FT", "distilled · A · FT"
    out = R.bootstrap_ccc_gain(main, a, b, n=50, seed=0)
    by_hand = []
    for _, part in main.groupby(["seed", "fold"]):
        pa, pb = (part[part.system == s].sort_values("utt_id") for s in (a, b))
        gain = {d: ccc(pa[f"true_{d}"], pa[f"pred_{d}"]) - ccc(pb[f"true_{d}"], pb[f"pred_{d}"])
                for d in ("valence", "arousal")}
        by_hand.append(gain["valence"] - gain["arousal"])
    assert out["diff"] == pytest.approx(np.mean(by_hand), abs=1e-9)
    assert out["low"] <= out["diff"] <= out["high"] and out["diff"] > 0


def test_missing_stages_give_not_run_rows(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    stages = R.load_all(empty)
    comp, claim_table = R.comparison(stages), R.claims(stages, n=10)
    assert (comp["system"] == R.NOT_RUN).all()
    assert (claim_table["verdict"] == R.NOT_RUN).all() and len(claim_table) == len(R.CLAIMS)
    assert (R.paper_vs_ours(stages)["our system"] == R.NOT_RUN).all()
    assert R.metrics_json(comp, claim_table)["comparison"]["clap"] == {"status": R.NOT_RUN}

    # metrics but no predictions; and a stage that lacks the systems a claim needs
    root = make_results(tmp_path / "some", skip=("clap", "vcemo"))
    _write(root, "clap", None, {"setting": "x, y, z"})
    _write(root, "vcemo", _classifier(_base(), "Xu et al. 2019", 0.5, 1), {})
    stages = R.load_all(root)
    assert "predictions.csv" in stages["clap"].missing
    comp = R.comparison(stages).set_index("paper")
    assert comp.loc["clap", "system"] == R.NOT_RUN and comp.loc["vcemo", "system"] == R.NOT_RUN
    assert "VCEMO (SupCon)" in comp.loc["vcemo", "same design"]
    claims = R.claims(stages, n=20).set_index("paper")
    assert claims.loc["vcemo", "verdict"] == R.NOT_RUN
    assert claims.loc["distil", "verdict"] == R.AGREES
    beside = R.paper_vs_ours(stages)
    vc = beside[beside.paper == "vcemo"].set_index("paper system")
    assert "±" in vc.loc["Xu et al. 2019", "ours"].iloc[0]
    assert (vc.loc["VCEMO (SupCon)", "ours"] == "—").all()


def test_paper_numbers_come_from_the_paper_modules(synthetic):
    from mmser.papers import clap, lemer, vcemo

    beside = R.paper_vs_ours(R.load_all(synthetic))
    cl = beside[(beside.paper == "clap") & (beside["our system"] == "full")].iloc[0]
    assert cl["paper value"] == f"{clap.PAPER_TABLE1['full']:.2f}" and cl["metric"] == "WA"
    assert "IEMOCAP" in cl["paper setting"] and cl["our protocol"] == PROTOCOL
    le = beside[(beside.paper == "lemer") & (beside["paper system"] == "C1")]
    assert set(le["paper value"]) == {f"{v:.2f}" for v in lemer.PAPER["C1"]}
    vc = beside[(beside.paper == "vcemo") & (beside["paper system"] == "VCEMO (SupCon)")]
    assert f"{vcemo.PAPER_IEMOCAP['VCEMO (SupCon)'][1]:.2f}" in set(vc["paper value"])
    tw = beside[beside.paper == "tokenwise"]
    assert {"random 70/20/10 (speaker-dependent)", PROTOCOL} <= set(tw["our protocol"])
    assert "Ours (Multi)" not in set(tw["paper system"])  # our text encoder is monolingual
    di = beside[(beside.paper == "distil") & (beside["our system"] == "distilled · A+T · FT")]
    assert {p.split("; ")[-1] for p in di["our protocol"]} == {"scenario seen",
                                                               "scenario unseen"}


def _report_tables(results_root: Path, out: Path) -> Path:
    stages = R.load_all(results_root)
    from mmser.report.results import write_table

    write_table(R.comparison(stages), out / "tables" / "comparison")
    write_table(R.claims(stages, n=50), out / "tables" / "claims")
    return out


def test_readme_block_is_rewritten_and_checked(synthetic, tmp_path, capsys):
    out = _report_tables(synthetic, tmp_path / "report")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{R.README_START}\nold\n{R.README_END}\n\n## after\n")
    args = ["--readme-path", str(readme), "--report-dir", str(out)]
    assert R.main(["--check", *args]) == 1
    assert "stale" in capsys.readouterr().err
    assert R.main(["--readme", *args]) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n") and text.endswith("\n\n## after\n")
    assert "| clap " in text and R.AGREES in text and "\nold\n" not in text
    assert R.main(["--check", *args]) == 0
    assert R.write_readme(readme, out) is False  # idempotent
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        R.write_readme(readme, out)


def test_a_corpus_run_has_its_own_block_with_its_not_applicable_rows(synthetic, tmp_path):
    """README's second block (the RAVDESS run) is written between its own markers, from the
    tables that run wrote, and lists what the corpus did not allow; the default block is
    left alone."""
    out = _report_tables(synthetic, tmp_path / "ravdess")
    from mmser.report.results import write_not_applicable, write_table

    write_not_applicable({"*": "not applicable, because no A/V/D"}, synthetic / "distil" / "tables")
    write_table(R.not_applicable_rows(synthetic), out / "tables" / "not_applicable_rows")
    start, end = R.markers("ravdess")
    readme = tmp_path / "README.md"
    default = f"{R.README_START}\nkept\n{R.README_END}"
    readme.write_text(f"{default}\n\n{start}\nold\n{end}\n")
    args = ["--readme-path", str(readme), "--report-dir", str(out), "--block", "ravdess"]
    assert R.main(["--readme", *args]) == 0 and R.main(["--check", *args]) == 0
    block = R.readme_current(readme, "ravdess")
    assert "profiles/ravdess.yaml" in block and "--block ravdess" in block
    assert "| distil  | the whole stage | not applicable, because no A/V/D |" in block
    assert R.readme_current(readme) == default


def test_the_readme_block_matches_the_committed_results():
    """The tables are DVC outputs (absent from a fresh clone until `dvc pull` or `dvc
    repro`); the report's metrics.json is in Git: the block's verdicts must match it."""
    report_dir = ROOT / "results" / "report"
    metrics = json.loads((report_dir / "metrics.json").read_text())
    block = R.readme_current(ROOT / "README.md")
    rows = [[cell.strip() for cell in line.split("|")] for line in block.splitlines()]

    def shown(claim: dict, cells: list[str]) -> bool:
        """A claims-table row (ours | 95% CI | verdict | seeds) with this claim's difference
        and verdict (metrics keep 4 decimals, the block shows 3)."""
        for i in range(len(cells) - 2):
            try:
                diff = float(cells[i])
            except ValueError:
                continue
            if abs(diff - claim["diff"]) <= 6e-4 and cells[i + 2] == claim["verdict"]:
                return True
        return False

    for key, claim in metrics["claims"].items():
        if "diff" in claim:
            assert any(shown(claim, r) for r in rows), f"README.md's results block is stale ({key})"
    if (report_dir / "tables" / "comparison.csv").is_file():
        assert block == R.readme_block(report_dir), (
            "README.md's results block is stale: run `python -m mmser.report.compare --readme`")
    for name in ("ravdess", "ravdess8"):  # the RAVDESS runs' tables, kept in Git
        tables = ROOT / "results" / name
        if (tables / "tables" / "comparison.csv").is_file():
            assert R.readme_current(ROOT / "README.md", name) == R.readme_block(tables, name), (
                f"README.md's {name} block is stale: run `python -m mmser.report.compare "
                f"--readme --block {name} --report-dir results/{name}`")


def test_dvc_report_stage_and_plots():
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stage = spec["stages"]["report"]
    assert list(spec["stages"])[-1] == "report"
    assert "notebooks/report.ipynb reports/report.ipynb" in stage["cmd"]
    assert "mmser.report.compare --html" in stage["cmd"]
    for name in R.STAGES:
        assert f"results/{name}/metrics.json" in stage["deps"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for s in spec["stages"].values()
            for key in ("outs", "metrics", "plots") for o in s.get(key, [])]
    assert len(outs) == len(set(outs))
    parts = [Path(o).parts for o in outs]
    for i, a in enumerate(parts):  # dvc forbids one output inside another
        for b in parts[i + 1:]:
            n = min(len(a), len(b))
            assert a[:n] != b[:n], f"overlapping outputs {a} and {b}"
    assert {"reports/html", "results/report/tables", "results/report/figures"} <= set(outs)
    plotted = [next(iter(p)) if isinstance(p, dict) else p for p in spec.get("plots", [])]
    for name in R.STAGES:
        assert f"results/{name}/figures" in plotted


def test_notebook_runs_under_papermill_and_renders_to_html(synthetic, tmp_path):
    import papermill as pm

    reports = tmp_path / "reports"
    reports.mkdir()
    out = tmp_path / "report"
    start = time.perf_counter()
    pm.execute_notebook(str(ROOT / "notebooks" / "report.ipynb"), str(reports / "report.ipynb"),
                        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
                        parameters={"report": {"bootstrap_n": 50}, "results_dir": str(synthetic),
                                    "out_dir": str(out)})
    assert time.perf_counter() - start < 60
    for name in ("comparison", "claims", "paper_vs_ours", "status"):
        assert (out / "tables" / f"{name}.csv").is_file()
        assert (out / "tables" / f"{name}.md").is_file()
    for name in ("comparison", "claims"):
        assert (out / "figures" / f"{name}.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    clap = metrics["claims"]["clap"]  # its difference and verdict; the interval in the tables
    assert set(clap) == {"diff", "verdict"} and clap["diff"] > 0 and clap["verdict"] == R.AGREES
    assert set(metrics["comparison"]) == {*R.STAGES, "frozen baseline",
                                          "frozen baseline (A/V/D)"}
    # every paper and both baselines, and still a few columns of `dvc exp show`
    assert len(numbers_in(metrics)) <= MAX_NUMBERS
    reading = json.dumps(json.loads((reports / "report.ipynb").read_text())["cells"][-1])
    assert "**beats** the frozen linear baseline" in reading  # clap
    assert "**falls below** the frozen linear baseline" in reading  # vcemo
    # the README block reads the notebook's tables
    assert "| clap " in R.readme_block(out)
    html = R.to_html(reports)
    assert [p.name for p in html] == ["report.html"]
    text = html[0].read_text()
    assert "data:image/png;base64" in text and "central claim" in text


def test_claimed_systems_train_on_the_claim_seeds_too():
    from mmser.config import Training
    from mmser.report.claims import claim_seeds

    training = Training(seeds=[0], claim_seeds=[0, 1, 2])
    assert claim_seeds("lemer", "C1", training) == [0, 1, 2]
    assert claim_seeds("lemer", "C4", training) == [0, 1, 2]
    assert claim_seeds("lemer", "C2", training) == [0]  # in no claim
    assert claim_seeds("lemer", "A5", training) == [0]  # only a fall-back pair
    assert claim_seeds("tokenwise", "speech whisper-tiny.en", training) == [0, 1, 2]
    assert claim_seeds("clap", "full", Training(seeds=[3], claim_seeds=[])) == [3]


def test_a_claim_pools_the_seeds_both_systems_ran(synthetic):
    """A claim system with extra seeds is compared on the seeds both ran, and the claim
    row says how many."""
    from mmser.report.results import bootstrap

    stages = R.load_all(synthetic)
    main = stages["clap"].main
    extra = main[main["system"] == "full"].assign(seed=7)
    stages["clap"].main = pd.concat([main, extra], ignore_index=True)
    row = R.claims(stages, n=100, seed=0).set_index("paper").loc["clap"]
    assert row["seeds"] == 1 and row["note"].endswith("seeds 0")
    both = pd.concat([stages["clap"].main, main[main["system"] == "none"].assign(seed=7)],
                     ignore_index=True)
    stages["clap"].main = both
    row = R.claims(stages, n=100, seed=0).set_index("paper").loc["clap"]
    assert row["seeds"] == 2 and row["note"].endswith("seeds 0, 7")
    assert bootstrap(both, "full", "none", n=100)["seeds"] == [0, 7]


def test_gap_reading_says_whether_training_stopped_while_still_improving():
    from mmser.report.baseline import gap_reading, training_diagnosis

    rising = pd.DataFrame({"epoch": [0, 1, 2], "val_score": [0.3, 0.4, 0.5]})
    peaked = pd.DataFrame({"epoch": [0, 1, 2], "val_score": [0.3, 0.5, 0.4]})
    stopped = pd.DataFrame({"epoch": [0, 1], "val_score": [0.5, 0.4]})  # early stopping
    below = [{"metric": "UA", "diff": -0.2, "low": -0.25, "high": -0.15}]
    d = training_diagnosis([rising, rising, peaked], max_epochs=3, patience=1)
    assert d == {"runs": 3, "ran_every_epoch": 3, "best_at_last_epoch": 2,
                 "last_epoch_change": pytest.approx((0.1 + 0.1 - 0.1) / 3), "max_epochs": 3,
                 "patience": 1}
    text = gap_reading("C1", below, d, "lemer")
    assert "in 2 of 3 runs the best validation epoch was the last" in text
    assert "`lemer.max_epochs`" in text and "UA -0.200 [-0.250, -0.150]" in text
    # most runs ended by a short patience: try a longer one
    d = training_diagnosis([peaked, stopped, stopped, rising], max_epochs=3, patience=1)
    assert (d["ran_every_epoch"], d["best_at_last_epoch"]) == (2, 1)
    text = gap_reading("VCEMO", below, d, "vcemo")
    assert "early stopping ended 2 of 4 runs after 1 epoch(s)" in text
    assert "in 1 of the others the best validation epoch was the last" in text
    assert "`vcemo.patience`" in text
    # the same runs with a patience of 5: they had stopped improving, epochs are not it
    d = training_diagnosis([peaked, stopped, stopped, rising], max_epochs=3, patience=5)
    assert "in 3 of 4 runs the best validation epoch came before the end" in gap_reading(
        "C1", below, d, "clap", "finetune_epochs")
    assert "`clap.finetune_epochs`" in gap_reading("C1", below, d, "clap", "finetune_epochs")
    # nothing to explain when the system does not fall below the probe
    level = [{"metric": "UA", "diff": -0.01, "low": -0.05, "high": 0.03}]
    assert gap_reading("C1", level, d, "lemer") == ""


def test_shared_gap_reading_tells_the_shared_part_from_what_a_system_adds():
    from mmser.report.baseline import shared_gap_reading

    below = [{"metric": "UA", "diff": -0.1, "low": -0.15, "high": -0.05}]
    less = [{"metric": "UA", "diff": -0.03, "low": -0.06, "high": -0.001}]
    level = [{"metric": "UA", "diff": 0.01, "low": -0.03, "high": 0.05}]
    text = shared_gap_reading("ours B_s", below, "speech", less, "functionals")
    assert "what they share accounts for -0.030 of the gap" in text
    assert "what ours B_s does differently for -0.070" in text
    text = shared_gap_reading("ours B_s", below, "speech", level, "functionals")
    assert "(not below it)" in text and "comes from what ours B_s does differently" in text
    assert shared_gap_reading("ours B_s", level, "speech", below, "functionals") == ""
