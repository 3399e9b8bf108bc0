"""Tokenwise contrastive speech-text pre-training (Sarkar & Tarigopula, Idiap-RR-07-2025).

Pre-training, on transcribed read speech with both encoders frozen:
  S (N x Ds): the speech encoder's last layer; T (M x Dt): the text encoder's embedding-layer
  output (non-contextual, hidden state 0); B (M x Dt): its last layer (contextual teacher).
  Cross-attention (Sec. 3.3): Q = T W_q, K = S W_k, V = S W_v, B_s = softmax(Q K^T) V.
  W_k and W_v map Ds -> Dt, which is the projection to a common width when the widths differ.
  Token-level contrastive loss (Sec. 3.4) between B and B_s over every token of the batch;
  model selection by 1-nearest-neighbour token matching on held-out read speech (Sec. 4.3).
Downstream (Sec. 4.2-4.3): mean and standard deviation over frames or tokens, then an MLP
of three [Linear, LayerNorm, ReLU] blocks and a final Linear; Adam, cross-entropy, learning
rate reduced on plateau of validation UAR; batch size, learning rate and the encoder layer
chosen on validation UAR only (the fold's test part opens after every choice is recorded).
The modules and the loss are in `mmser.models.tokenwise`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from mmser.corpus import protocols
from mmser.corpus.protocols import Fold
from mmser.encode.features import FeatureStore, StateRef, load_refs
from mmser.models.tokenwise import Aligner, Classifier, PredictorModel, functionals
from mmser.training import data as D
from mmser.training import loop as T

# Table 3 of the paper: scores [%] on a random 70:20:10 split (speaker-dependent)
PAPER_TABLE3 = pd.DataFrame([
    ("EmoDB", "BERT (Mono)", 29.63, 14.29), ("EmoDB", "BERT (Multi)", 31.48, 17.47),
    ("EmoDB", "Whisper", 90.74, 86.53), ("EmoDB", "WavLM", 98.15, 98.57),
    ("EmoDB", "Ours (Multi)", 70.37, 72.37),
    ("IEMOCAP", "BERT (Mono)", 68.95, 69.13), ("IEMOCAP", "BERT (Multi)", 66.25, 66.51),
    ("IEMOCAP", "Whisper", 74.55, 75.9), ("IEMOCAP", "WavLM", 90.74, 86.53),
    ("IEMOCAP", "Ours (Mono)", 73.65, 74.32), ("IEMOCAP", "Ours (Multi)", 74.73, 75.28),
], columns=["dataset", "features", "F1", "UAR"])
PAPER_PROTOCOL = "random 70:20:10 split (speaker-dependent), one split"
CORPUS_PROTOCOL = "corpus"  # in `tokenwise.protocols`: the protocol the corpus was prepared for
PROTOCOL_NAMES = {CORPUS_PROTOCOL} | (set(protocols.PROTOCOLS) - {"cross_corpus"})
LAYER_SEARCH = "layer search: "  # prefix of the extra speech row that tries every layer
OURS = "ours B_s"  # the system (and feature view) of the paper's method
SPEAKER_DEPENDENT_PRETRAINING = "speaker-dependent pre-training"


def paper_duplicates(table: pd.DataFrame = PAPER_TABLE3) -> list[tuple[str, str]]:
    """Pairs of the paper's Table 3 rows with identical (F1, UAR), as "dataset features":
    its IEMOCAP WavLM row repeats its EmoDB Whisper row, most likely a copying slip."""
    named = table.assign(row=table["dataset"] + " " + table["features"])
    pairs = []
    for _, group in named.groupby(["F1", "UAR"], sort=False):
        rows = group["row"].tolist()
        pairs += [(rows[0], other) for other in rows[1:]]
    return pairs


def duplicated_cells(table: pd.DataFrame = PAPER_TABLE3) -> set[tuple[str, str]]:
    """(dataset, features) of every paper row whose numbers another row repeats."""
    names = {f"{d} {f}": (d, f) for d, f in zip(table["dataset"], table["features"])}
    return {names[r] for pair in paper_duplicates(table) for r in pair}


# ------------------------------------------------------------------------ pre-training


def knn_accuracy(teacher: torch.Tensor, student: torch.Tensor, chunk: int = 4096) -> float:
    """1-NN validation (Sec. 4.3): the share of B_s tokens whose most cosine-similar B token,
    among all tokens given, is their own. Ties (identical teacher rows, e.g. a sentence read
    twice) count as matches. Rows of the similarity matrix are computed `chunk` at a time:
    the whole matrix of a paper-scale validation set would not fit in memory."""
    teacher = F.normalize(teacher.float(), dim=-1)
    student = F.normalize(student.float(), dim=-1)
    hits = 0
    for start in range(0, len(student), chunk):
        sim = student[start:start + chunk] @ teacher.T
        rows = torch.arange(len(sim))
        hits += int((sim[rows, rows + start] >= sim.max(1).values).sum())
    return hits / len(student)


def knn_val_metric(outputs: list[dict]) -> float:
    """`Task(val_metric=...)`: 1-NN accuracy over every validation token of an epoch."""
    return knn_accuracy(torch.cat([o["teacher"] for o in outputs]),
                        torch.cat([o["student"] for o in outputs]))


def pretrain_items(store: FeatureStore, utt_ids: Sequence[str], texts: Sequence[str],
                   text_cut: str = "main") -> list[dict]:
    """S (last speech layer), T (text hidden state 0) and B (last text layer) per utterance."""
    if len(utt_ids) != len(texts):
        raise ValueError(f"{len(utt_ids)} utterances but {len(texts)} transcripts")
    missing = [u for u, t in zip(utt_ids, texts) if not isinstance(t, str) or not t.strip()]
    if missing:
        raise ValueError(f"{len(missing)} utterances have no transcript, e.g. {missing[:3]}")
    # each read is one layer in storage of its own (or a reference to it, streaming)
    return [{"speech_seq": s, "tokens_seq": t, "teacher_seq": b} for s, t, b in zip(
        store.speech(utt_ids, layer=-1), store.text(texts, layer=0, cut=text_cut),
        store.text(texts, layer=-1, cut=text_cut))]


@torch.no_grad()
def contextualised(model: Aligner, items: Sequence[dict],
                   batch_size: int = 64) -> list[torch.Tensor]:
    """B_s of each item, on its own token count: a list of (M, Dt)."""
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        student, _ = model.contextualise(D.collate(chunk))
        out.extend(s[: len(item["tokens_seq"])] for s, item in zip(student, chunk))
    return out


@torch.no_grad()
def attention_map(model: Aligner, item: dict) -> np.ndarray:
    """The cross-attention weights of one utterance: (tokens, frames)."""
    model.eval()
    _, attention = model.contextualise(D.collate([item]))
    return attention[0].numpy()


OWN_SPEECH = ("pre-training on each fold's own training speech and transcripts (the corpus "
              "has no read speech; the paper pre-trains on LibriSpeech)")


def pretraining_rows(corpus: D.Corpus, fold: Fold) -> pd.DataFrame:
    """What fold `fold` pre-trains on: the read speech without its held-out voices
    (`Corpus.read_for_fold`), or, for a corpus without read speech (RAVDESS, EmoDB,
    IEMOCAP without LibriSpeech), the fold's own training and validation utterances, speech
    and transcripts, their labels unused. Never a test utterance of the fold."""
    if len(corpus.read):
        return corpus.read_for_fold(fold)
    return pd.concat([fold.train(), fold.val()])


def pretrain_speakers(corpus: D.Corpus, asked: str) -> str:
    """tokenwise.pretrain_speakers as it can run: a corpus without read speech pre-trains
    on each fold's own rows, so per fold whatever was asked (one pre-training on every
    labelled utterance would hear the test utterances)."""
    return asked if len(corpus.read) else "fold"


def pretraining_label(corpus: D.Corpus, test_speakers_left_out: bool) -> str:
    """What the pre-training heard, printed beside every number of ours: whether the read
    speech shares voices with the labelled speech at all (the default corpus: yes;
    LibriSpeech: no) and whether every fold's pre-training left its test speakers out
    (`FoldPretraining.left_out_everywhere`; a speaker-dependent split has none to leave)."""
    if not len(corpus.read):
        return OWN_SPEECH if test_speakers_left_out else \
            f"{SPEAKER_DEPENDENT_PRETRAINING}: {OWN_SPEECH}"
    shared = set(corpus.read["speaker"].dropna()) & set(corpus.labelled["speaker"].dropna())
    if not shared:
        return "pre-training on other speakers' read speech"
    if test_speakers_left_out:
        return "pre-training without the test speakers' read speech"
    return (f"{SPEAKER_DEPENDENT_PRETRAINING} (the read speech of every voice, the test "
            "speakers' included)")


@dataclass
class Pretraining:
    """A pre-training grid's outcome: the chosen aligner and what chose it."""
    aligner: Aligner
    config: str  # the chosen configuration (best 1-NN validation accuracy)
    runs: dict  # configuration -> T.FitResult
    curves: pd.DataFrame  # per configuration and epoch: losses, 1-NN accuracy
    val_rows: pd.DataFrame  # the held-out read utterances
    val_items: list = field(repr=False)
    reference: float  # 1-NN accuracy of T alone (no speech) on the same tokens
    n_train: int

    @property
    def score(self) -> float:
        return self.runs[self.config].best_score


