import json

import numpy as np
import torch

from mmser.encode import features as F
from mmser.encode.encoders import TextEncoder, encoder_key
from tiny_models import tiny_models


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


def test_key_covers_name_cut_weights_vocabulary_and_code(monkeypatch):
    model = torch.nn.Linear(3, 2)
    keys = {encoder_key("whisper-tiny.en", None, model), encoder_key("whisper-tiny.en", 2, model),
            encoder_key("openai/whisper-base", None, model),
            encoder_key("whisper-tiny.en", None, model, {"a": 0}),
            encoder_key("whisper-tiny.en", None, torch.nn.Linear(3, 2))}
    assert len(keys) == 5
    assert encoder_key("whisper-tiny.en", None, model) == encoder_key("whisper-tiny.en", None,
                                                                       model)
    # the code that encodes is part of the key: another source digest, another key
    from mmser.encode import encoders

    before = encoder_key("whisper-tiny.en", None, model)
    monkeypatch.setattr(encoders, "code_digest", lambda *modules: "edited")
    assert encoder_key("whisper-tiny.en", None, model) != before


def test_new_encoder_weights_miss_the_cache(tmp_path):
    """The same model name with new weights (a new revision in the Hugging Face cache, a
    re-trained local folder) gets its own entries: the old weights' states are not served."""
    from transformers import BertModel

    _, text = tiny_models(tmp_path / "models")
    old = TextEncoder(text)
    F.text_features(F.FeatureCache(tmp_path, old.key), old, ["hello there"])
    torch.manual_seed(1)
    BertModel(BertModel.config_class.from_pretrained(text)).save_pretrained(text)
    new = TextEncoder(text)
    assert new.name == old.name and new.key != old.key
    cache = F.FeatureCache(tmp_path, new.key)
    F.text_features(cache, new, ["hello there"])
    assert (cache.stats.hits, cache.stats.misses) == (0, 1)
    assert TextEncoder(text).key == new.key  # and the same weights hit again


def test_a_truncated_entry_is_set_aside_and_encoded_again(tmp_path, caplog):
    enc = CountingEncoder()
    cache = F.FeatureCache(tmp_path, "enc-a")
    digests = F.speech_features(cache, enc, _waves([0.1, 0.2]))
    path = cache.path(digests[0])
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a copy cut short, a full disk
    again = F.FeatureCache(tmp_path, "enc-a")
    with caplog.at_level("WARNING", logger="mmser"):
        F.speech_features(again, enc, _waves([0.1, 0.2]))
    assert (again.stats.hits, again.stats.misses) == (1, 1)
    assert path.read_bytes() == whole  # encoded again, whole
    assert path.with_name(path.name + ".corrupt").is_file()  # nothing lost
    assert str(path) in caplog.text and "truncated" in caplog.text
    path.write_bytes(b"not safetensors")
    assert not F.FeatureCache(tmp_path, "enc-a").has(digests[0])
    assert "not a safetensors file" in caplog.text or "unreadable" in caplog.text


def test_prune_keeps_only_the_encoders_the_index_names(tmp_path):
    enc = CountingEncoder()
    digests = F.speech_features(F.FeatureCache(tmp_path, "old-weights"), enc, _waves([0.1]))
    F.speech_features(F.FeatureCache(tmp_path, "new-weights"), enc, _waves([0.1]))
    F.write_index(tmp_path, ["u1"], digests, speech={"main": "new-weights"})
    assert F.prune(tmp_path) == ["old-weights"]
    assert (tmp_path / "new-weights").is_dir() and not (tmp_path / "old-weights").exists()


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
    # four reads served from the cache (states and token ids), no encoder run: what a
    # stage's run.json reports
    assert F.ENCODER_USE["cache_reads"] - used.get("cache_reads", 0) == 4
    assert F.ENCODER_USE["encoder_forwards"] == used.get("encoder_forwards", 0)
    from mmser.report.headline import write_metrics

    write_metrics(tmp_path / "m.json", numbers={"n": 1})
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["encoder_use"]["cache_reads"] == F.ENCODER_USE["cache_reads"]
    import pytest

    with pytest.raises(KeyError, match="'u3'.*features.splits"):
        store.speech(["u3"])
    with pytest.raises(KeyError, match="cut 2.*speech_cuts"):
        store.speech(["u1"], cut=2)
    with pytest.raises(KeyError, match="no entry"):
        store.text(["never encoded"])
    with pytest.raises(FileNotFoundError, match="features stage"):
        F.FeatureStore(tmp_path / "empty")


