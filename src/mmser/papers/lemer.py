"""LE-MER (Wang et al., Interspeech 2023): label embeddings and label-guided cross-attention.

- Label descriptions: the top-K terms of each class, fitted on a fold's training rows only:
  words of the transcripts by TF-IDF over one document per class (text, `tfidf_top`), and
  discrete units of the speech frames scored by `lemer.unit_scoring` (speech,
  `term_scores`: per class, per utterance, or per-utterance contrast between classes).
  `pairwise_cosines` and `top_overlap` show how far the classes' descriptions differ.
- Discrete speech units: the wav2vec 2.0 quantizer's codevector ids (`QuantizerUnits`, the
  paper), or k-means over frozen frame states (`KMeansUnits`, the default's substitution:
  Whisper has no quantizer).
- Label embeddings of one fold (`LabelSources`): text = mean encoder state of the keywords
  (or of the label word, or random); speech = mean codevector/centroid of the top units
  (or the text label embedding, or random). They are trainable parameters from there on.
- Models, in `mmser.models.lemer`: `Branch` (one modality, eq. 1-6), `Unimodal` (Table 1),
  `LEMER` (eq. 7-12, Tables 2-3). `SYSTEMS` names the rows of the paper's tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmser.config import Lemer
from mmser.encode.features import StateRef, layer_copy, load_refs
from mmser.training.data import label_ids
from mmser.models.layers import Adapter
from mmser.models.lemer import LEMER, Branch, Unimodal
from mmser.training.loop import Task

# ------------------------------------------------------------------------------ systems

TEXT_INITS = (None, "random", "label", "tfidf")
SPEECH_INITS = (None, "random", "text", "units")


@dataclass(frozen=True)
class System:
    """One row of the paper's tables: which modalities, which label-embedding inits."""

    name: str
    title: str
    kind: str  # text | speech | fusion
    context: bool = False  # previous turns spliced before the text
    text_init: str | None = None  # see TEXT_INITS; None = no text label embedding
    speech_init: str | None = None  # see SPEECH_INITS; None = no speech label embedding
    fusion: str = "constraint"  # see mmser.models.lemer.FUSIONS
    speech_k: int | None = None  # overrides lemer.speech_k (the Figure 3 sweep)
    # how A_l enters the fusion (mmser.models.lemer.LABEL_ATTENTIONS); None = lemer's
    label_attention: str | None = None
    paper_row: str | None = None  # the paper's row this one also reads (default: its name)


SYSTEMS = {s.name: s for s in [
    System("A1", "text encoder", "text"),
    System("A2", "+ historical utterances", "text", context=True),
    System("A3", "+ historical utterances + LE (random init)", "text", True, "random"),
    System("A4", "+ historical utterances + LE (label words init)", "text", True, "label"),
    System("A5", "+ historical utterances + LE (TF-IDF init)", "text", True, "tfidf"),
    System("B1", "speech encoder", "speech"),
    System("B3", "+ LE (random init)", "speech", speech_init="random"),
    System("B4", "+ LE (text embedding init)", "speech", speech_init="text"),
    System("B5", "+ LE (unit init)", "speech", speech_init="units"),
    System("C1", "attention constraint (full model)", "fusion", True, "tfidf", "units",
           "constraint"),
    System("C2", "A_r + A_l", "fusion", True, "tfidf", "units", "sum"),
    System("C3", "only A_l", "fusion", True, "tfidf", "units", "label"),
    System("C4", "only A_r", "fusion", True, "tfidf", "units", "vanilla"),
    # C1 under each reading of eq. 10, whatever lemer.label_attention says
    System("C1raw", "attention constraint, raw A_l (eq. 10 as printed)", "fusion", True,
           "tfidf", "units", "constraint", label_attention="raw", paper_row="C1"),
    System("C1norm", "attention constraint, softmaxed detached A_l", "fusion", True,
           "tfidf", "units", "constraint", label_attention="normalised", paper_row="C1"),
]}

