"""Speech states computed from the clips per batch (`training.speech_from_waves`) equal the
states the features stage caches: the same encoder, each clip on its own, float16 values."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mmser.encode import features as F
from mmser.corpus.audio import Clips
from mmser.encode.live import LiveSpeech, cut_below
from mmser.fingerprint import value_digest
from mmser.training.data import collate
from test_profiles import BUILDERS


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three clips of different lengths (group norm: each encoded on its own)."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    paths = {}
    for i, seconds in enumerate((0.7, 1.0, 1.3)):
        paths[f"u{i}"] = root / f"u{i}.wav"
        sf.write(paths[f"u{i}"], rng.normal(0, 0.1, int(seconds * 16000)).astype(np.float32),
                 16000)
    return paths


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2_robust"])  # group norm; stable LN
def test_a_live_state_is_the_cached_state(clips, kind, tmp_path):
    torch.manual_seed(0)
    BUILDERS[kind](tmp_path / kind)
    name = str(tmp_path / kind)
    from mmser.encode.encoders import SpeechEncoder

    encoder = SpeechEncoder(name)
    cache = F.FeatureCache(tmp_path / "features", encoder.key)
    ids = list(clips)
    digests = F.speech_features(cache, encoder, Clips([clips[u] for u in ids]), 2)
    F.write_index(tmp_path / "features", ids, digests, speech={"main": encoder.key})
    cached = F.FeatureStore(tmp_path / "features")
    live = F.FeatureStore(tmp_path / "features", stream=True,
                          live=LiveSpeech(name, None, {u: str(p) for u, p in clips.items()}))
    for layer in (0, 1, -1, None):  # below a tuned block, inside, the last (final norm), all
        refs = live.speech(ids, layer=layer)
        for ref, tensor in zip(refs, cached.speech(ids, layer=layer)):
            assert ref.shape == tuple(tensor.shape)  # known before anything is computed
            torch.testing.assert_close(ref.load(), tensor, atol=2e-3, rtol=0)
    # collate computes a batch, cropped, padded; every state time first (layer weights)
    batch = collate([{"s": r.cropped(10)} for r in live.speech(ids, layer=0)])
    assert batch["s"].shape == (3, 10, encoder.dim)
    every = live.speech(ids[:1], layer=None)[0].every_state_time_first()
    assert every.load().shape == every.shape and every.load().dtype == torch.float16
    # a run's fingerprint names the encoder and the clip's content, not where it lies
    assert value_digest(live.speech(ids, 0)) != value_digest(live.speech(ids[::-1], 0))
    assert value_digest(live.speech(ids, 0)) == value_digest(live.speech(ids, 0))
    with pytest.raises(IndexError, match="hidden state 5 does not exist"):
        live.speech(ids, layer=5)


def test_the_frozen_part_is_cut_just_above_the_state():
    assert cut_below(0, 13, None) == 1 and cut_below(10, 13, None) == 11
    assert cut_below(11, 13, None) is None and cut_below(12, 13, None) is None
    assert cut_below(None, 13, None) is None and cut_below(12, 13, 12) == 12


def test_whisper_states_are_read_from_the_cache(clips):
    with pytest.raises(ValueError, match="SSL encoders"):
        LiveSpeech("whisper-tiny.en", None, clips).refs(["u0"], 0, {"u0": "d"})
