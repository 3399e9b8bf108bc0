"""Figures shared by the stages; each returns the figure and saves it as PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless scripts; a notebook kernel keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, path: str | Path) -> plt.Figure:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def class_distribution(df: pd.DataFrame, path: str | Path, by: str = "session") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.countplot(data=df, x="label", hue=by, ax=ax)
    ax.set(title=f"Utterances per class and {by}", xlabel="", ylabel="utterances")
    return _save(fig, path)


def durations(df: pd.DataFrame, path: str | Path, hue: str = "split") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(data=df, x="duration", hue=hue, bins=30, ax=ax)
    ax.set(title="Utterance durations", xlabel="seconds")
    return _save(fig, path)


def bars(table: pd.DataFrame, x: str, y: str, path: str | Path, hue: str | None = None,
         title: str = "", ylabel: str | None = None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    ax.set(title=title, xlabel="", ylabel=ylabel or y)
    return _save(fig, path)


def confusion(matrix, labels, path: str | Path, title: str = "",
              normalise: bool = True) -> plt.Figure:
    """Confusion matrix, rows = true class; normalised per row (recall) by default."""
    import numpy as np

    matrix = np.asarray(matrix, float)
    shown = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) if normalise else matrix
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 1.5, 1.1 * len(labels) + 1))
    sns.heatmap(shown, annot=True, fmt=".2f" if normalise else ".0f", cmap="Blues",
                xticklabels=labels, yticklabels=labels, vmin=0, ax=ax, cbar=False)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _save(fig, path)


def tsne(features, labels, path: str | Path, title: str = "", seed: int = 0) -> plt.Figure:
    """2-D t-SNE (scikit-learn) of feature vectors, coloured by class."""
    import numpy as np
    from sklearn.manifold import TSNE

    features = np.asarray(features, float)
    perplexity = float(min(30, max(2, (len(features) - 1) / 3)))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                  init="pca").fit_transform(features)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=list(labels), s=12, ax=ax)
    ax.set(title=title, xticks=[], yticks=[])
    return _save(fig, path)


def curves(history: pd.DataFrame, path: str | Path, title: str = "",
           x: str = "epoch", hue: str | None = None) -> plt.Figure:
    """Training curves: every column of `history` except `x` and `hue`, one panel each."""
    columns = [c for c in history.columns if c not in (x, hue)]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), squeeze=False)
    for ax, column in zip(axes[0], columns):
        sns.lineplot(data=history, x=x, y=column, hue=hue, ax=ax, marker="o", errorbar=None)
        ax.set(title=column, ylabel="")
    fig.suptitle(title)
    return _save(fig, path)
