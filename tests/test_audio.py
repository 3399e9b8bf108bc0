import numpy as np
import pytest
import soundfile as sf

from mmser.corpus.audio import SAMPLE_RATE, AudioError, load_audio


def _tone(sr, seconds=0.5, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    wave = 0.3 * np.sin(2 * np.pi * 440 * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def test_other_rate_is_resampled_and_recorded(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(44_100), 44_100)
    audio = load_audio(path)
    assert audio.original_sample_rate == 44_100 and audio.resampled
    assert abs(len(audio.wave) - SAMPLE_RATE * 0.5) <= 1
    assert audio.wave.dtype == np.float32


def test_stereo_is_downmixed_and_recorded(tmp_path):
    path = tmp_path / "s.wav"
    stereo = _tone(SAMPLE_RATE, channels=2)
    stereo[:, 1] = 0.0
    sf.write(path, stereo, SAMPLE_RATE)
    audio = load_audio(path)
    assert audio.downmixed and audio.original_channels == 2
    np.testing.assert_allclose(audio.wave, stereo[:, 0] / 2, atol=1e-4)


@pytest.mark.parametrize("content, problem", [(b"", "empty"), (b"RIFF0000WAVEjunk", "cannot decode")])
def test_empty_or_corrupt_file_names_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav.*{problem}"):
        load_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
