"""The VCEMO stage's inputs and experiments: log-mel spectrograms and their augmented
views (Tang et al. 2024, Sec. 3.1 and 3.5), word and sentence vectors (Sec. 3.1), item
building, the systems of the paper's tables run with `mmser.training.loop.cross_validate`,
the paper's numbers, and the small Mandarin corpus. The modules are `mmser.models.vcemo`.

Inputs per utterance (`Experiment.items`): `mel` (frames, n_mels) log-mel spectrogram,
`words` (tokens, dim) static word vectors (the text encoder's non-contextual input
embeddings, hidden state 0 of the feature cache) or `tokens_seq` (ids of words learned on
the training folds), `sent` (dim,) the text encoder's sentence vector, `label`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchaudio.functional as AF
import yaml

from mmser.config import Training, Vcemo
from mmser.corpus import manifest, synth
from mmser.corpus.audio import SAMPLE_RATE, load_audio, wave_digest, write_audio
from mmser.corpus.protocols import Fold
from mmser.encode.features import FeatureCache, StateRef, layer_copy
from mmser.models import vcemo as V
from mmser.report.claims import DISAGREES, verdict
from mmser.training.data import Corpus, label_ids
from mmser.fingerprint import code_digest
from mmser.training.loop import Task, cross_validate, predict

CMN_TEXT = Path(__file__).with_name("vcemo_cmn.yaml")
# espeak-ng's Mandarin voice with male/female variants, base pitch and rate (as synth.VOICES)
CMN_VOICES = [("cmn+m1", 38, 160), ("cmn+f2", 62, 165), ("cmn+m3", 42, 155),
              ("cmn+f3", 58, 170), ("cmn+m2", 36, 150), ("cmn+f4", 66, 160)]

# The paper's numbers (Tang et al. 2024): Table 1 (VCEMO, 8/1/1 random split, accuracy and
# F1), Table 2 (IEMOCAP, 5-fold leave-one-session-out, WA/UA), Table 3 (VCEMO 4-class).
PAPER_VCEMO = {  # system -> (4-class acc, 4-class F1, 6-class acc, 6-class F1), %
    "VCEMO (SupCon)": (67.40, 67.22, 65.51, 64.67),
    "VCEMO": (66.99, 66.90, 65.37, 64.54),
    "UMONS": (63.27, 63.44, 61.36, 61.35),
    "Yoon et al. 2019 (MHA-2)": (60.96, 59.14, 57.89, 55.42),  # "Yoon's Model", ref. [21]
    "Xu et al. 2019": (59.42, 57.68, 58.16, 55.39),
}
PAPER_IEMOCAP = {  # system -> (WA, UA), %
    "Xu et al. 2019": (70.41, 69.52), "CME": (72.72, 73.57), "VCEMO": (71.23, 72.46),
    "VCEMO (SupCon)": (73.07, 74.10),
}
PAPER_ABLATION = {  # modalities -> (accuracy, F1), %, VCEMO 4-class
    "Embeddings": (57.40, 55.05), "BERT": (53.29, 50.16), "Acoustic": (53.18, 51.15),
    "Embeddings + BERT": (57.26, 55.11), "Embeddings + Acoustic": (65.21, 64.40),
    "BERT + Acoustic": (61.23, 60.91), "Embeddings + BERT + Acoustic": (69.52, 74.10),
}
SHORT = {"acoustic": "Acoustic", "words": "Embeddings", "bert": "BERT"}  # Table 3 names
# Table 1 cites Yoon et al. 2019 without naming the variant; MHA-2 was the best there
YOON_HOPS = 2
AUGMENTATIONS = ("noise", "pitch", "stretch")
N_FFT = 400  # 25 ms window at 16 kHz
MIN_FRAMES = 8  # the CNN halves time twice; shorter clips are zero-padded to this


# ------------------------------------------------------------------ acoustic input


@dataclass(frozen=True)
class MelConfig:
    """The acoustic input, a log-mel spectrogram (Sec. 3.1)."""

    n_mels: int = 40
    hop_ms: int = 20

    @property
    def hop(self) -> int:
        return SAMPLE_RATE * self.hop_ms // 1000

    @property
    def key(self) -> str:
        """Cache key: the settings and the code that computes (and augments) the log-mels."""
        return f"logmel-n{self.n_mels}-h{self.hop_ms}-{code_digest('mmser.papers.vcemo')[:12]}"


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
    """Log-mel of one augmented view (Sec. 3.5): Gaussian noise at `snr_db`, a pitch shift
    of up to `max_semitones`, or a time stretch by a rate within 1 +- `max_stretch`.

    Pitch shift = torchaudio resampling by a small rational ratio, then a phase-vocoder
    stretch back to length (torchaudio's `pitch_shift` resamples by an irrational ratio,
    whose polyphase kernel is about 16,000 x 15,000 taps at 16 kHz).
    """
    signal = torch.from_numpy(np.ascontiguousarray(wave, np.float32))
    if kind == "noise":
        noise = torch.from_numpy(rng.standard_normal(len(wave)).astype(np.float32))
        noisy = AF.add_noise(signal, noise, torch.tensor(float(snr_db)))
        return log_mel(_stft(noisy.numpy(), cfg), cfg)
    if kind == "pitch":
        # at least half a semitone, so the rational ratio below is never 1
        semitones = rng.choice([-1, 1]) * rng.uniform(min(0.5, max_semitones), max_semitones)
        ratio = Fraction(2 ** (semitones / 12)).limit_denominator(100)
        # read at `numerator` Hz, written at `denominator` Hz: 1/ratio as long, so played
        # at the original rate its pitch is `ratio` times higher
        shifted = AF.resample(signal, ratio.numerator, ratio.denominator).numpy()
        spec = _stft(shifted, cfg)
        return log_mel(_stretch(spec, len(shifted) / len(wave), cfg), cfg)
    if kind == "stretch":
        rate = rng.uniform(1 - max_stretch, 1 + max_stretch)
        return log_mel(_stretch(_stft(wave, cfg), rate, cfg), cfg)
    raise ValueError(f"unknown augmentation {kind!r}; choose from {AUGMENTATIONS}")


def augmentation_kind(clip_index: int, view: int, seed: int = 0) -> str:
    """The augmentation of a clip's view `view` (1, 2, ...): the kinds rotate over clips
    as well as views, so that even one view per clip uses noise, pitch shift and time
    stretch (Sec. 3.5) on a third of the clips each; the seed shifts the rotation."""
    return AUGMENTATIONS[(clip_index + view - 1 + seed) % len(AUGMENTATIONS)]


def mel_views(paths: Sequence[Path], cache_dir: str | Path, cfg: MelConfig, n_augment: int,
              seed: int = 0, *, stream: bool = False, **aug_options,
              ) -> list[list[torch.Tensor]] | list[list[StateRef]]:
    """For each clip: [clean log-mel, augmented view 1, ..., view n_augment], computed once
    and cached under `cache_dir` (fold-independent: views depend on the clip, its place in
    `paths` and the seed). The kind of each view is `augmentation_kind`; its parameters
    are drawn from a generator seeded by the clip, view, kind and seed.

    Clips are read one at a time (for their digests), and again a batch at a time only
    for views not cached yet. The views come back as float32 tensors of the cached
    float16 entries, or with `stream=True` as `StateRef`s to them, read per batch (the
    same float32 values), so that memory grows with the batch, not with the corpus."""
    cache = FeatureCache(cache_dir, cfg.key)
    options = ",".join(f"{k}={v}" for k, v in sorted(aug_options.items()))
    keys, jobs, sizes = [], [], []
    for i, path in enumerate(paths):
        wave = load_audio(path).wave
        digest = wave_digest(wave)
        for k in range(n_augment + 1):
            kind = augmentation_kind(i, k, seed) if k else None
            key = digest if k == 0 else hashlib.sha256(
                f"{digest}|{k}|{kind}|{seed}|{options}".encode()).hexdigest()
            keys.append(key)
            jobs.append((path, kind, key))
            sizes.append(len(wave))

    def compute(batch: list) -> list[dict[str, torch.Tensor]]:
        waves: dict[Path, np.ndarray] = {}  # this batch's clips, each read once
        out = []
        for path, kind, key in batch:
            if path not in waves:
                waves[path] = load_audio(path).wave
            if kind is None:
                mel = log_mel(_stft(waves[path], cfg), cfg)
            else:
                rng = np.random.default_rng(int(key[:12], 16))
                mel = augment(waves[path], kind, rng, cfg, **aug_options)
            out.append({"mel": mel.half()})
        return out

    cache.fill(keys, jobs, sizes, compute, batch_size=32, desc="log-mels")
    if stream:
        views = [cache.ref(key, "mel", layer=None) for key in keys]
    else:
        views = [cache.load(key)["mel"].float() for key in keys]
    return [views[i:i + n_augment + 1] for i in range(0, len(views), n_augment + 1)]


# ------------------------------------------------------------------ text input

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def segment(text: str, mode: str = "auto") -> list[str]:
    """Words of a transcript: Chinese by characters (`chars`) or by jieba's words (`jieba`,
    the segmenter of spaCy's Chinese pipeline, whose vectors the paper uses), other languages
    by lower-cased word characters (`words`). `auto` picks chars or words by CJK presence."""
    if mode == "auto":
        mode = "chars" if CJK.search(text) else "words"
    if mode == "chars":
        return [ch for ch in text if CJK.match(ch) or ch.isalnum()]
    if mode == "words":
        return re.findall(r"[\w']+", text.lower())
    if mode == "jieba":  # punctuation and spaces dropped, as by the other modes
        return [w.lower() for w in _jieba().lcut(text) if re.search(r"\w", w)]
    raise ValueError(f"unknown segmentation {mode!r}; choose auto, chars, words or jieba")


@functools.cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # not its "Building prefix dict" lines on every run
    return jieba


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


# the text encoder's states VCEMO reads: the input embeddings (its word vectors) and the
# last layer (its sentence vector); `text_states` lookups return these two, stacked
TEXT_STATES = [0, -1]


@dataclass(frozen=True)
class TextInput(StateRef):
    """A text's word vectors (`word_vectors` of hidden state 0) or sentence vector
    (`sentence_vector` of the last layer), read from its cache entry when a batch is built
    (`mmser.training.data.collate`): the streamed form of `Experiment.words` and `sent`."""

    use: str = "words"  # words | sent
    max_tokens: int = 0
    pool: str = "mean"

    @classmethod
    def of(cls, states: StateRef, use: str, max_tokens: int, pool: str) -> "TextInput":
        """The input `use` from a reference to a stack of states (`TEXT_STATES`, or every
        one) of shape (states, tokens, dim)."""
        _, tokens, dim = states.shape
        first, last = (states.layer[0], states.layer[-1]) if isinstance(states.layer, tuple) \
            else (0, -1)
        if use == "words":
            inner = tokens - 2 if tokens > 2 else tokens
            return cls(states.root, states.entry, states.name, first,
                       (min(inner, max_tokens), dim), use=use, max_tokens=max_tokens)
        return cls(states.root, states.entry, states.name, last, (dim,), use=use, pool=pool)

    def load(self) -> torch.Tensor:
        states = super().load()
        if self.use == "words":
            return word_vectors(states, self.max_tokens)
        return sentence_vector(states, self.pool)


def cached_text_states(cache_dir: str | Path, encoder_name: str, texts: Sequence[str],
                       batch_size: int = 32, stream: bool = False,
                       ) -> Callable[[Sequence[str]], list[torch.Tensor] | list[StateRef]]:
    """Encode `texts` the features stage did not (e.g. the Mandarin variant) into our own
    cache (only the `TEXT_STATES` it reads); returns a lookup texts -> those states (2,
    tokens, dim), float32, or with `stream=True` a `StateRef` to them (as
    `FeatureStore(stream=True).text(texts, TEXT_STATES)`)."""
    from mmser.encode.encoders import TextEncoder
    from mmser.encode.features import text_digest, text_features

    encoder = TextEncoder(encoder_name)
    cache = FeatureCache(cache_dir, encoder.key, keep=TEXT_STATES)
    text_features(cache, encoder, list(texts), batch_size=batch_size)

    def lookup(batch: Sequence[str]) -> list[torch.Tensor] | list[StateRef]:
        if stream:
            return [cache.ref(text_digest(t), layer=TEXT_STATES) for t in batch]
        position = cache.position(TEXT_STATES)
        return [layer_copy(cache.load(text_digest(t))["hidden"], position) for t in batch]
    return lookup


# ------------------------------------------------------------------ systems


@dataclass(frozen=True)
class System:
    key: str  # folder name under the stage's model dir
    name: str  # row name in the tables
    kind: str  # vcemo | yoon (multi-hop attention) | xu
    modalities: tuple[str, ...] = V.MODALITIES
    supcon: bool = False


SYSTEMS = {
    "supcon": System("supcon", "VCEMO (SupCon)", "vcemo", supcon=True),
    "ce": System("ce", "VCEMO", "vcemo"),
    "yoon": System("yoon", "Yoon et al. 2019 (MHA-2)", "yoon"),
    "xu": System("xu", "Xu et al. 2019", "xu"),
}


def ablation_name(modalities: Sequence[str]) -> str:
    """The paper's Table 3 row name (its order: embeddings, BERT, acoustic)."""
    order = ("words", "bert", "acoustic")
    return " + ".join(SHORT[m] for m in order if m in modalities)


