"""Figures shared by the stages; each returns the figure and saves it as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless; notebooks still display the returned figure
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