def test_an_unreadable_entry_read_by_a_paper_stage_names_the_file(tmp_path):
    enc = CountingEncoder()
    digests = F.speech_features(F.FeatureCache(tmp_path, "speech-key"), enc, _waves([0.1]))
    F.write_index(tmp_path, ["u1"], digests, speech={"main": "speech-key"})
    path = F.FeatureCache(tmp_path, "speech-key").path(digests[0])
    path.write_bytes(path.read_bytes()[:40])
    import pytest

    with pytest.raises(RuntimeError, match="unreadable cache entry.*dvc repro features") as err:
        F.FeatureStore(tmp_path).speech(["u1"])
    assert str(path) in str(err.value) and "'u1'" in str(err.value)


def test_a_read_keeps_one_entry_at_a_time_and_returns_only_its_layer(tmp_path, monkeypatch):
    # float16 entries (as the features stage writes them) and float32 ones (a view of a
    # float32 slice would keep every layer of its entry alive)
    from safetensors.torch import save_file

    half = F.speech_features(F.FeatureCache(tmp_path, "half"), CountingEncoder(),
                             _waves([0.1, 0.2, 0.3]))
    full = F.FeatureCache(tmp_path, "full")
    full.dir.mkdir(parents=True)
    for i, digest in enumerate(half):
        save_file({"hidden": torch.randn(3, 10 + i, 4)}, str(full.path(digest)))
    ids = ["u1", "u2", "u3"]
    F.write_index(tmp_path, ids, half, speech={"main": "half", "2": "full"})
    store = F.FeatureStore(tmp_path)
    import weakref

    alive, peak = [], []
    load = store._load

    def counting_load(*args):
        entry = load(*args)
        peak.append(sum(ref() is not None for ref in alive) + 1)
        alive.append(weakref.ref(entry))
        return entry

    monkeypatch.setattr(store, "_load", counting_load)
    for cut, name in ((F.MAIN, "half"), (2, "full")):
        for layer in (-1, 0, None):
            peak.clear()
            got = store.speech(ids, layer=layer, cut=cut)
            assert max(peak) == 1  # no earlier entry alive when the next one is read
            cache = F.FeatureCache(tmp_path, name)
            for digest, tensor in zip(half, got):
                states = cache.load(digest)["hidden"]
                expected = (states if layer is None else states[layer]).float()
                assert tensor.dtype == torch.float32 and torch.equal(tensor, expected)
                assert tensor.untyped_storage().nbytes() == tensor.numel() * 4


def _store_of_two(tmp_path, stream: bool):
    enc = CountingEncoder()
    digests = F.speech_features(F.FeatureCache(tmp_path, "speech-key"), enc, _waves([0.1, 0.2]))
    text_enc = TextEncoder(layers=1)
    F.text_features(F.FeatureCache(tmp_path, text_enc.key), text_enc, ["hello", "bye now"])
    F.write_index(tmp_path, ["u1", "u2"], digests, speech={"main": "speech-key"})
    F.write_index(tmp_path, text=F.cut_keys({None: text_enc.key}, None))
    return F.FeatureStore(tmp_path, stream=stream)


def test_a_streaming_store_returns_references_that_load_what_a_read_returns(tmp_path):
    from mmser.fingerprint import value_digest
    from mmser.training.data import collate

    held, streamed = _store_of_two(tmp_path, False), _store_of_two(tmp_path, True)
    for layer in (-1, 0, None):
        refs = streamed.speech(["u1", "u2"], layer=layer)
        assert all(isinstance(r, F.StateRef) for r in refs)
        for ref, tensor in zip(refs, held.speech(["u1", "u2"], layer=layer)):
            assert ref.shape == tuple(tensor.shape) and len(ref) == len(tensor)
            assert torch.equal(ref.load(), tensor)
            assert torch.equal(ref.cropped(4).load(), tensor[:, :4] if layer is None else tensor[:4])
            assert ref.cropped(4).shape == tuple(ref.cropped(4).load().shape)
        texts = streamed.text(["hello", "bye now"], layer=layer)
        for ref, tensor in zip(texts, held.text(["hello", "bye now"], layer=layer)):
            assert torch.equal(ref.load(), tensor)
    every = streamed.speech(["u2"], layer=None)[0].every_state_time_first()
    assert torch.equal(every.load(), held.speech(["u2"], layer=None)[0].transpose(0, 1).half())
    assert every.shape == tuple(every.load().shape) and len(every) == 11
    # a batch of references is read when collated, padded as tensors would be
    refs = streamed.speech(["u1", "u2"])
    batch, expected = collate([{"s": r} for r in refs]), collate(
        [{"s": t} for t in held.speech(["u1", "u2"])])
    assert torch.equal(batch["s"], expected["s"]) and torch.equal(batch["s_mask"], expected["s_mask"])
    # a run's fingerprint over references names the entries (content-addressed), the layer
    # and the crop: the same states give the same digest, others another
    again = _store_of_two(tmp_path, True).speech(["u1", "u2"])
    assert value_digest(refs) == value_digest(again)
    assert value_digest(refs) != value_digest(streamed.speech(["u2", "u1"]))
    assert value_digest(refs) != value_digest(streamed.speech(["u1", "u2"], layer=0))
    assert value_digest(refs) != value_digest([r.cropped(4) for r in refs])


