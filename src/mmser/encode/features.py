"""Frozen-encoder features, computed once and cached on disk.

One safetensors file per (encoder, input): `<root>/<encoder key>[-S<kept>]/<digest>.safetensors`,
where the encoder key covers the model name, layer cut, weights (and tokenizer) and the code
that encodes (`mmser.encode.encoders.encoder_key`), `-S<kept>` names the hidden states kept
when not every one is (`features.speech_states`; the folder's `layout.json` records them),
and the digest covers the audio samples (speech) or the exact string (text). A changed clip, text, weight, encoding function or
library version gets a new entry; an unchanged one is never encoded twice. Entries are
written atomically; a truncated one is set aside and encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmser.corpus.audio import wave_digest
from mmser.fingerprint import atomic_write, set_aside, write_text
from mmser.progress import progress


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate}


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


LAYOUT = "layout.json"


@dataclass(frozen=True)
class Layout:
    """Which hidden states a cache's entries hold: `kept` (absolute indices, 0 = the input
    embeddings) of the encoder's `n_states` (layers + 1); `kept=None`: every one."""

    n_states: int
    kept: tuple[int, ...] | None = None
    pooled: bool = False  # each state averaged over time: (states, 1, dim), the probe's input

    def position(self, layer: int | Sequence[int] | None, where: str
                 ) -> int | tuple[int, ...] | None:
        """Where hidden state `layer` (negative: from the last; a list: a stack of them;
        None: every one) lies in an entry; a clear error names a state that is not kept."""
        if layer is None or isinstance(layer, int):
            if layer is None and self.kept is not None:
                raise KeyError(f"{where} holds hidden states {list(self.kept)} of "
                               f"{self.n_states}, not every one; set features.speech_states "
                               "(text_states) to null and run `dvc repro features`")
            return layer if layer is None else self._one(layer, where)
        return tuple(self._one(int(i), where) for i in layer)

    def _one(self, layer: int, where: str) -> int:
        if not -self.n_states <= layer < self.n_states:
            raise IndexError(f"{where}: hidden state {layer} does not exist; the encoder has "
                             f"{self.n_states} (0 = embeddings)")
        if self.kept is None:
            return layer
        state = layer % self.n_states
        if state not in self.kept:
            raise KeyError(f"{where}: hidden state {layer} is not cached (kept: "
                           f"{list(self.kept)} of {self.n_states}); add it to "
                           "features.speech_states (text_states) and run `dvc repro features`")
        return self.kept.index(state)


def with_last(states: Sequence[int] | None) -> list[int] | None:
    """What the features stage keeps of `features.<role>_states`: those and the last hidden
    state, which its probe reads (None: every state)."""
    return None if states is None else [*states, -1]


def kept_states(keep: Sequence[int] | None, n_states: int) -> tuple[int, ...] | None:
    """`keep` (indices, negative from the last) as sorted absolute indices; None: every
    state (also when `keep` names them all)."""
    if keep is None:
        return None
    bad = [i for i in keep if not -n_states <= int(i) < n_states]
    if bad:
        raise ValueError(f"hidden states {bad} do not exist; the encoder has {n_states} "
                         "(0 = embeddings)")
    kept = tuple(sorted({int(i) % n_states for i in keep}))
    return None if len(kept) == n_states else kept


