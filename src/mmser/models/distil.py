"""Audio-textual distilled models (de Oliveira et al., Interspeech 2023), the modules and
loss: branches per modality, mean+max pooling, concatenation and the FFN head of Sec. 2
(Figure 1, eq. 1-2); the CCC loss of Sec. 3.3 (eq. 3); the layer weighting of Sec. 4.2
(Figure 2). The experiment code is in `mmser.papers.distil`."""

from __future__ import annotations

import torch
from torch import nn

from mmser.models.layers import masked_max, masked_mean, mean_max_pool

OUTPUTS = ("linear", "sigmoid")
POOLINGS = ("sum", "concat")


def ccc_per_dim(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation coefficient of each column (eq. 3), population moments
    (as `mmser.report.metrics.ccc`): 2 cov / (var_y + var_p + (mu_y - mu_p)^2)."""
    mu_p, mu_y = pred.mean(0), target.mean(0)
    cov = ((pred - mu_p) * (target - mu_y)).mean(0)
    var_p, var_y = pred.var(0, unbiased=False), target.var(0, unbiased=False)
    return 2 * cov / (var_p + var_y + (mu_p - mu_y) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sec. 3.3: 1 - CCC (eq. 3) averaged over the dimensions."""
    return 1 - ccc_per_dim(pred, target).mean()


class Frozen(nn.Module):
    """A frozen encoder (Sec. 4.2-4.3): no gradients, and eval mode even when the model
    trains (no dropout), so its outputs stay those of the trained or pretrained encoder."""

    def __init__(self, module: nn.Module | None = None):
        super().__init__()
        self.module = module
        if module is not None:
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> "Frozen":
        return super().train(False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x if self.module is None else self.module(x, mask)


def pool(x: torch.Tensor, mask: torch.Tensor, pooling: str = "sum") -> torch.Tensor:
    """Sec. 2's average- and max-pooling over the sequence. "sum": mean + max, a vector of
    size d as the paper's P_A (its text gives the size, not how the two are combined; a sum
    adds no parameters); "concat": [mean, max], size 2 d (ours before). (B, L, D) -> (B, D
    or 2 D)."""
    if pooling == "sum":
        return masked_mean(x, mask) + masked_max(x, mask)
    if pooling == "concat":
        return mean_max_pool(x, mask)
    raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


class LayerWeights(nn.Module):
    """Sec. 4.2 (Figure 2): softmax-normalised learnable weights over all hidden states,
    (batch, length, states, dim) -> (batch, length, dim). Each state is first normalised
    over its features (LayerNorm without affine parameters; not in the paper): the states
    differ in scale by orders of magnitude, so unnormalised weights would measure scale
    as much as importance, and the weights of Figure 2 would not be comparable."""

    def __init__(self, n_states: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_states))  # uniform at the start

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = nn.functional.layer_norm(x, x.shape[-1:])
        return torch.einsum("btld,l->btd", normed, self.weights)


def head(in_dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    """The FFN of Sec. 2: two linear layers with tanh between (dropout before each, the
    0.1 dropout throughout of Sec. 3.2)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.Tanh(),
                         nn.Dropout(dropout), nn.Linear(hidden, out))


class DistilModel(nn.Module):
    """f_A / f_A+T of eq. 1-2 (Sec. 2.1-2.2, Figure 1) on cached states: branches per
    modality (batch keys `speech`, `text`), each (x, mask) -> states, then mean+max pooling
    (`pool`), concatenation and the head. forward(batch) -> {pred, loss}.

    output: "linear" (the paper's head as it is) or "sigmoid" (bounded to the targets'
    [0, 1]: 1 - CCC alone does not hold the mean in place, and a linear output drifted far
    outside [0, 1] and stalled on some folds)."""

    def __init__(self, branches: dict[str, nn.Module], dims: dict[str, int], hidden: int,
                 n_out: int = 3, dropout: float = 0.1, pool_norm: bool = False,
                 output: str = "linear", pooling: str = "sum"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r} is not one of {OUTPUTS}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.output, self.pooling = output, pooling
        self.branches = nn.ModuleDict(branches)
        width = {name: (2 if pooling == "concat" else 1) * dims[name] for name in branches}
        # optional LayerNorm of each modality's pooled vector: frozen states of different
        # scales (the 2-layer cut's reach 20) otherwise saturate the tanh on one modality
        self.norms = nn.ModuleDict({name: nn.LayerNorm(width[name]) if pool_norm
                                    else nn.Identity() for name in branches})
        self.head = head(sum(width.values()), hidden, n_out, dropout)

    def forward(self, batch: dict) -> dict:
        pooled = [self.norms[name](pool(branch(batch[name].float(), batch[f"{name}_mask"]),
                                        batch[f"{name}_mask"], self.pooling))
                  for name, branch in self.branches.items()]
        pred = self.head(torch.cat(pooled, -1))
        out = {"pred": torch.sigmoid(pred) if self.output == "sigmoid" else pred}
        if "target" in batch:
            out["loss"] = ccc_loss(out["pred"], batch["target"].float())
        return out


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