def test_clips_are_read_once_for_their_keys_then_only_when_encoded(tmp_path):
    # a corpus held as a list of float32 waves does not fit in memory at scale: each clip is
    # read once for its cache key, then only when encoded, at most one batch at a time
    import weakref

    from mmser.corpus.audio import Clips, load_audio, write_audio

    paths = []
    for i in range(5):
        paths.append(tmp_path / "audio" / f"u{i}.wav")
        write_audio(paths[-1], np.full(1600 + 160 * (4 - i), 0.1 * (i + 1), np.float32))

    class CountingClips(Clips):
        def __init__(self, paths):
            super().__init__(paths)
            self.reads, self.alive, self.most_alive = 0, [], 0

        def __getitem__(self, index):
            wave = super().__getitem__(index)
            self.reads += 1
            self.alive = [ref for ref in self.alive if ref() is not None] + [weakref.ref(wave)]
            self.most_alive = max(self.most_alive, len(self.alive))
            return wave

    plain = [load_audio(p).wave for p in paths]
    clips = CountingClips(paths)
    digests, sizes = F.clip_digests(clips)
    assert clips.reads == 5 and clips.most_alive <= 2  # the one read and the one before
    assert (digests, sizes) == F.clip_digests(plain)
    # two clips already cached (by another cut, say): only the other three are read
    cache = F.FeatureCache(tmp_path / "lazy", "enc")
    F.speech_features(cache, CountingEncoder(), plain[1:3])
    clips.reads, clips.alive, clips.most_alive = 0, [], 0
    got = F.speech_features(cache, CountingEncoder(), clips, batch_size=2,
                            digests=digests, sizes=sizes)
    assert got == digests and clips.reads == 3 and clips.most_alive <= 2
    # ... and nothing at all once everything is cached
    clips.reads = 0
    F.speech_features(cache, CountingEncoder(), clips, batch_size=2, digests=digests, sizes=sizes)
    assert clips.reads == 0
    # the entries are the bytes a list of every wave gives
    eager = F.FeatureCache(tmp_path / "eager", "enc")
    assert F.speech_features(eager, CountingEncoder(), plain, batch_size=2) == digests
    for d in digests:
        assert cache.path(d).read_bytes() == eager.path(d).read_bytes()


class LayeredEncoder(CountingEncoder):
    """CountingEncoder whose 3 hidden states differ: state k holds the clip's value + k."""

    def __call__(self, waves):
        states, lengths = super().__call__(waves)
        return states + torch.arange(3.0).view(3, 1, 1, 1), lengths


def _kept_store(root, keep, stream=False):
    """A features folder of two clips whose speech cache keeps `keep` (None: every state)."""
    cache = F.FeatureCache(root, "speech-key", keep)
    digests = F.speech_features(cache, LayeredEncoder(), _waves([0.1, 0.2]))
    F.write_index(root, ["u1", "u2"], digests, speech={"main": cache.dir.name})
    return F.FeatureStore(root, stream=stream), cache


def test_a_cache_keeping_some_states_holds_only_those_and_reads_them_by_index(tmp_path):
    import pytest

    full, _ = _kept_store(tmp_path / "full", None)
    kept, cache = _kept_store(tmp_path / "kept", [0, -1])
    # the folder names what it keeps, the entries hold those two of the three states
    assert cache.dir.name == "speech-key-S-1.0"
    assert json.loads((cache.dir / F.LAYOUT).read_text()) == {"n_states": 3, "kept": [0, 2],
                                                              "pooled": False}
    digest = kept.speech_digest("u1")
    assert cache.load(digest)["hidden"].shape == (2, 10, 4)
    assert cache.path(digest).stat().st_size < F.FeatureCache(
        tmp_path / "full", "speech-key").path(digest).stat().st_size
    # read by the encoder's own indices, the kept states equal the full cache's
    assert kept.depth("speech") == full.depth("speech") == 2
    for layer in (0, 2, -1, [0, -1], [2, 0]):
        for a, b in zip(kept.speech(["u1", "u2"], layer=layer),
                        full.speech(["u1", "u2"], layer=layer)):
            assert torch.equal(a, b)
    assert kept.speech(["u2"], layer=[2, 0])[0][:, 0, 0].tolist() == pytest.approx([2.2, 0.2],
                                                                                   abs=1e-3)
    assert kept.absolute("speech", [-1, 0]) == [2, 0] and kept.absolute("speech", None) is None
    # a state not kept, or all of them, is a clear error that names the setting
    with pytest.raises(KeyError, match=r"hidden state 1 is not cached \(kept: \[0, 2\] of 3\)"
                                       r".*features.speech_states"):
        kept.speech(["u1"], layer=1)
    with pytest.raises(KeyError, match="not every one.*features.speech_states"):
        kept.speech(["u1"], layer=None)
    with pytest.raises(IndexError, match="hidden state 3 does not exist"):
        kept.absolute("speech", [3])
    # streamed references read the same kept states, one or a stack
    streamed, _ = _kept_store(tmp_path / "kept", [0, -1], stream=True)
    for layer in (0, -1, [0, -1]):
        for ref, tensor in zip(streamed.speech(["u1", "u2"], layer=layer),
                               full.speech(["u1", "u2"], layer=layer)):
            assert ref.shape == tuple(tensor.shape) and torch.equal(ref.load(), tensor)
            assert torch.equal(ref.cropped(4).load(), tensor[..., :4, :])
    stack = streamed.speech(["u2"], layer=[0, -1])[0].every_state_time_first()
    assert stack.shape == (11, 2, 4) and torch.equal(
        stack.load(), full.speech(["u2"], layer=[0, -1])[0].transpose(0, 1).half())


