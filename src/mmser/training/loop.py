"""One training class and one fold loop for every paper stage (PyTorch Lightning).

A paper's model is a plain `nn.Module` whose `forward(batch)` returns a dict with a scalar
`loss` and its predictions: `logits` (classification) or `pred` (regression, one column
per dimension). `Task` wraps it: optimiser and schedule, validation score, logging.
`fit` trains with checkpoint selection on the validation score only, resumes an
interrupted run from its last checkpoint (exactly: the random states travel with it), and
reuses a finished run only when its fingerprint (`run_fingerprint`: code, parameters,
data, initial weights) is this run's. More than one device
(`training.devices`) trains with DDP in processes of `python -m mmser.training.launch`
(`launch` here writes the job and starts them), never inside the calling (notebook)
process. `fold_loop` is the one loop over seeds and folds: it records each fold's choice
with `Fold.select` before the fold's test part is opened; `cross_validate` is that loop
with one `Task` per fold (tokenwise's classifier grid uses `fold_loop` directly). With
`training.workers` > 1 on one CPU device, `fold_loop` first trains the runs that its folds
need side by side in that many worker processes (`train_ahead`), then makes its choices
and predictions in order from the finished runs, as it would after a serial run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from mmser import fingerprint as F
from mmser.config import Training
from mmser.corpus.protocols import Fold
from mmser.fingerprint import code_digest, value_digest
from mmser.progress import in_report, progress
from mmser.report.metrics import ccc
from mmser.training import data as D

log = logging.getLogger("mmser")
if not in_report():
    # interactively (JupyterLab) Lightning's INFO lines ("GPU available", a tip, "`Trainer.fit`
    # stopped"), repeated for every fold and system, would bury the results; its warnings still
    # show. In a report they go to the stage's log (progress.quiet_report).
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*exists and is not empty.*")
warnings.filterwarnings("ignore", ".*y_pred contains classes not in y_true.*")


def seed_everything(seed: int) -> None:
    """The one seed function: Python, NumPy and torch, and deterministic CPU kernels."""
    L.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ------------------------------------------------------------------------------- task


class Task(L.LightningModule):
    """Wraps a paper's model: optimiser, schedule and the validation score.

    kind: "classification" (score = UA of `logits`), "regression" (score = mean CCC of
    `pred` against `target`), or "loss" (score = minus the validation loss, for
    pre-training). A model may also return `parts`, a dict of detached scalar loss terms:
    their epoch means go into the history as `train_<name>`. `val_metric`, when given,
    replaces the score: it receives the list of the model's validation outputs (detached)
    and returns a number, higher is better.
    `param_groups` (a list of {"params", "lr"} dicts) gives parts their own learning rate.
    schedule: None | "cosine" (to `min_lr`) | "plateau" (on the validation score, with
    `plateau_patience`) | "warmup" (linear warm-up over `warmup_steps`, then constant).
    """

    def __init__(self, model: nn.Module, *, kind: str = "classification", lr: float = 1e-3,
                 weight_decay: float = 0.0, optimizer: str = "adam",
                 param_groups: list[dict] | None = None, schedule: str | None = None,
                 min_lr: float = 1e-6, warmup_steps: int = 0, plateau_patience: int = 10,
                 val_metric: Callable[[list[dict]], float] | None = None):
        super().__init__()
        if kind not in ("classification", "regression", "loss"):
            raise ValueError(f"kind must be classification, regression or loss, not {kind!r}")
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be adam or adamw, not {optimizer!r}")
        if schedule not in (None, "cosine", "plateau", "warmup"):
            raise ValueError(f"unknown schedule {schedule!r}")
        self.model, self.kind = model, kind
        self.opt = dict(lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                        schedule=schedule, min_lr=min_lr, warmup_steps=warmup_steps,
                        plateau_patience=plateau_patience)
        self.param_groups, self.val_metric = param_groups, val_metric
        self._val_outputs: list[dict] = []
        self._train_losses: list[float] = []
        self._train_parts: dict[str, list[float]] = {}  # a model's `parts`: loss terms
        self.history: list[dict] = []  # one row per epoch; saved in checkpoints, so it
        # survives an interrupted and resumed run

    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        self.log("train_loss", out["loss"], on_step=False, on_epoch=True,
                 batch_size=_batch_size(batch))
        self._train_losses.append(out["loss"].item())
        for name, value in out.get("parts", {}).items():  # logged per epoch as train_<name>
            self._train_parts.setdefault(name, []).append(float(value))
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch)
        self.log("val_loss", out["loss"], on_step=False, on_epoch=True,
                 batch_size=_batch_size(batch))
        keep = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in out.items()}
        for key in ("label", "target"):
            if key in batch:
                keep[key] = batch[key].detach().cpu()
        self._val_outputs.append(keep)

    def on_validation_epoch_end(self) -> None:
        outputs, self._val_outputs = self._val_outputs, []
        if not outputs or self.trainer.sanity_checking:
            return
        score = float(self.score(outputs))
        self.log("val_score", score, prog_bar=True)
        losses, self._train_losses = self._train_losses, []
        parts, self._train_parts = self._train_parts, {}
        self.history.append({
            "epoch": self.current_epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": float(np.mean([o["loss"].item() for o in outputs])),
            "val_score": score,
            **{f"train_{name}": float(np.mean(values)) for name, values in parts.items()}})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("history", []))

    def score(self, outputs: list[dict]) -> float:
        """The validation score (higher is better) of a list of model outputs."""
        if self.val_metric is not None:
            return self.val_metric(outputs)
        if self.kind == "classification":
            from sklearn.metrics import balanced_accuracy_score

            y = torch.cat([o["label"] for o in outputs]).numpy()
            pred = torch.cat([o["logits"] for o in outputs]).argmax(-1).numpy()
            return balanced_accuracy_score(y, pred)
        if self.kind == "regression":
            y = torch.cat([o["target"] for o in outputs]).numpy()
            pred = torch.cat([o["pred"] for o in outputs]).float().numpy()
            return float(np.mean([ccc(y[:, d], pred[:, d]) for d in range(y.shape[1])]))
        return -float(np.mean([o["loss"].item() for o in outputs]))

    def configure_optimizers(self):
        o = self.opt
        groups = self.param_groups or [
            {"params": [p for p in self.model.parameters() if p.requires_grad]}]
        kind = torch.optim.AdamW if o["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = kind(groups, lr=o["lr"], weight_decay=o["weight_decay"])
        if o["schedule"] == "cosine":
            total = max(1, self.trainer.estimated_stepping_batches)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total,
                                                                   eta_min=o["min_lr"])
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]
        if o["schedule"] == "warmup":
            steps = max(1, o["warmup_steps"])
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / steps))
            return [optimizer], [{"scheduler": scheduler, "interval": "step"}]
        if o["schedule"] == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", patience=o["plateau_patience"])
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": "val_score"}}
        return optimizer


def _batch_size(batch: dict) -> int:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
        if isinstance(value, list):
            return len(value)
    return 1


# -------------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    best_path: str  # weights of the chosen epoch (chosen on validation only)
    best_score: float
    best_epoch: int
    history: pd.DataFrame  # one row per epoch: train_loss, val_loss, val_score


DONE, FINGERPRINT, BEST, HISTORY = "done.json", "fingerprint.json", "best.pt", "history.csv"


class RunState(L.Callback):
    """What a resumed run needs to continue exactly like an uninterrupted one, saved with
    every checkpoint: the random states (torch, NumPy, Python, CUDA; dropout and the like)
    and the shuffling generator of the training loader; it also pins the bucketed batch
    order to the loop's epoch (`BucketSampler.set_epoch`). Also counts optimiser steps and
    training seconds (they go to done.json, for `mmser.bench`). Checkpoints are written at
    epoch ends, so a run killed mid-epoch redoes that epoch from its start, with the same
    batches and states. In DDP the states of process 0 are saved and every process
    restores them. (Lightning creates a resumed run's first iterator before
    `on_train_start`, hence the loader's generator is restored on load; samplers draw
    lazily, at the first batch.)
    """

    def __init__(self, loader):
        self.loader, self.steps, self.seconds = loader, 0, 0.0
        self._pending: dict | None = None
        self._start: float | None = None

    def state_dict(self) -> dict:
        np_state = np.random.get_state(legacy=False)
        generator = getattr(self.loader, "generator", None)
        return {
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": np_state["state"]["pos"], "has_gauss": np_state["has_gauss"],
                      "gauss": np_state["gauss"]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "loader": generator.get_state() if generator is not None else None,
            "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.seconds = int(state["steps"]), float(state["seconds"])
        if state["loader"] is not None:
            self.loader.generator.set_state(state["loader"])
        self._pending = state  # the global states: when training starts (after the restore)

    def on_train_start(self, trainer, module) -> None:
        state, self._pending = self._pending, None
        if state is not None:
            torch.set_rng_state(state["torch"])
            random.setstate(state["python"])
            n = state["numpy"]
            np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                                 n["has_gauss"], n["gauss"]))
            if state["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    def on_train_epoch_start(self, trainer, module) -> None:
        if isinstance(self.loader.batch_sampler, D.BucketSampler):
            self.loader.batch_sampler.set_epoch(trainer.current_epoch)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps += 1

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._stop()

    def on_train_epoch_end(self, trainer, module) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None


def _multi_device(cfg: Training) -> bool:
    return cfg.devices != 1 or cfg.strategy not in ("auto", "single_device")


def _calling_modules() -> set[str]:
    """The project modules on the call stack (the paper module that builds the run)."""
    frame, names = sys._getframe(1), set()
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("mmser."):
            names.add(name)
        frame = frame.f_back
    return names


def run_fingerprint(task: Task, train: Sequence[dict], val: Sequence[dict], cfg: Training,
                    options: dict, params: dict | None = None) -> dict:
    """What a finished run must share with this one to be reused: the code of the modules
    that build and define it (the callers on the stack and the classes inside `task`, with
    everything they import), the caller's parameters (its whole parameter section), the
    training settings and `fit`'s options, the training and validation items, and the
    task's initial weights (pretrained layers included). How the runs are shown and
    scheduled (`progress`, `workers`) does not change a run, and is left out."""
    classes = {type(m).__module__ for m in task.modules()} | {type(task).__module__}
    modules = {m for m in classes | _calling_modules() if m.startswith("mmser.")}
    training = {k: v for k, v in asdict(cfg).items() if k not in ("progress", "workers")}
    return {"code": code_digest(*modules), "params": value_digest(params or {}),
            "training": training, "options": options,
            "data": value_digest([list(train), list(val)]),
            "initial_weights": value_digest(task.state_dict())}


def fit(task: Task, train: Sequence[dict], val: Sequence[dict], out_dir: str | Path,
        cfg: Training | None = None, *, max_epochs: int, batch_size: int, seed: int = 0,
        patience: int | None = None, bucket_by: str | None = None,
        fingerprint: dict | None = None) -> FitResult:
    """Train `task`, keep the epoch with the best validation score, and load its weights.

    `out_dir` holds the run: `last.ckpt` while training (an interrupted run resumes from
    it, see `RunState`), then `best.pt` (weights only), `history.csv` and `done.json`
    (best epoch and score, optimiser steps, training seconds), each written atomically.
    A finished run is reused, and an interrupted one resumed, only when its
    `fingerprint.json` equals `run_fingerprint` of this call (`fingerprint` is the caller's
    parameter section); otherwise the folder is cleared and the run starts afresh. A run
    file that cannot be read is set aside (named in the log) and its work redone. With more
    than one device the run goes to `python -m mmser.training.launch` processes (DDP;
    `batch_size` is per device) and this process reads the result back.
    """
    cfg = cfg or Training()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(out_dir)
    if not train or not val:
        raise ValueError(f"{out_dir}: {len(train)} training and {len(val)} validation items; "
                         "both must be non-empty (too few speakers or utterances per class "
                         "for this protocol's validation split?)")
    options = dict(max_epochs=max_epochs, batch_size=batch_size, seed=seed,
                   patience=patience, bucket_by=bucket_by)
    stamp = json.dumps(run_fingerprint(task, train, val, cfg, options, fingerprint),
                       sort_keys=True, default=str)
    _clear_unless(out_dir, stamp)
    if (out_dir / DONE).is_file():
        finished = _finished(task, out_dir)
        if finished is not None:
            return finished
    _resumable(out_dir / "last.ckpt")
    if _ahead is not None:  # `train_ahead` collects this run for its worker processes
        _ahead.append(pool(cfg.workers).submit(_train_in_worker, task, list(train), list(val),
                                                str(out_dir), cfg, options))
        raise _TrainingAhead
    if _multi_device(cfg):
        launch(task, train, val, out_dir, cfg, **options)
    else:
        train_run(task, train, val, out_dir, cfg, **options)
    return _finished(task, out_dir)


def _clear_unless(out_dir: Path, stamp: str) -> None:
    """Keep `out_dir`'s run files only when they were made with the fingerprint `stamp`."""
    marker = out_dir / FINGERPRINT
    if out_dir.exists() and (not marker.is_file() or marker.read_text(errors="replace") != stamp):
        if any(out_dir.iterdir()):
            log.info("%s: made by other code, parameters, data or weights; training afresh",
                     out_dir)
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        F.write_text(marker, stamp)


