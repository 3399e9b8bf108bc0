"""A seed sweep, aggregated: `python -m mmser.sweep` (the last step of `make sweep`).

`make sweep` runs one DVC experiment per training seed (`dvc exp run --queue -S
'training.seeds=[N]'`). This reads every experiment of the current commit back from
`dvc exp show --json`, keeps those whose parameters equal the commit's apart from
`training.seeds` (a sweep over another parameter is not a seed sweep), and writes
`results/sweep/seeds.{csv,md}`: for each paper's main system, every metric of the report's
comparison as mean ± std over the seeds, and `claims.{csv,md}`: each paper claim's bootstrap
difference and verdict per seed. The commit's own run counts as one seed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from mmser.report.results import write_table

REPORT_METRICS = "results/report/metrics.json"
SEEDS_PARAM = "training.seeds"
# a sweep run sets both to its seed (`make sweep`); the commit's claim_seeds differ by design
SEED_PARAMS = (SEEDS_PARAM, "training.claim_seeds")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _runs(shown: Sequence[dict]) -> Iterator[tuple[str, dict, bool]]:
    """(name, data, is_experiment) for each commit row and each experiment under it."""
    for commit in shown:
        if commit.get("rev") == "workspace":
            continue  # the commit's row below holds what was committed
        yield commit.get("name") or commit["rev"][:7], commit.get("data") or {}, False
        for experiment in commit.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                yield rev.get("name") or rev["rev"][:7], rev.get("data") or {}, True


def experiment_rows(shown: Sequence[dict]) -> tuple[pd.DataFrame, list[str]]:
    """One row per run of `dvc exp show --json` that finished the report: its name, seeds,
    and the report's metrics flattened ("comparison.<paper>.<metric>", "claims...").
    Returns the rows and a note for every run left out (and why)."""
    rows, notes, baseline = [], [], None
    for name, data, is_experiment in _runs(shown):
        params = _flat(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
        metrics = ((data.get("metrics") or {}).get(REPORT_METRICS) or {}).get("data")
        if not is_experiment:
            baseline = params
        if not metrics:
            notes.append(f"{name}: no {REPORT_METRICS} (not finished, or failed)")
            continue
        others = {k: v for k, v in params.items() if k not in SEED_PARAMS}
        base = {k: v for k, v in (baseline or {}).items() if k not in SEED_PARAMS}
        if baseline is not None and others != base:
            changed = sorted(k for k in set(others) | set(base) if others.get(k) != base.get(k))
            notes.append(f"{name}: other parameters differ from the commit's ({changed[:4]})")
            continue
        seeds = tuple(params.get(SEEDS_PARAM) or ())
        rows.append({"run": name, "seeds": seeds, **_flat(metrics)})
    table = pd.DataFrame(rows)
    if len(table):
        duplicated = table.duplicated("seeds", keep="last")
        notes += [f"{r}: seeds {s} already counted" for r, s in
                  zip(table.loc[duplicated, "run"], table.loc[duplicated, "seeds"])]
        table = table[~duplicated].sort_values("seeds", kind="stable").reset_index(drop=True)
    return table, notes


def aggregate(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per paper and metric: mean, std over runs, n runs, values; per claim and run: its
    bootstrap difference and verdict)."""
    if runs.empty:
        raise ValueError("no finished run of the pipeline to aggregate (run `make sweep`)")
    seeds = [",".join(map(str, s)) for s in runs["seeds"]]
    scores = []
    for column in [c for c in runs.columns if c.startswith("comparison.")]:
        _, paper, metric = column.split(".", 2)
        values = pd.to_numeric(runs[column], errors="coerce")
        scores.append({"paper": paper, "metric": metric, "mean": values.mean(),
                       "std": values.std(ddof=1) if values.count() > 1 else float("nan"),
                       "runs": int(values.count()),
                       "per seed": " / ".join(f"{s}: {v:.3f}" for s, v in zip(seeds, values))})
    claims = []
    for column in [c for c in runs.columns if c.startswith("claims.") and c.endswith(".verdict")]:
        claim = column[len("claims."):-len(".verdict")]
        for seed, (_, run) in zip(seeds, runs.iterrows()):
            claims.append({"claim": claim, "seeds": seed, "run": run["run"],
                           **{k: run.get(f"claims.{claim}.{k}") for k in ("diff", "verdict")}})
    return pd.DataFrame(scores), pd.DataFrame(claims)


def exp_show(repo: str | Path = ".") -> list[dict]:
    done = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dvc exp show --json failed in {repo}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmser.sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="a saved `dvc exp show --json` (default: run it)")
    parser.add_argument("--out", default="results/sweep")
    args = parser.parse_args(argv)
    shown = json.loads(Path(args.json).read_text()) if args.json else exp_show()
    runs, notes = experiment_rows(shown)
    for note in notes:
        print("left out:", note, file=sys.stderr)
    scores, claims = aggregate(runs)
    print(f"{len(runs)} runs, seeds {[list(s) for s in runs['seeds']]}\n")
    print(write_table(scores, Path(args.out) / "seeds"), "\n")
    if len(claims):
        print(write_table(claims, Path(args.out) / "claims"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