class FeatureCache:
    """Get-or-compute store of the hidden states of one encoder: every one, or with `keep`
    (indices, negative from the last) only those, so that the disk holds what stages read.

    With `pooled`, each kept state is stored averaged over time, (states, 1, dim): what the
    features stage's probe reads, where no stage reads a sequence from this cache.
    Opened by its folder's name alone (`FeatureStore`), it reads which states it holds from
    `layout.json`; a folder without one holds every state."""

    def __init__(self, root: str | Path, encoder_key: str, keep: Sequence[int] | None = None,
                 pooled: bool = False):
        self.keep = None if keep is None else sorted({int(i) for i in keep})
        self.pooled = pooled
        name = encoder_key if self.keep is None else \
            f"{encoder_key}-S{'.'.join(map(str, self.keep))}"
        self.dir = Path(root) / (f"{name}-pooled" if pooled else name)
        self.stats = CacheStats()
        self._layout: Layout | None = None

    def path(self, digest: str) -> Path:
        return self.dir / f"{digest}.safetensors"

    def load(self, digest: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path(digest)))

    @property
    def layout(self) -> Layout:
        """The states this cache's entries hold (from `layout.json`, else from an entry)."""
        if self._layout is None:
            record = self.dir / LAYOUT
            if record.is_file():
                data = json.loads(record.read_text())
                kept = data["kept"]
                self._layout = Layout(data["n_states"], None if kept is None else tuple(kept),
                                      data.get("pooled", False))
            else:  # written before layouts, or by hand: every state
                entry = next(self.dir.glob("*.safetensors"), None)
                if entry is None:
                    raise FileNotFoundError(f"{self.dir}: no cache entry to read states from")
                with safe_open(str(entry), "pt") as f:
                    self._layout = Layout(f.get_slice("hidden").get_shape()[0])
        return self._layout

    def depth(self) -> int:
        """The encoder's layer count (its hidden states less the input embeddings)."""
        return self.layout.n_states - 1

    def position(self, layer: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
        return self.layout.position(layer, str(self.dir))

    def absolute(self, layers: Sequence[int] | None) -> list[int] | None:
        """`layers` (negative: from the last) as absolute indices, each checked to be
        cached; None stays None (every state)."""
        if layers is None:
            return None
        self.position(layers)  # a clear error for one that is not cached
        return [int(l) % self.layout.n_states for l in layers]

    def kept_of(self, states: torch.Tensor) -> torch.Tensor:
        """The kept states of freshly computed ones (n_states, ...); records the layout."""
        layout = Layout(states.shape[0], kept_states(self.keep, states.shape[0]), self.pooled)
        if self._layout != layout:
            self.dir.mkdir(parents=True, exist_ok=True)
            kept = None if layout.kept is None else list(layout.kept)
            write_text(self.dir / LAYOUT, json.dumps({"n_states": layout.n_states,
                                                      "kept": kept, "pooled": self.pooled}))
            self._layout = layout
        return states if layout.kept is None else states[list(layout.kept)]

    def ref(self, digest: str, name: str = "hidden",
            layer: int | Sequence[int] | None = -1) -> "StateRef":
        """A reference to hidden state `layer` (a list: a stack; None: every state) of an
        entry, read when loaded."""
        path = self.path(digest)
        with safe_open(str(path), "pt") as f:
            shape = tuple(f.get_slice(name).get_shape())
        position = layer if name != "hidden" else self.position(layer)
        if isinstance(position, tuple):
            shape = (len(position), *shape[1:])
        elif position is not None:
            shape = shape[1:]
        return StateRef(str(self.dir.parent), f"{self.dir.name}/{path.name}", name, position,
                        shape)

    def has(self, digest: str) -> bool:
        """Whether a whole entry is on disk; a truncated or unreadable one is set aside."""
        path = self.path(digest)
        if not path.is_file():
            return False
        problem = entry_problem(path)
        if problem:
            set_aside(path, problem)
        return not problem

    def fill(self, digests: Sequence[str], items: Sequence, sizes: Sequence[float],
             compute: Callable[[list], list[dict[str, torch.Tensor]]], batch_size: int,
             desc: str = "encoding") -> None:
        """Compute the entries not yet on disk, in batches of similar size (less padding).

        `items` is indexed only for the entries to compute, a batch at a time: it may be a
        sequence that loads each item when asked (`mmser.corpus.audio.Clips`)."""
        todo = {}
        for i, (digest, size) in enumerate(zip(digests, sizes)):
            if digest in todo or self.has(digest):
                self.stats.hits += 1
            else:
                todo[digest] = (size, i)
                self.stats.misses += 1
        if not todo:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        order = sorted(todo, key=lambda d: todo[d][0])
        for start in progress(range(0, len(order), batch_size), desc=desc, unit="batch"):
            chunk = order[start:start + batch_size]
            with torch.inference_mode():
                outputs = compute([items[todo[d][1]] for d in chunk])
            for digest, tensors in zip(chunk, outputs):
                atomic_write(self.path(digest), lambda tmp: save_file(
                    {k: v.contiguous() for k, v in tensors.items()}, str(tmp)))


def entry_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, read from its header alone (cheap: the cache
    holds thousands): None, or why it cannot be whole (truncated, not safetensors)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                return f"not a safetensors file ({size} bytes, header length {n})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        return f"unreadable safetensors header ({err})"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    return None if size == expected else f"truncated: {size} of {expected} bytes"


def prune(root: str | Path) -> list[str]:
    """Remove the entries of encoders the index no longer names (other weights, code or
    cut): the cache holds what the current run reads, not every run's. Returns them."""
    root = Path(root)
    known = json.loads((root / KEYS).read_text()) if (root / KEYS).is_file() else {}
    keep = {key for cuts in known.values() for key in cuts.values()}
    gone = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in keep)
    for name in gone:
        shutil.rmtree(root / name)
    return gone


