import numpy as np
import pandas as pd
import torch

from mmser.encode import features as F
from mmser.encode.encoders import TextEncoder, encoder_key


class CountingEncoder:
    """A stand-in speech encoder: 3 hidden states of width 4, one frame per 160 samples."""

    def __init__(self):
        self.seen = 0

    def __call__(self, waves):
        self.seen += len(waves)
        lengths = torch.tensor([len(w) // 160 for w in waves])
        states = torch.zeros(3, len(waves), int(lengths.max()), 4)
        for i, w in enumerate(waves):
            states[:, i, : lengths[i]] = float(w[0])
        return states, lengths


def _waves(values, n=1600):
    return [np.full(n + 160 * i, v, dtype=np.float32) for i, v in enumerate(values)]


def test_second_pass_is_all_hits_and_encodes_nothing(tmp_path):
    enc = CountingEncoder()
    cache = F.FeatureCache(tmp_path, "enc-a")
    digests = F.speech_features(cache, enc, _waves([0.1, 0.2, 0.3]), batch_size=2)
    assert (cache.stats.hits, cache.stats.misses, enc.seen) == (0, 3, 3)
    again = F.FeatureCache(tmp_path, "enc-a")
    assert F.speech_features(again, enc, _waves([0.1, 0.2, 0.3])) == digests
    assert (again.stats.hits, again.stats.misses, enc.seen) == (3, 0, 3)
    stored = again.load(digests[1])["hidden"]
    assert stored.shape == (3, 11, 4) and stored.dtype == torch.float16


def test_changed_audio_or_encoder_is_a_miss(tmp_path):
    enc = CountingEncoder()
    F.speech_features(F.FeatureCache(tmp_path, "enc-a"), enc, _waves([0.1, 0.2]))
    changed = F.FeatureCache(tmp_path, "enc-a")
    F.speech_features(changed, enc, _waves([0.1, 0.25]))
    assert (changed.stats.hits, changed.stats.misses) == (1, 1)
    other = F.FeatureCache(tmp_path, "enc-b")
    F.speech_features(other, enc, _waves([0.1, 0.2]))
    assert other.stats.misses == 2


def test_key_covers_name_and_cut():
    keys = {encoder_key("whisper-tiny.en", None), encoder_key("whisper-tiny.en", 2),
            encoder_key("openai/whisper-base", None)}
    assert len(keys) == 3


def test_text_features_store_every_layer_and_token_ids(tmp_path):
    enc = TextEncoder(layers=3)
    assert enc.n_layers == 3
    cache = F.FeatureCache(tmp_path, enc.key)
    texts = ["I am so happy today", "This is awful", "I am so happy today"]
    digests = F.text_features(cache, enc, texts)
    assert digests[0] == digests[2] and cache.stats.misses == 2 and cache.stats.hits == 1
    entry = cache.load(digests[0])
    n_tokens = len(enc.tokenizer("I am so happy today")["input_ids"])
    assert entry["hidden"].shape == (4, n_tokens, enc.dim)
    assert entry["input_ids"].tolist() == enc.tokenizer("I am so happy today")["input_ids"]
    # batching and padding do not change a text's states
    alone = enc(["This is awful"])[0][:, 0].half()
    torch.testing.assert_close(cache.load(digests[1])["hidden"], alone, atol=2e-3, rtol=0)


def test_feature_store_reads_back_by_utterance_and_text(tmp_path):
    enc = CountingEncoder()
    speech = F.FeatureCache(tmp_path, "speech-key")
    digests = F.speech_features(speech, enc, _waves([0.1, 0.2]))
    text_enc = TextEncoder(layers=1)
    F.text_features(F.FeatureCache(tmp_path, text_enc.key), text_enc, ["hello", "bye now"])
    F.write_index(tmp_path, ["u1", "u2"], digests, speech={"main": "speech-key"})
    F.write_index(tmp_path, text=F.cut_keys({None: text_enc.key}, None))
    store = F.FeatureStore(tmp_path)
    used = dict(F.ENCODER_USE)
    second = store.speech(["u2"], layer=-1)[0]
    assert second.dtype == torch.float32 and second.shape == (11, 4)
    assert torch.allclose(second, torch.full((11, 4), 0.2), atol=1e-3)
    assert store.speech(["u1"], layer=None)[0].shape == (3, 10, 4)
    assert store.text(["bye now"], layer=0)[0].shape[-1] == text_enc.dim
    assert store.token_ids(["hello"])[0].tolist() == text_enc.tokenizer("hello")["input_ids"]
    # four reads served from the cache (states and token ids), no encoder run: what
    # metrics.json reports
    assert F.ENCODER_USE["cache_reads"] - used.get("cache_reads", 0) == 4
    assert F.ENCODER_USE["encoder_forwards"] == used.get("encoder_forwards", 0)
    from mmser.report.results import write_metrics

    written = write_metrics(tmp_path / "m.json", pd.DataFrame(
        {"system": ["s"], "seed": [0], "fold": [0], "n": [1], "UA": [0.5]}))
    assert written["encoder_use"]["cache_reads"] == F.ENCODER_USE["cache_reads"]
    import pytest

    with pytest.raises(KeyError, match="'u3'.*features.splits"):
        store.speech(["u3"])
    with pytest.raises(KeyError, match="cut 2.*speech_cuts"):
        store.speech(["u1"], cut=2)
    with pytest.raises(KeyError, match="no entry"):
        store.text(["never encoded"])
    with pytest.raises(FileNotFoundError, match="features stage"):
        F.FeatureStore(tmp_path / "empty")
