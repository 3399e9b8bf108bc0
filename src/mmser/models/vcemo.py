"""VCEMO (Tang et al., 2024): co-attention fusion of a mel-spectrogram CNN-LSTM, word
embeddings and a BERT sentence vector, trained with cross-entropy plus a supervised
contrastive regulariser on a MoCo queue; and the paper's two compact baselines.

Inputs per utterance (`Experiment.items`): `mel` (frames, n_mels) log-mel spectrogram,
`words` (tokens, dim) static word vectors (the text encoder's non-contextual input
embeddings, hidden state 0 of the feature cache) or `tokens_seq` (ids of words learned on
the training folds), `sent` (dim,) the text encoder's sentence vector, `label`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from scipy.signal import resample_poly
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mmser.corpus.audio import SAMPLE_RATE, load_audio, wave_digest
from mmser.encode.features import FeatureCache

MODALITIES = ("acoustic", "words", "bert")
SHORT = {"acoustic": "Acoustic", "words": "Embeddings", "bert": "BERT"}
AUGMENTATIONS = ("noise", "pitch", "stretch")
N_FFT = 400  # 25 ms window at 16 kHz
MIN_FRAMES = 8  # the CNN halves time twice; shorter clips are zero-padded to this


# ------------------------------------------------------------------ acoustic input


@dataclass(frozen=True)
class MelConfig:
    n_mels: int = 40
    hop_ms: int = 20

    @property
    def hop(self) -> int:
        return SAMPLE_RATE * self.hop_ms // 1000

    @property
    def key(self) -> str:
        return f"logmel-n{self.n_mels}-h{self.hop_ms}"


def _stft(wave: np.ndarray, cfg: MelConfig) -> torch.Tensor:
    return torch.stft(torch.from_numpy(np.ascontiguousarray(wave, np.float32)), N_FFT,
                      cfg.hop, window=torch.hann_window(N_FFT), return_complex=True)


def _stretch(spec: torch.Tensor, rate: float, cfg: MelConfig) -> torch.Tensor:
    """Phase-vocoder time stretch of a complex spectrogram (rate > 1: faster)."""
    advance = torch.linspace(0, math.pi * cfg.hop, spec.shape[0])[:, None]
    return AF.phase_vocoder(spec, rate, advance)


def log_mel(spec: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Complex spectrogram (freq, frames) -> log-mel (frames, n_mels), float32."""
    fb = AF.melscale_fbanks(spec.shape[0], 0.0, SAMPLE_RATE / 2, cfg.n_mels, SAMPLE_RATE)
    mel = (spec.abs() ** 2).T @ fb
    out = torch.log(mel + 1e-6)
    if len(out) < MIN_FRAMES:
        out = torch.cat([out, out.new_full((MIN_FRAMES - len(out), cfg.n_mels), -13.8)])
    return out.float()


def augment(wave: np.ndarray, kind: str, rng: np.random.Generator, cfg: MelConfig,
            snr_db: float = 30.0, max_semitones: float = 2.0,
            max_stretch: float = 0.15) -> torch.Tensor:
    """Log-mel of one augmented view: Gaussian noise at `snr_db`, a pitch shift of up to
    `max_semitones`, or a time stretch by a rate within 1 +- `max_stretch`.

    Pitch shift = resample by a small rational ratio (cheap; torchaudio's pitch_shift
    needs a huge resampling kernel for irrational ratios) then stretch back to length.
    """
    if kind == "noise":
        power = float(np.mean(wave ** 2)) or 1e-8
        noisy = wave + rng.normal(0, math.sqrt(power / 10 ** (snr_db / 10)), len(wave))
        return log_mel(_stft(noisy.astype(np.float32), cfg), cfg)
    if kind == "pitch":
        # at least half a semitone, so the rational ratio below is never 1
        semitones = rng.choice([-1, 1]) * rng.uniform(min(0.5, max_semitones), max_semitones)
        ratio = Fraction(2 ** (semitones / 12)).limit_denominator(100)
        shifted = resample_poly(wave, ratio.denominator, ratio.numerator).astype(np.float32)
        spec = _stft(shifted, cfg)
        return log_mel(_stretch(spec, len(shifted) / len(wave), cfg), cfg)
    if kind == "stretch":
        rate = rng.uniform(1 - max_stretch, 1 + max_stretch)
        return log_mel(_stretch(_stft(wave, cfg), rate, cfg), cfg)
    raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")