def clip_digests(waves: Iterable[np.ndarray]) -> tuple[list[str], list[int]]:
    """Each clip's cache key and length in samples, in one pass: one clip at a time when
    `waves` reads them when asked (`mmser.corpus.audio.Clips`)."""
    digests, sizes = [], []
    for wave in waves:
        digests.append(wave_digest(wave))
        sizes.append(len(wave))
    return digests, sizes


def no_kernel_cache() -> None:
    """Frozen encoders see a new padded length in almost every batch, and oneDNN (PyTorch's
    CPU convolutions) keeps a compiled kernel for each shape, up to 1,024 of them: the
    features stage's memory grew by about 7 MB a batch, that is with the corpus (measured
    on tiny HuBERT and Whisper; issue 19). oneDNN reads this when it builds its first
    kernel, so it is set before the first encoding; a value the user set is kept."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")


def _stored(cache: FeatureCache, states: torch.Tensor) -> torch.Tensor:
    """One entry's states as the cache stores them: float16, averaged over time (float32
    sums) when the cache is pooled."""
    return (states.float().mean(1, keepdim=True) if cache.pooled else states).half()


def speech_features(cache: FeatureCache, encoder, waves: Sequence[np.ndarray],
                    batch_size: int = 8, *, digests: Sequence[str] | None = None,
                    sizes: Sequence[int] | None = None) -> list[str]:
    """Make sure every clip's hidden states (layers+1, frames, dim, float16; the cache's
    kept ones) are cached.

    `digests` and `sizes`: `clip_digests(waves)`, when the caller has them (several encoders
    of the same clips); else they are computed here, which reads every clip once more."""
    no_kernel_cache()
    if (digests is None) != (sizes is None):
        raise TypeError("speech_features: give both digests and sizes, or neither")
    if digests is None:
        digests, sizes = clip_digests(waves)
    if not len(digests) == len(sizes) == len(waves):
        raise ValueError(f"speech_features: {len(waves)} clips but {len(digests)} digests "
                         f"and {len(sizes)} sizes")

    def compute(batch: list[np.ndarray]) -> list[dict[str, torch.Tensor]]:
        states, lengths = encoder(batch)
        states = cache.kept_of(states)
        return [{"hidden": _stored(cache, states[:, i, :n])} for i, n in enumerate(lengths.tolist())]

    cache.fill(digests, waves, sizes, compute, batch_size, desc=f"speech {cache.dir.name}")
    return list(digests)


def text_features(cache: FeatureCache, encoder, texts: Sequence[str],
                  batch_size: int = 32) -> list[str]:
    """Make sure every text's hidden states (layers+1, tokens, dim; the cache's kept ones)
    and token ids are cached."""
    digests = [text_digest(t) for t in texts]

    def compute(batch: list[str]) -> list[dict[str, torch.Tensor]]:
        states, mask, ids = encoder(batch)
        states = cache.kept_of(states)
        lengths = mask.sum(-1).tolist()
        return [{"hidden": _stored(cache, states[:, i, :n]), "input_ids": ids[i, :n]}
                for i, n in enumerate(lengths)]

    cache.fill(digests, texts, [len(t) for t in texts], compute, batch_size,
               desc=f"text {cache.dir.name}")
    return digests


def cache_cuts(role: str, root: str | Path, encoders, features, inputs: Sequence, *,
               digests: Sequence[str] | None = None, sizes: Sequence[int] | None = None,
               device: str = "cpu") -> tuple[dict, dict[str, CacheStats]]:
    """The features stage's encoding of one role ("speech": clips, "text": strings): the
    configured encoder and each cut (`features.<role>_cuts`), keeping the states
    `features.<role>_states` and the last (the probe reads it); with none (`[]`) only the
    last, averaged over time (a pooled cache: no stage reads that role's sequences).
    `encoders` and `features` are the params' sections. Returns ({layers: cache folder},
    {cache folder: stats})."""
    from mmser.encode.encoders import SpeechEncoder, TextEncoder

    states = getattr(features, f"{role}_states")
    keep = with_last(states)
    pooled = states == []  # no stage reads a sequence: the probe's average of the last
    main = getattr(encoders, f"{role}_layers")
    keys, stats = {}, {}
    for layers in [main, *getattr(features, f"{role}_cuts")]:
        if role == "speech":
            encoder = SpeechEncoder(encoders.speech, layers).to(device)
            cache = FeatureCache(root, encoder.key, keep, pooled)
            speech_features(cache, encoder, inputs, features.batch_size, digests=digests,
                            sizes=sizes)
        else:
            encoder = TextEncoder(encoders.text, layers).to(device)
            cache = FeatureCache(root, encoder.key, keep, pooled)
            text_features(cache, encoder, inputs)
        keys[layers], stats[cache.dir.name] = cache.dir.name, cache.stats
    return keys, stats


def pooled(cache: FeatureCache, digests: Sequence[str], layer: int = -1) -> np.ndarray:
    """Mean over time of one layer for each entry: (n, dim) float32."""
    position = cache.position(layer)  # a pooled cache holds the one average per state
    return np.stack([cache.load(d)["hidden"][position].float().mean(0).numpy() for d in digests])


def write_stats(path: str | Path, stats: dict[str, CacheStats]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({k: v.as_dict() for k, v in stats.items()}, indent=2))


# ------------------------------------------------------------------------- reading back

INDEX, KEYS = "index.csv", "keys.json"
MAIN = "main"  # the encoder as configured; other cuts are named by their layer count


def cut_keys(keys: dict, main_layers: int | None) -> dict[str, str]:
    """{layers: encoder key} -> {"main" | "<layers>": encoder key}, as the index stores it."""
    return {(MAIN if layers == main_layers else str(layers)): key
            for layers, key in keys.items()}


def write_index(root: str | Path, utt_ids: Sequence[str] | None = None,
                digests: Sequence[str] | None = None, **keys: dict[str, str]) -> None:
    """Record which cache entry holds each utterance, and which encoder key each cut has.

    `keys` is speech=... and/or text=..., each {"main" | "<layers>": encoder key}.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if utt_ids is not None:
        import pandas as pd

        table = pd.DataFrame({"utt_id": list(utt_ids), "speech": list(digests)})
        atomic_write(root / INDEX, lambda tmp: table.to_csv(tmp, index=False))
    known = json.loads((root / KEYS).read_text()) if (root / KEYS).is_file() else {}
    known.update(keys)
    write_text(root / KEYS, json.dumps(known, indent=2))