def _resumable(path: Path) -> None:
    """Set aside a `last.ckpt` that does not load (truncated, corrupt): the run restarts."""
    if path.is_file():
        try:
            torch.load(path, map_location="cpu", weights_only=False)  # our own run's file
        except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is started over
            F.set_aside(path, f"unreadable checkpoint ({type(err).__name__}: {err})")


def train_run(task: Task, train: Sequence[dict], val: Sequence[dict], out_dir: str | Path,
              cfg: Training, *, max_epochs: int, batch_size: int, seed: int = 0,
              patience: int | None = None, bucket_by: str | None = None) -> None:
    """The Lightning run behind `fit` (in this process; DDP processes when launched):
    resumes from `last.ckpt`, then writes `best.pt`, `history.csv` and `done.json`."""
    out_dir = Path(out_dir)
    seed_everything(seed)
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_score",
                                 mode="max", save_last=True, save_top_k=1,
                                 save_weights_only=False, enable_version_counter=False)
    callbacks: list = [checkpoint]
    if patience:
        callbacks.append(EarlyStopping(monitor="val_score", mode="max", patience=patience))
    trainer = L.Trainer(
        default_root_dir=out_dir, max_epochs=max_epochs, accelerator=cfg.accelerator,
        devices=cfg.devices, precision=cfg.precision, strategy=cfg.strategy,
        deterministic="warn", callbacks=callbacks, enable_progress_bar=cfg.progress and not in_report(),
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=False, use_distributed_sampler=False)
    # DDP: each process trains on its share of the batches and validates on all of the
    # validation set, so every process computes the same score and choice
    train_loader = D.loader(train, batch_size, shuffle=True, seed=seed, bucket_by=bucket_by,
                            num_workers=cfg.num_workers, rank=trainer.global_rank,
                            world=trainer.world_size)
    val_loader = D.loader(val, batch_size, bucket_by=bucket_by, num_workers=cfg.num_workers)
    state = RunState(train_loader)
    trainer.callbacks.append(state)
    resume = out_dir / "last.ckpt"  # checked by `fit` before this run started
    trainer.fit(task, train_loader, val_loader,
                ckpt_path=str(resume) if resume.is_file() else None)
    if trainer.global_rank != 0:
        return

    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    F.atomic_write(out_dir / BEST, lambda tmp: torch.save(best["state_dict"], tmp))
    history = pd.DataFrame(task.history)
    F.atomic_write(out_dir / HISTORY, lambda tmp: history.to_csv(tmp, index=False))
    best_epoch = int(best["epoch"])
    best_score = float(history.loc[history["epoch"] == best_epoch, "val_score"].iloc[0])
    F.write_text(out_dir / DONE, json.dumps({
        "best_epoch": best_epoch, "best_score": best_score, "steps": state.steps,
        "train_seconds": round(state.seconds, 3), "devices": trainer.world_size}))
    for stale in ("last.ckpt", "best.ckpt"):
        (out_dir / stale).unlink(missing_ok=True)  # resumable state is no longer needed


