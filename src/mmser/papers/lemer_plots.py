"""LE-MER's own figures: the K sweep (paper Figure 3) and the label maps of one utterance
(paper Figure 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mmser.report.plots import _save, plt


def k_sweep(table: pd.DataFrame, path: str | Path, title: str = "") -> plt.Figure:
    """WA and UA (mean ± std over folds and seeds) against K; columns K, WA, UA, *_std."""
    table = table.sort_values("K")
    fig, ax = plt.subplots(figsize=(5, 3.3))
    for metric in ("WA", "UA"):
        ax.errorbar(table["K"], table[metric], yerr=table[f"{metric}_std"], marker="o",
                    capsize=3, label=metric)
    ax.set(xscale="log", xlabel="K (speech units per class)", ylabel="score", title=title)
    ax.legend()
    return _save(fig, path)


def label_maps(tokens: Sequence[str], g_text: np.ndarray, g_speech: np.ndarray,
               wave: np.ndarray, sample_rate: int, path: str | Path,
               title: str = "") -> plt.Figure:
    """Waveform, the class-averaged label-frame map over time and the class-averaged
    label-token map over tokens of one utterance."""
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), gridspec_kw={"height_ratios": [1, 1, 1.2]})
    seconds = len(wave) / sample_rate
    axes[0].plot(np.arange(len(wave)) / sample_rate, wave, lw=0.4, color="0.3")
    axes[0].set(xlim=(0, seconds), ylabel="waveform", title=title)
    frames = np.linspace(0, seconds, len(g_speech), endpoint=False)
    axes[1].fill_between(frames, g_speech, g_speech.min(), color="tab:orange", alpha=0.7)
    axes[1].set(xlim=(0, seconds), xlabel="seconds", ylabel="mean G_s")
    axes[2].bar(range(len(g_text)), g_text, color="tab:blue")
    axes[2].set_xticks(range(len(g_text)), list(tokens), rotation=60, fontsize=8)
    axes[2].set(ylabel="mean G_t", ylim=(min(0, g_text.min()), g_text.max() * 1.1 + 1e-6))
    return _save(fig, path)
