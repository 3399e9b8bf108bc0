"""Progress bars that suit where the code runs.

Interactively (JupyterLab with ipywidgets, a terminal) a bar renders as usual. In a
report, a notebook that the pipeline executes with papermill (`MMSER_REPORT=1`, set by
`dvc.yaml`), progress goes to the stage's log (the kernel's own standard error, which
`dvc repro` prints) and never into a cell output: executed notebooks are read by people.
`quiet_report` also sends library warnings and log records there.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from typing import TextIO

REPORT = "MMSER_REPORT"


def in_report() -> bool:
    """True inside a pipeline-executed notebook (see the module docstring)."""
    return os.environ.get(REPORT, "") not in ("", "0")


@functools.cache
def log_stream() -> TextIO:
    """The stage's log. In a Jupyter kernel, `sys.stderr` is captured into cell outputs,
    and so is file descriptor 2; `sys.stderr.fileno()` is ipykernel's copy of the original
    standard error, which is not. Elsewhere: standard error itself."""
    try:
        return open(sys.stderr.fileno(), "w", buffering=1, closefd=False)
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return sys.__stderr__


def progress(iterable: Iterable | None = None, **options):
    """`tqdm(iterable, **options)`: a widget in JupyterLab, text on a terminal, and the
    stage's log (never a cell output) in a report."""
    if in_report():
        from tqdm.std import tqdm

        return tqdm(iterable, file=log_stream(), dynamic_ncols=False, ncols=100,
                    mininterval=5, **options)
    from tqdm.auto import tqdm

    return tqdm(iterable, **options)


def _to_log(message, category, filename, lineno, file=None, line=None) -> None:
    log_stream().write(warnings.formatwarning(message, category, filename, lineno, line))


def quiet_report() -> None:
    """In a report: library warnings and log records go to the stage's log, not to the
    cell outputs (a no-op elsewhere)."""
    if not in_report():
        return
    warnings.showwarning = _to_log
    # Hugging Face's own bars (e.g. "Loading weights") follow this switch at import time
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    handler = logging.StreamHandler(log_stream())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "transformers",
                 "faster_whisper", ""):
        log = logging.getLogger(name)
        for old in list(log.handlers):
            log.removeHandler(old)
        log.addHandler(handler)
        log.propagate = False