# ------------------------------------------------------------ runs side by side on the CPU

class _TrainingAhead(BaseException):
    """`fit` handed its run to the worker processes (a BaseException: no paper's code
    catches it on the way back to `train_ahead`)."""


_ahead: list[Future] | None = None  # the runs `train_ahead`'s current pass submitted
_pools: dict[int, ProcessPoolExecutor] = {}  # started once, kept for the process's life


def _quiet_worker() -> None:
    """A worker's own output would land in a notebook's cells (a kernel captures file
    descriptors 1 and 2) or interleave with the caller's bars: it goes to /dev/null in a
    report. Its errors still reach the caller with `Future.result`."""
    if in_report():
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    warnings.filterwarnings("ignore")


def pool(workers: int) -> ProcessPoolExecutor:
    """The stage's worker processes (quiet in a report), started once and reused."""
    if workers not in _pools:  # spawn: a forked kernel with torch's thread pools can hang
        _pools[workers] = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                              initializer=_quiet_worker)
    return _pools[workers]


def _train_in_worker(task: Task, train: list, val: list, out_dir: str, cfg: Training,
                     options: dict) -> None:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    train_run(task, train, val, out_dir, replace(cfg, progress=False), **options)


def _can_train_ahead(cfg: Training | None) -> bool:
    return (cfg is not None and cfg.workers > 1 and cfg.accelerator == "cpu"
            and not _multi_device(cfg))


