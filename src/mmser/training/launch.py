"""Multi-device training as processes: `python -m mmser.training.launch <job dir>`.

`training.fit` with more than one device (`training.devices`, or a DDP strategy) never
runs DDP inside the calling process (a notebook kernel, a test runner: neither can be
re-executed per device). It writes a job into `<out_dir>/launch/` and starts this module
as a subprocess, which calls `fit` again; Lightning's own launcher then re-executes
`python -m mmser.training.launch <job dir>` once per further device (`torchrun --nproc_per_node N
-m mmser.training.launch <job dir>` works the same, for several nodes). Process 0 writes
`best.pt`, `history.csv` and `done.json` as a single-process run does; the caller reads
them back and deletes the job.

A job is three files:
- `items.pt`: the training and validation items (lists of dicts of tensors, numbers and
  strings), loaded with `weights_only=True`;
- `task.pt`: the `Task` (the paper's model inside), pickled whole. It is loaded with
  `weights_only=False`, which can run code, so this module loads only a job folder that
  `launch` of the parent process has just written into its own run directory; it is
  never a file exchanged or kept (it is deleted after the run). The model's class must
  be importable (defined in a module, as every paper's model is, not in a notebook cell);
  the child gets the parent's `sys.path`;
- `options.json`: the `Training` settings and `fit`'s other arguments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

JOB = "launch"


def write_job(task, train: Sequence[dict], val: Sequence[dict], out_dir: str | Path, cfg,
              **options) -> Path:
    """Write a `fit` call into `<out_dir>/launch/`; returns that folder."""
    job = Path(out_dir).resolve() / JOB
    if job.exists():
        shutil.rmtree(job)
    job.mkdir(parents=True)
    torch.save({"train": list(train), "val": list(val)}, job / "items.pt")
    torch.save(task, job / "task.pt")
    (job / "options.json").write_text(json.dumps(
        {"out_dir": str(Path(out_dir).resolve()), "cfg": asdict(cfg), **options},
        indent=1, default=str))
    return job


def launch(task, train: Sequence[dict], val: Sequence[dict], out_dir: str | Path, cfg,
           **options) -> None:
    """Run `fit(task, train, val, out_dir, cfg, **options)` in `python -m mmser.training.launch`
    processes and wait; their output is echoed here (a notebook shows it)."""
    job = write_job(task, train, val, out_dir, cfg, **options)
    paths = [p for p in sys.path if p] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths if p))}
    command = [sys.executable, "-m", "mmser.training.launch", str(job)]
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit status {process.returncode}); "
                           f"its output is above, the job stays in {job}")
    shutil.rmtree(job)


def run(job: str | Path) -> None:
    """Run the `fit` call written into `job` (in this process; DDP as configured)."""
    from mmser.training import loop as training
    from mmser.config import Training

    job = Path(job)
    os.environ[training.LAUNCHED] = "1"  # inherited by the processes Lightning starts
    options = json.loads((job / "options.json").read_text())
    items = torch.load(job / "items.pt", weights_only=True)
    task = torch.load(job / "task.pt", weights_only=False)  # our own file: see above
    cfg = Training(**options.pop("cfg"))
    training.fit(task, items["train"], items["val"], options.pop("out_dir"), cfg, **options)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(f"usage: python -m mmser.training.launch <job dir>\n\n{__doc__}", file=sys.stderr)
        return 2
    run(argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