def mel_views(paths: Sequence[Path], cache_dir: str | Path, cfg: MelConfig, n_augment: int,
              seed: int = 0, **aug_options) -> list[list[torch.Tensor]]:
    """For each clip: [clean log-mel, augmented view 1, ..., view n_augment], computed once
    and cached under `cache_dir` (fold-independent: views depend on the clip and seed).
    View k uses augmentation k-1 mod 3 (noise, pitch, stretch) with seeded parameters."""
    cache = FeatureCache(cache_dir, cfg.key)
    waves = [load_audio(p).wave for p in paths]
    base = [wave_digest(w) for w in waves]
    options = ",".join(f"{k}={v}" for k, v in sorted(aug_options.items()))
    keys, jobs = [], []
    for digest, wave in zip(base, waves):
        for k in range(n_augment + 1):
            key = digest if k == 0 else hashlib.sha256(
                f"{digest}|{k}|{seed}|{options}".encode()).hexdigest()
            keys.append(key)
            jobs.append((wave, k, key))

    def compute(batch: list) -> list[dict[str, torch.Tensor]]:
        out = []
        for wave, k, key in batch:
            if k == 0:
                mel = log_mel(_stft(wave, cfg), cfg)
            else:
                rng = np.random.default_rng(int(key[:12], 16))
                mel = augment(wave, AUGMENTATIONS[(k - 1) % 3], rng, cfg, **aug_options)
            out.append({"mel": mel.half()})
        return out

    cache.fill(keys, jobs, [len(j[0]) for j in jobs], compute, batch_size=32, desc="log-mels")
    views = [cache.load(key)["mel"].float() for key in keys]
    return [views[i:i + n_augment + 1] for i in range(0, len(views), n_augment + 1)]


# ---------------------------------------------------------------------- text input

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def segment(text: str, mode: str = "auto") -> list[str]:
    """Words of a transcript: Chinese by characters (no segmenter dependency), other
    languages by lower-cased word characters. `auto` picks by the presence of CJK."""
    if mode == "auto":
        mode = "chars" if CJK.search(text) else "words"
    if mode == "chars":
        return [ch for ch in text if CJK.match(ch) or ch.isalnum()]
    if mode == "words":
        return re.findall(r"[\w']+", text.lower())
    raise ValueError(f"unknown segmentation {mode!r}; choose auto, chars or words")


def build_vocab(texts: Sequence[str], mode: str = "auto", min_count: int = 1) -> dict[str, int]:
    """Word -> id over the training texts; 0 is padding, 1 unknown."""
    counts = Counter(w for t in texts for w in segment(t, mode))
    words = sorted(w for w, c in counts.items() if c >= min_count)
    return {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}


def sentence_vector(states: torch.Tensor, pool: str = "mean") -> torch.Tensor:
    """The text encoder's sentence vector from its last layer (tokens, dim): the mean over
    tokens (how all-MiniLM-L6-v2 was trained) or the [CLS] token (BERT)."""
    if pool == "mean":
        return states.mean(0)
    if pool == "cls":
        return states[0]
    raise ValueError(f"unknown sentence pooling {pool!r}; choose mean or cls")


def word_vectors(states0: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Non-contextual input embeddings (hidden state 0) without [CLS] and [SEP]."""
    inner = states0[1:-1] if len(states0) > 2 else states0
    return inner[:max_tokens]


def cached_text_states(cache_dir: str | Path, encoder_name: str, texts: Sequence[str],
                       batch_size: int = 32) -> Callable[[Sequence[str]], list[torch.Tensor]]:
    """Encode `texts` the features stage did not (e.g. the Mandarin variant) into our own
    cache; returns a lookup texts -> every hidden state (layers + 1, tokens, dim)."""
    from mmser.encode.encoders import TextEncoder
    from mmser.encode.features import text_digest, text_features

    encoder = TextEncoder(encoder_name)
    cache = FeatureCache(cache_dir, encoder.key)
    text_features(cache, encoder, list(texts), batch_size=batch_size)

    def lookup(batch: Sequence[str]) -> list[torch.Tensor]:
        return [cache.load(text_digest(t))["hidden"].float() for t in batch]
    return lookup


# -------------------------------------------------------------------- building blocks


def _lengths(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(-1).clamp(min=1)


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed RNN pass (padding never enters the recurrence): outputs (B, T, H) with
    zeros on padding, and the final hidden state (B, H * directions)."""
    lengths = _lengths(mask).cpu()
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, hidden = rnn(packed)
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    last = torch.cat(list(hidden[-(2 if rnn.bidirectional else 1):]), -1)
    return out, last


class Block(nn.Module):
    """MCAN unit: self-attention, or self- then guided attention, each followed by
    add & norm, then a feed-forward layer with add & norm."""

    def __init__(self, dim: int, heads: int, dropout: float, guided: bool):
        super().__init__()
        # no dropout on the attention maps: it dominated the CPU time; outputs keep theirs
        self.self_att = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.guided_att = nn.MultiheadAttention(dim, heads, batch_first=True) if guided \
            else None
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3 if guided else 2))
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor, y_mask: torch.Tensor, x: torch.Tensor | None = None,
                x_mask: torch.Tensor | None = None) -> torch.Tensor:
        att = self.self_att(y, y, y, key_padding_mask=~y_mask, need_weights=False)[0]
        y = self.norms[0](y + self.drop(att))
        if self.guided_att is not None:
            # guided attention: queries from this modality, keys and values from the other
            att = self.guided_att(y, x, x, key_padding_mask=~x_mask, need_weights=False)[0]
            y = self.norms[1](y + self.drop(att))
        return self.norms[-1](y + self.drop(self.ffn(y)))


