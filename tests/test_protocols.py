"""Protocols: speaker-independence, validation from training speakers, guarded test sets."""

from pathlib import Path

import pandas as pd
import pytest

from mmser.corpus import manifest
from mmser.corpus.protocols import (Fold, ProtocolError, TestFoldAccessError, assign_folds,
                             fold_table, iter_folds, protocol_info, shared_labels)

LABELS = ["angry", "happy", "neutral", "sad"]


def iemocap_like(sessions: int = 5, per_speaker: int = 20) -> pd.DataFrame:
    """Two speakers (F, M) per session, every class present."""
    rows = []
    for s in range(1, sessions + 1):
        for gender in "FM":
            for i in range(per_speaker):
                rows.append({"utt_id": f"Ses0{s}{gender}_{i:03d}",
                             "path": f"{s}/{gender}{i}.wav",
                             "speaker": f"Ses0{s}_{gender}", "session": f"Ses0{s}",
                             "split": "labelled", "label": LABELS[i % 4], "corpus": "iemocap"})
    return manifest.conform(pd.DataFrame(rows))


def speakers_of(df: pd.DataFrame) -> set:
    return set(df["speaker"])


def test_loso_has_no_speaker_overlap_and_val_from_training_speakers():
    df = iemocap_like()
    folds = list(iter_folds(df, "loso", seed=3))
    assert [f.index for f in folds] == [0, 1, 2, 3, 4]
    seen_test = set()
    for fold in folds:
        train, val = fold.train(), fold.val()
        fold.select(checkpoint="best.ckpt")
        test = fold.test()
        assert set(test["session"]) == {f"Ses0{fold.index + 1}"} == set(fold.held_out)
        assert not speakers_of(train) & speakers_of(test)
        assert not speakers_of(val) & speakers_of(test)
        assert not speakers_of(val) & speakers_of(train)  # speaker-disjoint validation
        assert fold.val_speaker_disjoint and len(val) == 20  # one of 8 training speakers
        assert len(train) + len(val) + len(test) == len(df)
        seen_test |= set(test["utt_id"])
    assert seen_test == set(df["utt_id"])  # every utterance is tested exactly once


def test_validation_is_deterministic_from_seed():
    df = iemocap_like()
    first = [set(f.val()["speaker"]) for f in iter_folds(df, "loso", seed=1)]
    again = [set(f.val()["speaker"]) for f in iter_folds(df, "loso", seed=1)]
    other = [set(f.val()["speaker"]) for f in iter_folds(df, "loso", seed=2)]
    assert first == again and first != other


def test_too_few_training_speakers_fall_back_to_flagged_utterance_val():
    df = iemocap_like(sessions=2)  # 2 training speakers per fold
    fold = next(iter_folds(df, "loso", val_fraction=0.25))
    assert not fold.val_speaker_disjoint
    assert len(fold.val()) == 4 * round(0.25 * 10)  # stratified, a quarter of each class
    assert set(fold.val()["utt_id"]).isdisjoint(fold.train()["utt_id"])


def test_leave_one_speaker_out_and_speaker_kfold():
    df = iemocap_like(per_speaker=8)  # 10 speakers, like EmoDB
    folds = list(iter_folds(df, "loso_speaker"))
    assert len(folds) == 10
    for fold in folds:
        seen = speakers_of(fold.train()) | speakers_of(fold.val())
        fold.select()
        test = fold.test()
        assert len(speakers_of(test)) == 1 and not speakers_of(test) & seen
    assigned = assign_folds(df, "speaker_kfold", n_folds=5, seed=0)
    assert assigned.groupby("speaker")["fold"].nunique().eq(1).all()  # a speaker stays whole
    assert sorted(assigned["fold"].value_counts()) == [16] * 5  # balanced: 2 speakers each
    assert assign_folds(df, "speaker_kfold", seed=0)["fold"].equals(assigned["fold"])
    with pytest.raises(ProtocolError, match="n_folds=3 but the manifest has 10"):
        assign_folds(df, "loso_speaker", n_folds=3)


def test_loso_needs_sessions():
    df = iemocap_like(sessions=2)
    df.loc[df.index[:3], "session"] = pd.NA
    with pytest.raises(ProtocolError, match="3 rows have no session"):
        assign_folds(df, "loso")


def msp_like() -> pd.DataFrame:
    rows = []
    for split, n in [("train", 40), ("development", 10), ("test1", 12), ("test2", 8)]:
        for i in range(n):
            rows.append({"utt_id": f"{split}_{i}", "path": f"{split}_{i}.wav",
                         "speaker": f"{split}_spk{i % 4}", "split": split,
                         "label": LABELS[i % 4], "corpus": "msp_podcast"})
    return manifest.conform(pd.DataFrame(rows))