def test_keeping_every_state_is_the_plain_cache_and_a_bad_index_stops_before_encoding(tmp_path):
    import pytest

    assert F.kept_states([0, -2, 2], 3) is None  # all three: the plain cache
    assert F.kept_states([-1, -1], 3) == (2,) and F.kept_states([], 3) == ()
    with pytest.raises(ValueError, match=r"hidden states \[5\] do not exist"):
        F.speech_features(F.FeatureCache(tmp_path, "k", [5]), LayeredEncoder(), _waves([0.1]))
    assert not list((tmp_path / "k-S5").glob("*.safetensors"))
    # a folder written by hand (no layout) holds every state
    cache = F.FeatureCache(tmp_path, "by-hand")
    cache.dir.mkdir()
    from safetensors.torch import save_file

    save_file({"hidden": torch.zeros(5, 2, 4)}, str(cache.path("d")))
    assert cache.depth() == 4 and cache.position(-1) == -1


def test_the_features_stage_keeps_the_configured_states_and_the_last(tmp_path):
    from mmser.config import Params

    P = Params.from_dict({"features": {"speech_cuts": [1], "text_cuts": [],
                                       "speech_states": [0], "text_states": []}})
    texts = ["hello", "bye now"]
    keys, stats = F.cache_cuts("text", tmp_path, P.encoders, P.features, texts)
    [(layers, name)] = keys.items()
    cache = F.FeatureCache(tmp_path, name)
    assert layers is None and stats[name].misses == 2
    assert cache.layout.kept == (cache.layout.n_states - 1,)  # only the last (the probe's)
    assert cache.load(F.text_digest("hello"))["hidden"].shape[0] == 1
    waves = _waves([0.1, 0.2], n=16000)
    keys, _ = F.cache_cuts("speech", tmp_path, P.encoders, P.features, waves)
    assert set(keys) == {None, 1}
    layout = F.FeatureCache(tmp_path, keys[None]).layout  # Whisper tiny.en: 5 states
    assert layout == F.Layout(5, (0, 4))
    # its 1-layer cut has two states, 0 and the last: every one, as a plain cache
    assert F.FeatureCache(tmp_path, keys[1]).layout == F.Layout(2, None)


def test_a_pooled_cache_holds_the_time_average_the_probe_reads(tmp_path):
    import pytest

    full = F.FeatureCache(tmp_path, "speech-key")
    digests = F.speech_features(full, LayeredEncoder(), _waves([0.1, 0.2]))
    pooled = F.FeatureCache(tmp_path, "speech-key", [-1], pooled=True)
    assert F.speech_features(pooled, LayeredEncoder(), _waves([0.1, 0.2])) == digests
    assert pooled.dir.name == "speech-key-S-1-pooled" and pooled.layout.pooled
    assert pooled.load(digests[1])["hidden"].shape == (1, 1, 4)  # one state, one frame
    # the probe's input is the same either way; far fewer bytes on disk
    assert np.allclose(F.pooled(pooled, digests), F.pooled(full, digests), atol=1e-3)
    assert pooled.path(digests[1]).stat().st_size < full.path(digests[1]).stat().st_size / 4
    F.write_index(tmp_path, ["u1", "u2"], digests, speech={"main": pooled.dir.name})
    with pytest.raises(KeyError, match="time averages only.*features.speech_states"):
        F.FeatureStore(tmp_path).speech(["u1"], layer=-1)
    assert F.FeatureStore(tmp_path).depth("speech") == 2