class CoAttention(nn.Module):
    """Encoder-decoder co-attention (MCAN): `layers` self-attention blocks on x; then
    `layers` self+guided blocks on y, each guided by x's *final* encoder output."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.encoder = nn.ModuleList(Block(dim, heads, dropout, False) for _ in range(layers))
        self.decoder = nn.ModuleList(Block(dim, heads, dropout, True) for _ in range(layers))

    def forward(self, x, x_mask, y, y_mask) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.encoder:
            x = block(x, x_mask)
        for block in self.decoder:
            y = block(y, y_mask, x, x_mask)
        return x, y


class AttFlat(nn.Module):
    """MCAN's attentional pooling of a sequence into one vector (padding excluded)."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
        return (weights.unsqueeze(-1) * x).sum(1)


def align(x: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """Stretch sequence x onto y's time axis (uniform alignment: position t of y takes x's
    position floor(t * len_x / len_y)); padding of y gets zeros."""
    lx, ly = _lengths(x_mask), _lengths(y_mask)
    t = torch.arange(y_mask.shape[1], device=x.device)
    index = (t[None] * lx[:, None] // ly[:, None]).clamp(max=x.shape[1] - 1)
    out = torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
    return out * y_mask[..., None]


class AcousticBranch(nn.Module):
    """Log-mel -> Conv-BatchNorm-ReLU blocks (stride 2: each halves time and frequency,
    cheaper than pooling at full resolution) -> LSTM."""

    def __init__(self, n_mels: int, dim: int, channels: int = 8, blocks: int = 2):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.convs = nn.ModuleList()
        c_in, width = 1, n_mels
        for _ in range(blocks):
            self.convs.append(nn.Sequential(nn.Conv2d(c_in, channels, 3, stride=2, padding=1),
                                            nn.BatchNorm2d(channels), nn.ReLU()))
            c_in, width = channels, (width + 1) // 2
        self.lstm = nn.LSTM(channels * width, dim, batch_first=True)

    def forward(self, mel: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(mel.unsqueeze(1))  # (B, 1, T, n_mels)
        for conv in self.convs:
            # zero the padding before each convolution, so it sees what an unpadded clip sees
            x = conv(x * mask[:, None, :, None])
            lengths = (_lengths(mask) + 1) // 2
            mask = torch.arange(x.shape[2], device=x.device)[None] < lengths[:, None]
        x = x.permute(0, 2, 1, 3).flatten(2)  # (B, T', channels * n_mels')
        return run_rnn(self.lstm, x, mask)[0], mask


class WordBranch(nn.Module):
    """Word vectors (static, or learned on the training folds) -> LSTM -> 1-D conv."""

    def __init__(self, in_dim: int, dim: int, vocab_size: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, in_dim, padding_idx=0) if vocab_size else None
        self.lstm = nn.LSTM(in_dim, dim, batch_first=True)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.embed is not None:
            x, mask = self.embed(batch["tokens_seq"]), batch["tokens_seq_mask"]
        else:
            x, mask = batch["words"], batch["words_mask"]
        out, _ = run_rnn(self.lstm, x, mask)
        return F.relu(self.conv(out.transpose(1, 2))).transpose(1, 2) * mask[..., None], mask


# ------------------------------------------------------------------------ the model


class VcemoNet(nn.Module):
    """The paper's encoder up to the fused vector, for any subset of the three modalities.

    Round 1 (acoustic, words): co-attention with the words as the encoder side and the
    audio frames guided by them; merged by element-wise addition of the audio output and
    the word output stretched onto the audio time axis. Round 2 (that sequence, BERT):
    the BERT vector is the encoder side; merged by concatenation along the sequence.
    A final self-attention block and attentional pooling give the fused vector.
    Missing modalities drop their round (one modality: self-attention only).
    """

    def __init__(self, modalities: Sequence[str], n_mels: int, word_dim: int, sent_dim: int,
                 dim: int = 64, heads: int = 4, layers: int = 1, dropout: float = 0.1,
                 vocab_size: int | None = None):
        super().__init__()
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, "
                             f"got {list(modalities)}")
        has = set(self.modalities)
        self.acoustic = AcousticBranch(n_mels, dim) if "acoustic" in has else None
        self.words = WordBranch(word_dim, dim, vocab_size) if "words" in has else None
        self.bert = nn.Linear(sent_dim, dim) if "bert" in has else None
        self.round1 = CoAttention(dim, heads, layers, dropout) if {"acoustic", "words"} <= has \
            else None
        seq = has & {"acoustic", "words"}
        self.round2 = CoAttention(dim, heads, layers, dropout) if seq and "bert" in has else None
        self.alone = nn.ModuleList(Block(dim, heads, dropout, False) for _ in range(layers)) \
            if len(self.modalities) == 1 else None
        self.final = Block(dim, heads, dropout, False)
        self.pool = AttFlat(dim)
        self.dim = dim

    def forward(self, batch: dict) -> torch.Tensor:
        seq = None
        if self.acoustic is not None:
            seq = self.acoustic(batch["mel"], batch["mel_mask"])
        if self.words is not None:
            words = self.words(batch)
            if seq is not None:
                w, a = self.round1(words[0], words[1], seq[0], seq[1])
                seq = (a + align(w, words[1], seq[1]), seq[1])
            else:
                seq = words
        if self.bert is not None:
            b = self.bert(batch["sent"]).unsqueeze(1)
            b_mask = torch.ones(b.shape[:2], dtype=torch.bool, device=b.device)
            if seq is not None:
                b, s = self.round2(b, b_mask, seq[0], seq[1])
                seq = (torch.cat([b, s], 1), torch.cat([b_mask, seq[1]], 1))
            else:
                seq = (b, b_mask)
        x, mask = seq
        for block in self.alone or []:
            x = block(x, mask)
        return self.pool(self.final(x, mask), mask)


def supcon_loss(anchors: torch.Tensor, anchor_labels: torch.Tensor, contrast: torch.Tensor,
                contrast_labels: torch.Tensor, temperature: float = 1.0,
                exclude_self: bool = False) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) of L2-normalised features.

    For each anchor i: minus the mean over its positives p (same label in the contrast set
    A(i)) of log softmax_a(z_i . z_a / t)[p]; averaged over the anchors that have a
    positive. `exclude_self` drops the diagonal when the contrast set is the anchors.
    """
    logits = anchors @ contrast.T / temperature
    positive = anchor_labels[:, None] == contrast_labels[None, :]
    if exclude_self:
        eye = torch.eye(len(anchors), contrast.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(eye, float("-inf"))
        positive = positive & ~eye
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    count = positive.sum(1)
    per_anchor = -(log_prob.masked_fill(~positive, 0).sum(1)) / count.clamp(min=1)
    has = count > 0
    return per_anchor[has].mean() if has.any() else logits.sum() * 0


class VcemoModel(nn.Module):
    """Encoder + predictor (two-layer MLP) + projector (128-d) with the paper's loss
    (L_CE + alpha * L_SupCon) / (1 + alpha).

    SupCon (alpha > 0, training only): anchors are the projector outputs of this dropout
    pass; the contrast set is a momentum encoder's outputs for the same batch (a second
    dropout view, so each anchor has its own positive) plus a MoCo queue of earlier keys.
    """

    def __init__(self, net: nn.Module, n_classes: int, alpha: float = 0.0,
                 temperature: float = 1.0, proj_dim: int = 128, queue_size: int = 1024,
                 momentum: float = 0.99, dropout: float = 0.1):
        super().__init__()
        dim = net.dim
        self.net = net
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                       nn.Linear(dim, n_classes))
        self.projector = nn.Linear(dim, proj_dim)
        self.alpha, self.temperature, self.momentum = alpha, temperature, momentum
        if alpha > 0:
            self.key_net = copy.deepcopy(net)
            self.key_projector = copy.deepcopy(self.projector)
            for p in self._key_params():
                p.requires_grad_(False)
            self.register_buffer("queue", torch.zeros(queue_size, proj_dim))
            self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _key_params(self) -> list[nn.Parameter]:
        return [*self.key_net.parameters(), *self.key_projector.parameters()]

    def _query_params(self) -> list[nn.Parameter]:
        return [*self.net.parameters(), *self.projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query (MoCo); the key encoder gets no gradient."""
        for k, q in zip(self._key_params(), self._query_params()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        size = len(self.queue)
        keys, labels = keys[-size:], labels[-size:]
        index = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[index], self.queue_labels[index] = keys, labels
        self.queue_ptr.fill_(int((self.queue_ptr + len(keys)) % size))

    def forward(self, batch: dict) -> dict:
        fused = self.net(batch)
        logits = self.predictor(fused)
        z = F.normalize(self.projector(fused), dim=-1)
        loss = F.cross_entropy(logits, batch["label"])
        if self.training and self.alpha > 0:
            with torch.no_grad():
                self.momentum_update()
                keys = F.normalize(self.key_projector(self.key_net(batch)), dim=-1)
            filled = self.queue_labels >= 0
            contrast = torch.cat([keys, self.queue[filled]])
            contrast_labels = torch.cat([batch["label"], self.queue_labels[filled]])
            supcon = supcon_loss(z, batch["label"], contrast, contrast_labels,
                                 self.temperature)
            self.enqueue(keys, batch["label"])
            loss = (loss + self.alpha * supcon) / (1 + self.alpha)
        return {"loss": loss, "logits": logits, "proj": z, "fused": fused}


# ---------------------------------------------------------------------- baselines


class Yoon2018(nn.Module):
    """Multimodal dual recurrent encoder (Yoon et al., SLT 2018), compact: a GRU over the
    audio frames and a GRU over the word vectors; final states concatenated -> classifier.
    (The original adds prosodic features to the audio state; the log-mels stand in.)"""

    def __init__(self, n_mels: int, word_dim: int, n_classes: int, dim: int = 64,
                 vocab_size: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0) if vocab_size else None
        self.audio = nn.GRU(n_mels, dim, batch_first=True)
        self.text = nn.GRU(word_dim, dim, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * dim, n_classes))

    def forward(self, batch: dict) -> dict:
        words, w_mask = _words(batch, self.embed)
        _, a = run_rnn(self.audio, batch["mel"], batch["mel_mask"])
        _, t = run_rnn(self.text, words, w_mask)
        logits = self.head(torch.cat([a, t], -1))
        return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}


