"""Speech states computed from the waveform when a batch is built, not read from a cache.

Where a paper fine-tunes a speech encoder (its top blocks, or all of them above the frozen
convolutional front end), the stage trains those blocks on the hidden state below them.
With `training.speech_from_waves: true` (the paper profiles that fine-tune) that state is
not cached by the features stage: each utterance is a `LiveRef`, and `collate` (the
DataLoader) reads the clip and runs the frozen part of the encoder on it, so the training
reads waveforms and the disk holds no corpus of states (for MSP-Podcast's 166 h, one
HuBERT base state is 46 GB). A `LiveRef` loads exactly what the cache would hold for that
state: the same encoder, each clip on its own (as the features stage encodes group-norm
models), float16 values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch

from mmser.corpus.audio import SAMPLE_RATE, load_audio
from mmser.encode.features import StateRef


@functools.lru_cache(maxsize=8)
def frozen_encoder(name: str, layers: int | None):
    """The encoder `name` cut to its first `layers` layers, loaded once per process: on the
    GPU in the main process when there is one, on the CPU in a DataLoader worker."""
    from mmser.encode.encoders import SpeechEncoder, best_device
    from mmser.encode.features import no_kernel_cache

    no_kernel_cache()  # a clip length is a new conv shape: no compiled kernel kept for each
    worker = torch.utils.data.get_worker_info() is not None
    encoder = SpeechEncoder(name, layers)
    if encoder.kind != "ssl":
        raise ValueError(f"{name}: training.speech_from_waves runs SSL encoders (wav2vec 2.0, "
                         "HuBERT, WavLM); read Whisper's states from the features cache")
    return encoder.to("cpu" if worker else best_device())


def cut_below(state: int | None, n_states: int, layers: int | None) -> int | None:
    """The layers an encoder (cut to `layers`, with `n_states` hidden states) needs to give
    hidden state `state` as it does whole: one more than the state (the last state of a cut
    model passes through a stable-layer-norm model's final norm, an inner state of the
    whole model does not); all of them (`layers`) for its last state or every state."""
    return layers if state is None or state >= n_states - 2 else state + 1


@dataclass(frozen=True)
class LiveRef(StateRef):
    """One utterance's hidden state `layer` (absolute; None: every state) of encoder
    `model` (cut to `cut` layers, `n_states` hidden states), computed from `path` when
    loaded. `entry` names the encoder key and the clip's content digest, so a run's
    fingerprint over these proves the same inputs as one over cached states."""

    path: str = ""
    model: str = ""
    cut: int | None = None
    n_states: int = 0

    def load(self) -> torch.Tensor:
        encoder = frozen_encoder(self.model, cut_below(self.layer, self.n_states, self.cut))
        with torch.inference_mode():
            states, _ = encoder([load_audio(self.path).wave])
        states = states[:, 0].half()  # what the cache stores
        x = states if self.layer is None else states[min(self.layer, len(states) - 1)]
        if self.frames:
            x = x[:, : self.frames] if self.layer is None else x[: self.frames]
        x = x.to(getattr(torch, self.dtype))
        return (x.transpose(0, 1) if self.time_first else x).clone()


@dataclass
class LiveSpeech:
    """`LiveRef`s of the utterances' clips (`paths`: utterance id -> audio file) through the
    speech encoder `name` (cut to `layers`)."""

    name: str
    layers: int | None
    paths: Mapping[str, str | Path]
    _frames: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def encoder(self):
        return frozen_encoder(self.name, self.layers)

    def frames(self, utt_id: str) -> int:
        """The clip's encoder frames, from its samples (the file's header at 16 kHz)."""
        if utt_id not in self._frames:
            path = self.paths[utt_id]
            info = sf.info(str(path))
            samples = info.frames if info.samplerate == SAMPLE_RATE else \
                len(load_audio(path).wave)
            lengths = self.encoder.model._get_feat_extract_output_lengths(
                torch.tensor([samples]))
            self._frames[utt_id] = int(lengths[0])
        return self._frames[utt_id]

    def refs(self, utt_ids: Sequence[str], layer: int | None,
             digests: Mapping[str, str]) -> list[LiveRef]:
        """Hidden state `layer` (None: every state) of each utterance; `digests`: utterance
        id -> the clip's content digest (the features index's)."""
        if layer is not None and not isinstance(layer, int):
            raise TypeError(f"{self.name}: computed states are read one at a time or all "
                            f"(layer {layer!r})")
        encoder = self.encoder
        n = encoder.n_layers + 1
        if layer is not None and not -n <= layer < n:
            raise IndexError(f"{self.name}: hidden state {layer} does not exist; the "
                             f"encoder has {n} (0 = embeddings)")
        state = None if layer is None else layer % n
        refs = []
        for u in utt_ids:
            frames = self.frames(u)
            shape = (frames, encoder.dim) if state is not None else (n, frames, encoder.dim)
            refs.append(LiveRef("", f"live:{encoder.key}/{digests[u]}", "hidden", state,
                                shape, path=str(self.paths[u]), model=self.name,
                                cut=self.layers, n_states=n))
        return refs


def live_speech(training, encoders, corpus, name: str | None = None,
                layers: int | None = None) -> LiveSpeech | None:
    """The stage's speech encoder (`encoders.speech`, or `name` cut to `layers`) run on the
    corpus's clips when `training.speech_from_waves`; None otherwise (cached states)."""
    if not training.speech_from_waves:
        return None
    from mmser.corpus.manifest import resolve_paths

    df = corpus.df
    paths = dict(zip(df["utt_id"], resolve_paths(df, corpus.audio_root)))
    if name is None:
        name, layers = encoders.speech, encoders.speech_layers
    return LiveSpeech(name, layers, paths)