def read_digest(rows: pd.DataFrame) -> str:
    """Names a read-speech set by its utterances."""
    import hashlib

    return hashlib.sha256("|".join(sorted(rows["utt_id"])).encode()).hexdigest()[:12]


def pretrain(store: FeatureStore, read: pd.DataFrame, tw, training, seed: int,
             out_dir: str | Path, fingerprint: dict) -> Pretraining:
    """Sec. 4.3: the aligner trained on `read` (a seeded share held out for 1-NN selection)
    for every configuration of the grid (tokenwise.pretrain_batch_sizes x pretrain_lrs);
    the configuration and epoch with the best 1-NN validation accuracy are kept."""
    read = read.reset_index(drop=True)
    if len(read) < 2:
        raise ValueError(f"{len(read)} read-speech utterances; pre-training needs some "
                         "(features.splits must include 'read')")
    order = np.random.default_rng(seed).permutation(len(read))
    n_val = max(1, int(round(tw.pretrain_val_fraction * len(read))))
    val_rows, train_rows = read.iloc[order[:n_val]], read.iloc[order[n_val:]]
    train = pretrain_items(store, train_rows["utt_id"].tolist(), train_rows["text"].tolist())
    val = pretrain_items(store, val_rows["utt_id"].tolist(), val_rows["text"].tolist())
    speech_dim, text_dim = train[0]["speech_seq"].shape[1], train[0]["tokens_seq"].shape[1]
    fingerprint = {**fingerprint, "read": read_digest(read)}
    runs, curves = {}, []
    for batch_size in tw.pretrain_batch_sizes:
        for lr in tw.pretrain_lrs:
            config = f"batch {batch_size}, lr {lr:g}"
            T.seed_everything(seed)
            task = T.Task(Aligner(speech_dim, text_dim, tw.tau, tw.scale_attention),
                          kind="loss", lr=lr, val_metric=knn_val_metric)
            result = T.fit(task, train, val, Path(out_dir) / f"b{batch_size}_lr{lr:g}",
                           training, max_epochs=tw.pretrain_epochs, batch_size=batch_size,
                           seed=seed, fingerprint=fingerprint)
            runs[config] = (task.model, result)
            curves.append(result.history.assign(config=config))
    best = max(runs, key=lambda c: runs[c][1].best_score)  # first of ties
    reference = knn_accuracy(torch.cat([load_refs(i["teacher_seq"]) for i in val]),
                             torch.cat([load_refs(i["tokens_seq"]) for i in val]))
    return Pretraining(runs[best][0], best, {c: r for c, (_, r) in runs.items()},
                       pd.concat(curves, ignore_index=True), val_rows, val, reference,
                       len(train))