def train_ahead(runs: Sequence[tuple[int, Fold]], train_fold: Callable, workers: int,
                desc: str) -> None:
    """Train every run that `train_fold` would start, `workers` at a time in processes.

    A pass calls `train_fold(fold, seed)` for every run, with `fit` collecting each run it
    has not finished instead of training it (its fingerprint is taken as usual), then
    waits for the collected runs. Runs that need an earlier one (fine-tuning after
    pre-training) are collected by the next pass. Nothing here opens a test part or
    records a choice: `fold_loop` does both afterwards, from the finished runs."""
    global _ahead
    for step in range(1, 100):
        submitted: list[Future] = []
        _ahead = submitted
        try:
            for seed, fold in runs:
                seed_everything(seed)
                with contextlib.suppress(_TrainingAhead):
                    train_fold(fold, seed)
        finally:
            _ahead = None
        if not submitted:
            return
        for future in progress(as_completed(submitted), total=len(submitted), unit="run",
                               desc=f"{desc}: pass {step}, {workers} processes"):
            future.result()
    raise RuntimeError(f"{desc}: runs still unfinished after 99 passes")


# ------------------------------------------------------------------ multi-device jobs

JOB = "launch"  # the job folder under a run's out_dir


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


def _read_done(path: Path) -> dict:
    done = json.loads(path.read_text())
    return {"best_epoch": int(done["best_epoch"]), "best_score": float(done["best_score"])}


