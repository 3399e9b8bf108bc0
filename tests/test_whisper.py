"""The bundled Whisper tiny.en: conversion, variable-length encoding, and ASR."""

import subprocess

import ctranslate2
import numpy as np
import pytest
import torch

from mmser import asr
from mmser import whisper as W
from mmser.audio import load_audio


def _say(tmp_path, name, text, voice="en-us", speed=160):
    path = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
                   check=True)
    return load_audio(path).wave


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    return [_say(d, "a", "Please put the book on the table", "en-us+m3", 180),
            _say(d, "b", "I cannot believe you did that to me again", "en-gb+f2", 140),
            _say(d, "c", "Yes", "en-us", 160)]


@pytest.fixture(scope="module")
def model():
    return W.load_bundled_whisper()


def test_converted_encoder_matches_ctranslate2(clips, model):
    wave = np.pad(clips[0], (0, 30 * 16_000 - len(clips[0])))  # CT2 only takes 30-s windows
    mel = W.log_mel(wave)
    assert mel.shape == (80, 3000)
    ct2 = ctranslate2.models.Whisper(str(W.bundled_whisper_dir()), device="cpu",
                                     compute_type="float32")
    ref = torch.tensor(np.array(ct2.encode(ctranslate2.StorageView.from_array(
        mel[None].numpy()), to_cpu=True)))
    with torch.inference_mode():
        ours = W.encode(model[0].model.encoder, [wave])[0][-1]
    assert ours.shape == ref.shape == (1, 1500, 384)
    assert (ours - ref).abs().max().item() <= 1e-3


def test_padded_batch_equals_each_clip_alone(clips, model):
    encoder = model[0].model.encoder
    with torch.inference_mode():
        batch, lengths = W.encode(encoder, clips)
        assert len(batch) == 5  # conv output + 4 layers
        for i, clip in enumerate(clips):
            alone, n = W.encode(encoder, [clip])
            assert int(n[0]) == int(lengths[i]) == (len(clip) // 160 - 1) // 2 + 1
            for layer in range(len(alone)):
                torch.testing.assert_close(batch[layer][i, : int(n[0])],
                                           alone[layer][0], atol=1e-3, rtol=1e-4)
    assert int(lengths.max()) < 1500  # never padded to 30 s


def test_too_long_clip_is_refused(model):
    with pytest.raises(ValueError, match="30-s window"):
        W.encode(model[0].model.encoder, [np.zeros(31 * 16_000, np.float32)])


@pytest.mark.parametrize("backend", asr.BACKENDS)
def test_both_backends_transcribe_a_synthesised_sentence(clips, backend):
    text = asr.transcribe_files([clips[1]], backend=backend, progress=False)[0]
    assert asr.normalise(text) == "i cannot believe you did that to me again"


def test_batched_decoding_equals_one_clip_at_a_time(clips, model):
    one = W.transcribe(*model, clips, batch_size=1)
    assert W.transcribe(*model, clips, batch_size=3) == one
    assert all(one)


def test_wer_normalises_case_and_punctuation():
    assert asr.wer(["Hello, world!"], ["hello world"]) == 0.0
    assert asr.wer(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="references"):
        asr.wer(["a"], [])


def test_corrupt_ct2_file_names_the_file(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x06\x00\x00\x00\xff\xff")
    with pytest.raises(W.CT2FormatError, match="model.bin"):
        W.read_ct2(bad)
    bad.write_bytes(b"\x05\x00\x00\x00")
    with pytest.raises(W.CT2FormatError, match="version 5"):
        W.read_ct2(bad)