class FoldPretraining:
    """`evaluate(fold_views=...)` for tokenwise.pretrain_speakers = fold: each fold's B_s
    functionals come from a pre-training on the read speech without the fold's test
    speakers (`pretraining_rows`), one pre-training per distinct read set (`cache`,
    shared between protocols; a speaker-dependent split holds no speaker out and reuses
    the all-speaker one). `items` are the labelled utterances' pre-training items, in
    `corpus.labelled` order."""

    def __init__(self, corpus: D.Corpus, store: FeatureStore, items: list[dict], tw, training,
                 seed: int, out_dir: str | Path, fingerprint: dict, cache: dict | None = None):
        self.corpus, self.store, self.items, self.tw = corpus, store, items, tw
        self.training, self.seed, self.out_dir, self.fingerprint = training, seed, out_dir, \
            fingerprint
        self.cache = {} if cache is None else cache  # read digest -> (Pretraining, B_s view)
        self.by_fold: dict[int, str] = {}
        self.records: list[dict] = []

    def pretraining(self, read: pd.DataFrame) -> tuple[Pretraining, torch.Tensor]:
        key = read_digest(read)
        if key not in self.cache:
            pre = pretrain(self.store, read, self.tw, self.training, self.seed,
                           Path(self.out_dir) / f"read-{key}", self.fingerprint)
            view = functionals(contextualised(pre.aligner, self.items))
            self.cache[key] = (pre, view)
        return self.cache[key]

    def __call__(self, fold: Fold) -> dict[str, torch.Tensor]:
        read = pretraining_rows(self.corpus, fold)
        pre, view = self.pretraining(read)
        key = read_digest(read)
        if self.by_fold.get(fold.index) != key:
            self.by_fold[fold.index] = key
            voices = self.corpus.read if len(self.corpus.read) else self.corpus.labelled
            left_out = sorted(set(voices["speaker"].dropna().astype(str))
                              - set(read["speaker"].dropna().astype(str)))
            self.records.append({"protocol": self.corpus.protocol_label, "fold": fold.index,
                                 "read utterances": len(read),
                                 "speakers left out": ", ".join(left_out) or "none",
                                 "chosen": pre.config, "1-NN val accuracy": pre.score})
        return {OURS: view}

    @property
    def left_out_everywhere(self) -> bool:
        """Every fold's pre-training left out at least one voice (its test speakers)."""
        return bool(self.records) and all(r["speakers left out"] != "none"
                                          for r in self.records)

    def aligner(self, fold: int) -> Aligner:
        """The aligner whose B_s fold `fold`'s classifiers were trained on."""
        return self.cache[self.by_fold[fold]][0].aligner


