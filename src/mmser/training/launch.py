"""Multi-device training as processes: `python -m mmser.training.launch <job dir>`.

`training.fit` with more than one device (`training.devices`, or a DDP strategy) never
runs DDP inside the calling process (a notebook kernel, a test runner: neither can be
re-executed per device). It writes a job into `<out_dir>/launch/` and starts this module
as a subprocess (`mmser.training.loop.launch`; this module imports the loop, never the
other way round), which runs `train_run`; Lightning's own launcher then re-executes
`python -m mmser.training.launch <job dir>` once per further device (`torchrun --nproc_per_node N
-m mmser.training.launch <job dir>` works the same, for several nodes). Process 0 writes
`best.pt`, `history.csv` and `done.json` as a single-process run does; the caller reads
them back and deletes the job.

A job is three files:
- `items.pt`: the training and validation items (lists of dicts of tensors, numbers and
  strings), loaded with `weights_only=True`;
- `task.pt`: the `Task` (the paper's model inside), pickled whole. It is loaded with
  `weights_only=False`, which can run code, so this module loads only a job folder that
  `loop.launch` of the parent process has just written into its own run directory; it is
  never a file exchanged or kept (it is deleted after the run). The model's class must
  be importable (defined in a module, as every paper's model is, not in a notebook cell);
  the child gets the parent's `sys.path`;
- `options.json`: the `Training` settings and `fit`'s other arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mmser.config import Training
from mmser.training import loop as training


def run(job: str | Path) -> None:
    """Run the training written into `job` (in this process; DDP as configured)."""
    job = Path(job)
    options = json.loads((job / "options.json").read_text())
    items = torch.load(job / "items.pt", weights_only=True)
    task = torch.load(job / "task.pt", weights_only=False)  # our own file: see above
    cfg = Training(**options.pop("cfg"))
    training.train_run(task, items["train"], items["val"], options.pop("out_dir"), cfg, **options)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m mmser.training.launch <job dir>\n\n{__doc__}", file=sys.stderr)
        return 2
    run(argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
