"""A resource plan for a paper profile, before a GPU is rented.

    python -m mmser.plan profiles/paper/clap.yaml [--disk 64G --ram 128G --gpu-mem 141G]
    python -m mmser.plan --measure        # the plan beside measured tiny runs (1x and 4x)
    python -m mmser.plan --gpu-check [--dry]   # a few hundred bf16 steps of every profile

For every stage the profile runs (transcribe, features, the paper stage) the plan prints
the disk, host memory (peak RSS), GPU memory and GPU hours at the paper's corpus size, and
which limit of the given machine would be exceeded. The figures are arithmetic on what the
code stores and holds (read from `mmser.encode.features`, `encoders`, `whisper` and the
stage modules; each term below says where), on the models' dimensions (a table of the
paper models' public sizes, overridden by a local folder's config.json) and on the corpus
size. Every figure is extrapolated except where the output says "measured": `--measure`
runs the same data paths on tiny local models and prints the plan beside the measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

PAPERS = ("clap", "lemer", "distil", "vcemo", "tokenwise")
SAMPLE_RATE = 16_000
MAX_TEXT_TOKENS = 128  # TextEncoder's max_length (features stage)
ENTRY_OVERHEAD = 200  # bytes of a safetensors header per cache entry (measured: ~130-200)
KEY_BYTES = 150  # a clip's digest and size, kept by the features stage
REF_BYTES = 330  # a StateRef held per utterance and sequence when streaming (tracemalloc
#                  over 10,000 references with the cache's path lengths)
RUNTIME_RSS = 1.0e9  # python + torch + transformers + pandas: an allowance (`--measure`
#                      prints this machine's measured value as the "runtime" row)

# ------------------------------------------------------------------------------ models


@dataclass(frozen=True)
class Model:
    """What the plan needs of an encoder: its kind, layers, width, heads and parameters;
    for wav2vec 2.0-like models the convolutional front end (channels, kernels, strides)."""
    name: str
    kind: str  # "ssl" (HuBERT, wav2vec 2.0, WavLM) | "whisper" (its encoder) | "text"
    layers: int
    dim: int
    heads: int
    params: float
    conv: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    source: str = "table"

    @property
    def layer_params(self) -> float:
        """Parameters of one transformer block (attention 4 d^2, feed-forward 8 d^2)."""
        return 12 * self.dim ** 2

    def frames(self, seconds: float) -> float:
        """Frames a clip of `seconds` gives: the conv front end's output length (ssl), Whisper's
        (mel frames - 1) // 2 + 1 at 100 mel frames a second, or 0 for a text model."""
        samples = int(round(seconds * SAMPLE_RATE))
        if self.kind == "whisper":
            return (samples // 160 - 1) // 2 + 1
        if self.kind == "ssl":
            for k, s in zip(self.conv[1], self.conv[2]):
                samples = (samples - k) // s + 1
            return max(samples, 0)
        return 0.0


_W2V_CONV = ((512,) * 7, (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
# the paper models' public sizes (model cards / config.json on the Hub); params of Whisper
# are its encoder's, the only part the stages run
KNOWN = {m.name: m for m in [
    Model("facebook/hubert-base-ls960", "ssl", 12, 768, 12, 94.4e6, _W2V_CONV),
    Model("facebook/wav2vec2-base", "ssl", 12, 768, 12, 95.0e6, _W2V_CONV),
    Model("facebook/wav2vec2-large-robust", "ssl", 24, 1024, 16, 317.4e6, _W2V_CONV),
    Model("ntu-spml/distilhubert", "ssl", 2, 768, 12, 23.5e6, _W2V_CONV),
    Model("microsoft/wavlm-base-plus", "ssl", 12, 768, 12, 94.4e6, _W2V_CONV),
    Model("openai/whisper-base", "whisper", 6, 512, 8, 20.6e6),
    Model("openai/whisper-large", "whisper", 32, 1280, 20, 637e6),
    Model("whisper-tiny.en", "whisper", 4, 384, 6, 8.2e6),
    Model("bert-base-uncased", "text", 12, 768, 12, 109.5e6),
    Model("bert-base-chinese", "text", 12, 768, 12, 102.3e6),
    Model("bert-base-multilingual-cased", "text", 12, 768, 12, 177.9e6),
    Model("distilbert-base-uncased", "text", 6, 768, 12, 66.4e6),
    Model("huawei-noah/TinyBERT_General_4L_312D", "text", 4, 312, 12, 14.4e6),
    Model("all-MiniLM-L6-v2", "text", 6, 384, 12, 22.7e6),
]}


def _param_count(folder: Path, prefix: str = "") -> float | None:
    """Parameters in a folder's model.safetensors, from its header alone."""
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    with path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return float(sum(math.prod(t["shape"]) for k, t in header.items()
                     if k != "__metadata__" and prefix in k))


def model_info(name: str, layers: int | None = None) -> Model:
    """The dimensions of an encoder by name (`name@k` or `layers` keeps its first k layers):
    a local folder's config.json first, else the table of paper models."""
    if "@" in name:
        name, cut = name.rsplit("@", 1)
        layers = int(cut)
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        c = json.loads((folder / "config.json").read_text())
        kind = "whisper" if c.get("model_type") == "whisper" else (
            "ssl" if "conv_dim" in c else "text")
        get = lambda *keys: next(c[k] for k in keys if k in c)  # noqa: E731
        model = Model(
            name, kind, get("encoder_layers", "num_hidden_layers", "n_layers"),
            get("d_model", "hidden_size", "dim"),
            get("encoder_attention_heads", "num_attention_heads", "n_heads"),
            _param_count(folder, "encoder" if kind == "whisper" else "") or 0.0,
            (tuple(c["conv_dim"]), tuple(c["conv_kernel"]), tuple(c["conv_stride"]))
            if kind == "ssl" else None, "config.json")
    elif name in KNOWN:
        model = KNOWN[name]
    else:
        raise KeyError(f"{name}: not a local folder with a config.json and not one of the "
                       f"paper models the plan knows ({', '.join(sorted(KNOWN))})")
    if layers is not None and layers < model.layers:
        body = model.layer_params * model.layers
        model = replace(model, layers=layers,
                        params=model.params - body + model.layer_params * layers)
    return model


# ----------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Split:
    """A set of clips as the plan sees it: count, total and longest duration, words a text
    and word pieces a word (about 1.3 for English transcripts under BERT's vocabulary);
    utterances a dialogue (0: none), for the turns a context can hold."""
    n: int
    seconds: float
    max_seconds: float
    words: float
    pieces: float = 1.3
    turns: float = 0.0
    audio_rate: float = 2 * 16_000  # bytes a second of the release's audio (16-bit PCM)

    def scaled(self, factor: float) -> "Split":
        return replace(self, n=int(round(self.n * factor)), seconds=self.seconds * factor)

    @property
    def mean_seconds(self) -> float:
        return self.seconds / max(self.n, 1)

    def tokens(self) -> float:
        """Word pieces of one text, [CLS] and [SEP] (the encoder's cap)."""
        return min(MAX_TEXT_TOKENS, self.pieces * self.words + 2)


@dataclass(frozen=True)
class Corpus:
    """`encoded`: what the features stage encodes (every split it reads); `labelled`: the
    utterances inside the protocol; `read`: pre-training speech (LibriSpeech)."""
    name: str
    encoded: Split
    labelled: Split
    folds: int
    read: Split | None = None
    note: str = ""


# Public sizes: IEMOCAP 10,039 utterances / about 12 h (5,531 in the 4-class set, excited
# merged); MSP-Podcast v1.10 104,267 utterances / about 166 h; LibriSpeech 960 h of training
# speech in 281,241 utterances (longest about 35 s). Words per text: typical transcripts.
IEMOCAP = Split(10_039, 12 * 3600, 34.1, 12, turns=10_039 / 151)  # 151 dialogues
LIBRISPEECH = Split(281_241, 960 * 3600, 35.2, 33, audio_rate=59.3e9 / (960 * 3600))  # FLAC
MSP_PODCAST = Split(104_267, 166 * 3600, 11.0, 15)


def paper_corpus(P) -> Corpus:
    """The paper's corpus size for a profile's dataset section."""
    d = P.dataset
    if d.name == "iemocap":
        labelled = IEMOCAP.scaled(5_531 / IEMOCAP.n) if d.classes == 4 else IEMOCAP
        corpus = Corpus("IEMOCAP", IEMOCAP, replace(labelled, max_seconds=IEMOCAP.max_seconds),
                        5, note="10,039 utterances, 12 h")
    elif d.name == "msp_podcast":
        corpus = Corpus("MSP-Podcast", MSP_PODCAST, MSP_PODCAST, 1,
                        note="v1.10: 104,267 utterances, 166 h (every rated one)")
    else:
        raise ValueError(f"no paper-scale size for dataset {d.name!r}")
    if d.read_corpus == "librispeech":
        read = LIBRISPEECH if d.read_max is None else replace(
            LIBRISPEECH.scaled(d.read_max / LIBRISPEECH.n), n=d.read_max)
        corpus = replace(corpus, encoded=_union(corpus.encoded, read), read=read,
                         note=corpus.note + f"; LibriSpeech {read.n:,} utterances, "
                         f"{read.seconds / 3600:,.0f} h")
    return corpus


def _union(a: Split, b: Split) -> Split:
    return Split(a.n + b.n, a.seconds + b.seconds, max(a.max_seconds, b.max_seconds),
                 (a.words * a.n + b.words * b.n) / (a.n + b.n),
                 (a.pieces * a.n + b.pieces * b.n) / (a.n + b.n), max(a.turns, b.turns))


# ------------------------------------------------------------------------ the estimate


@dataclass
class Need:
    """One stage's needs. `terms` say where each byte goes (label -> bytes)."""
    stage: str
    disk: dict[str, float] = field(default_factory=dict)
    ram: dict[str, float] = field(default_factory=dict)
    gpu_mem: float = 0.0
    gpu_hours: float = 0.0
    cpu_tflop: float = 0.0  # encoding on the CPU (the features stage never uses a GPU)
    notes: list[str] = field(default_factory=list)
    trained: list = field(default_factory=list)  # the stage's `Trained` models


def states_bytes(model: Model, split: Split, states: int | None = None, dtype: int = 2,
                 text: bool = False) -> float:
    """Bytes of `states` hidden states (None: all, layers + 1) per frame or token, summed
    over a split's clips or texts."""
    n_states = model.layers + 1 if states is None else states
    per = split.n * split.tokens() if text else split.n * model.frames(split.mean_seconds)
    return n_states * per * model.dim * dtype


def read_bytes(model: Model, split: Split, text: bool = False) -> float:
    """What reading one layer of a split back from a FeatureCache needs besides the layer
    itself: `FeatureStore.speech/text` (and lemer's `TextStates`) load one entry whole
    (all states, float16) at a time, the longest at most."""
    frames = MAX_TEXT_TOKENS if text else model.frames(split.max_seconds)
    return (model.layers + 1) * frames * model.dim * 2


def streams(P) -> bool:
    """Whether the paper stage holds `StateRef`s, read per batch (`training.stream_states`)."""
    return bool(P.training.stream_states)


def kept(P, label: str, model: Model, split: Split, text: bool = False,
         n_states: int | None = 1, dtype: int = 4) -> tuple[str, float, str, float]:
    """The `sequential` step of reading one sequence per utterance of `split` from a
    FeatureCache: held as float32 arrays (the CPU default), each entry read whole on the
    way, or, streaming, one `StateRef` per utterance."""
    if streams(P):
        return ("", 0.0, f"{label}: references (streamed)", split.n * REF_BYTES)
    return (f"reading {label}", read_bytes(model, split, text), f"{label} (float32)",
            states_bytes(model, split, n_states, dtype, text=text))


def batch_read(model: Model, batch: int, split: Split, text: bool = False,
               seconds: float | None = None) -> float:
    """One batch of the longest sequences (one layer) as `collate` reads them from
    references and pads them (float32), with the float16 slices on the way."""
    frames = MAX_TEXT_TOKENS if text else model.frames(seconds or split.max_seconds)
    return batch * frames * model.dim * (4 + 4 + 2)


def sequential(terms: dict[str, float], steps: list[tuple[str, float, str, float]]) -> None:
    """Host memory of steps run one after another, each needing a `transient` (freed when
    it ends) and keeping what it `keeps`: the kept terms are added to `terms` under their
    labels, and the largest excess of a transient over what is kept, under its label."""
    held, peak, worst = sum(terms.values()), sum(terms.values()), ""
    for t_label, transient, k_label, kept in steps:
        if held + transient + kept > peak:
            peak, worst = held + transient + kept, t_label
        held += kept
        if kept:
            terms[k_label] = terms.get(k_label, 0.0) + kept
    if peak > held:
        terms[f"while {worst}"] = peak - held


def cache_bytes(model: Model, split: Split, text: bool = False,
                states: int | None = None, pooled: bool = False) -> float:
    """A FeatureCache of `split`: `states` hidden states (None: every one) in float16
    (`speech_features`, `text_features`), or with `pooled` their time averages (one vector
    each), plus the token ids (int64) of a text, one file per entry."""
    ids = split.n * split.tokens() * 8 if text else 0.0
    if pooled:
        n_states = model.layers + 1 if states is None else states
        return split.n * (n_states * model.dim * 2 + ENTRY_OVERHEAD) + ids
    return states_bytes(model, split, states, text=text) + ids + split.n * ENTRY_OVERHEAD


def stage_states(states: list | None, model: Model) -> int:
    """How many hidden states of `model` the features stage caches for
    `features.<role>_states` (`mmser.encode.features.with_last`: those and the last)."""
    from mmser.encode.features import kept_states, with_last

    kept = kept_states(with_last(states), model.layers + 1)
    return model.layers + 1 if kept is None else len(kept)


def clip_batch(batch: int, split: Split) -> float:
    """One batch of the longest clips as float32 (`Clips` reads them when encoded)."""
    return batch * split.max_seconds * SAMPLE_RATE * 4


def encode_peak(model: Model, batch: int, seconds: float, gpu: bool = False,
                host: bool = True) -> float:
    """Transient memory of one encoder batch of the longest clips. On the CPU: the hidden
    states (transformers' tuple, `torch.stack`'s copy, the float16 entries), attention
    weights of one layer and, for wav2vec 2.0-like models, the first conv layer's output
    (float32). On a GPU (`best_device`), the host holds only the stack's CPU copy and the
    float16 entries (`host`), the GPU the rest (`host=False`)."""
    frames = MAX_TEXT_TOKENS if model.kind == "text" else model.frames(seconds)
    states = (model.layers + 1) * batch * frames * model.dim
    if gpu and host:
        return states * (4 + 2)
    attention = 2 * batch * model.heads * frames ** 2 * 4
    conv = 0.0
    if model.kind == "ssl":
        conv = 2 * batch * seconds * SAMPLE_RATE / model.conv[2][0] * model.conv[0][0] * 4
    return states * (4 + 4 if gpu else 4 + 4 + 2) + attention + conv


def encode_flop(model: Model, split: Split) -> float:
    """Forward FLOPs of encoding a split: 2 per parameter per frame, attention, conv."""
    if model.kind == "text":
        frames, n = split.tokens(), split.n
    else:
        frames, n = model.frames(split.mean_seconds), split.n
    flop = n * (2 * model.params * frames + 4 * model.layers * frames ** 2 * model.dim)
    if model.kind == "ssl":
        length, channels_in = split.mean_seconds * SAMPLE_RATE, 1
        for c, k, s in zip(*model.conv):
            length = length / s
            flop += n * 2 * length * c * channels_in * k
            channels_in = c
    return flop


def weights_bytes(*models: Model) -> float:
    return sum(4 * m.params for m in models)


@dataclass(frozen=True)
class Trained:
    """A model a stage trains: its trainable and frozen parameters, batch, sequence length
    through the trained transformer blocks, and how many optimiser steps it takes in all."""
    label: str
    trainable: float
    frozen: float
    batch: int
    blocks: tuple[tuple[Model, int, float], ...]  # (encoder, trained blocks, sequence)
    steps: float

    def gpu_mem(self, precision: str) -> float:
        """Weights, gradients and Adam's two moments (16 bytes a trainable parameter, fp32
        master weights also under bf16-mixed), frozen weights, and the activations a
        trained transformer block keeps for backward: 34 b s h + 5 a s^2 b bytes in 16-bit
        (Korthikanti et al. 2022), twice that in 32-bit."""
        scale = 2.0 if precision.startswith("32") else 1.0
        acts = sum(k * (34 * self.batch * s * m.dim + 5 * m.heads * s ** 2 * self.batch)
                   * scale for m, k, s in self.blocks)
        return 16 * self.trainable + 4 * self.frozen + acts

    def flop(self) -> float:
        """Training FLOPs: 6 per trainable parameter per position, attention's s^2 terms."""
        per_step = sum(k * (6 * m.layer_params * s + 12 * s ** 2 * m.dim) * self.batch
                       for m, k, s in self.blocks)
        return self.steps * max(per_step, 6 * self.trainable * self.batch)


def _steps(n_train: float, batch: int, epochs: int, runs: float) -> float:
    return runs * epochs * math.ceil(max(n_train, 1) / batch)


def _top(P_top: int | None, model: Model) -> int:
    return model.layers if P_top is None else min(P_top, model.layers)


def plan(P, corpus: Corpus, paper: str) -> list[Need]:
    """Per stage: transcribe, features, the paper stage."""
    e = P.encoders
    speech, text = model_info(e.speech, e.speech_layers), model_info(e.text, e.text_layers)
    lab, enc = corpus.labelled, corpus.encoded
    # transcribe (`asr.transcribe_files`): one batch of clips read at a time (`Clips`), the
    # bundled Whisper tiny.en decoding on the CPU
    asr = model_info("whisper-tiny.en")
    # the corpus itself lies on the same disk (data/; every stage reads it, none writes it):
    # 16-bit PCM at 16 kHz, LibriSpeech's FLAC as released (59.3 GB for 960 h)
    read = corpus.read or replace(enc, n=0, seconds=0.0)  # the read speech, in `encoded`
    audio = {"corpus audio (data/)": (enc.seconds - read.seconds) * enc.audio_rate
             + read.seconds * read.audio_rate}
    transcribe = Need("transcribe", disk={**audio, "manifest.csv": corpus.encoded.n * 200},
                      ram={"one batch of clips (float32)": clip_batch(
                          P.transcribe.batch_size, lab if corpus.read else enc),
                           "Whisper tiny.en": weights_bytes(asr), "runtime": RUNTIME_RSS},
                      cpu_tflop=encode_flop(asr, lab) * 2)
    transcribe.notes.append("ASR on the CPU (bundled Whisper tiny.en); decoding FLOPs "
                            "counted as twice the encoder's")
    # features (notebooks/features.ipynb): each clip's key in one pass, then each cut
    # encoded into a FeatureCache, a batch of clips read at a time; texts likewise
    texts = replace(enc, n=2 * enc.n - (corpus.read.n if corpus.read else 0))
    cuts = [speech] + [model_info(e.speech, c) for c in P.features.speech_cuts]
    text_cuts = [text] + [model_info(e.text, c) for c in P.features.text_cuts]
    features = Need("features")
    gpu = on_gpu(P)
    flop = 0.0
    for m in cuts:
        n, pooled = stage_states(P.features.speech_states, m), P.features.speech_states == []
        label = f"speech cache {m.name} L{m.layers}, {n} of {m.layers + 1} states" + (
            ", time averages" if pooled else "")
        features.disk[label] = cache_bytes(m, enc, states=n, pooled=pooled)
        flop += encode_flop(m, enc)
    for m in text_cuts:
        n, pooled = stage_states(P.features.text_states, m), P.features.text_states == []
        label = f"text cache {m.name} L{m.layers}, {n} of {m.layers + 1} states" + (
            ", time averages" if pooled else "")
        features.disk[label] = cache_bytes(m, texts, text=True, states=n, pooled=pooled)
        flop += encode_flop(m, texts)
    weights = max(weights_bytes(m) for m in cuts + text_cuts)
    batch = max(encode_peak(m, P.features.batch_size, enc.max_seconds, gpu) for m in cuts)
    # clips are read a batch at a time (`Clips`); a digest and a size kept per clip
    features.ram = {"one batch of clips (float32)": clip_batch(P.features.batch_size, enc),
                    "one batch of the longest clips": batch,
                    "clip keys (digest, size)": enc.n * KEY_BYTES, "runtime": RUNTIME_RSS}
    if gpu:  # `best_device`: the encoders run on the GPU, the host keeps the states' copies
        features.gpu_mem = weights + max(encode_peak(
            m, P.features.batch_size, enc.max_seconds, gpu, host=False) for m in cuts)
        features.gpu_hours = flop / (GPU_TFLOPS * 1e12) / 3600
        features.notes.append("encoders on the GPU (best_device); GPU memory: the largest "
                              "encoder and one batch of the longest clips")
    else:
        features.ram["largest encoder"] = weights
        features.cpu_tflop = flop / 1e12
        features.notes.append("encoders on the CPU (training.accelerator is not gpu)")
    stage = globals()[f"_{paper}"](P, corpus, speech, text)
    transcribe.cpu_tflop /= 1e12
    return [transcribe, features, stage]


def on_gpu(P) -> bool:
    """Whether the profile's run has a GPU: its encoders then run there (`best_device`)."""
    return P.training.accelerator == "gpu"


def live(P) -> bool:
    """Whether the stage computes its speech states from the clips per batch
    (`training.speech_from_waves`, `mmser.encode.live`) instead of reading a cache."""
    return bool(P.training.speech_from_waves)


def live_flop(P, trained: list["Trained"]) -> float:
    """FLOPs of computing, in every step, the input of each trained SSL speech block stack
    from the clips (`training.speech_from_waves`): the front end and the frozen layers
    below, one forward per clip (SSL frames are 20 ms)."""
    if not live(P):
        return 0.0
    flop = 0.0
    for t in trained:
        for m, k, frames in t.blocks:
            if m.kind == "ssl":
                below = replace(m, layers=m.layers - k, params=(m.layers - k) * m.layer_params)
                clip = Split(1, frames * 0.02, frames * 0.02, 0.0)
                flop += t.steps * t.batch * encode_flop(below, clip)
    return flop


def add_live(need: Need, P, models: list[Model], split: Split) -> None:
    """Memory of computing speech states from the clips per batch (`mmser.encode.live`):
    each encoder loaded once, one clip encoded at a time (`LiveRef.load`), on the GPU when
    training there (GPU memory), else on the CPU (host memory)."""
    if not live(P):
        return
    weights = weights_bytes(*models)
    peak = max(encode_peak(m, 1, split.max_seconds, on_gpu(P), host=False) for m in models)
    if on_gpu(P):
        need.gpu_mem += weights + peak
        need.ram["speech states computed per clip (host copy)"] = max(
            encode_peak(m, 1, split.max_seconds, True) for m in models)
    else:
        need.ram["frozen speech encoders computing states per clip"] = weights + peak


def _finish(need: Need, P, trained: list[Trained], runs: int) -> Need:
    """GPU memory of the largest trained model, hours of all (with the speech input
    computed from the clips when `training.speech_from_waves`), and `runs` checkpoints
    (`best.pt`: the model's float32 weights) on disk."""
    prec = P.training.precision
    need.trained = trained
    need.gpu_mem = max([need.gpu_mem] + [t.gpu_mem(prec) for t in trained])
    need.gpu_hours += sum(t.flop() for t in trained) / (GPU_TFLOPS * 1e12) / 3600
    if live(P):
        need.gpu_hours += live_flop(P, trained) / (GPU_TFLOPS * 1e12) / 3600
        need.notes.append("speech states below the tuned blocks computed from the clips "
                          "in every step (training.speech_from_waves), counted in GPU h")
    need.disk[f"checkpoints ({runs} runs' best.pt)"] = runs * 4 * max(
        t.trainable + t.frozen for t in trained)
    need.ram.setdefault("runtime", RUNTIME_RSS)
    return need


GPU_TFLOPS = 100.0  # effective bf16 TFLOP/s assumed for GPU hours (`--gpu-tflops`)


def _clap(P, corpus: Corpus, speech: Model, text: Model) -> Need:
    """papers/clap.py `Bank`, in order: the state below the trained blocks of every labelled
    clip read (full length, float32, alive until the bank is built) and its 8-s crop cloned;
    one text state per role read; DistilBERT ('small') encoded into the stage's own cache
    and read back an entry at a time."""
    p, lab = P.clap, corpus.labelled
    small = model_info(p.small_text, p.small_text_layers) if p.small_text else \
        model_info(P.encoders.text, p.small_text_layers)
    need = Need("clap")
    crop = replace(lab, seconds=lab.n * min(lab.mean_seconds, p.max_seconds))
    speech_step = kept(P, "speech states, 1 layer", speech, lab)
    if not streams(P):  # each read whole, its 8-s crop cloned, one clip at a time
        speech_step = ("reading speech states", read_bytes(speech, lab),
                       "speech states cropped to max_seconds (clones, float32)",
                       states_bytes(speech, crop, 1, 4))
    sequential(need.ram, [
        speech_step,
        kept(P, "text states, 1 layer per role", text, lab, text=True),
        ("encoding the small text model (CPU)", weights_bytes(small) + encode_peak(
            small, 32, 0) if p.small_text else 0.0,
         *kept(P, "text states, 1 layer per role", small, lab, text=True)[2:])])
    if streams(P):
        need.ram["one batch read (float32)"] = batch_read(
            speech, p.batch_size, lab, seconds=min(lab.max_seconds, p.max_seconds)) \
            + batch_read(text, p.batch_size, lab, text=True)
    if p.small_text:
        need.disk[f"own text cache {small.name}, 1 state"] = cache_bytes(small, lab, text=True,
                                                                          states=1)
        need.cpu_tflop = encode_flop(small, lab) / 1e12
    seeds, folds = len(P.training.seeds), corpus.folds
    systems = len(p.systems) + len(p.similarity_ablation)
    pretrained = systems - (1 if "none" in p.systems else 0)
    n_train = lab.n * (folds - 1) / folds
    s_frames = speech.frames(min(lab.mean_seconds, p.max_seconds))
    ks, kt = _top(p.speech_top_layers, speech), _top(p.text_top_layers, text)
    blocks = ((speech, ks, s_frames), (text, kt, lab.tokens()))
    trainable = ks * speech.layer_params + kt * text.layer_params
    runs = systems * folds * seeds
    trained = [
        Trained("stage 1: CLAP pre-training", trainable, 0, p.batch_size, blocks,
                _steps(n_train * (1 - p.pretrain_val_fraction), p.batch_size,
                       p.pretrain_epochs, pretrained * folds * seeds)),
        Trained("stage 2: fine-tuning", ks * speech.layer_params, 0, p.batch_size,
                blocks[:1], _steps(n_train, p.batch_size, p.finetune_epochs,
                                   systems * folds * seeds))]
    _finish(need, P, trained, runs)
    add_live(need, P, [speech], lab)
    return need


def _lemer(P, corpus: Corpus, speech: Model, text: Model) -> Need:
    """papers/lemer.py via notebooks/lemer.ipynb: text, spliced context (<= context_tokens)
    and speech states of every labelled utterance (1 layer, float32); with quantizer units,
    one class's training clips as one padded batch through wav2vec 2.0's CNN (its first
    layer's output is the peak)."""
    p, lab = P.lemer, corpus.labelled
    # `context_texts`: up to context_turns earlier turns of the dialogue and its own text,
    # joined and cut to context_tokens; the i-th turn of a dialogue has i earlier ones
    length = max(1, round(lab.turns))
    history = sum(min(i, p.context_turns) for i in range(length)) / length
    context = replace(lab, words=min((history + 1) * lab.words,
                                     (p.context_tokens - 2) / lab.pieces))
    need = Need("lemer")
    sequential(need.ram, [
        kept(P, "text + context states, 1 layer", text, lab, text=True),
        kept(P, "speech states, 1 layer", speech, lab),
        ("encoding contexts (TextStates, CPU)", encode_peak(text, 32, 0),
         "text encoder of TextStates (CPU)", weights_bytes(text)),
        kept(P, "text + context states, 1 layer", text, context, text=True)])
    if streams(P):
        need.ram["one batch read (float32)"] = batch_read(speech, p.batch_size, lab) \
            + 2 * batch_read(text, p.batch_size, lab, text=True)
    need.cpu_tflop = encode_flop(text, context) / 1e12
    need.disk["context text cache (2 states)"] = cache_bytes(text, context, text=True,
                                                             states=2)
    if p.units == "quantizer" and speech.kind == "ssl":  # one clip at a time, unpadded
        need.ram["quantizer units: the longest clip"] = encode_peak(
            replace(speech, layers=0, heads=0), 1, lab.max_seconds)
    seeds, folds = len(P.training.seeds), corpus.folds
    runs = (len(p.systems) + len(p.k_grid)) * folds * seeds
    ks, kt = _top(p.speech_top_layers, speech), _top(p.text_top_layers, text)
    blocks = ((speech, ks, speech.frames(lab.mean_seconds)), (text, kt, context.tokens()))
    _finish(need, P, [Trained(
        "LE-MER (every system as C1)", ks * speech.layer_params + kt * text.layer_params, 0,
        p.batch_size, blocks, _steps(lab.n * (folds - 1) / folds * 0.9, p.batch_size,
                                     p.max_epochs, runs))], runs)
    add_live(need, P, [speech], lab)
    return need


def _distil(P, corpus: Corpus, speech: Model, text: Model) -> Need:
    """papers/distil.py, in order: `encode_own` (the clips, then each size that is not a
    features cut encoded on the CPU into the stage's own cache); `States` (memoised over
    folds): the input state of every rated utterance per speech size and of the text
    (float32), all states (float16) of the layer-weights size, each read whole first."""
    from mmser.papers.distil import encoder_of

    p, rated = P.distil, corpus.labelled
    need = Need("distil")
    sizes = {size: model_info(*encoder_of(spec, "speech", P.encoders))
             for size, spec in p.sizes.items()}
    # computed from the clips per batch (`training.speech_from_waves`): no speech cached
    own = [] if live(P) else \
        [m for size, m in sizes.items() if not p.sizes[size].startswith("features:")]
    steps = [("encoding own speech caches (CPU)", clip_batch(8, rated) + rated.n * KEY_BYTES
              + max(weights_bytes(m) + encode_peak(m, 8, rated.max_seconds) for m in own),
              "", 0.0)] if own else []
    for size, m in sizes.items():
        if m in own:
            need.disk[f"own speech cache {size}"] = cache_bytes(m, rated)
            need.cpu_tflop += encode_flop(m, rated) / 1e12
        steps.append(kept(P, f"{size} speech input state", m, rated))
    steps.append(kept(P, "text input state", text, rated, text=True))
    if p.layer_size in sizes:  # layer=None: every state read as float32, kept as float16
        m = sizes[p.layer_size]
        steps.append(kept(P, f"{p.layer_size}: every state", m, rated, n_states=None,
                          dtype=2))
    sequential(need.ram, steps)
    if streams(P):
        m = max(sizes.values(), key=lambda m: m.dim)
        need.ram["one batch read (float32)"] = batch_read(m, p.batch_size, rated) \
            + batch_read(text, p.batch_size, rated, text=True)
    seeds = len(P.training.seeds)
    trained = []
    kt = _top(p.text_ft_layers, text)
    n_train = rated.n * 0.6  # MSP-Podcast's train partition: about 60 % of the rated
    runs = len(sizes) * 2 * seeds
    for size, m in sizes.items():
        ks = _top(p.speech_ft_layers, m)
        blocks = ((m, ks, m.frames(rated.mean_seconds)), (text, kt, rated.tokens()))
        trained.append(Trained(f"{size} A+T FT", ks * m.layer_params + kt * text.layer_params,
                               0, p.batch_size, blocks,
                               _steps(n_train, p.batch_size, p.max_epochs, 2 * seeds)))
    if live(P) and p.layer_size in sizes:  # Figure 2: the whole frozen encoder every step
        m = sizes[p.layer_size]
        need.gpu_hours += 3 * p.layer_epochs * seeds * n_train * encode_flop(
            m, replace(rated, n=1, seconds=rated.mean_seconds)) / (GPU_TFLOPS * 1e12) / 3600
    _finish(need, P, trained, runs)
    add_live(need, P, list(sizes.values()), rated)
    return need


def _vcemo(P, corpus: Corpus, speech: Model, text: Model) -> Need:
    """papers/vcemo.py `mel_views`: each labelled clip's log-mel and its augmented views
    (float16 on disk), computed 32 views at a time, one clip read at a time; held as
    float32 with every text state of each transcript, or streamed (references, and one
    training batch read: the views and their padded copy, the text inputs)."""
    p, lab = P.vcemo, corpus.labelled
    views = 1 + p.n_augment
    mel = lab.seconds * 1000 / p.hop_ms * p.n_mels * views
    need = Need("vcemo", disk={"log-mel cache (float16)": mel * 2 + lab.n * views * ENTRY_OVERHEAD})
    need.ram = {"computing log-mels: the clips of 32 views": clip_batch(32, lab),
                "clip keys (digest, size)": lab.n * KEY_BYTES}
    if streams(P):
        n_train = lab.n * (corpus.folds - 1) / corpus.folds * views
        frames = lab.max_seconds * 1000 / p.hop_ms
        need.ram["references (views, text inputs)"] = lab.n * (views + 2) * REF_BYTES
        need.ram["one batch read (float32)"] = min(p.batch_size, n_train) * (
            frames * p.n_mels * 4 * 2 + batch_read(text, 1, lab, text=True))
    else:
        need.ram["log-mels, every view (float32)"] = mel * 4
        need.ram["text states 0 and last (float32)"] = states_bytes(text, lab, 2, 4, True)
    systems = len(p.systems) + (7 if p.ablation else 0)
    seeds, folds = len(P.training.seeds), corpus.folds
    runs = systems * seeds * folds
    frames = lab.mean_seconds * 1000 / p.hop_ms
    net = Model("VcemoNet", "head", 2 * p.layers + 1, p.dim, p.heads, 0)
    params = (2 * p.layers + 1) * 12 * p.dim ** 2 * (2 if p.alpha else 1)
    return _finish(need, P, [Trained(
        "VcemoNet + SupCon (momentum copy)", params, 0, p.batch_size,
        ((net, 2 * p.layers + 1, frames),),
        _steps(lab.n * (folds - 1) / folds * views, p.batch_size, p.max_epochs,
               systems * seeds * folds))], runs)


def _tokenwise(P, corpus: Corpus, speech: Model, text: Model) -> Need:
    """papers/tokenwise.py, in order: `pretrain_items` of the pre-training, then of the
    labelled utterances (the last speech state, read whole first; every text state read as
    float32, of which hidden state 0 and the last are kept as clones); 1-NN over every
    validation token at once (`knn_accuracy`: a tokens x tokens float32 matrix); extra
    speech encoders (WavLM) cached by `encode_speech` (on the GPU when there is one) with
    the labelled clips in RAM."""
    p, lab = P.tokenwise, corpus.labelled
    read = corpus.read or lab
    need = Need("tokenwise")
    steps = []
    for split in (read, lab) if corpus.read else (lab,):
        steps += [kept(P, "speech last state", speech, split),
                  kept(P, "text states 0 and last", text, split, text=True, n_states=2)]
    # `knn_accuracy`: the validation tokens (B, B_s, normalised copies) and 4,096 rows of
    # the similarity matrix at a time
    val_tokens = read.n * p.pretrain_val_fraction * read.tokens()
    steps.append(("1-NN over validation tokens (chunked matrix)",
                  min(val_tokens, 4096) * val_tokens * 4 + 4 * val_tokens * text.dim * 4,
                  "", 0.0))
    if streams(P):
        need.ram["one batch read (float32)"] = batch_read(
            speech, max(p.pretrain_batch_sizes), read) + 2 * batch_read(
            text, max(p.pretrain_batch_sizes), read, text=True)
    gpu = on_gpu(P)
    for name in p.extra_speech:
        m = model_info(name)
        need.disk[f"own speech cache {m.name}"] = cache_bytes(m, lab)
        steps.append((f"encoding {m.name}", clip_batch(8, lab) + encode_peak(
            m, 8, lab.max_seconds, gpu) + (0 if gpu else weights_bytes(m)), "", 0.0))
        if gpu:
            need.gpu_mem = max(need.gpu_mem, weights_bytes(m) + encode_peak(
                m, 8, lab.max_seconds, gpu, host=False))
            need.gpu_hours += encode_flop(m, lab) / (GPU_TFLOPS * 1e12) / 3600
        else:
            need.cpu_tflop += encode_flop(m, lab) / 1e12
    sequential(need.ram, steps)
    grid = len(p.pretrain_batch_sizes) * len(p.pretrain_lrs)
    runs = grid
    frames = speech.frames(read.mean_seconds)
    aligner = Model("CrossAttention", "head", 1, text.dim, 1, 0)
    trained = [Trained(f"pre-training, batch {b}", 3 * text.dim * max(text.dim, speech.dim),
                       0, b, ((aligner, 1, max(frames, read.tokens())),),
                       _steps(read.n * (1 - p.pretrain_val_fraction), b, p.pretrain_epochs,
                              len(p.pretrain_lrs)))
               for b in p.pretrain_batch_sizes]
    return _finish(need, P, trained, runs)


# ----------------------------------------------------------------------------- output

_UNITS = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def size(text: str) -> float:
    """'64G' -> 64e9 bytes (decimal units, as `df -H` and GPU spec sheets give them)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64G)")
    return float(m[1]) * _UNITS.get(m[2].upper(), 1)


def human(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


@dataclass(frozen=True)
class Machine:
    disk: float
    ram: float
    gpu_mem: float


def exceeded(needs: list[Need], machine: Machine) -> list[str]:
    """One line per limit a stage would exceed. Disk adds up over stages (DVC keeps every
    stage's outputs), memory is per stage (each stage is its own process)."""
    out, disk = [], 0.0
    for need in needs:
        disk += sum(need.disk.values())
        ram = sum(need.ram.values())
        if ram > machine.ram:
            out.append(f"{need.stage}: host memory {human(ram)} exceeds the machine's "
                       f"{human(machine.ram)} (RAM)")
        if need.gpu_mem > machine.gpu_mem:
            out.append(f"{need.stage}: GPU memory {human(need.gpu_mem)} exceeds the "
                       f"machine's {human(machine.gpu_mem)} (GPU memory)")
        if disk > machine.disk:
            out.append(f"{need.stage}: disk {human(disk)} so far exceeds the machine's "
                       f"{human(machine.disk)} (disk)")
    return out


def load_profile(profile: str | Path, params: str | Path = "params.yaml"):
    """params.yaml with a profile merged over it, validated (as `--apply` would write it)."""
    from mmser.config import Params, merged

    base = yaml.safe_load(Path(params).read_text()) or {}
    changes = yaml.safe_load(Path(profile).read_text()) or {}
    return Params.from_dict(merged(base, changes), source=f"{params} + {profile}")


def report(paper: str, P, corpus: Corpus, machine: Machine) -> str:
    needs = plan(P, corpus, paper)
    lines = [f"plan for {paper}: {corpus.name} ({corpus.note}); encoders {P.encoders.speech} "
             f"+ {P.encoders.text}; precision {P.training.precision}",
             "every figure is extrapolated (arithmetic on model sizes and the code's storage; "
             f"GPU hours at an assumed {GPU_TFLOPS:g} effective TFLOP/s): `python -m "
             "mmser.plan --measure` checks the arithmetic on tiny models, `make gpu-check` "
             "measures steps/s", "",
             f"{'stage':<11}{'disk':>11}{'host RAM':>11}{'GPU mem':>11}{'GPU h':>9}"
             f"{'CPU TFLOP':>11}"]
    for n in needs:
        lines.append(f"{n.stage:<11}{human(sum(n.disk.values())):>11}"
                     f"{human(sum(n.ram.values())):>11}{human(n.gpu_mem):>11}"
                     f"{n.gpu_hours:>9.1f}{n.cpu_tflop:>11,.0f}")
    lines.append("")
    for n in needs:
        for kind, terms in (("disk", n.disk), ("RAM", n.ram)):
            for label, value in sorted(terms.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {n.stage} {kind}: {label}: {human(value)}")
        lines += [f"  {n.stage}: {note}" for note in n.notes]
    problems = exceeded(needs, machine)
    lines.append("")
    lines.append(f"machine: disk {human(machine.disk)}, RAM {human(machine.ram)}, GPU memory "
                 f"{human(machine.gpu_mem)}")
    lines += [f"EXCEEDED: {p}" for p in problems] or ["fits within every limit"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmser.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", nargs="*", help="profiles/paper/<paper>.yaml")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--disk", type=size, default=size("64G"))
    parser.add_argument("--ram", type=size, default=size("128G"))
    parser.add_argument("--gpu-mem", type=size, default=size("141G"))
    parser.add_argument("--gpu-tflops", type=float, default=GPU_TFLOPS,
                        help="effective bf16 TFLOP/s assumed for GPU hours")
    parser.add_argument("--measure", action="store_true",
                        help="the plan beside measured tiny runs at 1x and 4x")
    parser.add_argument("--gpu-check", action="store_true",
                        help="a few hundred bf16 steps of every profile (mmser.gpucheck)")
    parser.add_argument("--dry", action="store_true", help="--gpu-check on the CPU, tiny models")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    globals()["GPU_TFLOPS"] = args.gpu_tflops
    machine = Machine(args.disk, args.ram, args.gpu_mem)
    if args.measure:
        from mmser.plan_measure import main as measure

        return measure()
    if args.gpu_check:
        from mmser.gpucheck import main as check

        return check(dry=args.dry, steps=args.steps, params=args.params)
    if not args.profile:
        parser.error("name a profile, or --measure, or --gpu-check")
    for profile in args.profile:
        paper = Path(profile).stem
        P = load_profile(profile, args.params)
        print(report(paper, P, paper_corpus(P), machine), end="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
