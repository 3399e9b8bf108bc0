"""Audio-textual distilled models for arousal, valence and dominance (the `distil` stage).

The model (de Oliveira et al., Interspeech 2023): a speech encoder, and for audio+text a
text encoder; average- and max-pooling over each sequence, summed to size d (`pooling`;
"concat" gives 2 d); the pooled
vectors of the two modalities concatenated; a head of two linear layers with tanh between;
three outputs (A, V, D on [0, 1]); loss 1 - CCC averaged over the dimensions (eq. 3).
The modules and the loss are in `mmser.models.distil`.

Encoder states come from a cache. A source is `features:<cut>` (the features stage's
cache: `features:main`, `features:2`, `features:3`) or an encoder name / Hugging Face id /
folder, optionally `@<layers>` to keep its first layers (the pruned wav2vec 2.0 large),
which this stage encodes once into its own cache. Fine-tuning trains on cached states:
`ft_layers` = k > 0 trains the top k transformer layers (`TopLayers`; None = all of them,
the paper's recipe with the convolutional front end frozen), 0 trains a residual adapter
on the last state (the CPU stand-in: a full layer's backward pass is too slow here).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mmser.training import data as D
from mmser.training import loop as T
from mmser.models.distil import DistilModel, Frozen, LayerWeights, n_params, n_trainable
from mmser.models.layers import Adapter, TopLayers
from mmser.encode.features import FeatureStore, StateRef
from mmser.report.claims import claim_seeds

FEATURES = "features:"
SCENARIOS = ("seen", "unseen")

# Paper, Table 1 (MSP-Podcast v1.10, official partitions: test1 = seen, test2 = unseen):
# (modality, size) -> encoder, #params (M), seen A/V/D, unseen A/V/D.
PAPER_TABLE1 = {
    ("A", "large"): ("w2v2-L-robust(p)", 165, (0.627, 0.470, 0.521), (0.462, 0.263, 0.390)),
    ("A", "base"): ("HuBERT base", 95, (0.608, 0.440, 0.486), (0.388, 0.225, 0.344)),
    ("A", "distilled"): ("DistilHuBERT", 24, (0.622, 0.328, 0.513), (0.470, 0.169, 0.395)),
    ("A+T", "large"): ("w2v2-L-robust(p)", 180, (0.619, 0.560, 0.484), (0.469, 0.347, 0.353)),
    ("A+T", "base"): ("HuBERT base", 109, (0.613, 0.532, 0.493), (0.461, 0.315, 0.396)),
    ("A+T", "distilled"): ("DistilHuBERT", 39, (0.614, 0.519, 0.509), (0.475, 0.333, 0.392)),
}
# Paper, Table 2 (fine-tuned DistilHuBERT + TinyBERT, seen scenarios): transcripts ->
# ASR params (M), WER, A/V/D. The human row's WER cell is not meaningful in the source.
PAPER_TABLE2 = {
    "human": (None, None, (0.614, 0.519, 0.509)),
    "Whisper base": (74, 0.222, (0.620, 0.521, 0.511)),
    "Whisper tiny": (39, 0.241, (0.618, 0.524, 0.510)),
}
PAPER_CORPUS = "MSP-Podcast v1.10, official partitions (test1 = seen, test2 = unseen podcasts)"


# ------------------------------------------------------------------------------ sources


def parse_source(spec: str) -> tuple[str | None, str | None, int | None]:
    """`features:<cut>` -> (cut, None, None); `<name>[@<layers>]` -> (None, name, layers)."""
    if spec.startswith(FEATURES):
        cut = spec[len(FEATURES):]
        if not cut:
            raise ValueError(f"source {spec!r}: name a cut, e.g. features:main")
        return cut, None, None
    name, _, layers = spec.partition("@")
    if layers and not layers.isdigit():
        raise ValueError(f"source {spec!r}: the part after @ must be a layer count")
    return None, name, int(layers) if layers else None


def encoder_of(spec: str, role: str, encoders) -> tuple[str, int | None]:
    """(model name, layer cut) behind a source; `encoders` is the params' Encoders."""
    cut, name, layers = parse_source(spec)
    if cut is None:
        return name, layers
    name = encoders.speech if role == "speech" else encoders.text
    main = encoders.speech_layers if role == "speech" else encoders.text_layers
    return name, main if cut == "main" else int(cut)


def load_encoder(spec: str, role: str, encoders):
    """The encoder behind a source (for its top layers and its parameter count). Cuts a
    copy: `SpeechEncoder(name, layers)` would cut the memoised bundled Whisper for every
    later user in the process."""
    from mmser.encode.encoders import SpeechEncoder, TextEncoder

    name, layers = encoder_of(spec, role, encoders)
    if role == "text":
        return TextEncoder(name, layers)
    encoder = copy.deepcopy(SpeechEncoder(name))
    if layers is not None:
        if not 1 <= layers <= encoder.n_layers:
            raise ValueError(f"{name}: cannot keep {layers} of {encoder.n_layers} layers")
        del encoder._layers()[layers:]
    return encoder


