"""LE-MER (Wang et al., Interspeech 2023) modules and losses: the label-enhanced text and
speech branches (Sec. 2.1-2.2, eq. 1-6) and the label-guided cross-attention fusion
(Sec. 2.3, eq. 7-12). The experiment code is in `mmser.papers.lemer`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmser.models.layers import masked_max, masked_mean, masked_softmax

FUSIONS = ("constraint", "sum", "label", "vanilla")  # LEMER's fusion choices (Table 3)
# How A_l enters the fusion (C1-C3): "raw", eq. 9-10 as printed (cosine products in
# [-1, 1] per class, summed; eq. 10 pulls A_l and A_r towards each other); "normalised",
# softmax over the frames like A_r, and a fixed target (detached) in eq. 10.
LABEL_ATTENTIONS = ("normalised", "raw")


def attention_mse(a: torch.Tensor, b: torch.Tensor, tmask: torch.Tensor,
                  smask: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean squared difference of two (B, tokens, frames) maps over real pairs only
    (a masked sum: indexing the pairs would copy both maps)."""
    pairs = (tmask[:, :, None] & smask[:, None, :]).to(a.dtype)
    return ((a - b).square() * pairs).sum() / pairs.sum().clamp(min=1)


def cosine_map(h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1 / 4: cosine of every position with every label, (B, l, d), (c, d) -> (B, l, c)."""
    return F.normalize(h, dim=-1) @ F.normalize(labels, dim=-1).T


class Branch(nn.Module):
    """Sec. 2.1 / 2.2, one modality: states H (through trainable top layers, if any) and,
    with a label embedding, the label-token / label-frame map G (eq. 1 / 4). `proj` maps H
    into the label space where that differs (wav2vec 2.0 codevectors); else identity."""

    def __init__(self, label_init: torch.Tensor | None = None, top: nn.Module | None = None,
                 proj: nn.Module | None = None, top_lr: float = 1e-6):
        super().__init__()
        self.top, self.top_lr = top, top_lr
        self.label = None if label_init is None else nn.Parameter(label_init.detach().clone())
        self.proj = proj if proj is not None else nn.Identity()

    def forward(self, h: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.top is not None:
            h = self.top(h, mask)
        if self.label is None:
            return h, None
        return h, cosine_map(self.proj(h), self.label)


def label_loss(g: torch.Tensor | None, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 2-3 / 5-6: cross-entropy of softmax(mean over the sequence of G); 0 without G."""
    if g is None:
        return torch.zeros((), device=y.device)
    return F.cross_entropy(masked_mean(g, mask), y)


class Unimodal(nn.Module):
    """Table 1: one branch, max-pooled, linear; plus mu * the label loss (eq. 3 / 6), if any."""

    def __init__(self, key: str, branch: Branch, dim: int, n_classes: int, mu_label: float):
        super().__init__()
        self.key, self.branch, self.mu_label = key, branch, mu_label
        self.head = nn.Linear(dim, n_classes)

    def forward(self, batch: dict) -> dict:
        mask = batch[f"{self.key}_mask"]
        h, g = self.branch(batch[self.key], mask)
        logits = self.head(masked_max(h, mask))
        y = batch["label"]
        parts = {"L_m": F.cross_entropy(logits, y), "L_g": label_loss(g, mask, y)}
        loss = parts["L_m"] + self.mu_label * parts["L_g"]
        return {"loss": loss, "logits": logits, "G": g,
                "parts": {k: v.detach() for k, v in parts.items()}}


class LEMER(nn.Module):
    """Sec. 2.3, eq. 7-12: label-enhanced text and speech branches fused by cross-attention
    from tokens to frames. fusion (Table 3): "constraint" (C1: A_r, pulled towards A_l by
    eq. 10), "sum" (C2: A_r + A_l), "label" (C3: A_l), "vanilla" (C4: A_r).
    label_attention (see LABEL_ATTENTIONS) says how A_l enters, the same in C1, C2 and C3.
    `parts` of the output: the four terms of eq. 12, detached (L_c is measured in every
    fusion, and counts in the loss only in "constraint")."""

    def __init__(self, text_key: str, text: Branch, speech: Branch, d_text: int,
                 d_speech: int, n_classes: int, fusion: str = "constraint",
                 mu: Sequence[float] = (1.0, 0.5, 0.2, 0.2),
                 label_attention: str = "normalised"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r} is not one of {FUSIONS}")
        if label_attention not in LABEL_ATTENTIONS:
            raise ValueError(f"label_attention {label_attention!r} is not one of "
                             f"{LABEL_ATTENTIONS}")
        if len(mu) != 4:
            raise ValueError(f"mu needs the 4 weights of eq. 12, got {list(mu)}")
        self.text_key, self.text, self.speech = text_key, text, speech
        self.fusion, self.mu, self.scale = fusion, tuple(mu), 1 / math.sqrt(d_text)
        self.label_attention = label_attention
        self.W = nn.Linear(d_speech, d_text, bias=False)  # eq. 7's W
        self.head = nn.Linear(d_text + d_speech, n_classes)

    def attention(self, ht, tmask, hs, smask, gt, gs) -> dict[str, torch.Tensor]:
        # eq. 7, H_t W H_s^T, multiplied from the text side: contexts are shorter than the
        # frame sequences, so (H_t W) H_s^T is the cheaper order. The 1/sqrt(d) scale only
        # re-parametrises W (keeps early softmaxes soft).
        ar = masked_softmax((ht @ self.W.weight) @ hs.transpose(1, 2) * self.scale, smask)
        al = gt @ gs.transpose(1, 2)  # eq. 9
        if self.label_attention == "normalised":
            guide = masked_softmax(al, smask)
            target = guide.detach()  # eq. 10 trains A_r towards A_l, not A_l towards A_r
        else:  # padded frames get no weight in either reading
            guide = target = al * smask[:, None, :].to(al.dtype)
        weights = {"constraint": ar, "vanilla": ar, "label": guide,
                   "sum": ar + guide}[self.fusion]
        return {"A_r": ar, "A_l": al, "A_l_target": target, "A": weights}

    def forward(self, batch: dict) -> dict:
        tmask, smask = batch[f"{self.text_key}_mask"], batch["speech_mask"]
        ht, gt = self.text(batch[self.text_key], tmask)
        hs, gs = self.speech(batch["speech"], smask)
        if gt is None or gs is None:
            raise ValueError("LE-MER needs both label embeddings (text and speech)")
        att = self.attention(ht, tmask, hs, smask, gt, gs)
        hm = torch.cat([ht, att["A"] @ hs], -1)  # eq. 8
        logits = self.head(masked_max(hm, tmask))  # eq. 11
        y = batch["label"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.fusion == "constraint"):
            constraint = attention_mse(att["A_l_target"], att["A_r"], tmask, smask)  # eq. 10
        parts = {"L_m": F.cross_entropy(logits, y), "L_c": constraint,
                 "L_gt": label_loss(gt, tmask, y), "L_gs": label_loss(gs, smask, y)}
        mu = dict(zip(parts, self.mu))
        if self.fusion != "constraint":
            mu["L_c"] = 0.0  # measured (logged), not trained
        loss = sum(mu[k] * part for k, part in parts.items())  # eq. 12
        return {"loss": loss, "logits": logits, "G_t": gt, "G_s": gs, **att,
                "parts": {k: v.detach() for k, v in parts.items()}}