# The paper's numbers (IEMOCAP, 4 classes, 5,531 utterances, leave-one-session-out; %).
PAPER = {
    "A1": (67.34, 67.66), "A2": (77.46, 78.38), "A3": (77.51, 78.52), "A4": (78.03, 78.88),
    "A5": (78.11, 78.92), "B1": (73.92, 74.48), "B2": (75.73, 76.44), "B3": (76.20, 76.80),
    "B4": (76.48, 77.14), "B5": (76.74, 77.74), "C1": (82.40, 83.11), "C2": (82.39, 82.75),
    "C3": (81.29, 81.37), "C4": (81.08, 81.68), "score fusion": (81.32, 82.18),
}
PAPER_BASELINES = {  # Table 2: earlier systems on the same protocol, (WA, UA) %
    "Chen et al. (key-sparse Transformer)": (74.30, 75.30),
    "Chen et al. (temporal and semantic consistency)": (74.92, 76.64),
    "Hou et al.": (75.60, 77.60), "Wu et al.": (77.57, 78.41),
    "Santoso et al.": (78.40, 78.60), "Li et al.": (80.36, 81.70),
}


def systems(names: Sequence[str], k_grid: Sequence[int] = ()) -> list[System]:
    """The requested rows, then one B5 variant per K of the Figure 3 sweep."""
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"lemer.systems: unknown rows {unknown}; known: {list(SYSTEMS)}")
    out = [SYSTEMS[n] for n in names]
    return out + [replace(SYSTEMS["B5"], name=f"B5_K{k}", title=f"B5 with K={k}",
                          speech_k=int(k)) for k in k_grid]


NO_DIALOGUES = ("the corpus has no dialogues (no dialog_id and turn_index), so no turn has "
                "a history to add")


def has_dialogues(df: pd.DataFrame) -> bool:
    """Whether the manifest places utterances in dialogues (IEMOCAP: yes; RAVDESS, EmoDB,
    MSP-Podcast: no)."""
    return "dialog_id" in df.columns and bool(df["dialog_id"].notna().any())


def for_corpus(run: Sequence[System], dialogues: bool
               ) -> tuple[list[System], dict[str, str]]:
    """The rows a corpus allows, and why the others are not applicable. Without dialogues
    every "context" is the utterance's own text (`context_texts`): the label-embedding and
    fusion rows still test what they test, but A2 (A1 plus the history) would only repeat
    A1, so it does not run."""
    if dialogues:
        return list(run), {}
    history_only = [s for s in run if s.kind == "text" and s.context and s.text_init is None]
    return ([s for s in run if s not in history_only],
            {s.name: f"not applicable, because {NO_DIALOGUES}" for s in history_only})


def text_key(system: System) -> str:
    return "context" if system.context else "text"


def item_keys(system: System) -> tuple[str, ...]:
    """The sequences a system reads from an item."""
    return {"text": (text_key(system),), "speech": ("speech",),
            "fusion": (text_key(system), "speech")}[system.kind]


# ------------------------------------------------------------------------- text context


def context_texts(df: pd.DataFrame, column: str, turns: int, max_tokens: int,
                  count_tokens: Callable[[str], int], sep: str = " ") -> pd.Series:
    """Each row's text after up to `turns` previous turns of its dialogue (oldest first),
    dropping the oldest turns until the whole fits in `max_tokens`. Indexed by utt_id.

    Pass the whole manifest (`corpus.df`), not only the labelled rows: the history is every
    transcribed turn of the dialogue in `turn_index` order, whatever its label (IEMOCAP's
    frustrated or "xxx" turns with 4 classes too), so that which turns a history holds
    never depends on the neighbours' labels. A turn whose `column` text is missing or
    blank is skipped in the history; a row without text of its own gets its history only.
    A row outside any dialogue (every row of a corpus without dialogues: `for_corpus`) is
    its own text."""
    if "dialog_id" not in df.columns:
        df = df.assign(dialog_id=pd.NA, turn_index=pd.NA)
    out = {}
    for _, dialogue in df[df["dialog_id"].notna()].groupby("dialog_id"):
        dialogue = dialogue.sort_values("turn_index", kind="stable")
        said = dialogue[column].fillna("").astype(str).tolist()
        for i, utt in enumerate(dialogue["utt_id"]):
            history = [text for text in said[:i] if text.strip()][-turns:] if turns > 0 else []
            own = [said[i]] if said[i].strip() else []
            while history and count_tokens(sep.join([*history, *own])) > max_tokens:
                history = history[1:]
            out[utt] = sep.join([*history, *own])
    alone = df[df["dialog_id"].isna()]
    out.update(zip(alone["utt_id"], alone[column].fillna("")))
    return pd.Series(out)


