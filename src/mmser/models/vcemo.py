"""VCEMO (Tang et al., 2024), the modules: a mel-spectrogram CNN-LSTM, a word-vector
LSTM-conv and a projected sentence vector (Sec. 3.2), fused by two rounds of MCAN
co-attention (Sec. 3.3); the loss, cross-entropy plus supervised contrastive on a MoCo
queue (Sec. 3.4); and compact versions of two of the paper's baselines (Yoon's multi-hop
attention, Xu's learned alignment). The paper numbers no equations, so docstrings name
sections and figures.

Batches are dicts of padded tensors with boolean masks (`<key>_mask`, True on real
positions): `mel` (B, frames, n_mels), `words` (B, tokens, dim) static word vectors or
`tokens_seq` (B, tokens) ids of learned words, `sent` (B, dim), `label` (B,). They are
built by `mmser.papers.vcemo`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

MODALITIES = ("acoustic", "words", "bert")


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
    """One unit of the co-attention layer (Sec. 3.3, Fig. 2; MCAN): self-attention, or
    self- then guided attention (the Sec. 3.3 attention formula), each with add & norm,
    then a feed-forward layer with add & norm."""

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
    """The encoder-decoder co-attention layer (Sec. 3.3, Fig. 2): `layers` self-attention
    blocks on x; then `layers` self+guided blocks on y, each guided by x's *final* output."""

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
    """Attentional pooling of the fused sequence into one vector before the predictor
    (Sec. 3.3 leaves this open; MCAN's AttFlat), padding excluded."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
        return (weights.unsqueeze(-1) * x).sum(1)


def align(x: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
    """Stretch sequence x onto y's time axis, for the element-wise addition of Sec. 3.3
    (position t of y takes x's position floor(t * len_x / len_y)); y's padding gets zeros."""
    lx, ly = _lengths(x_mask), _lengths(y_mask)
    t = torch.arange(y_mask.shape[1], device=x.device)
    index = (t[None] * lx[:, None] // ly[:, None]).clamp(max=x.shape[1] - 1)
    out = torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
    return out * y_mask[..., None]


class AcousticBranch(nn.Module):
    """Acoustic pre-process (Sec. 3.2): log-mel -> Conv-BatchNorm-ReLU blocks (stride 2:
    each halves time and frequency, cheaper than pooling at full resolution) -> LSTM."""

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


def _embedding(vocab_size: int | None, dim: int) -> nn.Embedding | None:
    """Word vectors learned on the training folds (id 0 pads) when there is a vocabulary."""
    return nn.Embedding(vocab_size, dim, padding_idx=0) if vocab_size else None


def _words(batch: dict, embed: nn.Embedding | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The word sequence and its mask: the embedded ids, or else the static vectors."""
    if embed is not None:
        return embed(batch["tokens_seq"]), batch["tokens_seq_mask"]
    return batch["words"], batch["words_mask"]


class WordBranch(nn.Module):
    """Word-embedding pre-process (Sec. 3.2): word vectors (static, or learned on the
    training folds) -> LSTM -> 1-D conv."""

    def __init__(self, in_dim: int, dim: int, vocab_size: int | None = None):
        super().__init__()
        self.embed = _embedding(vocab_size, in_dim)
        self.lstm = nn.LSTM(in_dim, dim, batch_first=True)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = _words(batch, self.embed)
        out, _ = run_rnn(self.lstm, x, mask)
        return F.relu(self.conv(out.transpose(1, 2))).transpose(1, 2) * mask[..., None], mask


# ------------------------------------------------------------------------ the model


class VcemoNet(nn.Module):
    """The encoder of Fig. 1 up to the fused vector (Sec. 3.2-3.3), for any subset of the
    three modalities (the Table 3 ablation).

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
    """L_SupCon of Sec. 3.4 (Khosla et al. 2020) on L2-normalised features.

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
    """Encoder + predictor (two-layer MLP, Sec. 3.3) + projector (128-d) with the loss
    L = (L_CE + alpha * L_SupCon) / (1 + alpha) of Sec. 3.4 (Fig. 3).

    SupCon (alpha > 0, training only): anchors are the projector outputs of this dropout
    pass; the contrast set is a momentum encoder's outputs for the same batch (a second
    dropout view, so each anchor has its own positive; Sec. 3.5) plus a MoCo queue of
    earlier keys.
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
        # under mixed precision the keys come out in bf16; the queue keeps full precision
        self.queue[index], self.queue_labels[index] = keys.to(self.queue.dtype), labels
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


def hop(query: torch.Tensor, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One attention hop of Yoon et al. 2019: softmax over positions of the dot products
    query . h_i (padding excluded), then the weighted sum of the states h_i."""
    scores = (states @ query.unsqueeze(-1)).squeeze(-1).masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1).unsqueeze(-1) * states).sum(1)


class YoonMHA(nn.Module):
    """Table 1 baseline: the multi-hop attention model (MHA; Yoon et al., ICASSP 2019, the
    paper's ref. [21]). Bidirectional LSTM encoders over the audio frames and over the word
    vectors (dim/2 per direction, so both give states of width dim). Hops alternate
    between the modalities: hop 1, the audio's final state attends over the text states
    (H1); hop 2, H1 attends over the audio states (H2); hop 3, H2 over the text again (H3).
    MHA-n classifies the concatenation of its last two vectors: [audio final; H1], [H1; H2]
    or [H2; H3]. (The original appends prosodic features to the audio's final state and
    reads MFCCs; the log-mels, every other frame, stand in for both.)"""

    def __init__(self, n_mels: int, word_dim: int, n_classes: int, dim: int = 64,
                 vocab_size: int | None = None, dropout: float = 0.1, hops: int = 2):
        super().__init__()
        if hops not in (1, 2, 3):
            raise ValueError(f"MHA has 1, 2 or 3 hops, got {hops}")
        self.hops = hops
        self.embed = _embedding(vocab_size, word_dim)
        self.audio = nn.LSTM(n_mels, dim // 2, batch_first=True, bidirectional=True)
        self.text = nn.LSTM(word_dim, dim // 2, batch_first=True, bidirectional=True)
        width = 2 * (dim // 2)  # one state: both directions
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, n_classes))

    def forward(self, batch: dict) -> dict:
        words, w_mask = _words(batch, self.embed)
        # every other frame (as Xu2019): halves the recurrence, the baseline's main cost
        mel, m_mask = batch["mel"][:, ::2], batch["mel_mask"][:, ::2]
        a_states, a_last = run_rnn(self.audio, mel, m_mask)
        t_states, _ = run_rnn(self.text, words, w_mask)
        memories = ((t_states, w_mask), (a_states, m_mask))
        vectors = [a_last]
        for n in range(self.hops):  # text, audio, text
            states, mask = memories[n % 2]
            vectors.append(hop(vectors[-1], states, mask))
        return _classified(self.head(torch.cat(vectors[-2:], -1)), batch)


class Xu2019(nn.Module):
    """Table 1-2 baseline: learned alignment (Xu et al., Interspeech 2019), compact: BiLSTMs
    over audio frames and words; each word attends (additive attention) over the frames to
    get its aligned audio vector; [word; aligned audio] -> BiLSTM -> max pooling over words
    -> classifier."""

    def __init__(self, n_mels: int, word_dim: int, n_classes: int, dim: int = 64,
                 vocab_size: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.embed = _embedding(vocab_size, word_dim)
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
        return _classified(self.head(pooled), batch)


def _classified(logits: torch.Tensor, batch: dict) -> dict:
    return {"loss": F.cross_entropy(logits, batch["label"]), "logits": logits}