def ablation_systems() -> list[System]:
    """All seven modality combinations, with SupCon; the full one is the main model."""
    out = []
    for n in (1, 2, 3):
        for combo in itertools.combinations(V.MODALITIES, n):
            if n == 3:
                out.append(SYSTEMS["supcon"])
            else:
                out.append(System("abl-" + "-".join(combo), ablation_name(combo), "vcemo",
                                  combo, supcon=True))
    return out


def system(key: str) -> System:
    if key not in SYSTEMS:
        raise ValueError(f"unknown vcemo system {key!r}; known: {sorted(SYSTEMS)}")
    return SYSTEMS[key]


class Experiment:
    """One corpus's inputs, built once, and the systems trained on its folds.

    Log-mels (clean and `n_augment` augmented views of every clip) come from a cache;
    `items(rows, augment=True)` adds the augmented views (the training part of a fold);
    validation and test items are always clean. With `stream=True` (`training.
    stream_states`) the log-mels, and the text inputs when `text_states` returns
    `StateRef`s, are references read per batch: the items hold no corpus of tensors.
    """

    def __init__(self, corpus: Corpus, text_states: Callable[[Sequence[str]], list],
                 cfg: Vcemo, mel_dir: str | Path, seed: int = 0, stream: bool = False):
        self.corpus, self.cfg, self.seed = corpus, cfg, seed
        rows = corpus.labelled
        if rows.empty:
            raise ValueError("the corpus has no labelled utterances inside the protocol")
        for name, count in rows["label"].value_counts().items():
            if count < 2:
                raise ValueError(f"class {name!r} has {count} utterance(s); every class needs "
                                 "examples in training and test folds")
        texts = rows[cfg.text_source]
        if texts.isna().any() or (texts.astype(str).str.strip() == "").any():
            missing = rows.loc[texts.isna(), "utt_id"].tolist()[:3]
            raise ValueError(f"vcemo.text_source={cfg.text_source!r} is empty for some "
                             f"utterances (e.g. {missing}); run the transcribe stage, or "
                             "use text_source: text")
        self.mel_cfg = MelConfig(cfg.n_mels, cfg.hop_ms)
        paths = manifest.resolve_paths(rows, corpus.audio_root)
        views = mel_views(paths, mel_dir, self.mel_cfg, cfg.n_augment, seed, stream=stream,
                          snr_db=cfg.snr_db, max_semitones=cfg.max_semitones,
                          max_stretch=cfg.max_stretch)
        self.mels = dict(zip(rows["utt_id"], views))
        unique = sorted(set(texts))
        states = dict(zip(unique, text_states(unique)))
        self.words = {t: self._text_input(s, "words") for t, s in states.items()}
        self.sent = {t: self._text_input(s, "sent") for t, s in states.items()}
        self.word_dim = next(iter(self.words.values())).shape[-1]
        self.vocab: dict[str, int] | None = None

    def _text_input(self, states: torch.Tensor | StateRef, use: str,
                    ) -> torch.Tensor | TextInput:
        """A text's word vectors or sentence vector from its states, or a reference to
        them when `text_states` gave references (it streams)."""
        cfg = self.cfg
        if isinstance(states, StateRef):
            return TextInput.of(states, use, cfg.max_tokens, cfg.sentence_pool)
        if use == "words":
            return word_vectors(states[0], cfg.max_tokens)
        return sentence_vector(states[-1], cfg.sentence_pool)

    # -------------------------------------------------------------------- items

    def items(self, rows: pd.DataFrame, augment: bool = False) -> list[dict]:
        cfg = self.cfg
        labels = label_ids(rows["label"].tolist(), self.corpus.classes)
        out = []
        for (utt, text), label in zip(rows[["utt_id", cfg.text_source]].itertuples(
                index=False), labels):
            item = {"sent": self.sent[text], "label": int(label)}
            if cfg.word_vectors == "learned":
                ids = [self.vocab.get(w, 1) for w in segment(text, cfg.segmenter)]
                item["tokens_seq"] = torch.tensor(ids[: cfg.max_tokens] or [1])
            else:
                item["words"] = self.words[text]
            for mel in self.mels[utt][: (1 + cfg.n_augment) if augment else 1]:
                out.append({**item, "mel": mel})
        return out

    # -------------------------------------------------------------------- models

    def model(self, spec: System) -> torch.nn.Module:
        cfg, n_classes = self.cfg, len(self.corpus.classes)
        vocab = len(self.vocab) if cfg.word_vectors == "learned" else None
        word_dim = cfg.word_dim if vocab else self.word_dim
        if spec.kind == "yoon":
            return V.YoonMHA(cfg.n_mels, word_dim, n_classes, cfg.dim, vocab, cfg.dropout,
                             YOON_HOPS)
        if spec.kind == "xu":
            return V.Xu2019(cfg.n_mels, word_dim, n_classes, cfg.dim, vocab, cfg.dropout)
        net = V.VcemoNet(spec.modalities, cfg.n_mels, word_dim, self.word_dim, cfg.dim,
                         cfg.heads, cfg.layers, cfg.dropout, vocab)
        return V.VcemoModel(net, n_classes, cfg.alpha if spec.supcon else 0.0,
                            cfg.temperature, cfg.proj_dim, cfg.queue_size, cfg.momentum,
                            cfg.dropout)

    def make_task(self, spec: System) -> Callable[[Fold, int], Task]:
        def make(fold: Fold, seed: int) -> Task:
            if self.cfg.word_vectors == "learned":
                self.vocab = build_vocab(fold.train()[self.cfg.text_source].tolist(),
                                         self.cfg.segmenter)
            return Task(self.model(spec), kind="classification", lr=self.cfg.lr,
                        weight_decay=self.cfg.weight_decay, optimizer="adam")
        return make

    def fingerprint(self, spec: System) -> dict:
        """The parameters of a system's runs (`fit` adds its code, data and weights)."""
        return {"system": asdict(spec), "vcemo": asdict(self.cfg),
                "classes": self.corpus.classes}

    def run(self, spec: System, out_dir: str | Path, training: Training,
            seeds: Sequence[int]) -> pd.DataFrame:
        """Every fold and seed of one system; predictions with a `system` column."""
        preds = cross_validate(self.corpus, self.items, self.make_task(spec),
                               Path(out_dir) / spec.key, training, seeds=seeds,
                               train_items=functools.partial(self.items, augment=True),
                               fingerprint=self.fingerprint(spec),
                               max_epochs=self.cfg.max_epochs, batch_size=self.cfg.batch_size,
                               patience=self.cfg.patience, bucket_by="mel")
        return preds.assign(system=spec.name)

    def embeddings(self, spec: System, out_dir: str | Path, fold_index: int, seed: int,
                   ) -> tuple[np.ndarray, list[str]]:
        """Projector outputs of a trained system on one fold's test utterances (for t-SNE);
        the fold's choice is the checkpoint that `run` chose on validation."""
        for fold in self.corpus.folds(seed=seed):
            if fold.index != fold_index:
                continue
            task = self.make_task(spec)(fold, seed)
            best = Path(out_dir) / spec.key / f"seed{seed}" / f"fold{fold.index}" / "best.pt"
            task.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
            fold.select(checkpoint=str(best))
            test = fold.test()
            out = predict(task, self.items(test), keys=("proj",))
            return out["proj"], test["label"].tolist()
        raise ValueError(f"no fold {fold_index} in this corpus")


