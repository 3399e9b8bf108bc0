"""Evaluation protocols: fold assignment, and folds that guard their test set.

`assign_folds` writes the manifest's `fold` column:
  k >= 0  the row is in the test set of fold k (and training material in the others);
  -1      the row is never tested (official train/development, the training corpus of a
          cross-corpus run, the non-test part of a random split);
  empty   the row is outside the protocol (unlabelled read speech; in cross-corpus runs,
          labels outside the shared set).
Rows kept without a category (outside the class map) get a fold like every other row of
their session or speaker; they never change how the labelled rows are split (`_counted`).

`iter_folds` yields `Fold` objects. Validation comes from the training side only, and the
test set opens only after `select(...)` has recorded the final choice; after that, neither
`val()` nor `select()` works again, so the test set cannot pick a checkpoint, threshold
or hyper-parameter.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

NEVER_TESTED = -1
OUTSIDE_SPLITS = ("read",)  # unlabelled pre-training speech is in no protocol
# a speaker-disjoint validation set needs speakers to spare; below this, utterance-level
MIN_SPEAKERS_FOR_DISJOINT_VAL = 3

PROTOCOLS: dict[str, dict] = {
    "loso": {"label": "leave-one-session-out (speaker-independent)",
             "speaker_independent": True},
    "loso_speaker": {"label": "leave-one-speaker-out (speaker-independent)",
                     "speaker_independent": True},
    "speaker_kfold": {"label": "speaker k-fold (speaker-independent)",
                      "speaker_independent": True},
    "official": {"label": "official partitions (speaker-independent)",
                 "speaker_independent": True},
    "random_70_20_10": {"label": "random 70/20/10 (speaker-dependent)",
                        "speaker_independent": False},
    "random_8_1_1": {"label": "random 8/1/1 (speaker-dependent)",
                     "speaker_independent": False},
    "cross_corpus": {"label": "cross-corpus (train on one corpus, test on another)",
                     "speaker_independent": True},
}
# train / validation / test fractions of the speaker-dependent random splits
RANDOM_FRACTIONS = {"random_70_20_10": (0.7, 0.2, 0.1), "random_8_1_1": (0.8, 0.1, 0.1)}


class ProtocolError(ValueError):
    """A manifest that a protocol cannot split; the message says what is missing."""


class TestFoldAccessError(RuntimeError):
    """The test fold was asked for before a choice was recorded, or asked to choose."""

    __test__ = False  # not a pytest test class despite its name


def protocol_info(protocol: str) -> dict:
    """`name`, `label` (print it in every table) and `speaker_independent`."""
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
    return {"name": protocol, **PROTOCOLS[protocol]}


# ---------------------------------------------------------------------------- assignment


def _keys(df: pd.DataFrame, column: str, protocol: str) -> pd.Series:
    """Group keys of `column`; qualified by corpus when several corpora share a manifest."""
    values = df[column]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        bad = df.loc[values.isna() | (values.astype(str).str.strip() == ""), "utt_id"]
        raise ProtocolError(f"{protocol}: {len(bad)} rows have no {column}, "
                            f"e.g. {bad.head(3).tolist()}")
    keys = values.astype(str)
    if "corpus" in df.columns and df["corpus"].nunique() > 1:
        keys = df["corpus"].astype(str) + "/" + keys
    return keys


def _counted(part: pd.DataFrame) -> pd.Series:
    """The rows that size folds and validation sets: the labelled ones when there are any.
    Rows kept without a category (rated only) then never move a speaker to another fold,
    so a regression stage's folds are those of the categorical stages."""
    labelled = part["label"].notna() if "label" in part.columns else None
    if labelled is None or not labelled.any():
        return pd.Series(True, index=part.index)
    return labelled


