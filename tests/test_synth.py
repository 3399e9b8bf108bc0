"""The synthesised default corpus: determinism, format, and a clear error without espeak-ng."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mmser.corpus import synth
from mmser.corpus.manifest import COLUMNS

SMALL = dict(n_speakers=4, n_sessions=2, n_labelled=24, n_read=8, workers=2, progress=False)

def _hashes(root, df):
    return [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in df["path"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("a")
    return root, synth.synthesise(root, seed=3, **SMALL)


def test_same_seed_gives_identical_manifest_and_audio(corpus, tmp_path):
    root, df = corpus
    again = synth.synthesise(tmp_path, seed=3, **{**SMALL, "workers": 1})
    pd.testing.assert_frame_equal(df, again)
    assert _hashes(root, df) == _hashes(tmp_path, again)


def test_another_seed_gives_another_corpus(corpus, tmp_path):
    root, df = corpus
    other = synth.synthesise(tmp_path, seed=4, **SMALL)
    assert _hashes(root, df) != _hashes(tmp_path, other)
    assert df["text"].tolist() != other["text"].tolist()


def test_files_are_16k_mono_with_the_listed_duration(corpus):
    root, df = corpus
    for path, duration in zip(df["path"], df["duration"]):
        info = sf.info(root / path)
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert info.frames / 16_000 == pytest.approx(duration, abs=1e-3)


def test_manifest_columns_labels_and_scales(corpus):
    _, df = corpus
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert {"x_rate_pct", "x_pitch_pct", "x_range_pct", "x_volume_pct", "x_pause_ms",
            "x_snr_db", "x_wording", "x_voice"} <= set(df.columns)
    assert df["utt_id"].is_unique and df["speaker"].nunique() == 4
    assert (df["corpus"] == "synthetic").all() and (df["sample_rate"] == 16_000).all()
    assert df["text"].str.len().gt(0).all() and df["asr_text"].isna().all()
    lab, read = df[df["split"] == "labelled"], df[df["split"] == "read"]
    assert len(lab) == 24 and len(read) == 8 and set(df["split"]) == {"labelled", "read"}
    assert set(lab["label"]) <= set(synth.EMOTIONS_4)
    assert lab["duration"].between(*synth.DURATION).all()
    for col in ("arousal", "valence", "dominance"):
        assert lab[col].between(1, 5).all()
    assert read[["label", "arousal", "dialog_id", "fold"]].isna().all().all()
    assert (lab["fold"] == lab["session"].str[1:].astype(int) - 1).all()
    assert lab["x_snr_db"].between(10, 30).all()


def test_sessions_pair_two_speakers_and_dialogues_alternate(corpus):
    _, df = corpus
    assert (df.groupby("session")["speaker"].nunique() == 2).all()
    for _, turns in df[df["split"] == "labelled"].groupby("dialog_id"):
        assert turns["turn_index"].tolist() == list(range(len(turns)))
        assert turns["session"].nunique() == 1
        speakers = turns["speaker"].tolist()
        assert all(a != b for a, b in zip(speakers, speakers[1:]))


def test_cues_follow_the_design():
    """Drawn prosody is louder and faster for angry than for sad, and wording is scripted
    neutral for some non-neutral lines (no sound needed: the draws alone)."""
    rng = np.random.default_rng(0)
    angry = np.array([synth._draw_prosody("angry", rng) for _ in range(200)])
    sad = np.array([synth._draw_prosody("sad", rng) for _ in range(200)])
    assert (angry[:, 0].mean() > sad[:, 0].mean()) and (angry[:, 3].mean() > sad[:, 3].mean())
    kinds = [synth._wording("happy", rng) for _ in range(400)]
    assert 0.25 < kinds.count("neutral") / 400 < 0.45 and set(kinds) == {"neutral", "positive"}
    texts = {synth._labelled_text("positive", rng) for _ in range(300)}
    assert len(texts) > 200 and not any("{" in t for t in texts)


def test_ssml_carries_prosody_and_breaks():
    ssml = synth._ssml("I am fine & you", np.array([90, -6, 65, 80, 400]),
                       np.random.default_rng(0))
    assert 'rate="90%"' in ssml and 'pitch="-6%"' in ssml and 'volume="80%"' in ssml
    assert ssml.count('<break time="400ms"/>') == 2 and "&amp;" in ssml


def test_six_classes(tmp_path):
    df = synth.synthesise(tmp_path, seed=0, classes=6,
                          **{**SMALL, "n_labelled": 36, "n_read": 0})
    assert {"fear", "surprise"} <= set(df["label"])


def test_missing_espeak_gives_install_instructions(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng") as err:
        synth.require_espeak()
    assert "conda install -c conda-forge espeak-ng" in str(err.value)
    with pytest.raises(RuntimeError, match="espeak-ng was not found"):
        synth.synthesise("unused", seed=0, **SMALL)


def test_card_names_the_cues_and_counts(corpus):
    _, df = corpus
    card = synth.corpus_card(df)
    assert "Prosody carries arousal" in card and "Wording carries valence" in card
    assert "| spk01 |" in card and "| labelled |" in card