# ---------------------------------------------------------------------------- downstream


def layer_functionals(states: Iterable[torch.Tensor | StateRef],
                      layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Functionals of each hidden state of each utterance: {layer: (n, 2D)}.

    `states` yields each utterance's stack of the hidden states `layers` (absolute indices,
    in that order: `FeatureStore.absolute`), or of every state (0 = embeddings) when
    `layers` is None; or a reference to it (a generator keeps memory flat).
    """
    rows: dict[int, list[torch.Tensor]] = {}
    for stack in map(load_refs, states):
        names = range(stack.shape[0]) if layers is None else [int(l) for l in layers]
        if len(names) != stack.shape[0]:
            raise ValueError(f"a stack of {stack.shape[0]} hidden states for layers "
                             f"{list(names)}")
        for layer, state in zip(names, stack):
            rows.setdefault(layer, []).append(functionals([state])[0])
    return {layer: torch.stack(r) for layer, r in sorted(rows.items())}


@dataclass
class Trial:
    """One trained classifier and its validation record."""
    params: dict  # view, batch_size, lr
    score: float  # best validation UAR
    epoch: int  # the epoch that reached it
    model: Classifier = field(repr=False)
    history: list = field(default_factory=list, repr=False)  # per epoch: loss, val UAR


def uar(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(-1)
    return float(balanced_accuracy_score(y.numpy(), pred.numpy()))


def train_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                     y_val: torch.Tensor, n_classes: int, *, batch_size: int, lr: float,
                     epochs: int, patience: int, hidden: int = 256, seed: int = 0,
                     params: dict | None = None) -> Trial:
    """Adam + cross-entropy for `epochs`; the learning rate drops (x0.1) when validation
    UAR has not improved for `patience` epochs; the epoch with the best validation UAR is
    kept. A plain loop on in-memory tensors: the grid search trains hundreds of these tiny
    models, where Lightning's per-epoch overhead would dominate."""
    with _one_thread():
        return _train(x_train, y_train, x_val, y_val, n_classes, batch_size, lr, epochs,
                      patience, hidden, seed, params)