def _read_history(path: Path) -> pd.DataFrame:
    history = pd.read_csv(path)
    if history.empty or not {"epoch", "val_score"} <= set(history.columns):
        raise ValueError(f"no epochs with a validation score (columns {list(history.columns)})")
    return history


RUN_FILES = {DONE: _read_done, HISTORY: _read_history,
             BEST: lambda path: torch.load(path, map_location="cpu", weights_only=True)}


def _finished(task: Task, out_dir: Path) -> FitResult | None:
    """The finished run in `out_dir`, loaded into `task`; None when one of its files cannot
    be read (that file is set aside, the run's other results removed: it is trained again)."""
    files = {}
    for name, read in RUN_FILES.items():
        try:
            files[name] = read(out_dir / name)
            if name == BEST:
                task.load_state_dict(files[name])
        except Exception as err:  # noqa: BLE001 - whatever is unreadable is made again
            F.set_aside(out_dir / name, f"unreadable run file ({type(err).__name__}: {err})")
            for other in RUN_FILES:
                (out_dir / other).unlink(missing_ok=True)
            return None
    task.eval()
    done = files[DONE]
    return FitResult(str(out_dir / BEST), done["best_score"], done["best_epoch"],
                     files[HISTORY])


@torch.no_grad()
def predict(task: Task | nn.Module, items: Sequence[dict], batch_size: int = 32,
            keys: Sequence[str] = ("logits", "pred")) -> dict[str, np.ndarray]:
    """The model's outputs for `items`, in order, concatenated over batches (eval mode)."""
    task.eval()
    outputs: dict[str, list] = {}
    for batch in D.loader(items, batch_size):
        out = task(batch)
        for key in keys:
            if key in out:
                outputs.setdefault(key, []).append(out[key].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}


# ----------------------------------------------------------------------- cross-validation