def encode_own(corpus: D.Corpus, speech_specs: Sequence[str], text_specs: Sequence[str],
               root: str | Path, batch_size: int = 8) -> None:
    """Cache the states of sources that are not `features:` cuts (the paper profile's
    several encoders) for the rated utterances and both transcripts, once."""
    from mmser.encode import features as F
    from mmser.corpus import manifest
    from mmser.corpus.audio import Clips
    from mmser.encode.encoders import TextEncoder

    speech = [s for s in speech_specs if not s.startswith(FEATURES)]
    text = [s for s in text_specs if not s.startswith(FEATURES)]
    if not speech and not text:
        return
    rows = corpus.rated
    keys: dict[str, dict[str, str]] = {"speech": {}, "text": {}}
    digests = None
    if speech:
        clips = Clips(manifest.resolve_paths(rows, corpus.audio_root))  # read when used
        digests, sizes = F.clip_digests(clips)
        for spec in speech:
            _, name, layers = parse_source(spec)
            encoder = load_encoder(spec, "speech", None)
            cache = F.FeatureCache(root, f"{encoder.key}-{layers}")
            F.speech_features(cache, encoder, clips, batch_size, digests=digests, sizes=sizes)
            keys["speech"][spec] = cache.dir.name
    texts = sorted({t for col in ("text", "asr_text") for t in rows[col].dropna()})
    for spec in text:
        _, name, layers = parse_source(spec)
        encoder = TextEncoder(name, layers)
        cache = F.FeatureCache(root, encoder.key)
        F.text_features(cache, encoder, texts, batch_size=32)
        keys["text"][spec] = encoder.key
    F.write_index(root, rows["utt_id"] if digests else None, digests,
                  **{k: v for k, v in keys.items() if v})


class States:
    """Cached hidden states by source spec, memoised in memory (each fold reads them again).

    speech(spec, utt_ids, layer) / text(spec, texts, layer): lists of (length, dim)
    tensors, or (length, states, dim) float16 with layer=None (all states, time first so
    that `collate` pads the time axis). With `live` (spec -> `LiveSpeech`, `live_sources`)
    a speech source's states are computed from the clips per batch, not cached."""

    def __init__(self, features: str | Path, own: str | Path | None = None,
                 stream: bool = False, live: dict | None = None):
        self.stores = {"features": FeatureStore(features, stream)}
        if own is not None and (Path(own) / "keys.json").is_file():
            self.stores["own"] = FeatureStore(own, stream)
        self.live = live or {}
        self._memo: dict[tuple, dict] = {}

    def _where(self, spec: str) -> tuple[FeatureStore, str]:
        cut, _, _ = parse_source(spec)
        if cut is not None:
            return self.stores["features"], cut
        if "own" not in self.stores:
            raise KeyError(f"source {spec!r} has not been encoded; run encode_own first")
        return self.stores["own"], spec

    def _get(self, role: str, spec: str, keys: Sequence[str], layer: int | None) -> list:
        memo = self._memo.setdefault((role, spec, layer), {})
        todo = [k for k in dict.fromkeys(keys) if k not in memo]
        if todo:
            if role == "speech" and spec in self.live:
                features = self.stores["features"]
                values = self.live[spec].refs(
                    todo, layer, {u: features.speech_digest(u) for u in todo})
            else:
                store, cut = self._where(spec)
                read = store.speech if role == "speech" else store.text
                values = read(todo, layer=layer, cut=cut)
            for key, value in zip(todo, values):
                if layer is None:  # every state, time first (float16: there are many)
                    value = value.every_state_time_first() if isinstance(value, StateRef) \
                        else value.transpose(0, 1).half()
                memo[key] = value
        return [memo[k] for k in keys]

    def speech(self, spec: str, utt_ids: Sequence[str], layer: int | None = -1) -> list:
        return self._get("speech", spec, list(utt_ids), layer)

    def text(self, spec: str, texts: Sequence[str], layer: int | None = -1) -> list:
        return self._get("text", spec, list(texts), layer)

    def n_states(self, role: str, spec: str) -> int:
        """The hidden states of a source's encoder (layers + 1), cached or not."""
        if role == "speech" and spec in self.live:
            return self.live[spec].encoder.n_layers + 1
        store, cut = self._where(spec)
        return store.depth(role, cut) + 1


def live_sources(training, encoders, corpus: D.Corpus, specs: Sequence[str]) -> dict:
    """spec -> `LiveSpeech` of each speech source when `training.speech_from_waves` (their
    states computed from the clips per batch), else {} (cached by the features stage and
    `encode_own`)."""
    from mmser.encode.live import live_speech

    return {spec: live_speech(training, encoders, corpus, *encoder_of(spec, "speech", encoders))
            for spec in specs if training.speech_from_waves}


# ------------------------------------------------------------------------------ systems


@dataclass(frozen=True)
class System:
    """One row of the tables: an encoder size, audio or audio+text, a recipe
    ("FT": encoders tuned with the head; "FT=>FRZ": the audio-only FT encoder frozen, the
    pretrained text encoder frozen, a fresh head), and the transcripts used."""
    size: str
    modality: str = "A"  # A | A+T
    recipe: str = "FT"  # FT | FT=>FRZ
    transcripts: str = "text"  # text (reference) | asr_text

    @property
    def name(self) -> str:
        extra = "" if self.transcripts == "text" else " [ASR]"
        return f"{self.size} · {self.modality} · {self.recipe}{extra}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.replace("=>", "to"))


