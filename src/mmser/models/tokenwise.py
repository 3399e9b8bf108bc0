"""Tokenwise contrastive speech-text pre-training (Sarkar & Tarigopula, Idiap-RR-07-2025):
modules and loss of Sec. 3.3-3.4 and 4.2-4.3. The experiment code is in
`mmser.papers.tokenwise`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Sec. 3.3: B_s = softmax(Q K^T [/ sqrt(d)]) V, Q from text tokens, K and V from speech
    frames. The paper has no 1/sqrt(d) scale (`scale=True` adds it); padded frames get no
    weight."""

    def __init__(self, speech_dim: int, text_dim: int, scale: bool = False):
        super().__init__()
        self.q = nn.Linear(text_dim, text_dim, bias=False)
        self.k = nn.Linear(speech_dim, text_dim, bias=False)
        self.v = nn.Linear(speech_dim, text_dim, bias=False)
        self.scale = 1 / math.sqrt(text_dim) if scale else 1.0

    def forward(self, tokens: torch.Tensor, speech: torch.Tensor,
                speech_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, M, Dt), speech (B, N, Ds), speech_mask (B, N) True = real ->
        B_s (B, M, Dt), attention (B, M, N). Ordered as (Q W_k) S^T and (softmax(.) S) W_v:
        the same values, without projecting every frame (M tokens << N frames)."""
        query = self.q(tokens) @ self.k.weight  # Q W_k: (B, M, Ds); Linear keeps W^T
        scores = query @ speech.transpose(1, 2) * self.scale
        scores = scores.masked_fill(~speech_mask[:, None, :], float("-inf"))
        attention = scores.softmax(-1)
        return self.v(attention @ speech), attention


def tokenwise_contrastive_loss(teacher: torch.Tensor, student: torch.Tensor,
                               tau: float) -> torch.Tensor:
    """L_con of Sec. 3.4 (the tau factor included), s_ij = cos(B_i, B_s,j) / tau, over the b
    tokens of a batch. teacher B, student B_s: (b, D), row i of one matching row i of the
    other."""
    sim = F.normalize(teacher, dim=-1) @ F.normalize(student, dim=-1).T / tau
    diagonal = torch.arange(len(sim), device=sim.device)
    theta = sim.log_softmax(1)[diagonal, diagonal] + sim.log_softmax(0)[diagonal, diagonal]
    return -tau / (2 * len(sim)) * theta.sum()


class Aligner(nn.Module):
    """Pre-training (Sec. 3.3-3.4): cross-attention contextualisation + the loss. Batches hold
    `speech_seq` (S), `tokens_seq` (T), `teacher_seq` (B) and masks; forward returns the loss
    and the real tokens' B and B_s (for the 1-NN validation of Sec. 4.3)."""

    def __init__(self, speech_dim: int, text_dim: int, tau: float = 0.1,
                 scale: bool = False):
        super().__init__()
        self.attention = CrossAttention(speech_dim, text_dim, scale)
        self.tau = tau

    def contextualise(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention(batch["tokens_seq"], batch["speech_seq"],
                              batch["speech_seq_mask"])

    def forward(self, batch: dict) -> dict:
        student, _ = self.contextualise(batch)
        mask = batch["tokens_seq_mask"]
        teacher, student = batch["teacher_seq"][mask], student[mask]
        return {"loss": tokenwise_contrastive_loss(teacher, student, self.tau),
                "teacher": teacher.detach(), "student": student.detach()}


def functionals(seqs: Sequence[torch.Tensor]) -> torch.Tensor:
    """f_mu_sigma (Sec. 4.2): mean and standard deviation over the first axis of each (L, D)
    sequence, concatenated: (n, 2D). Population std, so a one-token sequence gives 0."""
    rows = []
    for seq in seqs:
        if len(seq) == 0:
            raise ValueError("an empty sequence has no functionals")
        std, mean = torch.std_mean(seq.float(), dim=0, correction=0)
        rows.append(torch.cat([mean, std]))
    return torch.stack(rows)


class Classifier(nn.Module):
    """Standardisation (training-set statistics), three [Linear, LayerNorm, ReLU] blocks
    and a final Linear (Sec. 4.3)."""

    def __init__(self, x_train: torch.Tensor, n_classes: int, hidden: int = 256):
        super().__init__()
        std, mean = torch.std_mean(x_train, dim=0)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp_min(1e-6))
        blocks, width = [], x_train.shape[1]
        for _ in range(3):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class PredictorModel(nn.Module):
    """The exported "ours B_s" system (`mmser.predict`): B_s of Sec. 3.3 from `tokens_seq`
    (T) and `speech_seq` (S), functionals over its real tokens (Sec. 4.2), the classifier
    (Sec. 4.3). forward(collated batch) -> {"logits"}."""

    def __init__(self, speech_dim: int, text_dim: int, n_classes: int, hidden: int,
                 scale: bool = False):
        super().__init__()
        self.attention = CrossAttention(speech_dim, text_dim, scale)
        self.classifier = Classifier(torch.zeros(2, 2 * text_dim), n_classes, hidden)

    def forward(self, batch: dict) -> dict:
        student, _ = self.attention(batch["tokens_seq"], batch["speech_seq"],
                                    batch["speech_seq_mask"])
        lengths = batch["tokens_seq_mask"].sum(1).tolist()
        return {"logits": self.classifier(functionals([s[:n] for s, n in
                                                       zip(student, lengths)]))}
