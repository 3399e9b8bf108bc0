"""Frozen-encoder features, computed once and cached on disk.

One safetensors file per (encoder, input): `<root>/<encoder key>/<digest>.safetensors`, where
the encoder key covers the model name and layer cut, and the digest covers the audio
samples (speech) or the exact string (text). A changed clip or text gets a new entry; an
unchanged one is never encoded twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mmser.audio import wave_digest


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate}


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FeatureCache:
    """Get-or-compute store of every hidden state of one encoder."""

    def __init__(self, root: str | Path, encoder_key: str):
        self.dir = Path(root) / encoder_key
        self.stats = CacheStats()

    def path(self, digest: str) -> Path:
        return self.dir / f"{digest}.safetensors"

    def load(self, digest: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(digest)))

    def fill(self, digests: Sequence[str], items: Sequence, sizes: Sequence[float],
             compute: Callable[[list], list[dict[str, torch.Tensor]]], batch_size: int,
             desc: str = "encoding") -> None:
        """Compute the entries not yet on disk, in batches of similar size (less padding)."""
        todo = {}
        for digest, item, size in zip(digests, items, sizes):
            if self.path(digest).is_file() or digest in todo:
                self.stats.hits += 1
            else:
                todo[digest] = (size, item)
                self.stats.misses += 1
        if not todo:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        order = sorted(todo, key=lambda d: todo[d][0])
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
            chunk = order[start:start + batch_size]
            with torch.inference_mode():
                outputs = compute([todo[d][1] for d in chunk])
            for digest, tensors in zip(chunk, outputs):
                tmp = self.path(digest).with_suffix(".tmp")
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
                tmp.replace(self.path(digest))  # atomic: an interrupted run leaves no half file


def speech_features(cache: FeatureCache, encoder, waves: Sequence[np.ndarray],
                    batch_size: int = 8) -> list[str]:
    """Make sure every clip's hidden states (layers+1, frames, dim, float16) are cached."""
    digests = [wave_digest(w) for w in waves]

    def compute(batch: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        states, lengths = encoder(batch)
        return [{"hidden": states[:, i, :n].half()} for i, n in enumerate(lengths.tolist())]

    cache.fill(digests, waves, [len(w) for w in waves], compute, batch_size,
               desc=f"speech {cache.dir.name}")
    return digests


def text_features(cache: FeatureCache, encoder, texts: Sequence[str],
                  batch_size: int = 32) -> list[str]:
    """Make sure every text's hidden states (layers+1, tokens, dim) and token ids are cached."""
    digests = [text_digest(t) for t in texts]

    def compute(batch: list[str]) -> list[dict[str, torch.Tensor]]:
        states, mask, ids = encoder(batch)
        lengths = mask.sum(-1).tolist()
        return [{"hidden": states[:, i, :n].half(), "input_ids": ids[i, :n]}
                for i, n in enumerate(lengths)]

    cache.fill(digests, texts, [len(t) for t in texts], compute, batch_size,
               desc=f"text {cache.dir.name}")
    return digests


def pooled(cache: FeatureCache, digests: Sequence[str], layer: int = -1) -> np.ndarray:
    """Mean over time of one layer for each entry: (n, dim) float32."""
    return np.stack([cache.load(d)["hidden"][layer].float().mean(0).numpy() for d in digests])


def write_stats(path: str | Path, stats: dict[str, CacheStats]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v.as_dict() for k, v in stats.items()}, indent=2))
