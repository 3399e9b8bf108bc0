"""Rows outside the class map: kept without a category, heard in dialogue context, rated.

The loaders keep a turn whose category lies outside the chosen classes (IEMOCAP's
frustrated or "xxx" turns with 4 classes, MSP-Podcast's "no agreement") with an empty
label: categorical stages skip it, LE-MER's context hears it, and a regression stage
(`Corpus.rated`) trains and tests on its arousal/valence/dominance.
"""

from pathlib import Path

import pandas as pd
import pytest

from mmser.corpus import corpora, protocols
from mmser.papers import lemer as LE
from mmser.training.data import Corpus
from test_corpora import build_iemocap, build_msp


def _words(text: str) -> int:
    return len(text.split())


def _iemocap(root: Path, rows: str = "labelled") -> Corpus:
    build_iemocap(root, sessions=(1, 2))
    df, _ = corpora.load("iemocap", root, classes=4)
    return Corpus(protocols.assign_folds(df, "loso"), root, "loso", "iemocap", rows=rows)


def test_an_out_of_class_neighbour_is_heard_in_the_context(tmp_path):
    corpus = _iemocap(tmp_path)
    context = LE.context_texts(corpus.df, "text", turns=1, max_tokens=99,
                               count_tokens=_words)
    # time order: F000 (neu), M001 (fru: outside the 4 classes), F001 (hap)
    assert "Ses01F_impro01_M001" not in set(corpus.labelled["utt_id"])
    assert context["Ses01F_impro01_F001"] == ("Words of Ses01F_impro01_M001. "
                                              "Words of Ses01F_impro01_F001.")
    # M002 (exc -> happy) follows F001 directly: the history is the last turn, whatever it is
    assert context["Ses01F_impro01_M002"].startswith("Words of Ses01F_impro01_F001.")
    # every labelled row, the items of the stage, has its context
    assert set(corpus.labelled["utt_id"]) <= set(context.index)


def test_a_turn_without_text_is_skipped_in_the_context(tmp_path):
    corpus = _iemocap(tmp_path)
    # F002 (xxx) then M003 (sad, no transcript) then F003 (oth)
    context = LE.context_texts(corpus.df, "text", turns=1, max_tokens=99,
                               count_tokens=_words)
    assert context["Ses01F_impro01_F003"] == ("Words of Ses01F_impro01_F002. "
                                              "Words of Ses01F_impro01_F003.")
    # the row without a transcript gets the history alone, no dangling separator
    assert context["Ses01F_impro01_M003"] == "Words of Ses01F_impro01_F002."
    two = LE.context_texts(corpus.df, "text", turns=2, max_tokens=99, count_tokens=_words)
    assert two["Ses01F_impro01_F003"].split(". ")[0] == "Words of Ses01F_impro01_M002"


def test_rows_outside_the_class_map_are_kept_but_not_labelled(tmp_path):
    corpus = _iemocap(tmp_path)
    outside = corpus.df[corpus.df["label"].isna()]
    assert len(outside) == 6 and set(outside["x_raw_label"]) == {"fru", "xxx", "oth"}
    assert outside["fold"].notna().all()  # in the protocol, like their session
    assert len(corpus.labelled) == 8 and corpus.labelled["label"].notna().all()
    assert corpus.classes == ["happy", "neutral", "sad"]
    for fold in corpus.folds():
        assert fold.train()["label"].notna().all() and fold.val()["label"].notna().all()
        fold.select(checkpoint="x")
        assert fold.test()["label"].notna().all()


def test_rated_rows_fold_like_the_labelled_ones(tmp_path):
    labelled = _iemocap(tmp_path / "a")
    rated = _iemocap(tmp_path / "b", rows="rated")
    assert len(rated.rated) == 14  # every IEMOCAP turn has A/V/D
    for by_label, by_rating in zip(labelled.folds(), rated.folds(), strict=True):
        assert by_label.held_out == by_rating.held_out
        assert by_rating.train()["label"].isna().any()  # rated without a category: trained on
        for fold in (by_label, by_rating):
            fold.select(checkpoint="x")
        for part in ("train", "val", "test"):
            ours = getattr(by_rating, part)()
            assert set(getattr(by_label, part)()["utt_id"]) == set(
                ours.loc[ours["label"].notna(), "utt_id"])


def test_msp_no_agreement_rows_are_rated_and_tested(tmp_path):
    build_msp(tmp_path)
    df, summary = corpora.load("msp_podcast", tmp_path, classes=4)
    assert summary["noted"]["kept without a category (label 'X': no agreed category)"] == 1
    corpus = Corpus(protocols.assign_folds(df, "official"), tmp_path, "official",
                    "msp_podcast", rows="rated")
    rated = corpus.rated.set_index("utt_id")
    row = rated.loc["MSP-PODCAST_0004_0001"]  # "no agreement": no label, A/V/D and a fold
    assert pd.isna(row["label"]) and row["arousal"] == 4.2 and row["fold"] == 1
    assert "MSP-PODCAST_0004_0001" not in set(corpus.labelled["utt_id"])
    tests = {}
    for fold in corpus.folds():
        fold.select(checkpoint="x")
        tests[tuple(fold.held_out)] = set(fold.test()["utt_id"])
    assert tests[("test2",)] == {"MSP-PODCAST_0004_0001", "MSP-PODCAST_0004_0002"}
    assert tests[("test1",)] == {"MSP-PODCAST_0003_0001"}


def test_corpus_rows_must_be_named():
    with pytest.raises(ValueError, match="rows='everything'"):
        Corpus(pd.DataFrame(), Path("."), "loso", "x", rows="everything")
