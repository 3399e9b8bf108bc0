"""The synthesised default corpus: determinism, format, and a clear error without espeak-ng."""

import hashlib

import pytest
import soundfile as sf

from mmser import synth
from mmser.manifest import COLUMNS

SMALL = dict(n_speakers=4, n_sessions=2, n_labelled=16, n_read=4, workers=2, progress=False)


def _hashes(root, df):
    return [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in df["path"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("a")
    return root, synth.synthesise(root, seed=3, **SMALL)


def test_same_seed_gives_identical_manifest_and_audio(corpus, tmp_path):
    root, df = corpus
    again = synth.synthesise(tmp_path, seed=3, **SMALL)
    assert df.equals(again)
    assert _hashes(root, df) == _hashes(tmp_path, again)


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    root, df = corpus
    other = synth.synthesise(tmp_path, seed=4, **SMALL)
    assert _hashes(root, df) != _hashes(tmp_path, other)


def test_format_labels_and_dialogues(corpus):
    root, df = corpus
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df["utt_id"].is_unique and df["speaker"].nunique() == 4
    lab, read = df[df["split"] == "labelled"], df[df["split"] == "read"]
    assert len(lab) == 16 and len(read) == 4 and read["label"].isna().all()
    assert set(lab["label"]) <= set(synth.EMOTIONS_4)
    assert lab["duration"].between(*synth.DURATION).all()
    for col in ("arousal", "valence", "dominance"):
        assert lab[col].between(1, 5).all()
    assert df["text"].str.len().gt(0).all()
    for _, turns in lab.groupby("dialog_id"):
        assert turns["turn_index"].tolist() == list(range(len(turns)))
        assert turns["session"].nunique() == 1
    for path in df["path"][:4]:
        info = sf.info(root / path)
        assert info.samplerate == 16_000 and info.channels == 1


def test_six_classes(tmp_path):
    df = synth.synthesise(tmp_path, seed=0, classes=6, **{**SMALL, "n_labelled": 24})
    assert {"fear", "surprise"} & set(df["label"].dropna())


def test_missing_espeak_gives_install_instructions(monkeypatch):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        synth.require_espeak()


def test_card_names_the_cues(corpus):
    card = synth.corpus_card(corpus[1])
    assert "Prosody carries arousal" in card and "Wording carries valence" in card
