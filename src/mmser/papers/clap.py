"""HuBERT-CLAP (MMASIA 2024): CLIP-style audio-text pre-training, then partial fine-tuning.

Stage 1 aligns an utterance's speech embedding with its transcript's embedding: each side is
an encoder, a pooling and the paper's projection block, and the loss is the symmetric
cross-entropy over the scaled cosine similarities of a batch (CLIP). Stage 2 keeps only the
speech side, adds a classifier head and fine-tunes it for emotion classes: audio only at
inference. The modules and the loss are in `mmser.models.clap`.

Encoders run from the feature cache: the frozen part is never run again. `TopLayers` makes
the top `k` transformer layers trainable on the cached state below them (k = 0 trains the
projection only, the CPU default); the paper profile trains every transformer layer of
HuBERT (its convolutional feature extractor stays frozen, as in the paper).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmser.training import data as D
from mmser.training import loop as T
from mmser.config import Clap as ClapParams
from mmser.config import Training
from mmser.corpus.protocols import Fold
from mmser.encode.features import FeatureStore, StateRef
from mmser.models.clap import SIMILARITIES, ClapModel, Side, SpeechClassifier, similarity
from mmser.report.claims import claim_seeds

FRAMES_PER_SECOND = 50  # Whisper and HuBERT/wav2vec 2.0 encoders both emit 50 frames/s
SYSTEMS = {  # Table 1 rows: system key -> (text cut used for pre-training, readable name)
    "none": (None, "speech only, no pre-training"),
    "small": ("small", "pre-trained with the small text model"),
    "full": ("main", "pre-trained with the full text model"),
}
ABLATION = " · "  # "full · dot": a system re-run with the other clap.similarity


def other_similarity(kind: str) -> str:
    return next(s for s in SIMILARITIES if s != kind)


def ablation_name(system: str, kind: str) -> str:
    """The row of `system` pre-trained with similarity `kind` (the ablation's reading)."""
    return f"{system}{ABLATION}{kind}"


def system_key(name: str) -> str:
    """The Table 1 system a row belongs to ("full · dot" -> "full")."""
    return name.split(ABLATION)[0]


def folder(name: str) -> str:
    """A row's folder name ("full · dot" -> "full-dot")."""
    return name.replace(ABLATION, "-")


def ablation_systems(p: ClapParams) -> list[str]:
    """clap.similarity_ablation, checked: pre-trained systems that also run."""
    bad = [s for s in p.similarity_ablation if s not in p.systems or SYSTEMS[s][0] is None]
    if bad:
        raise ValueError(f"clap.similarity_ablation {bad}: only pre-trained systems of "
                         f"clap.systems {p.systems} (not 'none') can be re-run with the "
                         "other similarity")
    return list(p.similarity_ablation)


# -------------------------------------------------------------------------- retrieval


def retrieval(audio: torch.Tensor, text: torch.Tensor, text_keys: torch.Tensor,
              ks: Sequence[int] = (1, 5), kind: str = "cosine") -> dict[str, float]:
    """Audio-to-text recall@k among the distinct transcripts of a set of pairs, and chance,
    ranked by the similarity the model was trained with (`kind`).

    Identical transcripts are one candidate (their embeddings are equal in eval mode), so
    a clip is right when its own words rank within the top k.
    """
    keys, first = np.unique(text_keys.numpy(), return_index=True)
    sims = similarity(audio.float(), text[torch.as_tensor(first)].float(), kind)
    truth = torch.as_tensor(np.searchsorted(keys, text_keys.numpy()))
    rank = (sims > sims.gather(1, truth[:, None])).sum(1)  # candidates scored above the truth
    out = {}
    for k in ks:
        out[f"R@{k}"] = float((rank < k).float().mean())
        out[f"chance@{k}"] = min(k, len(keys)) / len(keys)
    return out


def recall_at_1(outputs: list[dict], kind: str = "cosine") -> float:
    """Validation score of pre-training (a `Task.val_metric`): audio-to-text recall@1."""
    cat = {k: torch.cat([o[k] for o in outputs]) for k in ("audio", "text", "text_key")}
    return retrieval(cat["audio"], cat["text"], cat["text_key"], ks=(1,), kind=kind)["R@1"]


# ------------------------------------------------------------------------- features


def text_key(text: str) -> int:
    """A stable integer id of a transcript (equal strings, equal ids)."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def _text_top(p: ClapParams, n_layers: int) -> int:
    """clap.text_top_layers for a text model of `n_layers`: at most all of them (the paper
    trains every block of BERT, 12, and of DistilBERT, 6, with one setting)."""
    return min(p.text_top_layers, n_layers)


def _below_top(n_layers: int, k: int) -> int:
    """Index of the cached hidden state that feeds the top `k` layers (-1: the last)."""
    if not 0 <= k <= n_layers:
        raise ValueError(f"cannot train the top {k} of {n_layers} cached layers")
    return -1 if k == 0 else n_layers - k


def _pool_once(states: torch.Tensor, pool: str) -> torch.Tensor:
    """A frozen sequence reduced to the one vector `Side` pools from it: (1, dim)."""
    return states[:1] if pool == "cls" else states.mean(0, keepdim=True)


def _text_states(store: FeatureStore, texts: list[str], role: str, p: ClapParams, encoders,
                 cache_root: str | Path) -> list[torch.Tensor]:
    """One role's text states, from the features stage's cache or (another model named by
    clap.small_text) from this stage's own cache, encoded once."""
    if role == "main" or p.small_text is None:
        cut = "main" if role == "main" else p.small_text_layers
        n_layers = store.depth("text", cut)
        return store.text(texts, layer=_below_top(n_layers, _text_top(p, n_layers)), cut=cut)
    from mmser.encode.features import FeatureCache, text_features

    encoder = _encoder("text", p.small_text, p.small_text_layers)
    layer = _below_top(encoder.n_layers, _text_top(p, encoder.n_layers))
    cache = FeatureCache(cache_root, encoder.key, keep=[layer])  # the one state it reads
    digests = text_features(cache, encoder, texts)
    if store.stream:
        return [cache.ref(d, layer=layer) for d in digests]
    position = cache.position(layer)
    return [cache.load(d)["hidden"][position].float() for d in digests]


def _shaped(states: torch.Tensor | StateRef, frames: int | None, pool: str | None
            ) -> torch.Tensor | StateRef:
    """What `Bank` keeps of one sequence: its first `frames` and, with nothing trained below
    the pooling (`pool` set), the one vector `Side` would pool from it. A streamed state
    stays a reference unless it is pooled (a vector is small)."""
    if isinstance(states, StateRef):
        if pool is None:
            return states.cropped(frames) if frames else states
        states = states.load()
    # a clone: a view of the first frames would keep the clip's whole state in memory
    states = states[:frames].clone() if frames else states
    return _pool_once(states, pool) if pool else states


class Bank:
    """Cached encoder states of every utterance, cropped, read once; items by utterance id.

    Each side is fed the cached hidden state below its trainable top layers (the last
    state when none is trained). Text roles: "main" is `encoders.text`; "small" is
    `clap.small_text` (None: the `small_text_layers` cut of `encoders.text` that the
    features stage cached; a model name: encoded once into `cache_root`).
    """

    def __init__(self, store: FeatureStore, df: pd.DataFrame, p: ClapParams, encoders,
                 roles: Sequence[str] = ("main", "small"), cache_root: str | Path = ""):
        self.df, self.p = df.set_index("utt_id", drop=False), p
        missing = df[df[p.text_source].isna()] if roles else df.iloc[:0]
        if len(missing):
            raise ValueError(f"clap.text_source={p.text_source!r} is empty for "
                             f"{len(missing)} utterances, e.g. "
                             f"{missing['utt_id'].head(3).tolist()}")
        ids = df["utt_id"].tolist()
        n_speech = store.depth("speech")
        max_frames = int(p.max_seconds * FRAMES_PER_SECOND)  # the paper's 8-s cut
        states = store.speech(ids, layer=_below_top(n_speech, p.speech_top_layers))
        # with nothing trained below the pooling, pool once here: exactly what Side does
        # per batch, without padding and copying every frame in every epoch
        pool = "mean" if p.speech_top_layers == 0 else None
        self.speech = {u: _shaped(s, max_frames, pool) for u, s in zip(ids, states)}
        texts = sorted(set(df[p.text_source])) if roles else []
        pool = p.text_pool if p.text_top_layers == 0 else None
        self.text = {role: {t: _shaped(s, None, pool) for t, s in
                            zip(texts, _text_states(store, texts, role, p, encoders, cache_root))}
                     for role in roles}
        self.dim = states[0].shape[-1]
        self.text_dim = {r: next(iter(t.values())).shape[-1] for r, t in self.text.items()}

    def pairs(self, rows: pd.DataFrame, role: str) -> list[dict]:
        """Pre-training items: speech states, transcript states and the transcript's id."""
        texts = rows[self.p.text_source].tolist()
        return [{"speech": self.speech[u], "text": self.text[role][t], "text_key": text_key(t)}
                for u, t in zip(rows["utt_id"], texts)]

    def labelled(self, rows: pd.DataFrame, classes: Sequence[str]) -> list[dict]:
        """Fine-tuning items: speech states and the class index."""
        labels = D.label_ids(rows["label"].tolist(), classes)
        return [{"speech": self.speech[u], "label": int(y)}
                for u, y in zip(rows["utt_id"], labels)]


# ----------------------------------------------------------------------- building


@functools.lru_cache(maxsize=4)
def _encoder(role: str, name: str, layers: int | None):
    from mmser.encode.encoders import SpeechEncoder, TextEncoder

    return (SpeechEncoder if role == "speech" else TextEncoder)(name, layers)


def top_layers(role: str, name: str, layers: int | None, k: int) -> nn.Module | None:
    """The top `k` layers of an encoder, initialised from its pretrained weights (k=0: none)."""
    if k == 0:
        return None
    from mmser.encode.encoders import top_layers as build

    return build(_encoder(role, name, layers), k)


def speech_side(p: ClapParams, encoders, dim: int) -> Side:
    top = top_layers("speech", encoders.speech, encoders.speech_layers, p.speech_top_layers)
    return Side(dim, p.proj_dim, p.dropout, top, pool="mean")


def text_side(p: ClapParams, encoders, dim: int, role: str) -> Side:
    if role == "small":
        name = p.small_text or encoders.text
        layers = p.small_text_layers
    else:
        name, layers = encoders.text, encoders.text_layers
    k = p.text_top_layers and _text_top(p, _encoder("text", name, layers).n_layers)
    return Side(dim, p.proj_dim, p.dropout, top_layers("text", name, layers, k),
                pool=p.text_pool)


def param_groups(model: nn.Module, p: ClapParams) -> list[dict]:
    """Speech encoder layers at speech_lr, text encoder layers at text_lr (10x smaller in
    the paper), projections and head at head_lr; frozen or absent parts are left out."""
    groups: dict[str, list] = {"speech": [], "text": [], "head": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        side = name.split(".")[0]
        key = side if ".top." in f".{name}" and side in groups else "head"
        groups[key].append(param)
    lrs = {"speech": p.speech_lr, "text": p.text_lr, "head": p.head_lr}
    return [{"params": v, "lr": lrs[k], "name": k} for k, v in groups.items() if v]


def make_task(model: nn.Module, p: ClapParams, kind: str, **kwargs) -> T.Task:
    return T.Task(model, kind=kind, optimizer=p.optimizer, weight_decay=p.weight_decay,
                  param_groups=param_groups(model, p), schedule="cosine", min_lr=p.min_lr,
                  **kwargs)


def rows_digest(rows: pd.DataFrame) -> str:
    """Names a pre-training run by the utterances it sees."""
    return hashlib.sha256("|".join(sorted(rows["utt_id"])).encode()).hexdigest()[:12]


def split_pretraining(rows: pd.DataFrame, fraction: float, seed: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out a seeded share of the pre-training pairs to choose the epoch and to measure
    retrieval; every row comes from the training side of the fold."""
    if len(rows) < 4:
        raise ValueError(f"pre-training needs at least 4 pairs, got {len(rows)}")
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    n_val = max(2, int(round(fraction * len(rows))))
    return rows.iloc[order[n_val:]], rows.iloc[order[:n_val]]


def pretrain(bank: Bank, rows: pd.DataFrame, role: str, p: ClapParams, encoders,
             cfg: Training, out_dir: str | Path, seed: int, fingerprint: dict
             ) -> tuple[ClapModel, T.FitResult, dict]:
    """Stage 1 on `rows` (training-side pairs only): returns the model at the epoch with
    the best held-out recall@1, its fit result, and held-out retrieval at 1 and 5."""
    T.seed_everything(seed)
    train, val = split_pretraining(rows, p.pretrain_val_fraction, seed)
    model = ClapModel(speech_side(p, encoders, bank.dim),
                      text_side(p, encoders, bank.text_dim[role], role), p.temperature,
                      p.similarity)
    task = make_task(model, p, "loss",
                     val_metric=functools.partial(recall_at_1, kind=p.similarity))
    cfg = replace(cfg, precision=p.pretrain_precision or cfg.precision)
    val_items = bank.pairs(val, role)
    result = T.fit(task, bank.pairs(train, role), val_items, out_dir, cfg,
                   max_epochs=p.pretrain_epochs, batch_size=p.batch_size, seed=seed,
                   fingerprint={**fingerprint, "rows": rows_digest(rows), "role": role})
    out = T.predict(task, val_items, keys=("audio", "text"))
    keys = torch.tensor([item["text_key"] for item in val_items])
    scores = retrieval(torch.from_numpy(out["audio"]), torch.from_numpy(out["text"]), keys,
                       kind=p.similarity)
    return model, result, {"n_pairs": len(train), "n_heldout": len(val), **scores}


class Runner:
    """Builds the fine-tuning task of one system per fold for `training.cross_validate`,
    pre-training first (on the fold's training rows and optionally the read speech that
    `read(fold)` allows: `Corpus.read_for_fold` leaves out the fold's test speakers) when
    the system uses pre-training. Pre-training records land in `self.records`, one per run
    (a fold is built more than once when runs train ahead in processes)."""

    def __init__(self, bank: Bank, system: str, classes: Sequence[str], p: ClapParams,
                 encoders, cfg: Training, out_dir: str | Path,
                 read: Callable[[Fold], pd.DataFrame] | None, fingerprint: dict):
        if system_key(system) not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}; known: {sorted(SYSTEMS)}")
        self.bank, self.system, self.classes, self.p = bank, system, list(classes), p
        self.encoders, self.cfg, self.out_dir = encoders, cfg, Path(out_dir)
        self.read, self.fingerprint = read, fingerprint
        self._records: dict[str, dict] = {}  # by pre-training run folder
        self._histories: dict[str, pd.DataFrame] = {}

    @property
    def records(self) -> list[dict]:
        return list(self._records.values())

    @property
    def histories(self) -> list[pd.DataFrame]:
        return list(self._histories.values())

    def items(self, rows: pd.DataFrame) -> list[dict]:
        return self.bank.labelled(rows, self.classes)

    def build(self) -> SpeechClassifier:
        return SpeechClassifier(speech_side(self.p, self.encoders, self.bank.dim),
                                len(self.classes))

    def task(self, model: nn.Module) -> T.Task:
        return make_task(model, self.p, "classification")

    def __call__(self, fold: Fold, seed: int) -> T.Task:
        model = self.build()
        role = SYSTEMS[system_key(self.system)][0]
        if role is not None:
            train_rows = fold.train()
            read = train_rows.iloc[:0] if self.read is None else self.read(fold)
            pool = pd.concat([train_rows, read])
            run = (self.out_dir / "pretrain" / folder(self.system)
                   / f"seed{seed}-{rows_digest(pool)}")
            clap, result, scores = pretrain(self.bank, pool, role, self.p, self.encoders,
                                            self.cfg, run, seed, self.fingerprint)
            model.speech.load_state_dict(clap.speech.state_dict())
            held_out = sorted(set(self.bank.df.loc[self.bank.df["fold"].notna(), "session"])
                              - set(train_rows["session"]))
            tag = {"system": self.system, "seed": seed, "run": run.name,
                   "sessions_not_in_train": ", ".join(map(str, held_out)),
                   "read_pairs": len(read),
                   "read_speakers": ", ".join(sorted(map(str, set(read["speaker"].dropna()))))}
            self._records[run.name] = {**tag, "best_epoch": result.best_epoch, **scores}
            self._histories[run.name] = result.history.assign(**tag)
        return self.task(model)


def run_system(corpus: D.Corpus, bank: Bank, system: str, p: ClapParams, encoders,
               cfg: Training, out_dir: str | Path, use_read: bool, fingerprint: dict
               ) -> tuple[pd.DataFrame, Runner]:
    """Cross-validated predictions of one Table 1 system (with a `system` column); `system`
    may be an ablation row (`ablation_name`), run with the `p` given."""
    read = corpus.read_for_fold if use_read and len(corpus.read) else None
    runner = Runner(bank, system, corpus.classes, p, encoders, cfg, out_dir, read,
                    fingerprint)
    preds = T.cross_validate(corpus, runner.items, runner, Path(out_dir) / folder(system), cfg,
                             seeds=claim_seeds("clap", system, cfg),
                             fingerprint={**fingerprint, "system": system,
                                          "similarity": p.similarity},
                             max_epochs=p.finetune_epochs, batch_size=p.batch_size)
    return preds.assign(system=system), runner


def trained_folds(corpus: D.Corpus, runner: Runner, out_dir: str | Path, seeds: Sequence[int]):
    """Each fold's fine-tuned model (from its best.pt, the choice already made on
    validation) with the fold's test rows: (seed, fold index, task, test rows)."""
    import json

    for seed in seeds:
        for fold in corpus.folds(seed=seed):
            run = Path(out_dir) / folder(runner.system) / f"seed{seed}" / f"fold{fold.index}"
            done = json.loads((run / T.DONE).read_text())
            fold.select(checkpoint=str(run / T.BEST), epoch=done["best_epoch"])
            task = runner.task(runner.build())
            task.load_state_dict(torch.load(run / T.BEST, map_location="cpu",
                                            weights_only=True))
            yield seed, fold.index, task.eval(), fold.test().reset_index(drop=True)


def embeddings(task: T.Task, items: list[dict]) -> np.ndarray:
    """Utterance features of the speech side (the projection output): Figure 4's input."""
    return T.predict(task, items, keys=("embedding",))["embedding"]


def transfer_predictions(task: T.Task, rows: pd.DataFrame, items: list[dict],
                         classes: Sequence[str], shared: Sequence[str]) -> pd.DataFrame:
    """Predictions on a second corpus restricted to the shared classes: the argmax over the
    shared classes only (the model never chooses a class the second corpus lacks)."""
    logits = T.predict(task, items)["logits"]
    keep = [list(classes).index(c) for c in shared]
    pred = np.asarray(shared)[logits[:, keep].argmax(1)]
    return pd.DataFrame({"utt_id": rows["utt_id"].to_numpy(), "label": rows["label"].to_numpy(),
                         "pred": pred})


# ----------------------------------------------------------------------------- tables

# The paper's WA (%) on IEMOCAP (Table 1, its 5-fold cross-validation) and on EmoDB's
# anger/happiness/neutral/sadness with the IEMOCAP-trained models (Table 3).
PAPER_TABLE1 = {"none": 70.04, "small": 76.91, "full": 77.22}
PAPER_TABLE3 = {"none": 60.02, "small": 74.15, "full": 79.00}
PAPER_NAMES = {"none": "Only HuBERT without pre-training",
               "small": "HuBERT + DistilBERT pre-training",
               "full": "HuBERT + BERT pre-training"}


def model_name(name: str) -> str:
    """A row's readable name, the similarity named on an ablation row."""
    key = system_key(name)
    if key == name:
        return SYSTEMS[key][1]
    return f"{SYSTEMS[key][1]}, {name.split(ABLATION)[1]} logits (ablation)"


def beside_paper(summary: pd.DataFrame, paper: dict[str, float], metrics: Sequence[str],
                 paper_setting: str, ours_setting: str) -> pd.DataFrame:
    """Our mean ± std next to the paper's WA, one row per system, settings named."""
    from mmser.report.results import formatted

    table = formatted(summary, metrics)
    table.insert(1, "model", [model_name(s) for s in table["system"]])
    table["ours: setting"] = ours_setting
    table["paper: model"] = [PAPER_NAMES[system_key(s)] for s in table["system"]]
    table["paper: WA (%)"] = [paper[system_key(s)] for s in table["system"]]
    table["paper: setting"] = paper_setting
    return table


def by_speaker(preds: pd.DataFrame, corpus: D.Corpus) -> pd.DataFrame:
    """Predictions regrouped by test speaker (`fold` := speaker), so that `fold_metrics`
    scores each voice that its model never heard (leave-one-session-out holds them out)."""
    speaker = corpus.df.set_index("utt_id")["speaker"]
    return preds.assign(fold=preds["utt_id"].map(speaker).astype(str))


def load_transfer(folder: str | Path, classes: Sequence[str]) -> tuple[D.Corpus, FeatureStore,
                                                                      list[str]]:
    """A second prepared corpus (`corpus/`, `manifest.csv`, `features/` made by this
    pipeline's prepare/transcribe/features stages with the same encoders) and the classes
    it shares with the training corpus."""
    folder = Path(folder)
    target = D.load_corpus(folder / "corpus", folder / "manifest.csv")
    shared = sorted(set(classes) & set(target.df["label"].dropna()))
    if not shared:
        raise ValueError(f"{folder}: shares no class with {list(classes)}")
    return target, FeatureStore(folder / "features"), shared


def transfer(corpus: D.Corpus, runner: Runner, out_dir: str | Path, seeds: Sequence[int],
             target: D.Corpus, store: FeatureStore, shared: Sequence[str]) -> pd.DataFrame:
    """Every fold model of one system on the second corpus's shared classes; `fold` names
    the model, so tables give mean ± std over the fold models."""
    rows = target.df[target.df["label"].isin(shared)].reset_index(drop=True)
    items = Bank(store, rows, runner.p, runner.encoders, roles=()).labelled(rows, runner.classes)
    out = [transfer_predictions(task, rows, items, runner.classes, shared)
           .assign(system=runner.system, seed=seed, fold=k)
           for seed, k, task, _ in trained_folds(corpus, runner, out_dir, seeds)]
    return pd.concat(out, ignore_index=True)


# ---------------------------------------------------------------------------- reading


def _verdict(row: dict) -> str:
    if row["low"] > 0:
        return "better (the interval excludes 0)"
    if row["high"] < 0:
        return "worse (the interval excludes 0)"
    return "not distinguishable (the interval includes 0)"


def reading(summary: pd.DataFrame, ci: pd.DataFrame,
            retrieval_mean: pd.DataFrame | None = None) -> list[str]:
    """The reading's computed sentences: our ordering and gains beside the paper's, each
    with its paired bootstrap interval, said plainly where they go against the paper.

    `summary`: `results.summary` of Table 1 (rows may include ablation rows); `ci`: rows of
    `results.bootstrap` (a, b, metric, diff, low, high); `retrieval_mean`: mean R@k and
    chance@k by system (index), or None when nothing was pre-trained.
    """
    s = summary.set_index("system")
    main = [k for k in SYSTEMS if k in s.index]
    lines = []
    ours = sorted(main, key=lambda k: s.loc[k, "WA"])
    paper = sorted(main, key=lambda k: PAPER_TABLE1[k])
    lines.append(
        "- **Ordering (WA).** Ours, lowest to highest: "
        + " < ".join(f"{k} {100 * s.loc[k, 'WA']:.1f} ± {100 * s.loc[k, 'WA_std']:.1f}"
                     for k in ours)
        + "; the paper's: " + " < ".join(f"{k} {PAPER_TABLE1[k]:.2f}" for k in paper)
        + (". The same order as the paper." if ours == paper
           else ". **This goes against the paper's order.**"))
    for r in ci.to_dict("records"):
        a, b = r["a"], r["b"]
        if system_key(a) != a:  # the similarity ablation, said below
            continue
        paper_gap = (PAPER_TABLE1[a] - PAPER_TABLE1[b] if a in PAPER_TABLE1 and b in
                     PAPER_TABLE1 else None)
        note = ""
        if paper_gap is not None:
            note = f" The paper's WA gap: {paper_gap:+.2f} points;"
            if paper_gap > 0 and r["high"] < 0:
                note += " **this goes against the paper** (ours is worse)."
            elif paper_gap > 0 and r["low"] <= 0:
                note += " the paper's gain is **not reproduced** here."
            else:
                note += " the same direction as the paper."
        lines.append(f"- **{a} − {b} ({r['metric']})**: {100 * r['diff']:+.1f} points, 95% CI "
                     f"[{100 * r['low']:+.1f}, {100 * r['high']:+.1f}]: {_verdict(r)}.{note}")
    for r in ci.to_dict("records"):
        if system_key(r["a"]) != r["a"] and r["b"] == system_key(r["a"]):
            lines.append(f"- **Similarity ablation, {r['a']} − {r['b']} ({r['metric']})**: "
                         f"{100 * r['diff']:+.1f} points, 95% CI [{100 * r['low']:+.1f}, "
                         f"{100 * r['high']:+.1f}]: the other reading of the CLIP logits is "
                         f"{_verdict(r)}.")
    if retrieval_mean is not None and len(retrieval_mean):
        parts = [f"{k} R@1 {m['R@1']:.3f} (chance {m['chance@1']:.3f})"
                 for k, m in retrieval_mean.iterrows()]
        weak = [k for k, m in retrieval_mean.iterrows() if m["R@1"] < 2 * m["chance@1"]]
        lines.append("- **Stage 1 (held-out retrieval)**: " + "; ".join(parts) + "."
                     + (f" {', '.join(weak)} stayed below twice chance: that stage 1 aligned "
                        "little." if weak else " Every pre-training aligned speech with its "
                        "own words well above chance."))
    return lines