class Builder:
    """Builds each system's items and fresh task from the stage's parameters."""

    def __init__(self, states: States, corpus: D.Corpus, cfg, encoders, run_dir: str | Path,
                 first_key: str):
        self.states, self.corpus, self.cfg, self.encoders = states, corpus, cfg, encoders
        self.run_dir = Path(run_dir)
        self._encoders: dict[tuple, nn.Module] = {}
        self._n_states: dict[tuple, int] = {}
        self._first = first_key  # an utterance id whose entry gives the state width
        self._first_text = str(corpus.rated["text"].iloc[0])

    # -- sources and layers
    def speech_spec(self, size: str) -> str:
        if size not in self.cfg.sizes:
            raise KeyError(f"encoder size {size!r} is not in distil.sizes {list(self.cfg.sizes)}")
        return self.cfg.sizes[size]

    def encoder(self, spec: str, role: str):
        if (spec, role) not in self._encoders:
            self._encoders[(spec, role)] = load_encoder(spec, role, self.encoders)
        return self._encoders[(spec, role)]

    def n_layers(self, spec: str, role: str) -> int:
        if (spec, role) not in self._n_states:
            self._n_states[(spec, role)] = self.states.n_states(role, spec)
        return self._n_states[(spec, role)] - 1

    def _ft(self, role: str) -> int | None:
        return self.cfg.speech_ft_layers if role == "speech" else self.cfg.text_ft_layers

    def input_layer(self, spec: str, role: str, tuned: bool = True) -> int:
        """Which cached state a branch reads: the last for frozen and adapter branches,
        state n - k for the top k trainable layers."""
        k = self._ft(role)
        if not tuned or k == 0:
            return -1
        n = self.n_layers(spec, role)
        return 0 if k is None else n - k

    def tuned_branch(self, spec: str, role: str) -> nn.Module:
        from mmser.encode.encoders import top_layers

        k = self._ft(role)
        if k == 0:
            return Adapter(self.dim(spec, role), self.cfg.adapter_dim, self.cfg.dropout)
        encoder = self.encoder(spec, role)
        return top_layers(encoder, encoder.n_layers if k is None else k)

    def dim(self, spec: str, role: str) -> int:
        key = self._first if role == "speech" else self._first_text
        read = self.states.speech if role == "speech" else self.states.text
        return int(read(spec, [key])[0].shape[-1])

    # -- items
    def items(self, system: System) -> Callable[[pd.DataFrame], list[dict]]:
        speech = self.speech_spec(system.size)
        tuned = system.recipe == "FT"
        s_layer = self.input_layer(speech, "speech")
        t_layer = self.input_layer(self.cfg.text, "text", tuned)
        if system.modality == "A+T" and system.transcripts not in ("text", "asr_text"):
            raise ValueError(f"transcripts must be text or asr_text, not {system.transcripts!r}")

        def make(rows: pd.DataFrame) -> list[dict]:
            targets = D.dimensions(rows, self.corpus.key)
            waves = self.states.speech(speech, rows["utt_id"], s_layer)
            out = [{"speech": w, "target": t} for w, t in zip(waves, targets)]
            if system.modality == "A+T":
                texts = rows[system.transcripts]
                if texts.isna().any():
                    raise ValueError(f"{int(texts.isna().sum())} utterances have no "
                                     f"{system.transcripts}; run the transcribe stage on them")
                for item, t in zip(out, self.states.text(self.cfg.text, texts, t_layer)):
                    item["text"] = t
            return out
        return make

    # -- models
    def model(self, system: System, seed: int, fold: int) -> DistilModel:
        speech = self.speech_spec(system.size)
        dims = {"speech": self.dim(speech, "speech"), "text": self.dim(self.cfg.text, "text")}
        if system.recipe == "FT":
            branches = {"speech": self.tuned_branch(speech, "speech")}
            if system.modality == "A+T":
                branches["text"] = self.tuned_branch(self.cfg.text, "text")
        elif system.recipe == "FT=>FRZ":
            if system.modality != "A+T":
                raise ValueError("FT=>FRZ is the audio+text recipe (audio-only is FT)")
            audio = System(system.size, "A", "FT")
            tuned = self.task(self.model(audio, seed, fold))
            weights = self.run_dir / audio.slug / f"seed{seed}" / f"fold{fold}" / T.BEST
            if not weights.is_file():
                raise FileNotFoundError(f"{weights}: run the audio-only FT system first")
            tuned.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            branches = {"speech": Frozen(tuned.model.branches["speech"]), "text": Frozen()}
        else:
            raise ValueError(f"unknown recipe {system.recipe!r}")
        return DistilModel(branches, dims, self.cfg.head_hidden, 3, self.cfg.dropout,
                           self.cfg.pool_norm, self.cfg.output, self.cfg.pooling)

    def task(self, model: nn.Module, param_groups: list[dict] | None = None) -> T.Task:
        return T.Task(model, kind="regression", lr=self.cfg.lr, optimizer="adam",
                      param_groups=param_groups)

    def fingerprint(self, system: System) -> dict:
        """The parameters of a system's runs (`fit` adds its code, data and weights)."""
        return {"system": asdict(system), "distil": asdict(self.cfg),
                "encoders": asdict(self.encoders)}