# This process's live encoder forwards (inputs encoded) and cache reads; every stage records
# them in its run.json ("encoder_use"), `python -m mmser.bench` sums them over stages.
ENCODER_USE: Counter = Counter()


def layer_copy(states: torch.Tensor, layer: int | tuple[int, ...] | None) -> torch.Tensor:
    """One state (a tuple: a stack; None: all) of an entry, by position in the entry, as
    float32 in storage of its own: a read keeps what it returns, not every state of every
    entry (`.float()` of a float32 slice is a view)."""
    if isinstance(layer, tuple):
        layer = list(layer)
    return (states if layer is None else states[layer]).to(torch.float32, copy=True)


@dataclass(frozen=True)
class StateRef:
    """One cached state, read from disk when a batch is built (`load`), not before.

    With `FeatureStore(stream=True)` a stage holds these instead of tensors, so its memory
    grows with the batch, not with the corpus (at paper scale a corpus of states is
    hundreds of GB). `entry` names the cache file by content (encoder key / input digest),
    so a run's fingerprint over references proves the same inputs as one over tensors.
    `layer` is a position in the entry (`FeatureCache.position`): one state, a tuple (a
    stack of them) or None (every state the entry holds). `shape` is what `load` returns:
    (length, dim) or (states, length, dim), its time axis cropped to `frames` when set.
    """

    root: str
    entry: str
    name: str  # the tensor in the entry: "hidden" or "input_ids"
    layer: int | tuple[int, ...] | None
    shape: tuple
    frames: int | None = None
    time_first: bool = False  # every state as (length, layers + 1, dim): collate pads time
    dtype: str = "float32"  # of hidden states as loaded (the cache holds float16)

    def __len__(self) -> int:
        return self.shape[0]

    def cropped(self, frames: int) -> "StateRef":
        """The first `frames` time steps (of every state, when all are read)."""
        axis = 1 if not isinstance(self.layer, int) and not self.time_first else 0
        shape = list(self.shape)
        shape[axis] = min(shape[axis], frames)
        return replace(self, frames=frames, shape=tuple(shape))

    def every_state_time_first(self, dtype: str = "float16") -> "StateRef":
        """Every state read (or a stack), time first: (length, states, dim), in `dtype`."""
        if isinstance(self.layer, int) or self.time_first:
            raise ValueError(f"{self.entry}: already one layer or time first")
        shape = (self.shape[1], self.shape[0], *self.shape[2:])
        return replace(self, time_first=True, dtype=dtype, shape=shape)

    def load(self) -> torch.Tensor:
        ENCODER_USE["cache_reads"] += 1
        with safe_open(str(Path(self.root) / self.entry), "pt") as f:
            part = f.get_slice(self.name)  # reads only the slice asked for
            time = slice(None, self.frames)
            if self.layer is None:
                x = part[:, time]
            elif isinstance(self.layer, tuple):
                x = torch.stack([part[i, time] for i in self.layer])
            else:
                x = part[self.layer, time]
        if self.name == "input_ids":
            return x
        x = x.to(getattr(torch, self.dtype))
        return x.transpose(0, 1) if self.time_first else x


