"""Figures of the tokenwise stage: pre-training curves (Figures 2, 3), the cross-modal
attention map (Figure 4) and the validation UAR of every encoder layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmser.report.plots import _save, plt, sns


def pretrain_curves(history: pd.DataFrame, path: str | Path, reference: float | None = None,
                    reference_label: str = "") -> plt.Figure:
    """Left: training and validation loss (Figure 2); right: 1-NN validation accuracy per
    configuration (Figure 3). `history`: epoch, config, train_loss, val_loss, val_score."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    long = history.melt(["epoch", "config"], ["train_loss", "val_loss"], "split", "loss")
    sns.lineplot(data=long, x="epoch", y="loss", hue="config", style="split", ax=axes[0],
                 marker="o", errorbar=None)
    axes[0].set(title="Contrastive loss (Figure 2)")
    sns.lineplot(data=history, x="epoch", y="val_score", hue="config", ax=axes[1],
                 marker="o", errorbar=None)
    if reference is not None:
        axes[1].axhline(reference, color="grey", ls="--", label=reference_label)
        axes[1].legend(fontsize=8)
    axes[1].set(title="1-NN token accuracy, validation (Figure 3)", ylabel="accuracy")
    return _save(fig, path)


def attention_map(weights: np.ndarray, tokens: Sequence[str], path: str | Path,
                  frame_seconds: float = 0.02, title: str = "") -> plt.Figure:
    """Figure 4: cross-attention weights, tokens (rows) x speech frames (columns)."""
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(tokens) + 1.5))
    extent = (0, weights.shape[1] * frame_seconds, len(tokens) - 0.5, -0.5)
    image = ax.imshow(weights, aspect="auto", cmap="viridis", extent=extent,
                      interpolation="nearest")
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.grid(False)
    ax.set(xlabel="time (s)", title=title or "Cross-modal attention (Figure 4)")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _save(fig, path)


def layer_scores(trials: pd.DataFrame, path: str | Path) -> plt.Figure:
    """Validation UAR of each candidate view (layer) at the grid's first point, per system
    and protocol: the layer choice, made on validation only."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    several = trials["protocol"].nunique() > 1  # seaborn cannot dodge a single hue level
    sns.pointplot(data=trials, x="view", y="val_UAR", hue="protocol", ax=ax,
                  errorbar=("sd", 1), dodge=0.3 if several else False)
    ax.tick_params(axis="x", rotation=30)
    ax.set(title="Validation UAR by feature layer (mean ± sd over folds and seeds)",
           xlabel="", ylabel="val UAR")
    return _save(fig, path)