def _leave_one_out(part: pd.DataFrame, column: str, protocol: str,
                   n_folds: int | None) -> pd.Series:
    keys = _keys(part, column, protocol)
    groups = sorted(keys.unique())
    if len(groups) < 2:
        raise ProtocolError(f"{protocol}: needs at least 2 values of {column}, "
                            f"found {groups}")
    if n_folds is not None and n_folds != len(groups):
        raise ProtocolError(f"{protocol}: n_folds={n_folds} but the manifest has "
                            f"{len(groups)} values of {column}: {groups}")
    return keys.map({g: i for i, g in enumerate(groups)})


def _speaker_kfold(part: pd.DataFrame, n_folds: int | None, seed: int) -> pd.Series:
    n_folds = 5 if n_folds is None else n_folds
    keys = _keys(part, "speaker", "speaker_kfold")
    counts = keys[_counted(part)].value_counts()
    if len(counts) < n_folds or n_folds < 2:
        raise ProtocolError(f"speaker_kfold: n_folds={n_folds} needs at least that many "
                            f"speakers (and 2); found {len(counts)}")
    # seeded order breaks ties; largest speakers first onto the lightest fold keeps the
    # folds' sizes close; speakers heard only without a category come last
    order = np.random.default_rng([seed, 0]).permutation(sorted(counts.index))
    order = sorted(order, key=lambda s: -counts[s]) + sorted(set(keys) - set(counts.index))
    load, fold_of = [0] * n_folds, {}
    for speaker in order:
        k = int(np.argmin(load))
        fold_of[speaker] = k
        load[k] += counts.get(speaker, 0)
    return keys.map(fold_of)


def _official(part: pd.DataFrame) -> pd.Series:
    splits = part["split"].astype(str).str.lower()
    found = sorted(splits.unique())
    tests = [s for s in found if s.startswith("test")]
    others = [s for s in found if s not in tests and s not in ("train", "development")]
    if not tests or "train" not in found or others:
        raise ProtocolError(f"official: expects splits train, development and test* "
                            f"(MSP-Podcast partitions); found {found}")
    return splits.map({**{s: i for i, s in enumerate(tests)},
                       "train": NEVER_TESTED, "development": NEVER_TESTED})


def _stratified_pick(part: pd.DataFrame, fraction: float, rng: np.random.Generator) -> list:
    """Row labels of about `fraction` of each class (empty labels form their own class,
    drawn last, so that they never change which labelled rows are picked)."""
    strata = part["label"].astype(object).where(part["label"].notna(), "")
    picked = []
    for _, index in sorted(part.groupby(strata).groups.items(),
                           key=lambda item: (item[0] == "", item[0])):
        shuffled = rng.permutation(np.asarray(index))
        picked.extend(shuffled[: int(round(fraction * len(shuffled)))].tolist())
    return picked


def _random_split(part: pd.DataFrame, protocol: str, n_folds: int | None,
                  seed: int) -> pd.Series:
    if n_folds not in (None, 1):
        raise ProtocolError(f"{protocol}: a single random split; n_folds={n_folds} is not "
                            "offered")
    test = _stratified_pick(part, RANDOM_FRACTIONS[protocol][2],
                            np.random.default_rng([seed, 0]))
    fold = pd.Series(NEVER_TESTED, index=part.index)
    fold[test] = 0
    return fold


def shared_labels(df: pd.DataFrame) -> list[str]:
    """Labels that every corpus in a combined manifest has."""
    sets = [set(g["label"].dropna()) - {""} for _, g in df.groupby("corpus")]
    return sorted(set.intersection(*sets)) if sets else []


def _cross_corpus(part: pd.DataFrame, test_corpus: str | None) -> pd.Series:
    corpora = sorted(part["corpus"].dropna().unique())
    if test_corpus not in corpora or len(corpora) < 2:
        raise ProtocolError(f"cross_corpus: needs test_corpus among the manifest's corpora "
                            f"and at least one other; test_corpus={test_corpus!r}, "
                            f"corpora {corpora}")
    shared = shared_labels(part)
    if not shared:
        raise ProtocolError(f"cross_corpus: corpora {corpora} share no label")
    fold = pd.Series(pd.NA, index=part.index, dtype="Int64")
    inside = part["label"].isin(shared)
    fold[inside & (part["corpus"] == test_corpus)] = 0
    fold[inside & (part["corpus"] != test_corpus)] = NEVER_TESTED
    return fold