# ------------------------------------------------------------------------------ TF-IDF

# How a class's terms are scored (the top-K become its label description):
# "class": TF-IDF with one document per class (the text keywords). With a few classes and a
#   small vocabulary nearly every term is in every document, so IDF is 1 and the score is
#   the term frequency: the classes' top units are nearly the same.
# "utterance": TF-IDF with one document per utterance (IDF over the fold's training
#   utterances); a class's score is the mean over its utterances.
# "contrast": the utterance score of the class minus its mean over the other classes: a
#   unit scores high where it is typical of this class and not of the others.
UNIT_SCORINGS = ("class", "utterance", "contrast")


def _tokens(doc: Sequence[str]) -> Sequence[str]:
    return doc


def words(texts: Sequence[str]) -> list[str]:
    """Lower-cased words without English stop words (the keyword candidates)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyse = TfidfVectorizer(stop_words="english").build_analyzer()
    return [w for t in texts for w in analyse(t)]


def term_scores(docs: Mapping[str, Sequence[Sequence[str]]], scoring: str = "class"
                ) -> pd.DataFrame:
    """Scores (classes x terms) of each class's terms; `docs`: class -> its documents (one
    per utterance, each a list of terms). `scoring`: see UNIT_SCORINGS."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if scoring not in UNIT_SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {UNIT_SCORINGS}")
    empty = [c for c, ds in docs.items() if sum(len(d) for d in ds) == 0]
    if empty:
        raise ValueError(f"classes {empty} have no training material for a label embedding "
                         "(no words or frames in this fold's training rows)")
    vectoriser = TfidfVectorizer(analyzer=_tokens)
    if scoring == "class":
        scores = vectoriser.fit_transform([[t for d in ds for t in d]
                                           for ds in docs.values()]).toarray()
    else:
        matrix = vectoriser.fit_transform([list(d) for ds in docs.values() for d in ds])
        bounds = np.cumsum([0, *(len(ds) for ds in docs.values())])
        scores = np.stack([np.asarray(matrix[a:b].mean(0)).ravel()
                           for a, b in zip(bounds[:-1], bounds[1:])])
        if scoring == "contrast":
            others = (scores.sum(0, keepdims=True) - scores) / max(1, len(scores) - 1)
            scores = scores - others
    return pd.DataFrame(scores, index=list(docs), columns=vectoriser.get_feature_names_out())


def top_terms(scores: pd.DataFrame, k: int) -> dict[str, list[str]]:
    """The top-`k` terms of each class (row) among those scoring above 0 (all of its terms
    when none does, e.g. a contrast below 0 everywhere); ties go to the alphabetically first
    term, so the choice is deterministic."""
    if k < 1:
        raise ValueError(f"top-K needs K >= 1, got {k}")
    top = {}
    for name, row in scores.iterrows():
        kept = row[row > 0] if (row > 0).any() else row
        order = sorted(range(len(kept)), key=lambda j: (-kept.iloc[j], str(kept.index[j])))
        top[str(name)] = [str(kept.index[j]) for j in order[:k]]
    return top


def tfidf_top(docs: Mapping[str, Sequence[str]], k: int) -> dict[str, list[str]]:
    """The top-`k` terms of each class by TF-IDF, one document (a list of terms) per class."""
    return top_terms(term_scores({c: [doc] for c, doc in docs.items()}, "class"), k)


