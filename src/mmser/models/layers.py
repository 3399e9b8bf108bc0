"""Pieces more than one paper's model uses: masked pooling over padded sequences, a
residual bottleneck adapter, and the top layers of a pretrained encoder as a trainable
module on cached states. Masks are (batch, length) booleans, True on real positions."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions: x (B, L, D), mask (B, L) -> (B, D)."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real positions: x (B, L, D), mask (B, L) -> (B, D)."""
    return x.masked_fill(~mask[..., None], torch.finfo(x.dtype).min).amax(1)


def mean_max_pool(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and max over the sequence, concatenated: (B, L, D) -> (B, 2 D)."""
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], -1)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (keys); padded keys get zero weight. mask (B, keys)."""
    return scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1)


class Adapter(nn.Module):
    """Residual bottleneck adapter (Houlsby et al. 2019) on an encoder's cached states: the
    CPU stand-in for fine-tuning the encoder. The output projection starts at zero, so
    training starts from the pretrained features."""

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, bottleneck), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(bottleneck, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class TopLayers(nn.Module):
    """The last `k` transformer layers of an encoder (copies), trainable on cached states.

    Partial fine-tuning without running the frozen part again: fed hidden state
    `input_layer` (= layers - k) of the feature cache, it returns what the whole encoder
    returns at its last layer (`norm`: Whisper's final layer norm, or a stable-layer-norm
    wav2vec 2.0's), so training these layers equals fine-tuning them with the layers below
    frozen. Build one from an encoder with `mmser.encode.encoders.top_layers`.
    forward(hidden (B, L, D), mask (B, L)) -> (B, L, D).
    """

    def __init__(self, layers: Sequence[nn.Module], norm: nn.Module | None, input_layer: int):
        super().__init__()
        self.k, self.input_layer = len(layers), input_layer
        self.layers = copy.deepcopy(nn.ModuleList(list(layers)))
        self.norm = copy.deepcopy(norm) if norm is not None else nn.Identity()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # additive attention mask (batch, 1, query, key), the form these layers take
        additive = torch.zeros(mask.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~mask, torch.finfo(hidden.dtype).min)[:, None, None, :]
        for layer in self.layers:
            out = layer(hidden, additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.norm(hidden)
