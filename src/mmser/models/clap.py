"""HuBERT-CLAP (MMASIA 2024) modules and loss: the two stages of Sec. 3 (Figure 1).
The experiment code is in `mmser.papers.clap`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmser.models.layers import masked_mean


class Projection(nn.Module):
    """The projection block of Sec. 3: Linear, GELU, Linear, Dropout, residual add, LayerNorm
    (the residual is the first Linear's output)."""

    def __init__(self, dim_in: int, dim_out: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim_in, dim_out), nn.Linear(dim_out, dim_out)
        self.dropout, self.norm = nn.Dropout(dropout), nn.LayerNorm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.linear1(x)
        return self.norm(projected + self.dropout(self.linear2(F.gelu(projected))))


class Side(nn.Module):
    """One modality (Sec. 3): trainable top layers on cached states, pooling, projection."""

    def __init__(self, dim: int, proj_dim: int, dropout: float, top: nn.Module | None = None,
                 pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be mean or cls, not {pool!r}")
        self.top, self.pool = top, pool
        self.projection = Projection(dim, proj_dim, dropout)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.top is not None:
            states = self.top(states, mask)
        pooled = states[:, 0] if self.pool == "cls" else masked_mean(states, mask)
        return self.projection(pooled)


SIMILARITIES = ("cosine", "dot")


def similarity(audio: torch.Tensor, text: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pairwise audio-text scores (n_audio, n_text). `cosine`: the paper's words ("scaled
    pairwise cosine similarities", in [-1, 1]); `dot`: the CLIP tutorial its head and rates
    follow, plain dot products of the projected embeddings (unbounded)."""
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {kind!r}")
    if kind == "cosine":
        audio, text = F.normalize(audio, dim=-1), F.normalize(text, dim=-1)
    return audio @ text.T


def clip_loss(audio: torch.Tensor, text: torch.Tensor, temperature: float = 1.0,
              text_keys: torch.Tensor | None = None,
              kind: str = "cosine") -> torch.Tensor:
    """Stage 1 loss (Sec. 3, CLIP's): symmetric cross-entropy over `similarity` /
    temperature. Pairs sharing a transcript (`text_keys` equal) are all positives, with equal
    target weight; with distinct texts this is CLIP's loss with identity targets."""
    logits = similarity(audio, text, kind) / temperature
    if text_keys is None:
        same = torch.eye(len(audio), device=audio.device)
    else:
        same = (text_keys[:, None] == text_keys[None, :]).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)
    a2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2a = -(targets.T * logits.T.log_softmax(1)).sum(1).mean()
    return (a2t + t2a) / 2


class ClapModel(nn.Module):
    """Stage 1 (Sec. 3): speech and text sides trained to agree with `clip_loss`."""

    def __init__(self, speech: Side, text: Side, temperature: float = 1.0,
                 similarity: str = "cosine"):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
        self.speech, self.text, self.temperature = speech, text, temperature
        self.similarity = similarity

    def forward(self, batch: dict) -> dict:
        audio = self.speech(batch["speech"], batch["speech_mask"])
        text = self.text(batch["text"], batch["text_mask"])
        loss = clip_loss(audio, text, self.temperature, batch["text_key"], self.similarity)
        return {"loss": loss, "audio": audio, "text": text, "text_key": batch["text_key"]}


class SpeechClassifier(nn.Module):
    """Stage 2 (Sec. 3): the speech side (pre-trained or not) and a linear classifier head."""

    def __init__(self, speech: Side, n_classes: int):
        super().__init__()
        self.speech = speech
        self.head = nn.Linear(speech.projection.norm.normalized_shape[0], n_classes)

    def forward(self, batch: dict) -> dict:
        embedding = self.speech(batch["speech"], batch["speech_mask"])
        logits = self.head(embedding)
        out = {"logits": logits, "embedding": embedding}
        if "label" in batch:
            out["loss"] = F.cross_entropy(logits, batch["label"])
        return out
