"""Parameters: one typed schema for params.yaml, so a misspelt key fails loudly.

`python -m mmser.config [params.yaml]` checks the whole file; every dvc stage runs it
before its notebook, and notebooks build their typed view with `Params.from_dict`.
"""

from __future__ import annotations

import difflib
import fnmatch
import io
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ParamsError(ValueError):
    """A parameter file or dict that does not fit the schema; names the key."""


# Keys whose value must be one of a few choices.
CORPORA = {"synthetic", "iemocap", "msp_podcast", "emodb", "ravdess", "crema_d", "csv"}
PROTOCOLS = {"loso", "loso_speaker", "speaker_kfold", "official", "random_70_20_10",
             "random_8_1_1"}
CHOICES = {
    "dataset.name": CORPORA,
    "dataset.protocol": PROTOCOLS | {"cross_corpus"},
    "dataset.test_corpus": (CORPORA - {"synthetic"}) | {None},
    "dataset.read_corpus": {None, "librispeech"},
    "transcribe.backend": {"converted", "faster-whisper"},
    "features.text_source": {"text", "asr_text"},
    "training.accelerator": {"cpu", "gpu", "cuda", "mps", "auto"},
    "training.precision": {"32-true", "bf16-mixed", "16-mixed", "bf16-true"},
}