# ------------------------------------------------------------------ result tables


def paper_comparison(ours: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Our WA/UA/F1 (mean ± std strings, by system name) beside the paper's Tables 1-2."""
    col = 0 if n_classes == 4 else 2
    rows = []
    for name in dict.fromkeys([*ours["system"], *PAPER_VCEMO]):
        row = {"system": name}
        if name in set(ours["system"]):
            row.update(ours.set_index("system").loc[name].to_dict())
        vc = PAPER_VCEMO.get(name)
        ie = PAPER_IEMOCAP.get(name)
        row[f"paper VCEMO {n_classes}-cl acc"] = f"{vc[col]:.2f}" if vc else "–"
        row[f"paper VCEMO {n_classes}-cl F1"] = f"{vc[col + 1]:.2f}" if vc else "–"
        row["paper IEMOCAP WA"] = f"{ie[0]:.2f}" if ie else "–"
        row["paper IEMOCAP UA"] = f"{ie[1]:.2f}" if ie else "–"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def paper_ablation(ours: pd.DataFrame) -> pd.DataFrame:
    """Our modality ablation beside the paper's Table 3."""
    table = ours.copy()
    full = ablation_name(V.MODALITIES)
    table["system"] = table["system"].replace({SYSTEMS["supcon"].name: full})
    table["paper acc"] = [f"{PAPER_ABLATION[s][0]:.2f}" for s in table["system"]]
    table["paper F1"] = [f"{PAPER_ABLATION[s][1]:.2f}" for s in table["system"]]
    return table.rename(columns={"system": "modalities"})


# ------------------------------------------------------------------ reading


def claim_line(result: dict, paper: str) -> str:
    """One paired bootstrap result (`results.bootstrap`: a - b, the paper claiming a > b)
    as a sentence with its verdict; a result against the paper says so first."""
    said = verdict(result["low"], result["high"])
    line = (f"{result['a']} − {result['b']}: {result['metric']} {result['diff']:+.3f} "
            f"[{result['low']:+.3f}, {result['high']:+.3f}] → {said}; the paper: {paper}")
    return f"AGAINST THE PAPER: {line}" if said == DISAGREES else line


def paper_gap(a: str, b: str, metric: str = "UA") -> str:
    """The paper's own a-vs-b numbers, from the first table that has both (Table 2 in
    `metric`, WA or UA; else the accuracy of Table 1, else of Table 3)."""
    wa = metric == "WA"
    for table, what, col in ((PAPER_IEMOCAP, f"IEMOCAP {'WA' if wa else 'UA'}, Table 2",
                              0 if wa else 1),
                             (PAPER_VCEMO, "VCEMO 4-class accuracy, Table 1", 0),
                             (PAPER_ABLATION, "VCEMO 4-class accuracy, Table 3", 0)):
        names = {n: n for n in table}
        if table is PAPER_ABLATION:
            names[SYSTEMS["supcon"].name] = ablation_name(V.MODALITIES)
        if a in names and b in names:
            x, y = table[names[a]][col], table[names[b]][col]
            return f"{x:.2f} vs {y:.2f} ({what}: {x - y:+.2f} points)"
    return "no number for this pair"


def chance_line(per_fold: pd.DataFrame, system: str, n_classes: int) -> str:
    """A system's UA against chance (1 / classes): within one std over folds and seeds of
    chance, or below it, reads as no better than chance."""
    ua = per_fold.loc[per_fold["system"] == system, "UA"]
    chance, mean, std = 1 / n_classes, float(ua.mean()), float(ua.std(ddof=0))
    level = "no better than chance" if mean - chance <= std else "above chance"
    return (f"{system}: UA {mean:.3f} ± {std:.3f} over {len(ua)} folds x seeds, chance "
            f"{chance:.3f} → {level}")


def paper_table_notes() -> list[str]:
    """Where the paper's tables disagree with one another or with its text, found from the
    numbers themselves (Table 3's full row against Tables 1 and 2, and Sec. 4.4's "+1.5%
    from adding BERT to word embeddings")."""
    full_name = ablation_name(V.MODALITIES)
    full, table1 = PAPER_ABLATION[full_name], PAPER_VCEMO[SYSTEMS["supcon"].name][:2]
    notes = []
    if full != table1:
        notes.append(f"Table 3's full model ({full[0]:.2f} acc / {full[1]:.2f} F1) differs "
                     f"from Table 1's 4-class VCEMO (SupCon) ({table1[0]:.2f} / "
                     f"{table1[1]:.2f}), though both are the VCEMO 4-class setup")
    for metric, value in zip(("acc", "F1"), full):
        for name, (wa, ua) in PAPER_IEMOCAP.items():
            for other, v in (("WA", wa), ("UA", ua)):
                if v == value:
                    notes.append(f"Table 3's full-model {metric} {value:.2f} equals {name}'s "
                                 f"IEMOCAP {other} in Table 2")
    words, both = PAPER_ABLATION["Embeddings"][0], PAPER_ABLATION["Embeddings + BERT"][0]
    if both < words:
        notes.append(f"Sec. 4.4 says adding BERT to word embeddings improves accuracy by "
                     f"about 1.5%; Table 3 has {both:.2f} with BERT vs {words:.2f} without")
    return notes


# ------------------------------------------------------------------ Mandarin corpus


def _cmn_text(kind: str, rng: np.random.Generator) -> str:
    material = yaml.safe_load(CMN_TEXT.read_text())
    return synth._fill(str(rng.choice(material["frames"])),
                       [material["kinds"][kind], material["slots"]], rng)


def _make_cmn(spec: synth.Spec) -> dict:
    rng = np.random.default_rng([spec.seed, spec.index])
    voice, base_pitch, base_rate = CMN_VOICES[spec.speaker % len(CMN_VOICES)]
    wording = synth._wording(spec.label, rng)
    spaced = _cmn_text(wording, rng)
    cue = synth._draw_prosody(spec.label, rng)
    wave = synth._espeak(synth._ssml(spaced, cue, rng), voice, base_pitch, base_rate)
    snr = round(float(rng.uniform(*spec.snr_db)), 2)
    write_audio(Path(spec.out_dir) / "wav" / f"{spec.utt_id}.wav",
                      synth._add_noise(wave, snr, rng))
    row = {"utt_id": spec.utt_id, "text": spaced.replace(" ", ""),
           "duration": round(len(wave) / SAMPLE_RATE, 4), "x_voice": voice,
           "x_wording": wording, "x_snr_db": snr}
    row.update({f"x_{name}": int(v) for name, v in zip(synth.CUES, cue)})
    row.update(synth._scales(cue, wording, rng))
    return row


def synthesise_mandarin(out_dir: str | Path, *, seed: int, n_labelled: int = 96,
                        n_speakers: int = 4, n_sessions: int = 2, classes: int = 4,
                        snr_db: tuple[float, float] = (10, 30)) -> Corpus:
    """A small Mandarin variant of the default corpus (espeak-ng `cmn`, reference
    transcripts in Chinese characters, leave-one-session-out), written under `out_dir`
    with its manifest and corpus.json; returns it loaded. Deterministic from `seed`."""
    from mmser.training.data import load_corpus

    synth.require_espeak()
    if not 1 <= n_sessions <= n_speakers <= len(CMN_VOICES):
        raise ValueError(f"need 1 <= n_sessions <= n_speakers <= {len(CMN_VOICES)}")
    labels = synth.EMOTIONS_4 if classes == 4 else synth.EMOTIONS_6
    out_dir = Path(out_dir)
    sessions = synth._sessions(n_speakers, n_sessions)
    plan = np.random.default_rng([seed, synth.DIALOGUE_STREAM])
    rows = list(synth._dialogues(n_labelled, sessions, labels, plan))
    made = []
    for i, row in enumerate(rows):
        row.update(utt_id=f"cmn_{i:05d}", split="labelled")
        made.append(_make_cmn(synth.Spec(i, row["utt_id"], row["speaker"], row["label"], seed,
                                         (float(snr_db[0]), float(snr_db[1])), str(out_dir))))
    df = synth._manifest(pd.DataFrame(rows).merge(pd.DataFrame(made), on="utt_id"))
    df["corpus"] = "synthetic_cmn"
    manifest.write(df, out_dir / "manifest.csv")
    manifest.write_corpus_info(out_dir, out_dir, name="synthetic_cmn", classes=classes,
                               protocol={"name": "loso"}, language="cmn")
    return load_corpus(out_dir, out_dir / "manifest.csv")