def pairwise_cosines(embeddings: torch.Tensor, classes: Sequence[str]) -> pd.DataFrame:
    """Cosine of every pair of label embeddings (classes x classes): near 1 everywhere means
    the labels cannot be told apart."""
    unit = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
    return pd.DataFrame((unit @ unit.T).numpy(), index=list(classes), columns=list(classes))


def label_only_ua(embedding: torch.Tensor, sequences: Sequence[torch.Tensor | StateRef],
                  labels: Sequence[int]) -> float:
    """UA of the label embedding alone as a classifier, before any training: the argmax of
    eq. 2 / 5's mean cosine of the states with each label (chance = 1 / classes)."""
    from sklearn.metrics import balanced_accuracy_score

    from mmser.models.lemer import cosine_map

    scores = torch.stack([cosine_map(load_refs(s).float()[None], embedding.float())[0].mean(0)
                          for s in sequences])
    return float(balanced_accuracy_score(list(labels), scores.argmax(1).numpy()))


def top_overlap(top: Mapping[str, Sequence]) -> pd.DataFrame:
    """Jaccard overlap of every pair of classes' top-K sets (1 = the same set)."""
    sets = {c: set(terms) for c, terms in top.items()}
    return pd.DataFrame([[len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b]))
                          for b in sets] for a in sets], index=list(sets), columns=list(sets))


# ------------------------------------------------------------------------ speech units


class KMeansUnits:
    """Discrete speech units by k-means over frozen frame states, fitted on training frames
    only; a unit's vector is its centroid (in the space of the frames themselves)."""

    def __init__(self, n_units: int, max_frames: int, seed: int = 0):
        self.n_units, self.max_frames, self.seed = n_units, max_frames, seed
        self.model = None

    def fit(self, frames: Sequence[torch.Tensor | StateRef]) -> "KMeansUnits":
        """Fit on at most `max_frames` training frames, drawn over every clip's frames. The
        draw is made from the clips' lengths, so only the drawn frames are held, one clip
        read at a time (the same frames as drawing from all of them stacked)."""
        from sklearn.cluster import MiniBatchKMeans

        lengths = np.array([len(f) for f in frames])
        total = int(lengths.sum())
        if total < self.n_units:
            raise ValueError(f"k-means: {total} frames cannot make {self.n_units} units")
        rng = np.random.default_rng(self.seed)
        chosen = rng.choice(total, self.max_frames, replace=False) \
            if total > self.max_frames else np.arange(total)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        clip = np.searchsorted(starts, chosen, side="right") - 1
        picked = np.empty((len(chosen), 0), np.float32)
        for c in np.unique(clip):  # each clip read once, its drawn frames kept in draw order
            at = np.flatnonzero(clip == c)
            rows = load_refs(frames[c])[chosen[at] - starts[c]].numpy()
            if picked.shape[1] == 0:
                picked = np.empty((len(chosen), rows.shape[1]), rows.dtype)
            picked[at] = rows
        self.model = MiniBatchKMeans(self.n_units, random_state=self.seed, n_init=1,
                                     batch_size=2048).fit(picked)
        return self

    def units(self, frames: Sequence[torch.Tensor | StateRef]) -> list[np.ndarray]:
        return [self.model.predict(load_refs(f).numpy()) for f in frames]

    def vectors(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.model.cluster_centers_[list(ids)]).float()