@dataclass(frozen=True)
class Bound:
    """Allowed range of a number (of each number, for a list); None = unbounded."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself not allowed
    open_high: bool = False

    def problem(self, value: float) -> str | None:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return f"must be {'>' if self.open_low else '>='} {self.low}"
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            return f"must be {'<' if self.open_high else '<='} {self.high}"
        return None


AT_LEAST_0, AT_LEAST_1, POSITIVE = Bound(0), Bound(1), Bound(0, open_low=True)
# Ranges by key path ("section.key", shell-style patterns); the first match applies.
BOUNDS: list[tuple[str, Bound]] = [
    ("seed", AT_LEAST_0), ("training.seeds", AT_LEAST_0), ("training.claim_seeds", AT_LEAST_0),
    ("dataset.*classes", Bound(2)), ("dataset.read_max", AT_LEAST_1),
    ("synthetic.n_speakers", Bound(2)), ("synthetic.n_read", AT_LEAST_0),
    ("synthetic.n_*", AT_LEAST_1), ("*.workers", AT_LEAST_1),
    ("training.devices", AT_LEAST_1), ("training.threads", AT_LEAST_0),
    ("training.num_workers", AT_LEAST_0),
    ("*batch_size", AT_LEAST_1), ("*batch_sizes", AT_LEAST_1), ("*epochs", AT_LEAST_1),
    ("*patience", AT_LEAST_0), ("*dropout", Bound(0, 1, open_high=True)),
    ("*fraction", Bound(0, 1)), ("*.momentum", Bound(0, 1)),
    ("*.min_lr", AT_LEAST_0), ("*lr", POSITIVE), ("*lrs", POSITIVE),
    ("*temperature", POSITIVE), ("*.tau", POSITIVE), ("*.max_seconds", POSITIVE),
    ("*weight_decay", AT_LEAST_0), ("*.alpha", AT_LEAST_0), ("*.mu", AT_LEAST_0),
    ("*bootstrap_n", AT_LEAST_1), ("*compare_n", AT_LEAST_0),
    ("*adapter_dim", AT_LEAST_0), ("*dim", AT_LEAST_1), ("*.head_hidden", AT_LEAST_1),
    ("*.hidden", AT_LEAST_1), ("*.heads", AT_LEAST_1), ("vcemo.layers", AT_LEAST_1),
    ("*top_layers", AT_LEAST_0), ("*ft_layers", AT_LEAST_0),
    ("encoders.*_layers", AT_LEAST_1), ("*_cuts", AT_LEAST_1),
    ("lemer.*_k", AT_LEAST_1), ("lemer.k_grid", AT_LEAST_1), ("lemer.n_units", Bound(2)),
    ("lemer.kmeans_frames", AT_LEAST_1), ("lemer.context_turns", AT_LEAST_0),
    ("lemer.context_tokens", AT_LEAST_1), ("*warmup_steps", AT_LEAST_0),
    ("*queue_size", AT_LEAST_0), ("vcemo.n_mels", AT_LEAST_1), ("vcemo.hop_ms", POSITIVE),
    ("vcemo.n_augment", AT_LEAST_0), ("vcemo.max_semitones", AT_LEAST_0),
    ("vcemo.max_stretch", Bound(0, 1, open_high=True)), ("vcemo.max_tokens", AT_LEAST_1),
    ("vcemo.mandarin_*", AT_LEAST_1), ("vcemo.tsne_fold", AT_LEAST_0),
]
# Element types of lists whose default is empty (others: the default's elements' type).
ELEMENTS = {"training.claim_seeds": int, "tokenwise.speech_layers": int,
            "features.speech_states": int, "features.text_states": int,
            "tokenwise.text_layers": int, "tokenwise.extra_speech": str,
            "clap.similarity_ablation": str,
            "synthetic.snr_db": float}


def bound(path: str) -> Bound | None:
    return next((b for pattern, b in BOUNDS if fnmatch.fnmatchcase(path, pattern)), None)


@dataclass
class Dataset:
    name: str = "synthetic"  # synthetic, or a real corpus under data/ (see README)
    label: str | None = None  # how every table names the corpus; None = `name`
    root: str = "src/mmser/corpus/synth_text.yaml"  # what the prepare stage reads
    classes: int | None = 4  # synthetic: 4 or 6; real corpora: see mmser.corpus.corpora
    protocol: str = "loso"  # how folds are made (mmser.corpus.protocols)
    max_lost_fraction: float = 0.05  # stop when more listed audio is missing or unreadable
    # cross-corpus (protocol cross_corpus): train on `name`, test on this corpus's shared labels
    test_corpus: str | None = None  # e.g. emodb
    test_root: str | None = None  # e.g. data/emodb
    test_classes: int | None = 4  # e.g. EmoDB's 4-class subset
    # pre-training speech from another corpus (replaces the main corpus's read split)
    read_corpus: str | None = None  # librispeech
    read_root: str | None = None  # e.g. data/LibriSpeech (holding train-clean-100/...)
    read_max: int | None = None  # keep a seeded sample of this many read utterances


@dataclass
class Synthetic:
    n_speakers: int = 4
    n_sessions: int = 2
    n_labelled: int = 24
    n_read: int = 8
    snr_db: list = field(default_factory=lambda: [10, 30])
    workers: int = 2


@dataclass
class Encoders:
    speech: str = "whisper-tiny.en"  # bundled name, Hugging Face id or local path
    speech_layers: int | None = None  # keep only the first N transformer layers
    text: str = "all-MiniLM-L6-v2"
    text_layers: int | None = None


@dataclass
class Transcribe:
    backend: str = "converted"  # converted (variable-length) | faster-whisper
    model: str | None = None  # None = the bundled tiny.en; a Hugging Face Whisper id or folder
    # (converted only) or a CTranslate2 Whisper folder
    language: str = "en"  # forced in the prompt (Whisper code); not en: a multilingual model
    compare_n: int = 4  # utterances also run through the other backend, to compare WER
    batch_size: int = 8
    splits: list = field(default_factory=lambda: ["labelled"])


@dataclass
class Features:
    batch_size: int = 8
    splits: list = field(default_factory=lambda: ["labelled", "read"])
    text_source: str = "text"  # text (reference) | asr_text
    speech_cuts: list = field(default_factory=lambda: [2])  # also cache these layer cuts
    text_cuts: list = field(default_factory=lambda: [3])
    # the hidden states cached per clip / text (0 = embeddings, -1 = the last, which the
    # probe reads and is always kept); null: every one. A paper profile keeps what its stage
    # reads: the disk then holds a state or two per utterance, not the encoder's every layer
    speech_states: list | None = None
    text_states: list | None = None


@dataclass
class Training:
    """How every paper stage trains (PyTorch Lightning); the paper profile sets GPU values."""
    accelerator: str = "cpu"
    devices: int = 1
    precision: str = "32-true"  # paper profile on a GPU: bf16-mixed
    strategy: str = "auto"  # more than one device: ddp (`python -m mmser.training.launch` processes)
    num_workers: int = 0  # DataLoader workers
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    workers: int = 1  # CPU: a stage's runs trained side by side in this many processes
    seeds: list = field(default_factory=lambda: [0])  # every seed is run; tables give mean ± std
    # more seeds for the systems a paper's claim compares (mmser.report.claims.claim_seeds)
    claim_seeds: list = field(default_factory=list)
    progress: bool = True  # progress bars
    # read cached encoder states from disk per batch (`mmser.encode.features.StateRef`):
    # memory grows with the batch, not the corpus; the paper profiles set it
    stream_states: bool = False
    # compute the speech states a stage trains on from the clips, per batch, through the
    # frozen part of its SSL encoder (`mmser.encode.live`), instead of caching them: the
    # profiles that fine-tune a speech encoder set it (clap, lemer, distil)
    speech_from_waves: bool = False


@dataclass
class Lemer:
    """LE-MER (label embeddings + label-guided cross-attention); tiny defaults for tests."""
    systems: list = field(default_factory=lambda: [  # Table 1-3 rows to run (mmser.papers.lemer)
        "A1", "A2", "A3", "A4", "A5", "B1", "B3", "B4", "B5", "C1", "C2", "C3", "C4"])
    text_k: int = 9  # TF-IDF keywords per class for the text label embedding (paper: 9)
    speech_k: int = 8  # speech units per class for the tonal label embedding (paper: 100)
    k_grid: list = field(default_factory=lambda: [4])  # Figure 3 sweep of speech_k
    units: str = "kmeans"  # kmeans (no quantizer in Whisper) | quantizer (wav2vec 2.0)
    n_units: int = 32  # k-means clusters, fitted on each fold's training frames only
    # how units are scored per class (mmser.papers.lemer.UNIT_SCORINGS): class | utterance | contrast
    unit_scoring: str = "contrast"
    # how A_l enters C1-C3 (mmser.models.lemer.LABEL_ATTENTIONS): normalised | raw
    label_attention: str = "normalised"
    kmeans_frames: int = 20000  # frames sampled to fit k-means (speed)
    context_turns: int = 10  # previous turns of the dialogue spliced before the text
    context_tokens: int = 150  # token limit of the spliced text
    mu: list = field(default_factory=lambda: [1.0, 0.5, 0.2, 0.2])  # eq. 12 weights
    text_top_layers: int = 0  # trainable top text layers (0 = frozen cached states)
    speech_top_layers: int = 0  # trainable top speech layers (0 = frozen cached states)
    # with frozen states, a residual adapter of this width on each branch (0 = none): the
    # label losses can only change predictions through states that train
    adapter_dim: int = 0
    lr: float = 1e-3  # the heads and label embeddings
    text_lr: float = 5e-6  # trainable text layers (paper: 5e-6)
    speech_lr: float = 1e-6  # trainable speech layers (paper: 1e-6)
    warmup_steps: int = 0  # linear warm-up (paper: 8000)
    batch_size: int = 16  # paper: 16
    max_epochs: int = 1
    patience: int | None = None  # early stopping on validation UA
    threads: int = 0  # torch threads of this stage's training; 0 = training.threads


CHOICES.update({"lemer.units": {"kmeans", "quantizer"},
                "lemer.unit_scoring": {"class", "utterance", "contrast"},
                "lemer.label_attention": {"normalised", "raw"}})


@dataclass
class Clap:
    """HuBERT-CLAP (contrastive audio-text pre-training, then partial fine-tuning of the
    speech side); tiny defaults for tests, the default profile in params.yaml."""
    systems: list = field(default_factory=lambda: ["none", "small", "full"])  # Table 1 rows
    small_text: str | None = None  # "DistilBERT" role: None = a cut of encoders.text
    small_text_layers: int | None = 3  # its layer cut (cached by features.text_cuts)
    text_source: str = "text"  # transcripts to align with: text (reference) | asr_text
    use_read: bool = False  # also pre-train on the unlabelled read-speech split
    speech_top_layers: int = 0  # trainable top speech layers on cached states (0 = none)
    text_top_layers: int = 0  # trainable top text layers, at most each model's depth (0 = frozen)
    text_pool: str = "mean"  # mean (sentence-transformer MiniLM) | cls (BERT)
    max_seconds: float = 8.0  # audio cut (paper: 8 s)
    proj_dim: int = 256  # projection width (paper: not given)
    dropout: float = 0.2  # projection block (paper: 0.2)
    temperature: float = 1.0  # CLIP temperature (paper: 1)
    similarity: str = "cosine"  # CLIP logits: cosine (the paper's words) | dot (its CLIP tutorial)
    similarity_ablation: list = field(default_factory=list)  # systems re-run with the other
    optimizer: str = "adamw"  # paper: CosAngularGrad, which no maintained package provides
    speech_lr: float = 1e-4  # speech encoder layers (paper: 1e-4)
    text_lr: float = 1e-5  # text encoder layers (paper: 1e-5)
    head_lr: float = 1e-3  # projections and classifier (paper: not given)
    min_lr: float = 1e-6  # cosine annealing floor (paper: 1e-6)
    weight_decay: float = 0.01  # AdamW default
    batch_size: int = 16  # paper: 16
    pretrain_epochs: int = 1  # paper: 50
    finetune_epochs: int = 1  # paper: 30
    pretrain_val_fraction: float = 0.1  # held-out training-side pairs: epoch and retrieval
    pretrain_precision: str | None = None  # None = training.precision (paper: bf16)
    transfer: str | None = None  # Table 3: folder of a second prepared corpus (see notebook)


CHOICES.update({"clap.text_source": {"text", "asr_text"}, "clap.text_pool": {"mean", "cls"},
                "clap.similarity": {"cosine", "dot"},
                "clap.optimizer": {"adam", "adamw"},
                "clap.pretrain_precision": {None, "32-true", "bf16-mixed", "16-mixed",
                                            "bf16-true"}})


@dataclass
class Vcemo:
    """VCEMO (co-attention of log-mel CNN-LSTM, word embeddings and a BERT vector; SupCon
    on a MoCo queue); tiny defaults for tests, the default profile in params.yaml."""
    systems: list = field(default_factory=lambda: [  # Table 1-2 rows (mmser.papers.vcemo)
        "supcon", "ce", "yoon", "xu"])
    ablation: bool = True  # Table 3: all seven modality combinations (with SupCon)
    text_source: str = "text"  # text (reference) | asr_text (the paper transcribes its audio)
    word_vectors: str = "encoder"  # encoder: text encoder input embeddings (hidden state 0) |
    # learned: on the training folds' words (paper: 300-d GloVe, not bundled here)
    segmenter: str = "auto"  # learned vectors: auto (CJK -> chars) | chars | words | jieba
    word_dim: int = 32  # learned word vectors' width (paper: GloVe 300)
    max_tokens: int = 48  # words kept per transcript
    sentence_pool: str = "mean"  # BERT-branch vector: mean (MiniLM's pooling) | cls (BERT)
    n_mels: int = 40  # log-mel bands (paper: not given)
    hop_ms: int = 20  # frame hop; 20 ms halves the CNN-LSTM's work against 10 ms
    n_augment: int = 1  # augmented views per training clip; kinds rotate over clips and views
    snr_db: float = 30.0  # Gaussian noise SNR (paper: 30 dB)
    max_semitones: float = 2.0  # pitch shift range (paper: librosa, range not given)
    max_stretch: float = 0.15  # time stretch rate range 1 +- this (paper: not given)
    dim: int = 16  # model width (paper: not given; BERT 768 is projected to it)
    heads: int = 2
    layers: int = 1  # MCAN stacking depth per co-attention round (paper: not given)
    dropout: float = 0.1  # also makes the two contrastive views differ
    proj_dim: int = 128  # SupCon projector output (paper: 128)
    temperature: float = 1.0  # SupCon temperature t (paper: 1)
    alpha: float = 100.0  # SupCon weight (paper: 100 IEMOCAP, 0.1 VCEMO)
    queue_size: int = 64  # MoCo queue of negatives (paper: 16384; scale to the corpus)
    momentum: float = 0.99  # MoCo key-encoder momentum (paper: not given)
    lr: float = 1e-3  # Adam (paper: 1e-4 IEMOCAP, 1e-5 VCEMO, far more steps)
    weight_decay: float = 0.0  # paper: 0 IEMOCAP, 1e-3 VCEMO
    batch_size: int = 8  # paper: 256
    max_epochs: int = 1  # paper: 50
    patience: int | None = None  # early stopping on validation UA
    tsne_fold: int = 0  # fold whose test projector outputs the t-SNE figure shows
    mandarin: bool = False  # also run on a small Mandarin (espeak-ng cmn) corpus
    mandarin_n: int = 24  # its labelled utterances
    mandarin_speakers: int = 4
    mandarin_sessions: int = 2


CHOICES.update({"vcemo.text_source": {"text", "asr_text"},
                "vcemo.word_vectors": {"encoder", "learned"},
                "vcemo.segmenter": {"auto", "chars", "words", "jieba"},
                "vcemo.sentence_pool": {"mean", "cls"}})


@dataclass
class Distil:
    """Audio-textual distilled models (distil stage). Tiny defaults, for tests; params.yaml
    holds the default profile, profiles/paper/distil.yaml the paper's. A source is
    `features:<cut>` (the features stage's cache) or an encoder name / HF id, `@<layers>`
    keeping its first layers (see mmser.papers.distil)."""
    profile: str = "default"  # printed beside every table
    # encoder size -> speech source; the paper's large/base/distilled (Table 1)
    sizes: dict = field(default_factory=lambda: {"base": "features:main",
                                                 "distilled": "features:2"})
    text: str = "features:3"  # the small text model (paper: TinyBERT, 4 layers)
    # fine-tuning on cached states: top k layers trained; 0 = a residual adapter on the last
    # state (a layer's backward pass is too slow for the CPU budget); null = every layer
    # (the paper: only the convolutional front end frozen)
    speech_ft_layers: int | None = 0
    text_ft_layers: int | None = 0
    adapter_dim: int = 16  # adapter bottleneck width (0-layer fine-tuning only)
    head_hidden: int = 32  # width of the head's first linear layer (not given in the paper)
    dropout: float = 0.1  # paper: 0.1 throughout
    pool_norm: bool = False  # LayerNorm on each pooled modality (not in the paper; see params.yaml)
    output: str = "sigmoid"  # linear (the paper's head) | sigmoid (bounded to [0, 1]; ours)
    pooling: str = "sum"  # mean+max pooling: sum (size d, as the paper's P_A) | concat (2 d)
    lr: float = 1e-3  # Adam (paper: 1e-5 for whole encoders over far more steps)
    batch_size: int = 16  # paper: 16, length-bucketed
    max_epochs: int = 2
    patience: int | None = 3  # early stopping on development CCC
    # share of each speaker held back from training and validation as the seen-scenario
    # test set (the folds, and so the unseen test sets, are every stage's)
    seen_fraction: float = 0.1
    frz: bool = True  # also run FT=>FRZ (Figure 3)
    asr_size: str | None = "distilled"  # Table 2 on this size; null skips it
    layer_size: str | None = "base"  # Figure 2 on this size; null skips it
    layer_epochs: int = 2  # epochs of the layer-weight models (frozen encoder, cheap)
    layer_lr: float = 0.05  # Adam rate of the layer weights' logits (not given in the paper)

    def __post_init__(self):
        if not self.sizes or not all(isinstance(k, str) and isinstance(v, str)
                                     for k, v in self.sizes.items()):
            raise ParamsError(f"distil.sizes: a mapping of size name -> source, got {self.sizes!r}")
        for key in ("asr_size", "layer_size"):
            value = getattr(self, key)
            if value is not None and value not in self.sizes:
                raise ParamsError(f"distil.{key}: {value!r} is not in distil.sizes "
                                  f"{sorted(self.sizes)}")


CHOICES.update({"distil.profile": {"default", "paper", "tiny"},
                "distil.output": {"linear", "sigmoid"},
                "distil.pooling": {"sum", "concat"}})


@dataclass
class Tokenwise:
    """Tokenwise contrastive pre-training (mmser.papers.tokenwise); tiny defaults, for tests."""
    text_source: str = "text"  # transcripts B_s and the text baseline read: text | asr_text
    tau: float = 0.1  # temperature of s_ij (Sec. 3.4); the paper gives no value
    scale_attention: bool = False  # the paper's softmax(QK^T) has no 1/sqrt(d)
    pretrain_val_fraction: float = 0.25  # read utterances held out for 1-NN model selection
    pretrain_epochs: int = 2
    pretrain_batch_sizes: list = field(default_factory=lambda: [4])  # Figure 3 configurations
    pretrain_lrs: list = field(default_factory=lambda: [1e-4])  # Sec. 4.3: Adam 1e-4
    speech_layers: list | None = field(default_factory=lambda: [-1])  # the speech row's
    # hidden states (Sec. 3.1: the last; null: all, chosen on val UAR)
    speech_layer_search: bool = True  # also an extra row trying every speech layer
    pretrain_speakers: str = "all"  # all: one speaker-dependent pre-training | fold: each
    # fold's pre-training leaves out its test speakers' read speech
    text_layers: list | None = field(default_factory=lambda: [-1])  # Sec. 4.2: the last
    extra_speech: list = field(default_factory=list)  # more speech baselines (WavLM)
    hidden: int = 16  # classifier width; the paper does not say
    epochs: int = 3  # Sec. 4.3: 30
    plateau_patience: int = 10  # Sec. 4.3: 10 epochs without a better val UAR
    baseline_batch_sizes: list = field(default_factory=lambda: [8])  # Table 2: 2^[2,10]
    baseline_lrs: list = field(default_factory=lambda: [1e-3])  # Table 2: 1e-3, 5e-3
    ours_batch_sizes: list = field(default_factory=lambda: [8])  # Table 2: 2^[2,5]
    ours_lrs: list = field(default_factory=lambda: [1e-3])  # Table 2: 1e-3, 1e-2
    protocols: list = field(default_factory=lambda: ["corpus", "random_70_20_10"])
    val_fraction: float = 0.25  # training speakers held out for validation (random splits: fixed)
    bootstrap_n: int = 100  # paired bootstrap resamples of the UA differences


CHOICES.update({"tokenwise.text_source": {"text", "asr_text"},
                "tokenwise.pretrain_speakers": {"all", "fold"}})


@dataclass
class Report:
    """The report stage (mmser.report.compare): the papers side by side, each claim put to the test."""
    stages: list = field(default_factory=lambda: [  # missing ones get a "not run" row
        "clap", "lemer", "distil", "vcemo", "tokenwise"])
    bootstrap_n: int = 200  # paired bootstrap resamples per claim (params.yaml: 1000)


# ---- paper sections: each paper stage puts its dataclass (and any CHOICES.update) above
# ---- this line, and one field in Params below
@dataclass
class Params:
    seed: int = 0
    dataset: Dataset = field(default_factory=Dataset)
    synthetic: Synthetic = field(default_factory=Synthetic)
    encoders: Encoders = field(default_factory=Encoders)
    transcribe: Transcribe = field(default_factory=Transcribe)
    features: Features = field(default_factory=Features)
    training: Training = field(default_factory=Training)
    # paper stages' sections:
    lemer: Lemer = field(default_factory=Lemer)
    clap: Clap = field(default_factory=Clap)
    vcemo: Vcemo = field(default_factory=Vcemo)
    distil: Distil = field(default_factory=Distil)
    tokenwise: Tokenwise = field(default_factory=Tokenwise)
    report: Report = field(default_factory=Report)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "params") -> "Params":
        """Build from a (partial) dict; sections and keys left out keep their defaults.
        Every value is checked: its type (and its elements' type, for a list), its choices
        (`CHOICES`) and its range (`BOUNDS`); the error names `source` and the key."""
        return _build(cls, data or {}, source, ())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(kind: type, data: Any, where: str, path: tuple[str, ...]) -> Any:
    """`where` names the file for messages; `path` is the key path inside it."""
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(kind)
    names = [f.name for f in fields(kind)]
    values = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {names}"
            raise ParamsError(f"{where}: unknown key '{key}'{hint}")
        hint, inner = hints[key], path + (key,)
        if is_dataclass(hint):
            values[key] = _build(hint, value, f"{where}.{key}", inner)
        else:
            values[key] = _check_value(value, hint, kind, key, f"{where}.{key}", ".".join(inner))
    return kind(**values)


def _check_value(value: Any, hint: Any, kind: type, key: str, where: str, path: str) -> Any:
    value = _check_type(value, hint, where)
    if path in CHOICES and value not in CHOICES[path]:
        raise ParamsError(f"{where}: {value!r} is not one of "
                          f"{sorted(CHOICES[path], key=str)}")
    if isinstance(value, list):
        element = ELEMENTS.get(path) or _default_element_type(kind, key)
        if element is not None:
            value = [_check_type(v, element, f"{where}[{i}]") for i, v in enumerate(value)]
    limit = bound(path)
    for i, number in enumerate(value if isinstance(value, list) else [value]):
        if limit and isinstance(number, (int, float)) and not isinstance(number, bool):
            problem = limit.problem(number)
            if problem:
                at = f"{where}[{i}]" if isinstance(value, list) else where
                raise ParamsError(f"{at}: {number!r} {problem}")
    return value


def _default_element_type(kind: type, key: str) -> type | None:
    spec = next(f for f in fields(kind) if f.name == key)
    default = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    if not isinstance(default, list) or not default:
        return None
    types = {type(v) for v in default}
    return float if types <= {int, float} and float in types else types.pop() \
        if len(types) == 1 else None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    allowed = getattr(hint, "__args__", None) or (hint,)
    allowed = tuple(getattr(a, "__origin__", a) for a in allowed)
    if value is None and type(None) in allowed:
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ParamsError(f"{where}: expected {_name(hint)}, got a boolean")
    if not isinstance(value, tuple(a for a in allowed if isinstance(a, type))):
        raise ParamsError(f"{where}: expected {_name(hint)}, got {value!r}")
    return value


def _name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def work_from_project_root() -> Path:
    """Make the project root the working directory, and return it: the nearest folder, from
    here up, that holds params.yaml and dvc.yaml. Every path in params.yaml and in a
    notebook's parameters is relative to it, while JupyterLab starts a notebook's kernel in
    the notebook's folder (notebooks/). Where dvc and papermill run a notebook (the root
    itself), or outside any project, nothing changes."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            os.chdir(folder)
            return folder
    return here


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    return Params.from_dict(data, source=str(path))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied section by section (nested mappings merge)."""
    out = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def apply_profile(profile: str | Path, params: str | Path = "params.yaml") -> Params:
    """Merge a profile file (e.g. profiles/paper/clap.yaml) into params.yaml, validated first.

    params.yaml is rewritten, atomically, only when the merged result fits the schema; its
    comments and key order stay (a round trip through ruamel.yaml, which DVC ships).
    """
    from ruamel.yaml import YAML

    params, profile = Path(params), Path(profile)
    if not profile.is_file():
        raise ParamsError(f"{profile}: profile file not found")
    if not params.is_file():
        raise ParamsError(f"{params}: parameter file not found")
    changes = yaml.safe_load(profile.read_text()) or {}
    if not isinstance(changes, dict):
        raise ParamsError(f"{profile}: expected a mapping of sections")
    base = yaml.safe_load(params.read_text()) or {}
    checked = Params.from_dict(merged(base, changes), source=f"{params} + {profile}")
    editor = YAML()  # round trip: comments, order and layout are kept
    editor.preserve_quotes, editor.width = True, 4096
    editor.representer.add_representer(type(None), lambda r, _: r.represent_scalar(
        "tag:yaml.org,2002:null", "null"))  # as params.yaml writes it, not an empty value
    editor.representer.add_representer(float, _yaml11_float)
    document = editor.load(params.read_text())
    _merge_into(document, changes)
    text = io.StringIO()
    editor.dump(document, text)
    temporary = params.with_name(f".{params.name}.tmp")
    temporary.write_text(text.getvalue())
    os.replace(temporary, params)
    return checked


def _yaml11_float(representer: Any, value: float) -> Any:
    """A float that PyYAML (YAML 1.1, which DVC and this module read with) reads back as a
    float: `1e-05` is a string there, `1.0e-05` a number."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        text = text.replace("e", ".0e", 1)
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _merge_into(document: Any, changes: dict[str, Any]) -> None:
    """`merged`, in place on a ruamel document (so that its comments stay)."""
    from ruamel.yaml.comments import CommentedSeq

    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            _merge_into(document[key], value)
        elif isinstance(value, list):  # written [a, b] on one line, like params.yaml's lists
            document[key] = CommentedSeq(value)
            document[key].fa.set_flow_style()
        else:
            document[key] = value


def main(argv: list[str] | None = None) -> int:
    """`python -m mmser.config [params.yaml]` checks; `--apply PROFILE` merges a profile in."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["--apply"] and len(argv) >= 2:
            apply_profile(argv[1], *argv[2:3])
            print(f"applied {argv[1]}")
        else:
            load(argv[0] if argv else "params.yaml")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