def assign_folds(df: pd.DataFrame, protocol: str, *, seed: int = 0,
                 n_folds: int | None = None, val_fraction: float = 0.1,
                 test_corpus: str | None = None) -> pd.DataFrame:
    """A copy of `df` with `fold` set for `protocol` (see the module docstring).

    `val_fraction` is accepted for a uniform call signature; validation is carved in
    `iter_folds`. `test_corpus` names the test corpus of `cross_corpus`.
    """
    protocol_info(protocol)
    out = df.copy()
    inside = ~out["split"].isin(OUTSIDE_SPLITS)
    part = out[inside]
    if part.empty:
        raise ProtocolError(f"{protocol}: the manifest has no rows outside {OUTSIDE_SPLITS}")
    if protocol == "loso":
        fold = _leave_one_out(part, "session", protocol, n_folds)
    elif protocol == "loso_speaker":
        fold = _leave_one_out(part, "speaker", protocol, n_folds)
    elif protocol == "speaker_kfold":
        fold = _speaker_kfold(part, n_folds, seed)
    elif protocol == "official":
        fold = _official(part)
    elif protocol in RANDOM_FRACTIONS:
        fold = _random_split(part, protocol, n_folds, seed)
    else:
        fold = _cross_corpus(part, test_corpus)
    out["fold"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
    out.loc[inside, "fold"] = fold.astype("Int64")
    return out


# ---------------------------------------------------------------------------- folds


class Fold:
    """One train/val/test split whose test set opens only after the choice is recorded."""

    def __init__(self, df: pd.DataFrame, index: int, protocol: str,
                 parts: dict[str, pd.Index], held_out: list[str], val_speaker_disjoint: bool):
        self.index = index
        self.protocol = protocol
        self.info = protocol_info(protocol)
        self.held_out = held_out  # test sessions / speakers / partition / corpus
        self.val_speaker_disjoint = val_speaker_disjoint
        self._df = df
        self._parts = parts
        self._choice: dict | None = None
        self._tested = False

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self._parts.items()}
        return f"Fold({self.protocol}, {self.index}, held out {self.held_out}, {sizes})"

    def _rows(self, part: str) -> pd.DataFrame:
        return self._df.loc[self._parts[part]].copy()

    def train(self) -> pd.DataFrame:
        return self._rows("train")

    def val(self) -> pd.DataFrame:
        if self._tested:
            raise TestFoldAccessError(
                f"fold {self.index}: val() after test(); choices are made before the test "
                f"set is seen (recorded: {self._choice})")
        return self._rows("val")

    def select(self, **choice) -> None:
        """Record the final choice (checkpoint, epoch, threshold, hyper-parameters)."""
        if self._tested:
            raise TestFoldAccessError(
                f"fold {self.index}: select() after test(); the test set cannot choose a "
                f"checkpoint, threshold or hyper-parameter (recorded: {self._choice})")
        self._choice = dict(choice)

    @property
    def choice(self) -> dict | None:
        return None if self._choice is None else dict(self._choice)

    def test(self) -> pd.DataFrame:
        if self._choice is None:
            raise TestFoldAccessError(
                f"fold {self.index}: test() before select(); record the checkpoint and "
                f"hyper-parameters chosen on val() first")
        self._tested = True
        return self._rows("test")


def _val_speakers(pool: pd.DataFrame, val_fraction: float,
                  rng: np.random.Generator) -> tuple[list, bool]:
    """Validation rows from whole training speakers when there are enough of them."""
    if val_fraction <= 0 or pool.empty:
        return [], True
    speakers = pool["speaker"]
    if speakers.isna().any() or speakers.nunique() < MIN_SPEAKERS_FOR_DISJOINT_VAL:
        return _stratified_pick(pool, val_fraction, rng), False
    keys = _keys(pool, "speaker", "val")
    counted = _counted(pool)
    counts = keys[counted].value_counts()
    chosen, size, target = [], 0, val_fraction * int(counted.sum())
    for speaker in rng.permutation(sorted(counts.index)):
        if size >= target:
            break
        chosen.append(speaker)
        size += counts[speaker]
    return pool.index[keys.isin(chosen)].tolist(), True


