"""One training class and one fold loop for every paper stage (PyTorch Lightning).

A paper's model is a plain `nn.Module` whose `forward(batch)` returns a dict with a scalar
`loss` and its predictions: `logits` (classification) or `pred` (regression, one column
per dimension). `Task` wraps it: optimiser and schedule, validation score, logging.
`fit` trains with checkpoint selection on the validation score only, resumes an
interrupted run from its last checkpoint, and skips a run that already finished with the
same fingerprint. `cross_validate` runs every fold and seed and records each choice with
`Fold.select` before the fold's test part is opened.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import nn

from mmser import data as D
from mmser.config import Training
from mmser.metrics import ccc

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
    pre-training). `val_metric`, when given, replaces the score: it receives the list of
    the model's validation outputs (detached) and returns a number, higher is better.
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
        self.history: list[dict] = []  # one row per epoch; saved in checkpoints, so it
        # survives an interrupted and resumed run

    def forward(self, batch: dict) -> dict:
        return self.model(batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch)
        self.log("train_loss", out["loss"], on_step=False, on_epoch=True,
                 batch_size=_batch_size(batch))
        self._train_losses.append(out["loss"].item())
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
        self.history.append({
            "epoch": self.current_epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": float(np.mean([o["loss"].item() for o in outputs])),
            "val_score": score})

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


DONE, FINGERPRINT, BEST = "done.json", "fingerprint.json", "best.pt"


def fit(task: Task, train: Sequence[dict], val: Sequence[dict], out_dir: str | Path,
        cfg: Training | None = None, *, max_epochs: int, batch_size: int, seed: int = 0,
        patience: int | None = None, bucket_by: str | None = None,
        fingerprint: dict | None = None) -> FitResult:
    """Train `task`, keep the epoch with the best validation score, and load its weights.

    `out_dir` holds the run: `last.ckpt` while training (an interrupted run resumes from
    it), then `best.pt` (weights only), `history.csv` and `done.json`. A run whose
    `done.json` and fingerprint match is not trained again; a different fingerprint (other
    parameters, data or code version) starts the run afresh.
    """
    cfg = cfg or Training()
    out_dir = Path(out_dir)
    if not train or not val:
        raise ValueError(f"{out_dir}: {len(train)} training and {len(val)} validation items; "
                         "both must be non-empty (too few speakers or utterances per class "
                         "for this protocol's validation split?)")
    stamp = json.dumps(fingerprint or {}, sort_keys=True, default=str)
    if (out_dir / FINGERPRINT).is_file() and (out_dir / FINGERPRINT).read_text() != stamp:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / FINGERPRINT).write_text(stamp)
    if (out_dir / DONE).is_file():
        return _finished(task, out_dir)

    seed_everything(seed)
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val_score",
                                 mode="max", save_last=True, save_top_k=1,
                                 save_weights_only=False, enable_version_counter=False)
    callbacks = [checkpoint]
    if patience:
        callbacks.append(EarlyStopping(monitor="val_score", mode="max", patience=patience))
    trainer = L.Trainer(
        default_root_dir=out_dir, max_epochs=max_epochs, accelerator=cfg.accelerator,
        devices=cfg.devices, precision=cfg.precision, strategy=cfg.strategy,
        deterministic="warn", callbacks=callbacks, enable_progress_bar=cfg.progress,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=False)
    train_loader = D.loader(train, batch_size, shuffle=True, seed=seed, bucket_by=bucket_by,
                            num_workers=cfg.num_workers)
    val_loader = D.loader(val, batch_size, bucket_by=bucket_by, num_workers=cfg.num_workers)
    resume = out_dir / "last.ckpt"
    trainer.fit(task, train_loader, val_loader,
                ckpt_path=str(resume) if resume.is_file() else None)
    if trainer.global_rank != 0:
        return None  # type: ignore[return-value]

    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    torch.save(best["state_dict"], out_dir / BEST)
    history = pd.DataFrame(task.history)
    history.to_csv(out_dir / "history.csv", index=False)
    best_epoch = int(best["epoch"])
    best_score = float(history.loc[history["epoch"] == best_epoch, "val_score"].iloc[0])
    (out_dir / DONE).write_text(json.dumps({"best_epoch": best_epoch,
                                            "best_score": best_score}))
    for stale in ("last.ckpt", "best.ckpt"):
        (out_dir / stale).unlink(missing_ok=True)  # resumable state is no longer needed
    return _finished(task, out_dir)


def _finished(task: Task, out_dir: Path) -> FitResult:
    task.load_state_dict(torch.load(out_dir / BEST, map_location="cpu", weights_only=True))
    task.eval()
    done = json.loads((out_dir / DONE).read_text())
    return FitResult(str(out_dir / BEST), done["best_score"], done["best_epoch"],
                     pd.read_csv(out_dir / "history.csv"))


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


def cross_validate(corpus: D.Corpus, make_items: Callable[[pd.DataFrame], list[dict]],
                   make_task: Callable[[pd.DataFrame], Task], out_dir: str | Path,
                   cfg: Training | None = None, *, seeds: Sequence[int] = (0,),
                   fingerprint: dict | None = None, val_fraction: float = 0.1,
                   **fit_options) -> pd.DataFrame:
    """Every fold and seed: train on the fold's train part, choose on its validation part,
    record the choice, then predict its test part.

    `make_task(train_rows)` builds a fresh task (it may fit things on the training rows,
    such as label embeddings); `make_items(rows)` turns manifest rows into per-utterance
    dicts with `label` (class index) or `target`. Checkpoints go to
    `out_dir/seed<s>/fold<k>/`. Returns one row per test utterance: utt_id, seed, fold,
    label, and `pred` plus `prob_<class>` (classification) or `true_<dim>` and `pred_<dim>`
    (regression, on the [0, 1] scale of `mmser.data.dimensions`).
    """
    cfg = cfg or Training()
    rows = []
    for seed in seeds:
        for fold in corpus.folds(seed=seed, val_fraction=val_fraction):
            seed_everything(seed)
            train_rows = fold.train()
            task = make_task(train_rows)
            result = fit(task, make_items(train_rows), make_items(fold.val()),
                         Path(out_dir) / f"seed{seed}" / f"fold{fold.index}", cfg, seed=seed,
                         fingerprint={**(fingerprint or {}), "seed": seed, "fold": fold.index},
                         **fit_options)
            fold.select(checkpoint=result.best_path, epoch=result.best_epoch,
                        val_score=result.best_score)
            test = fold.test().reset_index(drop=True)
            rows.append(_predictions(task, test, make_items(test), corpus, seed, fold.index))
    return pd.concat(rows, ignore_index=True)


def _predictions(task: Task, test: pd.DataFrame, items: list[dict], corpus: D.Corpus,
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