def seen_split(labelled: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """About `fraction` of each speaker's utterances, held back from every fold's training
    and validation: the seen-scenario test set (speakers heard in training, utterances
    never trained on), like MSP-Podcast's test1."""
    rng = np.random.default_rng([seed, 6])
    picked = []
    for _, index in sorted(labelled.groupby("speaker").groups.items()):
        index = rng.permutation(np.asarray(index))
        picked.extend(index[: int(round(fraction * len(index)))].tolist())
    return pd.Index(picked)


def split_seen(corpus: D.Corpus, fraction: float, seed: int) -> tuple[D.Corpus, pd.DataFrame]:
    """(the corpus to cross-validate: every rated row, with the folds every stage uses,
    the held-back rows kept out of training and validation only; the held-back rows)."""
    if fraction and corpus.protocol == "official":
        raise ValueError("official partitions bring their own seen (test1) and unseen (test2) "
                         "sets: set distil.seen_fraction to 0")
    if not 0 <= fraction < 1:
        raise ValueError(f"distil.seen_fraction must be in [0, 1), not {fraction}")
    seen = seen_split(corpus.rated, fraction, seed)
    fields = {name: getattr(corpus, name) for name in corpus.__dataclass_fields__}
    return HeldBack(**fields, held_back=seen), corpus.df.loc[seen].reset_index(drop=True)


@dataclass
class HeldBack(D.Corpus):
    """A corpus whose folds are the corpus's own (so each fold's unseen test part is the
    same as every other stage's), with the `held_back` rows (the seen-scenario test set)
    left out of each fold's training and validation parts."""
    held_back: pd.Index = field(default_factory=pd.Index)

    def folds(self, *args, **options) -> Iterator[HeldBackFold]:
        for fold in super().folds(*args, **options):
            yield HeldBackFold(fold, self.held_back)


class HeldBackFold:
    """A fold whose train() and val() leave out the held-back rows; test(), select() and
    the test guard are the fold's own."""

    def __init__(self, fold, held_back: pd.Index):
        self._fold, self._held_back = fold, held_back
        self.index = fold.index

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not yet set (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self._fold, name)

    def _kept(self, rows: pd.DataFrame) -> pd.DataFrame:
        return rows[~rows.index.isin(self._held_back)]

    def train(self) -> pd.DataFrame:
        return self._kept(self._fold.train())

    def val(self) -> pd.DataFrame:
        return self._kept(self._fold.val())


def run_system(builder: Builder, system: System, corpus: D.Corpus, seen: pd.DataFrame,
               training, *, batch_size: int, max_epochs: int, patience: int | None) -> pd.DataFrame:
    """Cross-validate one system; one prediction row per test utterance with `system` and
    `scenario`. With `official` partitions test1 is seen and test2 unseen; otherwise the
    held-out fold is unseen and `seen` rows of the fold's training speakers are seen."""
    seeds = claim_seeds("distil", system.name, training)
    make_items = builder.items(system)
    out_dir = builder.run_dir / system.slug
    preds = T.cross_validate(
        corpus, make_items,
        lambda fold, seed: builder.task(builder.model(system, seed, fold.index)), out_dir, training, seeds=seeds, fingerprint=builder.fingerprint(system),
        max_epochs=max_epochs, batch_size=batch_size, patience=patience, bucket_by="speech")
    if corpus.protocol == "official":
        tests = sorted(corpus.rated.loc[corpus.rated["fold"] >= 0, "split"].unique())
        preds["scenario"] = [("seen" if tests[int(f)] == "test1" else "unseen")
                             for f in preds["fold"]]
    else:
        preds["scenario"] = "unseen"
        preds = pd.concat([preds, _seen_predictions(builder, system, corpus, seen, seeds,
                                                    make_items, out_dir, preds)],
                          ignore_index=True)
    return preds.assign(system=system.name)


def _seen_predictions(builder: Builder, system: System, corpus: D.Corpus, seen: pd.DataFrame,
                      seeds: Sequence[int], make_items: Callable, out_dir: Path,
                      unseen: pd.DataFrame) -> pd.DataFrame:
    """Each fold's chosen checkpoint on the held-back utterances of its training speakers
    that are not in the fold's test part (`unseen`: its test predictions). The fold's test
    part is not opened here; its checkpoint was chosen on validation."""
    rows = []
    for seed in seeds:
        for fold in corpus.folds(seed=seed):
            tested = unseen.loc[(unseen["seed"] == seed) & (unseen["fold"] == fold.index),
                                "utt_id"]
            part = seen[seen["speaker"].isin(fold.train()["speaker"])
                        & ~seen["utt_id"].isin(tested)].reset_index(drop=True)
            if part.empty:
                continue
            task = builder.task(builder.model(system, seed, fold.index))
            best = out_dir / f"seed{seed}" / f"fold{fold.index}" / T.BEST
            task.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
            rows.append(T.predictions(task, part, make_items(part), corpus, seed, fold.index))
    return pd.concat(rows, ignore_index=True).assign(scenario="seen") if rows else pd.DataFrame()


# ----------------------------------------------------------------------- layer importance


def layer_importance(builder: Builder, corpus: D.Corpus, size: str, training, *,
                     batch_size: int, max_epochs: int, patience: int | None) -> pd.DataFrame:
    """Figure 2: the frozen encoder's hidden states (front end and every layer) mixed by
    softmax-normalised learnable weights, one model per dimension, trained on each fold's
    training part and chosen on its validation part (the test part is never opened).
    Returns one row per (seed, fold, dimension, state) with the learnt weight."""
    spec = builder.speech_spec(size)
    n_states = builder.n_layers(spec, "speech") + 1
    dim = builder.dim(spec, "speech")
    records = []
    for seed in training.seeds:
        for fold in corpus.folds(seed=seed):
            for d, name in enumerate(D.DIMENSIONS):
                def make(rows: pd.DataFrame) -> list[dict]:
                    targets = D.dimensions(rows, corpus.key)[:, [d]]
                    states = builder.states.speech(spec, rows["utt_id"], layer=None)
                    return [{"speech": s, "target": t} for s, t in zip(states, targets)]

                T.seed_everything(seed)
                weights = LayerWeights(n_states)
                model = DistilModel({"speech": weights}, {"speech": dim},
                                    builder.cfg.head_hidden, 1, builder.cfg.dropout,
                                    builder.cfg.pool_norm, builder.cfg.output,
                                    builder.cfg.pooling)
                out = builder.run_dir / "layers" / size / name / f"seed{seed}" / f"fold{fold.index}"
                # the mixing weights get their own rate: at the head's rate they barely
                # leave uniform within the few epochs of the CPU budget
                groups = [{"params": [weights.logits], "lr": builder.cfg.layer_lr},
                          {"params": list(model.head.parameters())
                           + list(model.norms.parameters())}]
                T.fit(builder.task(model, groups), make(fold.train()), make(fold.val()), out, training,
                      max_epochs=max_epochs, batch_size=batch_size, seed=seed,
                      patience=patience, bucket_by="speech",
                      fingerprint={**builder.fingerprint(System(size)), "dimension": name})
                for i, w in enumerate(weights.weights.detach().tolist()):
                    records.append({"seed": seed, "fold": fold.index, "dimension": name,
                                    "state": i, "weight": w})
    return pd.DataFrame(records)


# ------------------------------------------------------------------------------ tables


def scenario_metrics(preds: pd.DataFrame) -> pd.DataFrame:
    """Per (system, scenario, seed, fold): CCC of each dimension."""
    from mmser.report.results import fold_metrics

    parts = [fold_metrics(part).assign(scenario=sc)
             for sc, part in preds.groupby("scenario", sort=False)]
    return pd.concat(parts, ignore_index=True)


def summary_table(per_fold: pd.DataFrame) -> pd.DataFrame:
    """(system, scenario) -> mean and std over folds and seeds of CCC per dimension."""
    from mmser.report.results import summary

    out = []
    for scenario, part in per_fold.groupby("scenario", sort=False):
        out.append(summary(part.drop(columns="scenario")).assign(scenario=scenario))
    return pd.concat(out, ignore_index=True)


CCC_COLUMNS = [f"CCC_{d}" for d in D.DIMENSIONS]


def table1(summ: pd.DataFrame, systems: Sequence[System], params: dict[str, dict],
           encoders: dict[str, str], text_encoder: str, context: str) -> pd.DataFrame:
    """Our rows (mean ± std) and the paper's, one row per (source, modality, size)."""
    rows = []
    for system in systems:
        row = {"source": "ours", "setting": context, "modality": system.modality,
               "size": system.size,
               "encoder": encoders[system.size]
               + (f" + {text_encoder}" if system.modality == "A+T" else ""),
               "params (M)": params[system.name]["total"] / 1e6,
               "trainable (M)": params[system.name]["trainable"] / 1e6}
        for sc in SCENARIOS:
            hit = summ[(summ["system"] == system.name) & (summ["scenario"] == sc)]
            for col, short in zip(CCC_COLUMNS, "AVD"):
                row[f"{sc} {short}"] = (f"{hit[col].iloc[0]:.3f} ± {hit[col + '_std'].iloc[0]:.3f}"
                                        if len(hit) else "—")
        rows.append(row)
    for (modality, size), (enc, mparams, seen, unseen) in PAPER_TABLE1.items():
        row = {"source": "paper", "setting": PAPER_CORPUS, "modality": modality, "size": size,
               "encoder": enc + (" + TinyBERT" if modality == "A+T" else ""),
               "params (M)": float(mparams), "trainable (M)": float(mparams)}
        for sc, values in zip(SCENARIOS, (seen, unseen)):
            row.update({f"{sc} {s}": f"{v:.3f}" for s, v in zip("AVD", values)})
        rows.append(row)
    return pd.DataFrame(rows)


def valence_gain(summ: pd.DataFrame, sizes: Sequence[str], recipes: Sequence[str]) -> pd.DataFrame:
    """Figure 3: relative valence CCC gain of audio+text over the audio-only FT model,
    (V_AT - V_A) / |V_A| on the means over folds and seeds, per size, recipe and scenario;
    with the paper's FT gain computed from its Table 1."""
    rows = []
    for size in sizes:
        for sc in SCENARIOS:
            base = summ[(summ["system"] == System(size).name) & (summ["scenario"] == sc)]
            for recipe in recipes:
                hit = summ[(summ["system"] == System(size, "A+T", recipe).name)
                           & (summ["scenario"] == sc)]
                if len(base) and len(hit):
                    va, vat = base["CCC_valence"].iloc[0], hit["CCC_valence"].iloc[0]
                    rows.append({"source": "ours", "size": size, "recipe": recipe,
                                 "scenario": sc, "gain %": 100 * (vat - va) / abs(va)})
    for size in ("large", "base", "distilled"):
        for i, sc in enumerate(SCENARIOS):
            va = PAPER_TABLE1[("A", size)][2 + i][1]
            vat = PAPER_TABLE1[("A+T", size)][2 + i][1]
            rows.append({"source": "paper", "size": size, "recipe": "FT", "scenario": sc,
                         "gain %": 100 * (vat - va) / va})
    return pd.DataFrame(rows)


def table2(summ: pd.DataFrame, reference: System, asr: System, wer: float,
           asr_params: int, asr_name: str) -> pd.DataFrame:
    """Reference versus ASR transcripts for the fine-tuned distilled audio+text system."""
    rows = []
    for label, system, w, p in (("reference (human)", reference, 0.0, None),
                                (asr_name, asr, wer, asr_params / 1e6)):
        for sc in SCENARIOS:
            hit = summ[(summ["system"] == system.name) & (summ["scenario"] == sc)]
            if not len(hit):
                continue
            row = {"source": "ours", "transcripts": label, "scenario": sc,
                   "ASR params (M)": p, "WER": w}
            row.update({s: f"{hit[c].iloc[0]:.3f} ± {hit[c + '_std'].iloc[0]:.3f}"
                        for s, c in zip("AVD", CCC_COLUMNS)})
            rows.append(row)
    for label, (p, w, values) in PAPER_TABLE2.items():
        rows.append({"source": "paper", "transcripts": label, "scenario": "seen",
                     "ASR params (M)": p, "WER": w,
                     **{s: f"{v:.3f}" for s, v in zip("AVD", values)}})
    return pd.DataFrame(rows)


def bootstrap_ccc(preds: pd.DataFrame, system_a: str, system_b: str, dimension: str,
                  scenario: str, n: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap CI of CCC(a) - CCC(b) on one dimension over the pooled test
    predictions of all folds and of the seeds both systems ran (`paired_rows`;
    `mmser.report.metrics.paired_bootstrap` covers WA/UA only). Pooled CCC, so it differs
    slightly from the mean over folds."""
    from mmser.report.metrics import ccc
    from mmser.report.results import paired_rows

    a, b = paired_rows(preds[preds["scenario"] == scenario], system_a, system_b)
    y, pa, pb = (x.to_numpy() for x in (a[f"true_{dimension}"], a[f"pred_{dimension}"],
                                        b[f"pred_{dimension}"]))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        diffs.append(ccc(y[i], pa[i]) - ccc(y[i], pb[i]))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return {"a": system_a, "b": system_b, "dimension": dimension, "scenario": scenario,
            "diff": ccc(y, pa) - ccc(y, pb), "low": float(low), "high": float(high)}


# ------------------------------------------------------------------------------ reading

AGAINST = "**against the paper**"


def _ccc_mean(summ: pd.DataFrame, system: System, scenario: str, dim: str) -> float:
    hit = summ[(summ["system"] == system.name) & (summ["scenario"] == scenario)]
    return float(hit[f"CCC_{dim}"].iloc[0]) if len(hit) else float("nan")


def _paper(modality: str, size: str, scenario: str, dim: str) -> float:
    return PAPER_TABLE1[(modality, size)][2 + SCENARIOS.index(scenario)][D.DIMENSIONS.index(dim)]


def _ci_verdict(ci: dict, paper_sign: int) -> str:
    """paper_sign 1 (the paper finds a > b): `as the paper` when the CI lies above 0,
    against it below 0, `not shown` when it includes 0. paper_sign 0 (the paper finds a no
    worse than b: on par, no loss): against it only when the CI lies below 0."""
    side = 1 if ci["low"] > 0 else -1 if ci["high"] < 0 else 0
    if side == -1:
        return AGAINST
    return "as the paper" if side >= paper_sign else "not shown (CI includes 0)"


def _ci(ci: dict) -> str:
    return f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def reading(summ: pd.DataFrame, preds: pd.DataFrame, sizes: Sequence[str], *,
            frz: bool, asr_size: str | None, wer: float | None, weights: pd.DataFrame,
            seed: int = 0) -> list[str]:
    """Markdown lines: each finding of the paper next to this run's number and whether the
    run agrees, computed from the run (summary table, predictions, layer weights), so they
    stay true when the parameters change. Differences come with paired bootstrap CIs
    (`bootstrap_ccc`); `**against the paper**` marks a result that goes against it."""
    scenarios = [sc for sc in SCENARIOS if (preds["scenario"] == sc).any()]
    has = {size for size in sizes if System(size).name in set(summ["system"])}
    lines = []

    def boot(a: System, b: System, dim: str, sc: str) -> dict:
        return bootstrap_ccc(preds, a.name, b.name, dim, sc, seed=seed)

    # Table 1: the distilled encoder loses valence, not arousal (audio only)
    if {"base", "distilled"} <= has:
        for sc in scenarios:
            ours = {d: _ccc_mean(summ, System("distilled"), sc, d)
                    - _ccc_mean(summ, System("base"), sc, d) for d in ("arousal", "valence")}
            paper = {d: _paper("A", "distilled", sc, d) - _paper("A", "base", sc, d)
                     for d in ("arousal", "valence")}
            holds = ours["valence"] < min(ours["arousal"], 0)
            lines.append(f"- Audio only, distilled − base, {sc}: valence {ours['valence']:+.3f}, "
                         f"arousal {ours['arousal']:+.3f} (paper: {paper['valence']:+.3f}, "
                         f"{paper['arousal']:+.3f}; the distilled model loses valence, not "
                         f"arousal): {'as the paper' if holds else AGAINST}.")
    # Table 1 / Figure 3: text helps valence, for every size
    for size in sizes:
        if size not in has or System(size, "A+T").name not in set(summ["system"]):
            continue
        for sc in scenarios:
            ci = boot(System(size, "A+T"), System(size), "valence", sc)
            paper = (_paper("A+T", size, sc, "valence") - _paper("A", size, sc, "valence")
                     if ("A", size) in PAPER_TABLE1 else float("nan"))
            d_a = (_ccc_mean(summ, System(size, "A+T"), sc, "arousal")
                   - _ccc_mean(summ, System(size), sc, "arousal"))
            lines.append(f"- Valence, A+T − A, {size}, {sc}: {_ci(ci)} (paper {paper:+.3f}): "
                         f"{_ci_verdict(ci, 1)}; arousal {d_a:+.3f}.")
    # Figure 3: text helps the distilled model more than the base one
    if {"base", "distilled"} <= has:
        gain = valence_gain(summ, ["base", "distilled"], ["FT"])
        ours = gain[gain["source"] == "ours"].set_index(["scenario", "size"])["gain %"]
        paper = gain[gain["source"] == "paper"].set_index(["scenario", "size"])["gain %"]
        for sc in scenarios:
            if (sc, "distilled") in ours.index and (sc, "base") in ours.index:
                holds = ours[(sc, "distilled")] > max(ours[(sc, "base")], 0)
                lines.append(f"- Relative valence gain from text, {sc}: distilled "
                             f"{ours[(sc, 'distilled')]:+.0f} %, base {ours[(sc, 'base')]:+.0f} % "
                             f"(paper {paper[(sc, 'distilled')]:+.0f} % vs "
                             f"{paper[(sc, 'base')]:+.0f} %: text helps the distilled model "
                             f"more): {'as the paper' if holds else AGAINST}.")
    # Table 1: audio+text distilled on par with audio+text base
    if {"base", "distilled"} <= has and System("base", "A+T").name in set(summ["system"]):
        for sc in scenarios:
            ci = boot(System("distilled", "A+T"), System("base", "A+T"), "valence", sc)
            paper = _paper("A+T", "distilled", sc, "valence") - _paper("A+T", "base", sc, "valence")
            lines.append(f"- Valence, A+T distilled − A+T base, {sc}: {_ci(ci)} (paper "
                         f"{paper:+.3f}, on par): {_ci_verdict(ci, 0)}.")
    # Figure 3: FT beats FT => FRZ
    if frz:
        for size in sizes:
            if System(size, "A+T", "FT=>FRZ").name not in set(summ["system"]):
                continue
            for sc in scenarios:
                ci = boot(System(size, "A+T"), System(size, "A+T", "FT=>FRZ"), "valence", sc)
                lines.append(f"- Valence, FT − FT⇒FRZ, {size}, {sc}: {_ci(ci)} (paper: FT "
                             f"gains more in every case): {_ci_verdict(ci, 1)}.")
    # Table 2: ASR transcripts cost nothing
    asr = System(asr_size or "", "A+T", "FT", "asr_text")
    if asr_size and asr.name in set(summ["system"]):
        for sc in scenarios:
            parts = []
            for dim in D.DIMENSIONS:
                ci = boot(asr, System(asr_size, "A+T"), dim, sc)
                parts.append(f"{dim} {_ci(ci)}: {_ci_verdict(ci, 0)}")
            paper = [b - a for a, b in zip(PAPER_TABLE2["human"][2],
                                           PAPER_TABLE2["Whisper tiny"][2])]
            ours_wer = "n/a" if wer is None else f"{wer:.1%}"
            lines.append(f"- ASR − reference transcripts, {asr_size} A+T FT, {sc} (WER "
                         f"{ours_wer}; paper, seen scenarios: Whisper tiny, WER 24.1 %, "
                         + ", ".join(f"{d} {v:+.3f}" for d, v in zip("AVD", paper))
                         + ", no loss): " + "; ".join(parts) + ".")
    # seen scenarios are easier than unseen ones
    if set(scenarios) == set(SCENARIOS) and "distilled" in has:
        system = System("distilled", "A+T")
        ours = _ccc_mean(summ, system, "seen", "valence") - _ccc_mean(summ, system, "unseen", "valence")
        paper = _paper("A+T", "distilled", "seen", "valence") - _paper("A+T", "distilled", "unseen", "valence")
        lines.append(f"- Valence, seen − unseen, distilled A+T: {ours:+.3f} (paper {paper:+.3f}: "
                     f"unseen podcasts are harder): {'as the paper' if ours > 0 else AGAINST}.")
    # Figure 2: shallow states for arousal, deep ones for valence
    if len(weights):
        mean_w = weights.groupby(["dimension", "state"])["weight"].mean().unstack()
        centre = {d: float((mean_w.loc[d] * mean_w.columns).sum()) for d in mean_w.index}
        peak = {d: int(mean_w.loc[d].idxmax()) for d in mean_w.index}
        holds = centre.get("valence", 0) > centre.get("arousal", 0)
        lines.append("- Layer weights (states normalised before weighting), centre of mass "
                     "and peak state (0 = front end, last = "
                     f"{int(mean_w.columns.max())}): " + ", ".join(
                         f"{d} {centre[d]:.2f} (peak {peak[d]})" for d in mean_w.index)
                     + " (paper, 13 states: arousal up to layer 4, valence peaking at 9-10): "
                     + ("as the paper (valence deeper than arousal)." if holds else
                        f"{AGAINST} (valence not deeper than arousal)."))
    return lines


# ------------------------------------------------------------------------------ figures


def plot_layer_weights(weights: pd.DataFrame, path: str | Path, title: str = ""):
    """Figure 2: normalised weight of each hidden state per dimension (mean ± std over
    folds and seeds); index 0 is the front end's output."""
    from mmser.report.plots import _save, plt, sns

    fig, ax = plt.subplots(figsize=(6, 3.4))
    sns.lineplot(data=weights, x="state", y="weight", hue="dimension", marker="o",
                 errorbar="sd", ax=ax)
    ax.axhline(1 / weights["state"].nunique(), color="grey", lw=0.8, ls="--")
    ax.set(title=title, xlabel="hidden state (0 = front end, then layers)",
           ylabel="normalised weight", xticks=sorted(weights["state"].unique()))
    return _save(fig, path)


def plot_valence_gain(gain: pd.DataFrame, path: str | Path, title: str = ""):
    """Figure 3: relative valence gain of audio+text over audio-only, ours and the paper's."""
    from mmser.report.plots import _save, plt, sns

    scenarios = [sc for sc in SCENARIOS if sc in set(gain["scenario"])]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.2 * len(scenarios), 3.4),
                             squeeze=False, sharey=True)
    shown = gain.assign(who=gain["source"] + " " + gain["recipe"])
    for ax, sc in zip(axes[0], scenarios):
        sns.barplot(data=shown[shown["scenario"] == sc], x="size", y="gain %", hue="who",
                    errorbar=None, ax=ax)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(title=f"{sc} scenarios", xlabel="")
    fig.suptitle(title)
    return _save(fig, path)


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))


