"""What a paper stage trains on: the prepared corpus, its folds, and padded batches.

`load_corpus` reads the manifest written by `prepare` and `transcribe` and the protocol
recorded with it; `Corpus.folds` yields `mmser.corpus.protocols.Fold` objects whose test part
opens only after the final choice is recorded. Categorical stages split the `labelled`
rows; a regression stage (`rows="rated"`) splits every row with arousal, valence and
dominance, also those without a category, into the same session or speaker folds.
Batches are lists of per-utterance dicts padded by `collate`, so each paper builds its
items from the feature cache in a few lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Sampler

from mmser.corpus import manifest, protocols
from mmser.encode.features import load_refs

DIMENSIONS = ("arousal", "valence", "dominance")
# rating scale of the dimensional labels; IEMOCAP and the synthesised corpus use 1-5
DIMENSION_SCALE = {"msp_podcast": (1.0, 7.0)}
ROWS = ("labelled", "rated")  # what `Corpus.folds` splits


@dataclass
class Corpus:
    """The manifest of one prepared corpus and the protocol it was prepared for."""

    df: pd.DataFrame
    audio_root: Path
    protocol: str
    name: str  # as every table names it (dataset.label, else the loader's name)
    test_corpus: str | None = None
    rows: str = "labelled"  # the rows `folds` splits: "labelled" or "rated" (see ROWS)
    key: str = ""  # the loader's name (dataset.name), e.g. for the A/V/D rating scale
    prepared: str | None = None  # the protocol of the manifest's `fold` column (prepare's)

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"rows={self.rows!r}: the folds split one of {ROWS}")
        self.key = self.key or self.name

    @property
    def labelled(self) -> pd.DataFrame:
        """Rows inside the protocol with a category (they have a label and a fold)."""
        return self.df[self.df["fold"].notna() & self.df["label"].notna()]

    @property
    def rated(self) -> pd.DataFrame:
        """Rows inside the protocol with arousal, valence and dominance, whatever their
        label: a regression stage needs no category (e.g. MSP-Podcast's "no agreement"
        rows, IEMOCAP's frustrated turns with 4 classes)."""
        return self.df[self.df["fold"].notna()
                       & self.df[list(DIMENSIONS)].notna().all(axis=1)]

    @property
    def read(self) -> pd.DataFrame:
        """Unlabelled read speech with transcripts, for the pre-training papers."""
        return self.df[self.df["split"] == "read"]

    @property
    def classes(self) -> list[str]:
        return sorted(self.labelled["label"].unique())

    @property
    def protocol_label(self) -> str:
        """Print it beside every table: it says whether the split is speaker-dependent."""
        return protocols.protocol_info(self.protocol)["label"]

    def folds(self, seed: int = 0, val_fraction: float = 0.1) -> Iterator[protocols.Fold]:
        """The protocol's folds over `labelled` or `rated` rows (`rows`). Rows without a
        category never size a fold or a validation set, so both share their test sessions
        or speakers and their validation speakers."""
        split = self.rated if self.rows == "rated" else self.labelled
        # prepare's folds, fixed by the pipeline's seed: every stage, every training seed and
        # the frozen baseline test the same utterances in the same fold (speaker_kfold's
        # and the random splits' assignment depends on the seed it is drawn with)
        given = split["fold"] if self.prepared == self.protocol else None
        return protocols.iter_folds(split, self.protocol, seed=seed, folds=given,
                                    val_fraction=val_fraction, test_corpus=self.test_corpus)

    def read_for_fold(self, fold: protocols.Fold) -> pd.DataFrame:
        """The read speech a fold may pre-train on: without the voices it holds out (the
        speakers of its labelled rows in neither its training nor its validation part, e.g.
        a leave-one-session-out test session's), so that no test speaker is heard in
        pre-training. The fold's test part stays closed."""
        seen = set(fold.train()["speaker"]) | set(fold.val()["speaker"])
        held_out = set(self.labelled["speaker"].dropna()) - seen
        return self.read[~self.read["speaker"].isin(held_out)]


def load_corpus(corpus_dir: str | Path = "interim/corpus",
                manifest_path: str | Path = "interim/manifest.csv",
                rows: str = "labelled") -> Corpus:
    """The manifest (with ASR text when `transcribe` ran) and the protocol of `prepare`;
    `rows="rated"` for a regression stage (see `Corpus.rated`)."""
    info = manifest.corpus_info(corpus_dir)
    protocol = info["protocol"]["name"] if isinstance(info.get("protocol"), dict) \
        else str(info.get("protocol", "loso"))
    name = str(info.get("name", ""))
    return Corpus(manifest.read(manifest_path), Path(info["audio_root"]), protocol,
                  str(info.get("label") or name), info.get("test_corpus"), rows, key=name,
                  prepared=protocol)


def label_ids(labels: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """Class indices; a label outside `classes` is an error that names it."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def dimensions(df: pd.DataFrame, corpus: str = "") -> torch.Tensor:
    """Arousal, valence and dominance scaled from the corpus's rating scale to [0, 1]:
    (n, 3) float32."""
    low, high = DIMENSION_SCALE.get(corpus, (1.0, 5.0))
    missing = [d for d in DIMENSIONS if df[d].isna().any()]
    if missing:
        raise ValueError(f"{missing} are empty for some utterances; this corpus has no "
                         "dimensional labels there (a regression stage needs them)")
    values = df[list(DIMENSIONS)].to_numpy(dtype=np.float32)
    return torch.from_numpy((values - low) / (high - low))


def pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths (along dim 0): (batch, max_len, ...) and a
    boolean mask that is True on real positions."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = seqs[0].new_zeros((len(seqs), int(lengths.max()), *seqs[0].shape[1:]))
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, torch.arange(out.shape[1])[None, :] < lengths[:, None]


def collate(items: Sequence[dict]) -> dict:
    """Batch a list of per-utterance dicts. Tensors whose first dimension varies are padded
    and get a `<key>_mask`; other tensors and numbers are stacked; strings become lists.
    A `StateRef` (a cached state streamed from disk) is read here, for this batch only."""
    batch = {}
    for key in items[0]:
        values = [load_refs(item[key]) for item in items]
        first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() > 0 and (
                first.dim() > 1 or len({len(v) for v in values}) > 1 or key.endswith("_seq")):
            batch[key], batch[f"{key}_mask"] = pad(values)
        elif isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (int, float, bool)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class BucketSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), in a seeded random order of batches.

    The order depends only on (seed, epoch), drawn when the first batch is asked for: `fit`
    pins the epoch with `set_epoch` at each epoch's start, so a resumed run replays the
    batches an uninterrupted one would see. With `world` > 1 (DDP), process `rank` takes
    every world-th batch, the list cycled so that every process takes as many (the
    processes step together).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world: int = 1):
        self.lengths, self.batch_size, self.shuffle, self.seed = list(lengths), batch_size, \
            shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        yield from self._batches()  # a generator: nothing is drawn before the first batch

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        # jitter the sort so batches differ between epochs, then shuffle the batch order
        noise = rng.uniform(0, 0.1, len(self.lengths)) if self.shuffle else 0
        order = np.argsort(np.asarray(self.lengths) * (1 + noise), kind="stable")
        batches = [order[i:i + self.batch_size].tolist()
                   for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world > 1:
            batches = [batches[i % len(batches)] for i in range(len(self) * self.world)]
            batches = batches[self.rank::self.world]
        return batches

    def __len__(self) -> int:
        batches = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        return (batches + self.world - 1) // self.world


def loader(items: Sequence[dict], batch_size: int, shuffle: bool = False, seed: int = 0,
           bucket_by: str | None = None, num_workers: int = 0, rank: int = 0,
           world: int = 1) -> DataLoader:
    """A DataLoader over per-utterance dicts; `bucket_by` names a sequence key whose length
    groups the batches (the distilled-models paper's length-bucketed batches). With
    `world` > 1 (DDP training) process `rank` gets its share of every epoch."""
    items = list(items)
    # every loader has its own generator: loaders never draw from the global random state
    common = dict(collate_fn=collate, num_workers=num_workers,
                  generator=torch.Generator().manual_seed(seed))
    if bucket_by is not None:
        sampler = BucketSampler([len(item[bucket_by]) for item in items], batch_size,
                                shuffle, seed, rank, world)
        return DataLoader(items, batch_sampler=sampler, **common)
    if world > 1:
        from torch.utils.data.distributed import DistributedSampler

        shard = DistributedSampler(items, world, rank, shuffle=shuffle, seed=seed)
        return DataLoader(items, batch_size=batch_size, sampler=shard, **common)
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, **common)