class Xu2019(nn.Module):
    """Learned alignment (Xu et al., Interspeech 2019), compact: BiLSTMs over audio frames
    and words; each word attends (additive attention) over the frames to get its aligned
    audio vector; [word; aligned audio] -> BiLSTM -> max pooling over words -> classifier."""

    def __init__(self, n_mels: int, word_dim: int, n_classes: int, dim: int = 64,
                 vocab_size: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0) if vocab_size else None
        h = dim // 2
        self.audio = nn.LSTM(n_mels, h, batch_first=True, bidirectional=True)
        self.text = nn.LSTM(word_dim, h, batch_first=True, bidirectional=True)
        self.w_text, self.w_audio = nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim)
        self.v = nn.Linear(dim, 1, bias=False)
        self.fuse = nn.LSTM(2 * dim, h, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, n_classes))

    def forward(self, batch: dict) -> dict:
        words, w_mask = _words(batch, self.embed)
        # every other frame: halves the alignment cost, the frames are 20 ms apart anyway
        mel, m_mask = batch["mel"][:, ::2], batch["mel_mask"][:, ::2]
        a, _ = run_rnn(self.audio, mel, m_mask)
        t, _ = run_rnn(self.text, words, w_mask)
        scores = self.v(torch.tanh(self.w_text(t)[:, :, None] + self.w_audio(a)[:, None]))
        weights = scores.squeeze(-1).masked_fill(~m_mask[:, None], float("-inf")).softmax(-1)
        fused, _ = run_rnn(self.fuse, torch.cat([t, weights @ a], -1), w_mask)
        pooled = fused.masked_fill(~w_mask[..., None], float("-inf")).max(1).values
        logits = self.head(pooled)
        return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}


def _words(batch: dict, embed: nn.Embedding | None) -> tuple[torch.Tensor, torch.Tensor]:
    if embed is not None:
        return embed(batch["tokens_seq"]), batch["tokens_seq_mask"]
    return batch["words"], batch["words_mask"]
