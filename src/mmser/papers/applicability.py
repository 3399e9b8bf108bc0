"""Whether a paper stage can run on the prepared corpus at all, and what it leaves when not.

Switching corpus is one change in params.yaml, and every stage must then run what applies
to the corpus. Most stages adapt inside their notebook (LE-MER without dialogues, tokenwise
without read speech); a stage whose whole method needs something the corpus lacks (distil
regresses arousal, valence and dominance, which RAVDESS and EmoDB do not rate) is skipped
here instead, before its notebook, with its outputs written so that DVC, the report and a
reader all see "not applicable, because ...":

    python -m mmser.papers.applicability distil -- papermill ... notebooks/distil.ipynb ...

runs the command after `--` when the stage applies, and otherwise writes the stage's
`metrics.json` and `run.json`, `tables/not_applicable.csv|md`, a figures and a models folder
(each with a README saying why they are empty) and a one-cell executed report.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat

from mmser.report.headline import write_metrics
from mmser.report.results import write_not_applicable
from mmser.training.data import Corpus, load_corpus

WHOLE_STAGE = "*"  # the system name that stands for the whole stage


def _distil(corpus: Corpus) -> str | None:
    if corpus.rated.empty:
        return (f"the corpus `{corpus.name}` rates no utterance on arousal, valence and "
                "dominance, which this paper regresses")
    return None


# stage -> what it needs: a reason it cannot run on `corpus`, or None when it can
NEEDS: dict[str, Callable[[Corpus], str | None]] = {"distil": _distil}
ROWS = {"distil": "rated"}  # the rows a stage reads (Corpus.rows)


def why_not(stage: str, corpus_dir: str | Path = "interim/corpus",
            manifest_path: str | Path = "interim/manifest.csv") -> str | None:
    """Why `stage` cannot run on the prepared corpus, or None when it can."""
    if stage not in NEEDS:
        return None
    corpus = load_corpus(corpus_dir, manifest_path, rows=ROWS.get(stage, "labelled"))
    return NEEDS[stage](corpus)


def write_not_applicable_stage(stage: str, reason: str, corpus: str, protocol: str,
                               results_dir: Path, models_dir: Path, report: Path) -> None:
    """The outputs of a stage that does not apply: every path dvc.yaml declares exists."""
    tables, figures = results_dir / "tables", results_dir / "figures"
    for folder in (tables, figures, models_dir, report.parent):
        folder.mkdir(parents=True, exist_ok=True)
    sentence = f"not applicable, because {reason}"
    write_not_applicable({WHOLE_STAGE: sentence}, tables)
    (figures / "README.md").write_text(f"No figures: {sentence}.\n")
    (models_dir / "README.md").write_text(f"No models: {sentence}.\n")
    write_metrics(results_dir / "metrics.json", not_applicable=sentence, corpus=corpus,
                  protocol=protocol, run={"not_applicable": sentence})  # + run.json
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(
        f"# Paper stage `{stage}`: {sentence}\n\nThe notebook `notebooks/{stage}.ipynb` did "
        f"not run on corpus `{corpus}` ({protocol}); the report shows this stage as not "
        "applicable. Its method, claims and tables are described in that notebook.")]
    nbformat.write(notebook, report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage")
    parser.add_argument("--corpus-dir", default="interim/corpus")
    parser.add_argument("--manifest", default="interim/manifest.csv")
    argv = sys.argv[1:] if argv is None else list(argv)
    # after "--": the command that runs the stage when it applies
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    reason = why_not(args.stage, args.corpus_dir, args.manifest)
    if reason is None:
        if command:
            os.execvp(command[0], command)  # the stage's own command, in this process
        return 0
    corpus = load_corpus(args.corpus_dir, args.manifest)
    write_not_applicable_stage(args.stage, reason, corpus.name, corpus.protocol_label,
                               Path("results") / args.stage, Path("models") / args.stage,
                               Path("reports") / f"{args.stage}.ipynb")
    print(f"{args.stage}: not applicable, because {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