def param_counts(builder: Builder, system: System, seed: int, fold: int) -> dict[str, int]:
    """Trainable parameters of a system as run, and its total: the encoders it uses (whole,
    as the paper counts them) plus the adapters and the head."""
    model = builder.model(system, seed, fold)
    copies = sum(n_params(m) for m in model.modules() if isinstance(m, TopLayers))
    total = n_params(builder.encoder(builder.speech_spec(system.size), "speech"))
    if system.modality == "A+T":
        total += n_params(builder.encoder(builder.cfg.text, "text"))
    return {"trainable": n_trainable(model), "total": total + n_params(model) - copies}


# ------------------------------------------------------------------ exported predictor


def _branch_spec(branch: nn.Module) -> dict:
    frozen = isinstance(branch, Frozen)
    inner = branch.module if frozen else branch
    if inner is None:
        return {"kind": "identity", "frozen": frozen}
    if isinstance(inner, Adapter):
        return {"kind": "adapter", "frozen": frozen, "bottleneck": inner.net[0].out_features,
                "dropout": float(inner.net[2].p)}
    if isinstance(inner, TopLayers):
        return {"kind": "top", "frozen": frozen, "k": inner.k}
    raise ValueError(f"cannot export a branch of type {type(inner).__name__}")


def predictor_model(spec: dict) -> DistilModel:
    """An untrained `DistilModel` shaped as an exported spec says (weights load next).
    A `top` branch copies its encoder's top layers, so that encoder is loaded here."""
    from mmser.encode.encoders import SpeechEncoder, TextEncoder, top_layers

    a = spec["architecture"]
    branches = {}
    for name, b in a["branches"].items():
        if b["kind"] == "identity":
            inner = None
        elif b["kind"] == "adapter":
            inner = Adapter(int(a["dims"][name]), int(b["bottleneck"]), float(b["dropout"]))
        elif b["kind"] == "top":
            source = spec["inputs"][name]
            kind = SpeechEncoder if source["role"] == "speech" else TextEncoder
            inner = top_layers(kind(source["encoder"], source["layers"]), int(b["k"]))
        else:
            raise ValueError(f"unknown branch kind {b['kind']!r}")
        branches[name] = Frozen(inner) if b["frozen"] else inner
    return DistilModel(branches, {k: int(v) for k, v in a["dims"].items()},
                       int(a["head_hidden"]), int(a["n_out"]), float(a["dropout"]),
                       bool(a["pool_norm"]), a.get("output", "linear"),
                       a.get("pooling", "concat"))  # exports before `pooling` concatenated