def load_refs(value):
    """`value` with every `StateRef` in it (a dict's values, a list's elements) loaded."""
    if isinstance(value, StateRef):
        return value.load()
    if isinstance(value, dict):
        return {k: load_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [load_refs(v) for v in value]
    return value


class FeatureStore:
    """The cached hidden states by utterance id (speech) or by string (text).

    `cut` is "main" (the configured encoder) or the layer count of a cut cached by the
    features stage (`features.speech_cuts`, `features.text_cuts`). `layer` is a hidden
    state's index (0 = embeddings, negative from the last): an int returns that one,
    (length, dim); a list returns a stack of them, (len(list), length, dim); None returns
    every one, (layers + 1, length, dim), where the cache holds every one (`depth` gives the
    layer count either way). A state the features stage did not keep
    (`features.speech_states`, `text_states`) is a clear error. Everything comes back as
    float32, one entry read at a time: a read's peak memory is what it returns plus one
    entry. With `stream=True` (`training.stream_states`, the paper profiles) `speech` and
    `text` return `StateRef`s instead, read when a batch needs them; with `live`
    (`mmser.encode.live.LiveSpeech`, `training.speech_from_waves`) the main cut's speech
    states are `LiveRef`s, computed from the clips when a batch needs them.
    """

    def __init__(self, root: str | Path = "interim/features", stream: bool = False,
                 live=None):
        import pandas as pd

        self.root = Path(root)
        self.stream = stream
        self.live = live  # `mmser.encode.live.LiveSpeech`: the main cut's speech from waves
        for name in (INDEX, KEYS):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"{self.root / name}: not found; run the features "
                                        "stage first (dvc repro features)")
        self.keys = json.loads((self.root / KEYS).read_text())
        index = pd.read_csv(self.root / INDEX, dtype=str)
        self._speech = dict(zip(index["utt_id"], index["speech"]))
        self._caches: dict[str, FeatureCache] = {}

    def _cache(self, role: str, cut: str | int) -> FeatureCache:
        cuts = self.keys.get(role, {})
        if str(cut) not in cuts:
            raise KeyError(f"no cached {role} features for cut {cut!r}; cached cuts: "
                           f"{sorted(cuts)} (set features.{role}_cuts in params.yaml)")
        key = cuts[str(cut)]
        if key not in self._caches:  # one per key: its layout is read once
            self._caches[key] = FeatureCache(self.root, key)
        return self._caches[key]

    def _load(self, cache: FeatureCache, digest: str, name: str, what: str) -> torch.Tensor:
        if not cache.path(digest).is_file():
            raise KeyError(f"{what} has no entry in {cache.dir}; run the features stage on "
                           "its split")
        ENCODER_USE["cache_reads"] += 1
        try:
            return cache.load(digest)[name]
        except Exception as err:  # noqa: BLE001 - say which file, and how it is made again
            raise RuntimeError(
                f"{cache.path(digest)} ({what}): unreadable cache entry ({err}); `dvc repro "
                "features` sets it aside and encodes it again") from err

    def speech_digest(self, utt_id: str) -> str:
        if utt_id not in self._speech:
            raise KeyError(f"utterance {utt_id!r} was not encoded by the features stage "
                           "(is its split in features.splits?)")
        return self._speech[utt_id]

    def depth(self, role: str, cut: str | int = MAIN) -> int:
        """The layer count of the `role` ("speech" | "text") encoder of `cut`."""
        return self._cache(role, cut).depth()

    def absolute(self, role: str, layers: Sequence[int] | None,
                 cut: str | int = MAIN) -> list[int] | None:
        """Hidden-state indices (negative: from the last) as absolute ones, each checked to
        be cached: what a stack read with `layer=layers` holds, in order."""
        return self._cache(role, cut).absolute(layers)

    def _ref(self, cache: FeatureCache, digest: str, name: str,
             layer: int | Sequence[int] | None, what: str) -> StateRef:
        path = cache.path(digest)
        if not path.is_file():
            raise KeyError(f"{what} has no entry in {cache.dir}; run the features stage on "
                           "its split")
        problem = entry_problem(path)
        if problem:
            raise RuntimeError(f"{path} ({what}): {problem}; `dvc repro features` sets it "
                               "aside and encodes it again")
        return cache.ref(digest, name, layer)

    def speech(self, utt_ids: Sequence[str], layer: int | Sequence[int] | None = -1,
               cut: str | int = MAIN) -> list[torch.Tensor] | list[StateRef]:
        if self.live is not None and str(cut) == MAIN:
            return self.live.refs(utt_ids, layer, {u: self.speech_digest(u) for u in utt_ids})
        cache = self._cache("speech", cut)
        digests = [(self.speech_digest(u), f"utterance {u!r}") for u in utt_ids]
        return self._read(cache, digests, layer)

    def text(self, texts: Sequence[str], layer: int | Sequence[int] | None = -1,
             cut: str | int = MAIN) -> list[torch.Tensor] | list[StateRef]:
        cache = self._cache("text", cut)
        return self._read(cache, [(text_digest(t), f"text {t[:40]!r}") for t in texts], layer)

    def _read(self, cache: FeatureCache, digests: Sequence[tuple[str, str]],
              layer: int | Sequence[int] | None) -> list[torch.Tensor] | list[StateRef]:
        if not digests:
            return []
        if cache.layout.pooled:
            raise KeyError(f"{cache.dir} holds time averages only (features.speech_states or "
                           "text_states is []: no stage was to read sequences); name the "
                           "states the stage reads there and run `dvc repro features`")
        if self.stream:
            return [self._ref(cache, d, "hidden", layer, what) for d, what in digests]
        position = cache.position(layer)
        return [layer_copy(self._load(cache, d, "hidden", what), position)
                for d, what in digests]

    def token_ids(self, texts: Sequence[str], cut: str | int = MAIN) -> list[torch.Tensor]:
        cache = self._cache("text", cut)
        return [self._load(cache, text_digest(t), "input_ids", f"text {t[:40]!r}")
                for t in texts]