def test_official_partitions():
    df = msp_like()
    folds = list(iter_folds(df, "official"))
    assert [f.held_out for f in folds] == [["test1"], ["test2"]]
    for fold in folds:
        assert set(fold.train()["split"]) == {"train"} and len(fold.train()) == 40
        assert set(fold.val()["split"]) == {"development"} and len(fold.val()) == 10
        fold.select(epoch=3)
        assert len(fold.test()) == (12 if fold.index == 0 else 8)
    assert assign_folds(df, "official").groupby("split")["fold"].first().to_dict() == {
        "development": -1, "test1": 0, "test2": 1, "train": -1}
    with pytest.raises(ProtocolError, match="expects splits train, development and test"):
        assign_folds(iemocap_like(), "official")


def test_random_splits_are_flagged_speaker_dependent():
    df = iemocap_like()  # 200 utterances
    assert protocol_info("random_70_20_10") == {
        "name": "random_70_20_10", "label": "random 70/20/10 (speaker-dependent)",
        "speaker_independent": False}
    assert protocol_info("random_8_1_1")["label"] == "random 8/1/1 (speaker-dependent)"
    assert protocol_info("loso")["speaker_independent"]
    (fold,) = iter_folds(df, "random_70_20_10", seed=0)
    fold.select(checkpoint="last")
    sizes = (len(fold.train()), len(fold.val()), len(fold.test()))
    assert sizes == (140, 40, 20)
    assert fold.test()["label"].value_counts().to_dict() == {k: 5 for k in LABELS}
    (fold,) = iter_folds(df, "random_8_1_1", seed=0)
    assert (len(fold.train()), len(fold.val())) == (160, 20)
    table = fold_table(df, "random_8_1_1")
    assert table["protocol"].eq("random 8/1/1 (speaker-dependent)").all()
    with pytest.raises(ProtocolError, match="unknown protocol 'random'"):
        protocol_info("random")


def test_cross_corpus_uses_the_shared_label_set():
    a = iemocap_like(sessions=3)
    b = iemocap_like(sessions=1, per_speaker=6).assign(corpus="emodb")
    b["utt_id"] = "emo_" + b["utt_id"]
    b.loc[b.index[:2], "label"] = "bored"  # a label the training corpus lacks
    a.loc[a.index[:4], "label"] = "frustrated"
    df = pd.concat([a, b], ignore_index=True)
    assert shared_labels(df) == LABELS
    (fold,) = iter_folds(df, "cross_corpus", test_corpus="emodb")
    assert set(fold.train()["corpus"]) == set(fold.val()["corpus"]) == {"iemocap"}
    assert "frustrated" not in set(fold.train()["label"])
    assert fold.val_speaker_disjoint
    fold.select(checkpoint="best")
    test = fold.test()
    assert set(test["corpus"]) == {"emodb"} and len(test) == 10
    assert set(test["label"]) <= set(LABELS)
    assert fold.held_out == ["emodb"]
    with pytest.raises(ProtocolError, match="needs test_corpus"):
        assign_folds(df, "cross_corpus", test_corpus="crema_d")


def test_read_speech_is_outside_every_protocol():
    df = iemocap_like(sessions=2)
    read = df.head(3).assign(split="read", label=pd.NA, session=pd.NA)
    read["utt_id"] = "read_" + read["utt_id"]
    out = assign_folds(pd.concat([df, read], ignore_index=True), "loso")
    assert out.loc[out["split"] == "read", "fold"].isna().all()
    assert out.loc[out["split"] != "read", "fold"].notna().all()


# ---------------------------------------------------------------------------- the guard


def fold0() -> Fold:
    return next(iter_folds(iemocap_like(sessions=3), "loso"))


def test_test_fold_cannot_be_read_before_a_choice():
    fold = fold0()
    with pytest.raises(TestFoldAccessError, match="before select"):
        fold.test()


def test_test_fold_cannot_choose_a_checkpoint():
    """A loop that scores checkpoints on the test set and keeps the best one fails."""
    fold = fold0()
    fold.select(checkpoint="epoch1")  # chosen on val
    fold.test()
    with pytest.raises(TestFoldAccessError, match="select\\(\\) after test"):
        fold.select(checkpoint="epoch2")  # re-choosing after seeing test
    with pytest.raises(TestFoldAccessError, match="val\\(\\) after test"):
        fold.val()  # e.g. tuning a threshold again
    assert fold.choice == {"checkpoint": "epoch1"}