def _held_out(df: pd.DataFrame, test: pd.Index, protocol: str) -> list[str]:
    column = {"loso": "session", "loso_speaker": "speaker", "speaker_kfold": "speaker",
              "official": "split", "cross_corpus": "corpus"}.get(protocol)
    if column is None:
        return [f"random {RANDOM_FRACTIONS[protocol][2]:.0%} of utterances"]
    return sorted(df.loc[test, column].astype(str).unique())


def iter_folds(df: pd.DataFrame, protocol: str, *, seed: int = 0, n_folds: int | None = None,
               val_fraction: float = 0.1, test_corpus: str | None = None,
               folds: pd.Series | None = None) -> Iterator[Fold]:
    """Assign folds (or take `folds`, e.g. the manifest's), then yield one `Fold` per test
    group, deterministic from `seed`.

    Validation: the development partition for `official`; a stratified random share of
    the non-test utterances for the random splits; otherwise about `val_fraction` of the
    training rows taken as whole training speakers (utterance-level, and flagged in
    `Fold.val_speaker_disjoint`, when fewer than 3 speakers are available).
    """
    if folds is not None:  # assigned before (prepare's manifest): only validation is drawn
        protocol_info(protocol)
        assigned = df.assign(fold=folds.astype("Int64"))
    else:
        assigned = assign_folds(df, protocol, seed=seed, n_folds=n_folds,
                                val_fraction=val_fraction, test_corpus=test_corpus)
    fold = assigned["fold"]
    for k in sorted(int(v) for v in fold.dropna().unique() if v >= 0):
        test = assigned.index[(fold == k).fillna(False)]
        # the other folds' test rows are training material, except the other official
        # test partitions, which are never trained on
        if protocol == "official":
            others = fold == NEVER_TESTED
        else:
            others = fold.notna() & (fold != k)
        pool = assigned[others.fillna(False)]
        rng = np.random.default_rng([seed, k, 1])
        if protocol == "official":
            split = pool["split"].astype(str).str.lower()
            val, disjoint = pool.index[split == "development"], True
        elif protocol in RANDOM_FRACTIONS:
            share = RANDOM_FRACTIONS[protocol][1] / (1 - RANDOM_FRACTIONS[protocol][2])
            val, disjoint = pd.Index(_stratified_pick(pool, share, rng)), False
        else:
            picked, disjoint = _val_speakers(pool, val_fraction, rng)
            val = pd.Index(picked)
        train = pool.index.difference(val, sort=False)
        parts = {"train": train, "val": val, "test": test}
        yield Fold(assigned, k, protocol, parts, _held_out(assigned, test, protocol), disjoint)


def fold_table(df: pd.DataFrame, protocol: str, **options) -> pd.DataFrame:
    """Utterances per class and number of speakers in train/val/test of every fold.

    `options` are those of `iter_folds`. It counts the test rows without opening them
    through `Fold.test()`: a size table chooses nothing.
    """
    info = protocol_info(protocol)
    records = []
    for fold in iter_folds(df, protocol, **options):
        for part in ("train", "val", "test"):
            rows = fold._rows(part)
            labels = rows["label"].astype(object).where(rows["label"].notna(), "(none)")
            records.append({"protocol": info["label"], "fold": fold.index,
                            "held_out": ", ".join(fold.held_out), "part": part,
                            "utterances": len(rows), "speakers": rows["speaker"].nunique(),
                            **labels.value_counts().to_dict()})
    table = pd.DataFrame(records)
    fixed = ["protocol", "fold", "held_out", "part", "utterances", "speakers"]
    classes = sorted(c for c in table.columns if c not in fixed)
    table[classes] = table[classes].fillna(0).astype(int)
    return table[fixed + classes]