@contextmanager
def _one_thread():
    """Tiny matrix products gain nothing from threads, and on a shared, busy CPU the
    threads' synchronisation makes each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(x_train, y_train, x_val, y_val, n_classes, batch_size, lr, epochs, patience,
           hidden, seed, params) -> Trial:
    torch.manual_seed(seed)
    model = Classifier(x_train, n_classes, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max",
                                                         patience=patience)
    generator = torch.Generator().manual_seed(seed)
    best = Trial(dict(params or {}), -1.0, -1, model)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x_train), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        score = uar(model, x_val, y_val)
        plateau.step(score)
        best.history.append({"epoch": epoch, "train_loss": total / len(x_train),
                             "val_UAR": score})
        if score > best.score:
            best.score, best.epoch = score, epoch
            best.model = copy.deepcopy(model)
    best.model.eval()
    return best


@dataclass
class System:
    """A row of Table 3: candidate feature views (e.g. every speech layer) and its grid."""
    name: str
    views: list[str]  # keys of the feature dict; more than one = chosen on validation UAR
    batch_sizes: list[int]
    lrs: list[float]

    @property
    def grid(self) -> list[tuple[int, float]]:
        return [(b, lr) for b in self.batch_sizes for lr in self.lrs]


def choose(system: System, views: dict[str, torch.Tensor], train: np.ndarray,
           val: np.ndarray, y: torch.Tensor, n_classes: int, *, epochs: int, patience: int,
           hidden: int, seed: int) -> tuple[Trial, list[Trial]]:
    """Validation-only choice: the view at the grid's first point, then the grid on the
    chosen view (the paper's Table 2 search; layers searched first to keep it affordable).
    `train` and `val` index rows of every view; the test rows are not passed in."""
    def run(view: str, batch_size: int, lr: float) -> Trial:
        x = views[view]
        return train_classifier(x[train], y[train], x[val], y[val], n_classes,
                                batch_size=batch_size, lr=lr, epochs=epochs,
                                patience=patience, hidden=hidden, seed=seed,
                                params={"view": view, "batch_size": batch_size, "lr": lr})

    first = system.grid[0]
    trials = [run(view, *first) for view in system.views]
    best_view = max(trials, key=lambda t: t.score).params["view"]  # first of ties
    trials += [run(best_view, *point) for point in system.grid[1:]]
    return max(trials, key=lambda t: t.score), trials


def _choose_in_worker(system: System, views: dict[str, torch.Tensor], n_train: int,
                      y: torch.Tensor, n_classes: int, options: dict) -> tuple[Trial, list[Trial]]:
    """`choose` in a worker process, on a fold's training rows then validation rows only."""
    rows = np.arange(len(y))
    return choose(system, views, rows[:n_train], rows[n_train:], y, n_classes, **options)


def evaluate(corpus: D.Corpus, views: dict[str, torch.Tensor], systems: Sequence[System],
             *, seeds: Sequence[int], epochs: int, patience: int, hidden: int,
             val_fraction: float = 0.1, out_dir: str | Path | None = None,
             fold_views: Callable[[Fold], dict[str, torch.Tensor]] | None = None,
             workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every fold and seed of `corpus.protocol`: each system chooses on the fold's validation
    part, the choices are recorded with `Fold.select`, then the test part is predicted once.

    `views` rows follow `corpus.labelled` order. Returns (predictions: one row per system,
    seed and test utterance; trials: the validation UAR of every configuration tried).
    The chosen classifiers are saved under `out_dir/seed<s>/fold<k>/<system>.pt`.
    `val_fraction`: the share of training speakers (or utterances) held out for validation.
    `fold_views(fold)`: views that depend on the fold (e.g. `FoldPretraining`), replacing
    those of `views` for that fold.
    `workers` > 1: the searches of every fold, seed and system run side by side in that many
    processes first (each classifier is seeded and single-threaded, so its result is the
    same as in this process); the folds' choices and test predictions then follow in order.
    """
    labelled = corpus.labelled.reset_index(drop=True)
    position = pd.Series(np.arange(len(labelled)), index=labelled["utt_id"])
    y = D.label_ids(labelled["label"].tolist(), corpus.classes)
    tried = []
    searched: dict[tuple[int, int, str], Future] = {}  # (seed, fold, system): the search ahead
    options = dict(epochs=epochs, patience=patience, hidden=hidden)

    def parts(fold: Fold, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
        train = position[fold.train()["utt_id"]].to_numpy(copy=True)
        val = position[fold.val()["utt_id"]].to_numpy(copy=True)
        if len(val) == 0:
            raise ValueError(f"{corpus.protocol} fold {fold.index} (seed {seed}) has no "
                             f"validation utterances; raise tokenwise.val_fraction "
                             f"(now {val_fraction})")
        empty = [corpus.classes[c] for c in range(len(corpus.classes))
                 if not (y[train] == c).any()]
        if empty:
            raise ValueError(f"{corpus.protocol} fold {fold.index} (seed {seed}): no "
                             f"training utterance of class(es) {empty}")
        return train, val, views if fold_views is None else {**views, **fold_views(fold)}

    def search_ahead(fold: Fold, seed: int) -> None:
        train, val, fold_view = parts(fold, seed)
        rows = np.concatenate([train, val])
        for system in systems:
            subset = {v: fold_view[v][rows] for v in system.views}
            searched[seed, fold.index, system.name] = T.pool(workers).submit(
                _choose_in_worker, system, subset, len(train), y[rows], len(corpus.classes),
                {**options, "seed": seed})

    def train_fold(fold: Fold, seed: int) -> tuple[dict, Callable]:
        train, val, fold_view = parts(fold, seed)
        chosen = {}
        for system in systems:
            ahead = searched.pop((seed, fold.index, system.name), None)
            best, trials = (ahead.result() if ahead is not None else
                            choose(system, fold_view, train, val, y, len(corpus.classes),
                                   **options, seed=seed))
            chosen[system.name] = best
            tried.extend({"protocol": corpus.protocol_label, "system": system.name,
                          "seed": seed, "fold": fold.index,
                          "search": "view" if i < len(system.views) else "grid",
                          **t.params, "val_UAR": t.score, "epoch": t.epoch}
                         for i, t in enumerate(trials))
        choice = {name: {**t.params, "val_UAR": t.score, "epoch": t.epoch}
                  for name, t in chosen.items()}
        return choice, lambda test: _test_predictions(chosen, test, fold_view, position,
                                                      corpus, seed, fold.index, out_dir)

    if workers > 1:
        for seed in seeds:
            for fold in corpus.folds(seed=seed, val_fraction=val_fraction):
                search_ahead(fold, seed)
    preds = T.fold_loop(corpus, train_fold, seeds=seeds, val_fraction=val_fraction,
                        desc=f"{corpus.protocol} folds")
    return preds, pd.DataFrame(tried)


def _test_predictions(chosen: dict[str, Trial], test: pd.DataFrame,
                      views: dict[str, torch.Tensor], position: pd.Series, corpus: D.Corpus,
                      seed: int, fold: int, out_dir: str | Path | None) -> pd.DataFrame:
    """Each system's chosen classifier on a fold's test rows (saved first, with out_dir)."""
    rows = position[test["utt_id"]].to_numpy(copy=True)
    preds = []
    for name, trial in chosen.items():
        if out_dir is not None:
            path = Path(out_dir) / f"seed{seed}" / f"fold{fold}" / f"{name}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(trial.model.state_dict(), path)
        with torch.no_grad():
            pred = trial.model(views[trial.params["view"]][rows]).argmax(-1)
        preds.append(pd.DataFrame({
            "system": name, "utt_id": test["utt_id"].to_numpy(), "seed": seed, "fold": fold,
            "label": test["label"].to_numpy(),
            "pred": [corpus.classes[i] for i in pred.tolist()],
            "view": trial.params["view"]}))
    return pd.concat(preds, ignore_index=True)


def check_protocols(protocols: Sequence[str]) -> None:
    unknown = sorted(set(protocols) - PROTOCOL_NAMES)
    if unknown or not protocols:
        raise ValueError(f"tokenwise.protocols: {unknown or 'empty'}; choose from "
                         f"{sorted(PROTOCOL_NAMES)}")


def distinct_protocols(corpus: D.Corpus, protocols: Sequence[str]) -> list[str]:
    """tokenwise.protocols without repeats once "corpus" is resolved: a corpus prepared
    with the paper's random split runs it once, not twice."""
    resolved = [corpus.protocol if p == CORPUS_PROTOCOL else p for p in protocols]
    return [p for i, p in enumerate(protocols) if resolved[i] not in resolved[:i]]


def with_protocol(corpus: D.Corpus, protocol: str) -> D.Corpus:
    """The same manifest under another protocol (`corpus` keeps its own)."""
    if protocol in (CORPUS_PROTOCOL, corpus.protocol):
        return corpus
    return D.Corpus(corpus.df, corpus.audio_root, protocol, corpus.name, corpus.test_corpus)


# ----------------------------------------------------------------- encoding new material


def encode_speech(root: str | Path, df: pd.DataFrame, audio_root: str | Path, name: str,
                  batch_size: int = 8) -> FeatureStore:
    """Every hidden state of another speech encoder (e.g. WavLM, a speech-only baseline of
    Table 3) for `df`'s utterances, in a FeatureStore of its own under `root`, cached like the
    features stage's cache: a second call encodes nothing."""
    from mmser.encode import features as Fe
    from mmser.corpus import manifest
    from mmser.corpus.audio import Clips
    from mmser.encode.encoders import SpeechEncoder, best_device

    encoder = SpeechEncoder(name).to(best_device())
    clips = Clips(manifest.resolve_paths(df, audio_root))  # each read when used
    digests = Fe.speech_features(Fe.FeatureCache(root, encoder.key), encoder, clips, batch_size)
    Fe.write_index(root, df["utt_id"], digests, speech={"main": encoder.key})
    return FeatureStore(root)


# ---------------------------------------------------------------------------- reporting


def token_strings(ids: Sequence[int], text_encoder: str) -> list[str]:
    """Word pieces of token ids, for the axis of the attention map."""
    from transformers import AutoTokenizer

    from mmser.encode.encoders import BUNDLED_TEXT, _from_pretrained, bundled_text_dir

    source = str(bundled_text_dir()) if text_encoder == BUNDLED_TEXT else text_encoder
    return _from_pretrained(AutoTokenizer, source).convert_ids_to_tokens([int(i) for i in ids])


def paper_rows(text_encoder: str) -> dict[str, str]:
    """Our system role -> the paper's Table 3 row it corresponds to."""
    kind = "Multi" if "multilingual" in text_encoder.lower() else "Mono"
    return {"speech": "Whisper", "wavlm": "WavLM", "text": f"BERT ({kind})",
            "ours": f"Ours ({kind})",
            "search": "none (the paper's Whisper row is the last layer)"}


def table3(summaries: dict[str, pd.DataFrame], roles: dict[str, str],
           text_encoder: str, pretraining: dict[str, str] | None = None) -> pd.DataFrame:
    """Our F1 and UAR [%] (mean ± std over folds and seeds) per protocol, beside the paper's
    row for the same kind of features ("—" where the paper has none; "*" marks a paper
    number that another of its rows repeats, see `paper_duplicates`).

    `summaries`: protocol label -> `mmser.report.results.summary` table; `roles`: system -> role
    (speech, search, wavlm, text, ours). F1 is macro-F1 (the paper does not say which F1).
    `pretraining`: protocol label -> `pretraining_label`, said beside every row of ours.
    """
    rows = paper_rows(text_encoder)
    paper = PAPER_TABLE3.set_index(["dataset", "features"])
    repeated = duplicated_cells()
    out = []
    for protocol, summary in summaries.items():
        summary = summary.set_index("system")
        for system, role in roles.items():
            s = summary.loc[system]
            row = {"protocol": protocol, "features": system,
                   "F1": f"{100 * s['macro_F1']:.2f} ± {100 * s['macro_F1_std']:.2f}",
                   "UAR": f"{100 * s['UA']:.2f} ± {100 * s['UA_std']:.2f}",
                   "pre-training": (pretraining or {}).get(protocol, "") if role == "ours"
                   else "—",
                   "paper row": rows[role]}
            for dataset in ("IEMOCAP", "EmoDB"):
                for metric in ("F1", "UAR"):
                    key = (dataset, rows[role])
                    mark = "*" if key in repeated else ""
                    row[f"paper {dataset} {metric}"] = \
                        f"{paper.loc[key, metric]:.2f}{mark}" if key in paper.index else "—"
            out.append(row)
    return pd.DataFrame(out)


def chosen_views(preds: pd.DataFrame) -> pd.DataFrame:
    """How often each system chose each view (layer) over folds and seeds."""
    firsts = preds.drop_duplicates(["system", "seed", "fold"])
    return (firsts.groupby(["system", "view"]).size().rename("folds x seeds")
            .reset_index())


# ---------------------------------------------------------------- exported predictor

PREDICTOR_SYSTEM = OURS


def predictor_model(spec: dict) -> PredictorModel:
    """An untrained `PredictorModel` shaped as an exported spec says (weights load next)."""
    a = spec["architecture"]
    return PredictorModel(int(a["speech_dim"]), int(a["text_dim"]), int(a["n_classes"]),
                          int(a["hidden"]), bool(a["scale_attention"]))


def export_predictor(out_dir: str | Path, aligner: Aligner | Callable[[int], Aligner],
                     trials: pd.DataFrame,
                     corpus: D.Corpus, models_dir: str | Path, encoders, cfg,
                     system: str = PREDICTOR_SYSTEM) -> dict:
    """Export "ours B_s" for `python -m mmser.predict`: `spec.json` + `weights.safetensors`.

    `corpus` is the run's corpus under the protocol whose classifiers to export (e.g.
    `with_protocol(corpus, tw.protocols[0])`); `trials` and the classifiers under
    `models_dir/downstream/<protocol>/` come from `evaluate`; `aligner` is the chosen
    pre-trained cross-attention, or a function of the fold index giving that fold's
    (`FoldPretraining.aligner`); `encoders` and `cfg` are the params' Encoders and Tokenwise.
    Which model: each (seed, fold)'s chosen classifier has a validation UAR; the one with
    the best (first of ties in seed, fold order) is exported. Validation only: no test
    score is read. Returns the spec.
    """
    from mmser.predict import trained_on, write_predictor

    if system != PREDICTOR_SYSTEM:
        raise ValueError(f"only {PREDICTOR_SYSTEM!r} can be exported (speech + text), "
                         f"not {system!r}")
    part = trials[(trials["system"] == system) & (trials["protocol"] == corpus.protocol_label)]
    if part.empty:
        raise ValueError(f"no trials of {system!r} under protocol {corpus.protocol_label!r}")
    part = part.sort_values(["seed", "fold"], kind="stable")
    chosen = part.loc[part.groupby(["seed", "fold"], sort=True)["val_UAR"].idxmax()]
    best = chosen.loc[chosen["val_UAR"].idxmax()]
    seed, fold = int(best["seed"]), int(best["fold"])
    path = (Path(models_dir) / "downstream" / corpus.protocol / f"seed{seed}" / f"fold{fold}"
            / f"{system}.pt")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the chosen classifier is missing; run evaluate "
                                "with out_dir first")
    if not isinstance(aligner, nn.Module):
        aligner = aligner(fold)
    attention = aligner.attention
    arch = {"speech_dim": int(attention.k.weight.shape[1]),
            "text_dim": int(attention.q.weight.shape[0]), "n_classes": len(corpus.classes),
            "hidden": int(cfg.hidden), "scale_attention": bool(cfg.scale_attention)}
    model = predictor_model({"architecture": arch})
    model.attention.load_state_dict(attention.state_dict())
    model.classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    spec = {
        "stage": "tokenwise", "system": system, "kind": "classification",
        "classes": list(corpus.classes), "dimensions": [],
        # batch key -> the encoder states it reads: role, encoder and layer cut as in params
        # `encoders`, the features cut name (mmser.encode.features.cut_keys), and the hidden state
        "inputs": {
            "speech_seq": {"role": "speech", "encoder": encoders.speech,
                           "layers": encoders.speech_layers, "cut": "main", "state": -1},
            "tokens_seq": {"role": "text", "encoder": encoders.text,
                           "layers": encoders.text_layers, "cut": "main", "state": 0}},
        "architecture": arch,
        "selection": {
            "rule": "the cross-validation fold model with the best validation UAR "
                    "(chosen on validation only, never on test); not retrained",
            "protocol": corpus.protocol_label, "seed": seed, "fold": fold,
            "val_UAR": float(best["val_UAR"]), "epoch": int(best["epoch"]),
            "batch_size": int(best["batch_size"]), "lr": float(best["lr"])},
        "trained_on": trained_on(corpus, cfg.text_source, path),
    }
    write_predictor(out_dir, spec, model.state_dict())
    return spec


# ----------------------------------------------------------------------------- reading


def _ci_words(row: pd.Series) -> tuple[str, str]:
    """("above" | "below" | "not distinguishable from", "[low, high]") of a bootstrap row."""
    low, high = row["95% CI low"], row["95% CI high"]
    word = "below" if high < 0 else "above" if low > 0 else "not distinguishable from"
    return word, f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def reading(summaries: dict[str, pd.DataFrame], boot: pd.DataFrame, names: dict[str, str],
            pretraining: dict[str, str]) -> list[str]:
    """The reading's computed sentences, per protocol: ours against the speech row (the
    paper's last-layer Whisper), the text row and the layer-search row, each with its
    paired bootstrap interval, said plainly where it goes against the paper (ours
    marginally below Whisper and above BERT). `names`: role -> our system name (speech,
    text, and optionally search); `boot`: protocol, comparison ("ours - <system>"),
    "UA diff", "95% CI low", "95% CI high"; `pretraining`: protocol label ->
    `pretraining_label`."""
    lines = []
    for label, summary in summaries.items():
        s = summary.set_index("system")

        def ua(system: str) -> str:
            return f"{100 * s.loc[system, 'UA']:.1f} ± {100 * s.loc[system, 'UA_std']:.1f}"

        def versus(system: str) -> pd.Series:
            part = boot[(boot["protocol"] == label) & (boot["comparison"] == f"ours - {system}")]
            return part.iloc[0]

        speech, text = names["speech"], names["text"]
        sw, sci = _ci_words(versus(speech))
        tw_, tci = _ci_words(versus(text))
        said = [f"- **{label}**: ours UAR {ua(OURS)} ({pretraining[label]}); speech-only, last "
                f"layer, {ua(speech)}; text-only {ua(text)}."]
        if sw == "above":
            said.append(f"Ours is above speech-only (95% CI {sci} points): **against the "
                        "paper**, which found ours marginally below Whisper.")
        elif sw == "below":
            said.append(f"Ours is below speech-only (95% CI {sci} points), as in the paper.")
        else:
            said.append(f"Ours is not distinguishable from speech-only (95% CI {sci} "
                        "points); the paper's small gap below Whisper is neither confirmed "
                        "nor refuted.")
        if tw_ == "above":
            said.append(f"Ours is above text-only (95% CI {tci}), as in the paper.")
        elif tw_ == "below":
            said.append(f"Ours is below text-only (95% CI {tci}): **against the paper**, "
                        "which found ours above BERT.")
        else:
            said.append(f"Ours is not distinguishable from text-only (95% CI {tci}): the "
                        "paper's gain over BERT is **not reproduced**.")
        search = names.get("search")
        if search and search in s.index:
            ww, wci = _ci_words(versus(search))
            said.append(f"The extra row that searches every speech layer reaches "
                        f"{ua(search)}; ours is {ww} it (95% CI {wci}).")
        lines.append(" ".join(said))
    pairs = paper_duplicates()
    if pairs:
        lines.append("- **The paper's Table 3 repeats numbers**: "
                     + "; ".join(f"{b} equals {a}" for a, b in pairs)
                     + " (F1 and UAR identical), most likely a copying slip; those cells "
                       "carry a * in our Table 3 and are not evidence either way.")
    return lines