def fold_loop(corpus: D.Corpus, train_fold: Callable[[Fold, int], tuple[dict, Callable]],
              *, seeds: Sequence[int] = (0,), val_fraction: float = 0.1,
              desc: str = "folds", cfg: Training | None = None) -> pd.DataFrame:
    """The one fold loop of every paper stage: for each seed and fold,
    `train_fold(fold, seed)` trains and chooses on the fold's training and validation parts
    and returns `(choice, predict)`; the choice is recorded with `Fold.select` before the
    test part is opened, then `predict(test_rows)` gives the fold's prediction rows.
    Each fold starts from `seed_everything(seed)`. Returns the rows of every fold.
    With `cfg.workers` > 1 (one CPU device), the `fit` runs are trained ahead in processes
    (`train_ahead`)."""
    if not seeds:
        raise ValueError("no seeds given")
    runs = [(seed, fold) for seed in seeds
            for fold in corpus.folds(seed=seed, val_fraction=val_fraction)]
    if _can_train_ahead(cfg):
        train_ahead(runs, train_fold, cfg.workers, desc)
    rows = []
    for seed, fold in progress(runs, desc=desc, unit="fold"):
        seed_everything(seed)
        choice, predict_test = train_fold(fold, seed)
        fold.select(**choice)
        rows.append(predict_test(fold.test().reset_index(drop=True)))
    return pd.concat(rows, ignore_index=True)


def cross_validate(corpus: D.Corpus, make_items: Callable[[pd.DataFrame], list[dict]],
                   make_task: Callable[[Fold, int], Task], out_dir: str | Path,
                   cfg: Training | None = None, *, seeds: Sequence[int] = (0,),
                   fingerprint: dict | None = None, val_fraction: float = 0.1,
                   train_items: Callable[[pd.DataFrame], list[dict]] | None = None,
                   **fit_options) -> pd.DataFrame:
    """`fold_loop` with one Lightning task per fold: train on the fold's train part, choose
    the epoch on its validation part, record the choice, then predict its test part.

    `make_task(fold, seed)` builds a fresh task (it may fit things on `fold.train()`, such
    as label embeddings or a vocabulary, or load the fold's checkpoint of another system);
    `make_items(rows)` turns manifest rows into per-utterance dicts with `label` (class
    index) or `target`; `train_items` (default `make_items`) builds the training part's
    items (e.g. with augmented copies). Checkpoints go to `out_dir/seed<s>/fold<k>/`.
    Returns one row per test utterance: utt_id, seed, fold, label, and `pred` plus
    `prob_<class>` (classification) or `true_<dim>` and `pred_<dim>` (regression, on the
    [0, 1] scale of `mmser.training.data.dimensions`).
    """
    cfg = cfg or Training()
    train_items = train_items or make_items

    def train_fold(fold: Fold, seed: int) -> tuple[dict, Callable]:
        task = make_task(fold, seed)
        result = fit(task, train_items(fold.train()), make_items(fold.val()),
                     Path(out_dir) / f"seed{seed}" / f"fold{fold.index}", cfg, seed=seed,
                     fingerprint={**(fingerprint or {}), "seed": seed, "fold": fold.index},
                     **fit_options)
        choice = dict(checkpoint=result.best_path, epoch=result.best_epoch,
                      val_score=result.best_score)
        return choice, lambda test: predictions(task, test, make_items(test), corpus, seed,
                                                 fold.index)

    return fold_loop(corpus, train_fold, seeds=seeds, val_fraction=val_fraction,
                     desc=f"{Path(out_dir).name} folds", cfg=cfg)


def predictions(task: Task, test: pd.DataFrame, items: list[dict], corpus: D.Corpus,
                 seed: int, fold: int) -> pd.DataFrame:
    out = predict(task, items)
    table = pd.DataFrame({"utt_id": test["utt_id"], "seed": seed, "fold": fold,
                          "label": test["label"]})
    if "logits" in out:
        probs = torch.softmax(torch.from_numpy(out["logits"]), -1).numpy()
        table["pred"] = [corpus.classes[i] for i in probs.argmax(-1)]
        for i, name in enumerate(corpus.classes):
            table[f"prob_{name}"] = probs[:, i]
    if "pred" in out:
        truth = torch.stack([item["target"] for item in items]).numpy()
        for i, name in enumerate(D.DIMENSIONS[: out["pred"].shape[1]]):
            table[f"true_{name}"], table[f"pred_{name}"] = truth[:, i], out["pred"][:, i]
    return table