def export_predictor(out_dir: str | Path, builder: Builder, system: System,
                     corpus: D.Corpus, seeds: Sequence[int]) -> dict:
    """Export one system for `python -m mmser.predict`: `spec.json` + `weights.safetensors`.

    `corpus` is the corpus the folds were made from (`split_seen`'s first result), `seeds`
    the training seeds, `system` e.g. `System("base", "A+T")`. Which model: the fold
    checkpoint (over seeds and folds) with the best validation mean CCC (`done.json`;
    first of ties in seed, fold order); no test score is read. Returns the spec.
    """
    from mmser.predict import trained_on, write_predictor

    runs = []
    for seed in seeds:
        for fold in corpus.folds(seed=seed):
            folder = builder.run_dir / system.slug / f"seed{seed}" / f"fold{fold.index}"
            if not (folder / T.DONE).is_file():
                raise FileNotFoundError(f"{folder}: no finished run; run_system {system.name!r} "
                                        "first")
            runs.append((json.loads((folder / T.DONE).read_text()), seed, fold.index, folder))
    done, seed, fold, folder = max(runs, key=lambda r: r[0]["best_score"])  # first of ties
    model = builder.model(system, seed, fold)
    task = builder.task(model)
    task.load_state_dict(torch.load(folder / T.BEST, map_location="cpu", weights_only=True))
    speech = builder.speech_spec(system.size)
    sources = {"speech": (speech, builder.input_layer(speech, "speech"))}
    if system.modality == "A+T":
        sources["text"] = (builder.cfg.text,
                           builder.input_layer(builder.cfg.text, "text", system.recipe == "FT"))
    inputs = {}
    for role, (source, state) in sources.items():
        name, layers = encoder_of(source, role, builder.encoders)
        cut, _, _ = parse_source(source)
        inputs[role] = {"role": role, "encoder": name, "layers": layers,
                        "cut": cut if cut is not None else source, "state": int(state)}
    dims = {role: builder.dim(source, role) for role, (source, _) in sources.items()}
    head_in = model.head[1]
    arch = {"branches": {n: _branch_spec(b) for n, b in model.branches.items()},
            "dims": dims, "head_hidden": int(head_in.out_features),
            "n_out": int(model.head[-1].out_features), "dropout": float(builder.cfg.dropout),
            "pool_norm": bool(builder.cfg.pool_norm), "output": builder.cfg.output,
            "pooling": builder.cfg.pooling}
    low, high = D.DIMENSION_SCALE.get(builder.corpus.name, (1.0, 5.0))
    spec = {
        "stage": "distil", "system": system.name, "kind": "regression", "classes": [],
        "dimensions": list(D.DIMENSIONS[: arch["n_out"]]),
        "dimension_scale": {"output": [0.0, 1.0], "corpus_rating": [low, high]},
        "inputs": inputs, "architecture": arch,
        "selection": {
            "rule": "the cross-validation fold model with the best validation mean CCC "
                    "(chosen on validation only, never on test); not retrained",
            "protocol": corpus.protocol_label, "seed": seed, "fold": fold,
            "val_CCC": float(done["best_score"]), "epoch": int(done["best_epoch"])},
        "trained_on": trained_on(builder.corpus, system.transcripts, folder / T.BEST),
    }
    write_predictor(out_dir, spec, model.state_dict())
    return spec