def test_choice_may_change_until_test():
    fold = fold0()
    fold.select(checkpoint="epoch1", lr=1e-3)
    fold.val()
    fold.select(checkpoint="epoch2", lr=1e-3)
    assert len(fold.test()) == 40 and fold.choice["checkpoint"] == "epoch2"
    fold.choice["checkpoint"] = "hacked"  # a copy: the record cannot be edited
    assert fold.choice["checkpoint"] == "epoch2"


def test_fold_table_counts_classes_and_speakers():
    table = fold_table(iemocap_like(), "loso", seed=0)
    assert len(table) == 15 and list(table.columns) == [
        "protocol", "fold", "held_out", "part", "utterances", "speakers", *LABELS]
    test0 = table[(table["fold"] == 0) & (table["part"] == "test")].iloc[0]
    assert (test0["held_out"], test0["utterances"], test0["speakers"]) == ("Ses01", 40, 2)
    assert test0[LABELS].tolist() == [10, 10, 10, 10]
    train0 = table[(table["fold"] == 0) & (table["part"] == "train")].iloc[0]
    assert train0["speakers"] == 7
    assert table["protocol"].eq("leave-one-session-out (speaker-independent)").all()


def _with_uncategorised(df: pd.DataFrame, every: int = 3) -> pd.DataFrame:
    """`df` plus a row without a category after every `every`-th row (same speaker and
    session), and one extra speaker heard only without a category."""
    extra = df.iloc[::every].assign(label=pd.NA)
    extra["utt_id"] = extra["utt_id"] + "_x"
    extra["path"] = extra["path"] + ".x.wav"
    alone = extra.iloc[:5].assign(speaker="Ses01_X")
    alone["utt_id"] = alone["utt_id"] + "_alone"
    return manifest.conform(pd.concat([df, extra, alone]).sort_values("utt_id",
                                                                     ignore_index=True))


@pytest.mark.parametrize("protocol, options", [
    ("loso", {}), ("speaker_kfold", {"n_folds": 5}), ("random_70_20_10", {}),
    ("random_8_1_1", {})])
def test_rows_without_a_category_never_move_the_labelled_rows(protocol, options):
    """A regression stage splits labelled and uncategorised rows together; its labelled
    rows fall in the same train/val/test parts as the categorical stages' folds."""
    df = iemocap_like(per_speaker=8)
    both = _with_uncategorised(df)
    alone = both.loc[both["label"].isna(), "utt_id"]
    pairs = zip(iter_folds(df, protocol, seed=3, **options),
                iter_folds(both, protocol, seed=3, **options), strict=True)
    tested = set()
    for labelled, rated in pairs:
        for fold in (labelled, rated):
            fold.select(checkpoint="x")
        for part in ("train", "val", "test"):
            ours = getattr(rated, part)()
            assert set(getattr(labelled, part)()["utt_id"]) == set(
                ours.loc[ours["label"].notna(), "utt_id"]), (protocol, part)
        tested |= set(rated.test()["utt_id"])
    if protocol != "random_70_20_10" and protocol != "random_8_1_1":
        assert set(alone) <= tested  # every uncategorised row is tested in some fold
    assigned = assign_folds(both, protocol, seed=3, **options)
    assert assigned["fold"].notna().all()  # every row of the protocol has a fold


def test_every_training_seed_tests_the_folds_prepare_wrote():
    """speaker_kfold's assignment depends on the seed it is drawn with: a stage's claim
    seeds (1, 2) must still test prepare's folds, which the frozen baseline tested."""
    from mmser.training.data import Corpus

    df = assign_folds(iemocap_like(sessions=6), "speaker_kfold", seed=0)
    assert not assign_folds(df, "speaker_kfold", seed=1)["fold"].equals(df["fold"])
    corpus = Corpus(df, Path("."), "speaker_kfold", "x", prepared="speaker_kfold")
    for seed in (0, 1, 2):
        for fold in corpus.folds(seed=seed):
            fold.select(checkpoint="none")
            assert (fold.test()["fold"] == fold.index).all()
            assert set(fold.test()["utt_id"]) == set(df.loc[df["fold"] == fold.index, "utt_id"])
    # another protocol than prepare's is drawn afresh (e.g. tokenwise's random split)
    other = Corpus(df, Path("."), "random_70_20_10", "x", prepared="speaker_kfold")
    assert len(list(other.folds(seed=0))) == 1