class QuantizerUnits:
    """The paper's units: wav2vec 2.0's quantizer on the CNN features. A unit is the tuple of
    codebook entries of its groups; its vector the projected codevector (`project_q`), which
    lives where `project_hid` maps the encoder's output (wav2vec 2.0's contrastive space)."""

    def __init__(self, name: str):
        from transformers import AutoFeatureExtractor, Wav2Vec2ForPreTraining

        from mmser.encode.encoders import _from_pretrained

        self.model = _from_pretrained(Wav2Vec2ForPreTraining, name).eval()
        self.extractor = _from_pretrained(AutoFeatureExtractor, name)
        q = self.model.quantizer
        self.groups, self.entries = q.num_groups, q.num_vars

    @torch.no_grad()
    def units(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each clip on its own: memory bounded by one clip, not by a class's clips, and no
        padding, which a group-norm front end (wav2vec 2.0 base) would mix into every
        clip's features (its units would depend on the longest clip beside it)."""
        return [self._units(wave) for wave in waves]

    def _units(self, wave: np.ndarray) -> np.ndarray:
        values = self.extractor(wave, sampling_rate=16_000, return_tensors="pt").input_values
        feats = self.model.wav2vec2(values).extract_features[0]  # (T, dim)
        logits = self.model.quantizer.weight_proj(feats)  # (T, G * V)
        ids = logits.view(len(logits), self.groups, self.entries).argmax(-1)
        radix = self.entries ** torch.arange(self.groups - 1, -1, -1)
        return (ids * radix).sum(-1).numpy()

    @torch.no_grad()
    def vectors(self, ids: Sequence[int]) -> torch.Tensor:
        codebook = self.model.quantizer.codevectors[0]  # (G * V, dim / G)
        ids = torch.as_tensor(list(ids))
        parts = [codebook[g * self.entries + (ids // self.entries ** (self.groups - 1 - g))
                          % self.entries] for g in range(self.groups)]
        return self.model.project_q(torch.cat(parts, -1))

    def projection(self) -> nn.Linear:
        """Encoder states -> codevector space (initialises the speech branch's projection)."""
        import copy

        return copy.deepcopy(self.model.project_hid)


def unit_label_embedding(units: Mapping[str, Sequence[np.ndarray]], k: int,
                         vectors: Callable[[Sequence[int]], torch.Tensor],
                         scoring: str = "class"
                         ) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """Tonal label embedding (classes, dim): mean vector of each class's top-`k` units, scored
    by `scoring` (UNIT_SCORINGS) over the unit sequences of the class's utterances."""
    docs = {c: [[str(u) for u in seq.tolist()] for seq in seqs] for c, seqs in units.items()}
    top = {c: [int(u) for u in terms]
           for c, terms in top_terms(term_scores(docs, scoring), k).items()}
    return torch.stack([vectors(top[c]).mean(0) for c in units]), top


def text_label_embedding(descriptions: Mapping[str, Sequence[str]],
                         encode: Callable[[list[str]], list[torch.Tensor]]) -> torch.Tensor:
    """Semantic label embedding (classes, dim): the mean token state of every description
    word of a class, each word encoded alone, [CLS] and [SEP] left out."""
    rows = []
    for words_ in descriptions.values():
        states = load_refs(list(encode(list(words_))))  # a few words: read them now
        rows.append(torch.cat([s[1:-1] if len(s) > 2 else s for s in states]).mean(0))
    return torch.stack(rows)


# ----------------------------------------------------------------------- label sources


class LabelSources:
    """What a fold's label embeddings are fitted from; `text(...)` and `speech(...)` see only
    the training rows they are given.

    text_of: utt_id -> transcript; frames: utt_ids -> frozen frame states (for k-means);
    encode: words -> token states of the text encoder; units: "kmeans" or a
    `QuantizerUnits`, with `waves(utt_ids)` giving the audio it needs.
    """

    def __init__(self, classes: Sequence[str], text_of: Mapping[str, str],
                 frames: Callable[[Sequence[str]], list[torch.Tensor]],
                 encode: Callable[[list[str]], list[torch.Tensor]], cfg: Lemer, seed: int = 0,
                 units: str | QuantizerUnits = "kmeans",
                 waves: Callable[[Sequence[str]], list[np.ndarray]] | None = None):
        self.classes, self.text_of, self.frames, self.encode = list(classes), text_of, \
            frames, encode
        self.cfg, self.seed, self.unit_source, self.waves = cfg, seed, units, waves
        self.keywords: dict[str, dict[str, list[str]]] = {}  # fold key -> class -> words
        self.top_units: dict[tuple[str, int], dict[str, list[int]]] = {}
        self._units: dict[str, tuple] = {}

    @staticmethod
    def key(rows: pd.DataFrame) -> str:
        return hashlib.sha256("|".join(sorted(rows["utt_id"])).encode()).hexdigest()[:12]

    def _by_class(self, rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
        missing = sorted(set(self.classes) - set(rows["label"]))
        if missing:
            raise ValueError(f"classes {missing} have no training rows in this fold; a label "
                             "embedding needs examples of every class")
        return {c: rows[rows["label"] == c] for c in self.classes}

    def _random(self, dim: int, salt: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + salt)
        return torch.randn(len(self.classes), dim, generator=generator)

    def text(self, rows: pd.DataFrame, init: str | None, dim: int) -> torch.Tensor | None:
        """L_t of one fold: None, random, the label words, or the TF-IDF keywords."""
        if init is None:
            return None
        if init == "random":
            return self._random(dim, 1)
        if init == "label":
            return text_label_embedding({c: [c] for c in self.classes}, self.encode)
        if init != "tfidf":
            raise ValueError(f"text label init {init!r} is not one of {TEXT_INITS}")
        docs = {c: words([self.text_of[u] for u in part["utt_id"]])
                for c, part in self._by_class(rows).items()}
        top = tfidf_top(docs, self.cfg.text_k)
        self.keywords[self.key(rows)] = top
        return text_label_embedding(top, self.encode)

    def _fold_units(self, rows: pd.DataFrame) -> tuple:
        """(unit ids per class, vectors function), fitted once per training set."""
        key = self.key(rows)
        if key not in self._units:
            parts = self._by_class(rows)
            if self.unit_source == "kmeans":
                model = KMeansUnits(self.cfg.n_units, self.cfg.kmeans_frames, self.seed)
                model.fit(self.frames(list(rows["utt_id"])))
                units = {c: model.units(self.frames(list(p["utt_id"]))) for c, p in parts.items()}
            else:
                model = self.unit_source
                units = {c: model.units(self.waves(list(p["utt_id"])))
                         for c, p in parts.items()}
            self._units[key] = (units, model.vectors)
        return self._units[key]

    def speech(self, rows: pd.DataFrame, init: str | None, dim: int,
               k: int | None = None) -> torch.Tensor | None:
        """L_s of one fold: None, random, the text label embedding, or the top-K units."""
        if init is None:
            return None
        if init == "random":
            return self._random(dim, 2)
        if init == "text":
            return self.text(rows, "tfidf", dim)
        if init != "units":
            raise ValueError(f"speech label init {init!r} is not one of {SPEECH_INITS}")
        k = k or self.cfg.speech_k
        units, vectors = self._fold_units(rows)
        embedding, top = unit_label_embedding(units, k, vectors, self.cfg.unit_scoring)
        self.top_units[(self.key(rows), k)] = top
        return embedding.detach()


# ---------------------------------------------------------------------- items and tasks


def item_table(rows: pd.DataFrame, classes: Sequence[str],
               **sequences: Sequence[torch.Tensor]) -> dict[str, dict]:
    """utt_id -> {"label": class index, <name>: (length, dim) states} for every sequence."""
    labels = label_ids(list(rows["label"]), classes)
    for name, seqs in sequences.items():
        if len(seqs) != len(rows):
            raise ValueError(f"{name}: {len(seqs)} sequences for {len(rows)} rows")
    return {u: {"label": int(y), **{k: v[i] for k, v in sequences.items()}}
            for i, (u, y) in enumerate(zip(rows["utt_id"], labels.tolist()))}


def make_items(table: Mapping[str, dict], keys: Sequence[str]
               ) -> Callable[[pd.DataFrame], list[dict]]:
    """`cross_validate`'s make_items: the system's sequences and the label of each row."""
    def build(rows: pd.DataFrame) -> list[dict]:
        missing = [u for u in rows["utt_id"] if u not in table]
        if missing:
            raise KeyError(f"{len(missing)} utterances have no features, e.g. {missing[:3]}")
        return [{k: table[u][k] for k in (*keys, "label")} for u in rows["utt_id"]]
    return build


@dataclass
class Encoders:
    """What the model builder needs to know of the encoders: widths, and factories of
    trainable top layers (None = frozen cached states)."""

    d_text: int
    d_speech: int
    text_top: Callable[[], nn.Module] | None = None
    speech_top: Callable[[], nn.Module] | None = None
    speech_proj: Callable[[], nn.Module] | None = None  # H_s -> unit vector space


def build_model(system: System, rows: pd.DataFrame, sources: LabelSources, enc: Encoders,
                cfg: Lemer) -> nn.Module:
    """A fresh model for `system`, its label embeddings fitted on the training `rows`."""
    n = len(sources.classes)
    make = lambda f: f() if f is not None else None  # noqa: E731
    text_init = sources.text(rows, system.text_init, enc.d_text) \
        if system.kind != "speech" else None
    speech_init = sources.speech(rows, system.speech_init, enc.d_speech, system.speech_k) \
        if system.kind != "text" else None
    proj = None
    if speech_init is not None and speech_init.shape[1] != enc.d_speech:
        proj = make(enc.speech_proj) or nn.Linear(enc.d_speech, speech_init.shape[1])
    mu = cfg.mu

    def top(factory, dim: int, encoder_lr: float) -> tuple[nn.Module | None, float]:
        # encoder layers train at the paper's small rate; an adapter (or nothing) at cfg.lr
        if factory is not None:
            return factory(), encoder_lr
        return (Adapter(dim, cfg.adapter_dim) if cfg.adapter_dim else None), cfg.lr

    if system.kind == "text":
        text_top, text_lr = top(enc.text_top, enc.d_text, cfg.text_lr)
        return Unimodal(text_key(system), Branch(text_init, text_top, top_lr=text_lr),
                        enc.d_text, n, mu[2])
    speech_top, speech_lr = top(enc.speech_top, enc.d_speech, cfg.speech_lr)
    speech = Branch(speech_init, speech_top, proj, speech_lr)
    if system.kind == "speech":
        return Unimodal("speech", speech, enc.d_speech, n, mu[3])
    text_top, text_lr = top(enc.text_top, enc.d_text, cfg.text_lr)
    text = Branch(text_init, text_top, top_lr=text_lr)
    return LEMER(text_key(system), text, speech, enc.d_text, enc.d_speech, n, system.fusion,
                 mu, system.label_attention or cfg.label_attention)


def make_task(model: nn.Module, cfg: Lemer) -> Task:
    """Adam; encoder layers at the paper's small learning rates, the rest at `cfg.lr`;
    linear warm-up when `cfg.warmup_steps` is set."""
    top_lr = {id(p): m.top_lr for m in model.modules()
              if isinstance(m, Branch) and m.top is not None for p in m.top.parameters()}
    groups: dict[float, list] = {}
    for p in model.parameters():
        groups.setdefault(top_lr.get(id(p), cfg.lr), []).append(p)
    return Task(model, kind="classification", lr=cfg.lr, optimizer="adam",
                param_groups=[{"params": ps, "lr": lr} for lr, ps in groups.items()],
                schedule="warmup" if cfg.warmup_steps else None,
                warmup_steps=cfg.warmup_steps)


# ------------------------------------------------------------------------------ results


def score_fusion(a: pd.DataFrame, b: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Sum of two models' logits per test utterance. Summing log-probabilities picks the same
    class (each softmax only subtracts one constant per utterance)."""
    keys = ["seed", "fold", "utt_id"]
    a, b = a.set_index(keys).sort_index(), b.set_index(keys).sort_index()
    if not a.index.equals(b.index):
        raise ValueError("score fusion needs both models' predictions on the same utterances")
    probs = [f"prob_{c}" for c in classes]
    scores = np.log(a[probs].to_numpy() + 1e-12) + np.log(b[probs].to_numpy() + 1e-12)
    fused = softmax_np(scores)
    out = a[["label"]].copy()
    out["pred"] = [classes[i] for i in fused.argmax(1)]
    for i, c in enumerate(classes):
        out[f"prob_{c}"] = fused[:, i]
    return out.reset_index()


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# The paper's comparisons, (ours a, ours b, claim, the paper's rows for a and b). The
# paper's speech label-embedding rows B3-B5 all include 2nd-stage pre-training, so its
# label-embedding gain is B5 - B2; ours (no B2) is B5 - B1.
CHECKS = (
    ("A2", "A1", "historical utterances help the text model", "A2", "A1"),
    ("A5", "A3", "TF-IDF keywords beat a random text label embedding", "A5", "A3"),
    ("A5", "A4", "TF-IDF keywords beat the label word", "A5", "A4"),
    ("B5", "B1", "a unit-initialised speech label embedding helps", "B5", "B2"),
    ("B5", "B3", "unit init beats random init", "B5", "B3"),
    ("B5", "B4", "unit init beats text-embedding init", "B5", "B4"),
    ("C1", "score fusion", "the full model beats score fusion", "C1", "score fusion"),
    ("C1", "C4", "the attention constraint beats plain cross-attention", "C1", "C4"),
    ("C1", "C2", "the constraint beats adding A_l to A_r", "C1", "C2"),
    ("C1", "C3", "the constraint beats A_l alone", "C1", "C3"),
    ("C2", "C3", "A_r + A_l beats A_l alone", "C2", "C3"),
)


def verdicts(ua: Mapping[str, float], checks: Sequence[tuple] = CHECKS
             ) -> tuple[list[str], list[str]]:
    """Each of the paper's comparisons whose rows ran, as a sentence with our UA difference
    and the paper's: (those that agree in sign, those that go against the paper; a tie
    counts as against, since the paper claims a gain)."""
    agree, against = [], []
    for a, b, claim, pa, pb in checks:
        if a not in ua or b not in ua:
            continue
        ours, paper = ua[a] - ua[b], (PAPER[pa][1] - PAPER[pb][1]) / 100
        line = (f"{claim}: {a} {ua[a]:.3f} vs {b} {ua[b]:.3f} UA, {ours:+.3f} "
                f"(paper {pa} - {pb}: {paper:+.3f})")
        (agree if ours * paper > 0 else against).append(line)
    return agree, against


def paper_columns(table: pd.DataFrame, key: str = "system") -> pd.DataFrame:
    """Add the paper's WA / UA (%) beside ours (rows the paper did not report stay empty)."""
    out = table.copy()
    rows = [SYSTEMS[s].paper_row or s if s in SYSTEMS else s for s in out[key]]
    out["paper WA (%)"] = [PAPER.get(s, (None, None))[0] for s in rows]
    out["paper UA (%)"] = [PAPER.get(s, (None, None))[1] for s in rows]
    return out


# ------------------------------------------------------------------ new text, cached


class TextStates:
    """Strings the features stage did not encode (spliced context, keywords, label words):
    the hidden states `keep` (None: every one) through the text encoder, cached under
    `root` once."""

    def __init__(self, name: str, root: str, layers: int | None = None,
                 max_length: int = 150, stream: bool = False,
                 keep: Sequence[int] | None = None):
        self.name, self.root, self.layers, self.max_length = name, root, layers, max_length
        self.keep = keep
        self.stream = stream  # StateRefs, read per batch (`training.stream_states`)
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from mmser.encode.encoders import TextEncoder

            self._encoder = TextEncoder(self.name, self.layers, max_length=self.max_length)
        return self._encoder

    def count_tokens(self, text: str) -> int:
        return len(self.encoder.tokenizer(text)["input_ids"])

    def __call__(self, texts: Sequence[str], layer: int | None = -1) -> list[torch.Tensor]:
        from mmser.encode.features import FeatureCache, text_features

        cache = FeatureCache(self.root, f"{self.encoder.key}-max{self.max_length}", self.keep)
        digests = text_features(cache, self.encoder, list(texts))
        if not digests:
            return []
        if self.stream:
            return [cache.ref(d, layer=layer) for d in digests]
        # one entry at a time, each layer copied out: not every state of every text held
        position = cache.position(layer)
        return [layer_copy(cache.load(d)["hidden"], position) for d in digests]

    def tokens(self, text: str) -> list[str]:
        ids = self.encoder.tokenizer(text, truncation=True, max_length=self.max_length)
        return self.encoder.tokenizer.convert_ids_to_tokens(ids["input_ids"])
