"""The VCEMO stage: losses by hand, masks, the momentum encoder, augmentation, the
protocol, repeatability, Mandarin text, the paper profile and the notebook."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from mmser.training import data as D
from mmser.encode import features as FS
from mmser.corpus import manifest, synth
from mmser.models import vcemo as V
from mmser.papers import vcemo as R
from mmser.config import Params, ParamsError, Training, Vcemo

ROOT = Path(__file__).resolve().parents[1]
TRAIN = Training(progress=False)
TINY = Vcemo(dim=8, heads=2, batch_size=8, max_epochs=1, queue_size=16, n_mels=16,
             hop_ms=30, n_augment=1, word_dim=8)


def _batch(lengths=(30, 20), words=(5, 3), dim=12, n_mels=16):
    torch.manual_seed(0)
    t, w = max(lengths), max(words)
    return {"mel": torch.randn(len(lengths), t, n_mels),
            "mel_mask": torch.arange(t)[None] < torch.tensor(lengths)[:, None],
            "words": torch.randn(len(lengths), w, dim),
            "words_mask": torch.arange(w)[None] < torch.tensor(words)[:, None],
            "sent": torch.randn(len(lengths), dim), "label": torch.tensor([0, 1][:len(lengths)])}


@pytest.fixture(autouse=True)
def one_thread():
    """As in the notebook: these small ops only lose from threads on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- losses


def test_supcon_matches_hand_computation():
    z = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    y = torch.tensor([0, 0, 1])
    t = 0.5
    s = z @ z.T / t
    # anchor 0: positive 1, contrast {1, 2}; anchor 1: positive 0, contrast {0, 2};
    # anchor 2: no positive (skipped)
    l0 = -(s[0, 1] - torch.logsumexp(s[0, [1, 2]], 0))
    l1 = -(s[1, 0] - torch.logsumexp(s[1, [0, 2]], 0))
    expected = (l0 + l1) / 2
    torch.testing.assert_close(V.supcon_loss(z, y, z, y, t, exclude_self=True), expected)
    # MoCo form: a separate contrast set (keys + queue), the anchor's own key a positive
    keys = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ky = torch.tensor([0, 1])
    s = z[:1] @ keys.T / 1.0
    manual = -(s[0, 0] - torch.logsumexp(s[0], 0))
    torch.testing.assert_close(V.supcon_loss(z[:1], y[:1], keys, ky, 1.0), manual)


def test_total_loss_is_the_papers_weighted_mean():
    torch.manual_seed(0)
    batch = _batch()
    net = V.VcemoNet(V.MODALITIES, 16, 12, 12, dim=8, heads=2, dropout=0.0)
    # momentum 1: the key encoder stays the initial copy, so keys equal the queries
    model = V.VcemoModel(net, 2, alpha=3.0, temperature=0.7, queue_size=8, momentum=1.0,
                         dropout=0.0)
    model.train()
    out = model(batch)
    assert (model.queue_labels[:2] == batch["label"]).all()  # the step enqueued its keys
    # the same pass by hand, with the queue emptied again: keys = queries here
    model.queue_labels.fill_(-1)
    fused = model.net(batch)
    z = F.normalize(model.projector(fused), dim=-1)
    ce = F.cross_entropy(model.predictor(fused), batch["label"])
    sc = V.supcon_loss(z, batch["label"], z, batch["label"], 0.7)
    assert sc > 0
    torch.testing.assert_close(out["loss"], (ce + 3.0 * sc) / 4.0, rtol=1e-5, atol=1e-5)


def test_momentum_encoder_gets_no_gradient_and_follows_the_ema():
    torch.manual_seed(0)
    model = V.VcemoModel(V.VcemoNet(V.MODALITIES, 16, 12, 12, dim=8, heads=2), 2,
                         alpha=1.0, queue_size=8, momentum=0.9)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p is k for k in model._key_params() for p in trainable)
    opt = torch.optim.Adam(trainable, 1e-2)
    q0 = [p.detach().clone() for p in model._query_params()]
    k0 = [p.detach().clone() for p in model._key_params()]
    model.train()
    model(_batch())["loss"].backward()
    assert all(p.grad is None for p in model._key_params())
    opt.step()
    for k, k_old, q_old in zip(model._key_params(), k0, q0):
        torch.testing.assert_close(k, 0.9 * k_old + 0.1 * q_old)
    assert not all(torch.equal(a, b) for a, b in zip(model._query_params(), q0))


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize("make", [
    lambda: V.VcemoNet(V.MODALITIES, 16, 12, 12, dim=8, heads=2),
    lambda: V.VcemoNet(("acoustic",), 16, 12, 12, dim=8, heads=2),
    lambda: V.VcemoNet(("words", "bert"), 16, 12, 12, dim=8, heads=2),
    lambda: V.YoonMHA(16, 12, 2, 8, hops=1),
    lambda: V.YoonMHA(16, 12, 2, 8, hops=3),
    lambda: V.Xu2019(16, 12, 2, 8),
])
def test_padding_does_not_change_a_sequence_output(make):
    torch.manual_seed(0)
    model = make().eval()
    batch = _batch(lengths=(31, 17), words=(6, 2))
    alone = {k: v[1:2] for k, v in batch.items()}
    alone["mel"], alone["mel_mask"] = alone["mel"][:, :17], alone["mel_mask"][:, :17]
    alone["words"], alone["words_mask"] = alone["words"][:, :2], alone["words_mask"][:, :2]
    out = model(batch)
    single = model(alone)
    get = (lambda o: o["logits"]) if isinstance(out, dict) else (lambda o: o)
    assert get(out).shape[0] == 2
    torch.testing.assert_close(get(out)[1:], get(single), atol=1e-5, rtol=1e-4)


def test_multi_hop_attention_matches_a_hand_computation():
    torch.manual_seed(0)
    model = V.YoonMHA(16, 12, 3, dim=8, dropout=0.0, hops=2).eval()
    batch = _batch(lengths=(30, 20), words=(5, 3))
    logits = model(batch)["logits"]
    for b in range(2):
        n_frames, n_words = int(batch["mel_mask"][b].sum()), int(batch["words_mask"][b].sum())
        audio, (h, _) = model.audio(batch["mel"][b:b + 1, :n_frames:2])  # every other frame
        text, _ = model.text(batch["words"][b:b + 1, :n_words])
        audio, text = audio[0], text[0]
        a_last = torch.cat([h[0, 0], h[1, 0]])  # final forward and backward states
        weights = torch.stack([a_last @ t for t in text]).softmax(0)
        h1 = sum(w * t for w, t in zip(weights, text))  # hop 1: audio -> text
        weights = torch.stack([h1 @ a for a in audio]).softmax(0)
        h2 = sum(w * a for w, a in zip(weights, audio))  # hop 2: H1 -> audio
        torch.testing.assert_close(logits[b], model.head(torch.cat([h1, h2])),
                                   atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="hops"):
        V.YoonMHA(16, 12, 3, hops=4)


def test_align_stretches_words_onto_frames():
    x = torch.arange(3.0)[None, :, None].expand(1, 3, 2)
    out = V.align(x, torch.tensor([[True, True, True]]),
                  torch.tensor([[True] * 6 + [False, False]]))
    assert out[0, :, 0].tolist() == [0, 0, 1, 1, 2, 2, 0, 0]


def test_modalities_are_checked():
    with pytest.raises(ValueError, match="subset"):
        V.VcemoNet(("video",), 16, 12, 12)


# ------------------------------------------------------------------- inputs and text


def test_augmentations_are_seeded_and_change_the_input():
    cfg = R.MelConfig(16, 20)
    wave = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    clean = R.log_mel(R._stft(wave, cfg), cfg)
    assert clean.shape == (51, 16)
    for kind in R.AUGMENTATIONS:
        a = R.augment(wave, kind, np.random.default_rng(1), cfg)
        b = R.augment(wave, kind, np.random.default_rng(1), cfg)
        assert torch.equal(a, b) and a.shape[1] == 16
        assert not torch.allclose(a[:min(len(a), 51)], clean[:min(len(a), 51)], atol=1e-2)
    with pytest.raises(ValueError, match="unknown augmentation"):
        R.augment(wave, "reverb", np.random.default_rng(0), cfg)


def test_one_view_per_clip_still_uses_every_augmentation_and_is_seeded(tmp_path,
                                                                        monkeypatch):
    from mmser.corpus.audio import write_audio

    paths = []
    for i in range(6):
        wave = (0.3 * np.sin(np.arange(8000) * (0.03 + 0.01 * i))).astype(np.float32)
        paths.append(tmp_path / f"clip{i}.wav")
        write_audio(paths[-1], wave)
    cfg = R.MelConfig(16, 20)
    real = R.augment

    def kinds_of(seed: int, cache: str) -> list[str]:
        used = []

        def spy(wave, kind, rng, cfg, **options):
            used.append(kind)
            return real(wave, kind, rng, cfg, **options)
        monkeypatch.setattr(R, "augment", spy)
        views = R.mel_views(paths, tmp_path / cache, cfg, n_augment=1, seed=seed)
        assert len(views) == 6 and all(len(v) == 2 for v in views)
        assert not any(torch.equal(clean, aug) for clean, aug in views)
        return used

    first = kinds_of(0, "a")
    assert first == [R.augmentation_kind(i, 1, 0) for i in range(6)]
    assert set(first[:3]) == set(R.AUGMENTATIONS)  # three clips, three kinds
    assert kinds_of(0, "b") == first  # the same seed, the same kind per clip
    assert kinds_of(1, "c") != first  # the seed shifts the rotation
    assert [R.augmentation_kind(0, k) for k in (1, 2, 3)] == list(R.AUGMENTATIONS)


def test_chinese_segmentation_and_vocabulary():
    assert R.segment("我今天很高兴！") == ["我", "今", "天", "很", "高", "兴"]
    assert R.segment("I'm SO happy, today") == ["i'm", "so", "happy", "today"]
    vocab = R.build_vocab(["我很高兴", "我很难过"])
    assert vocab["<pad>"] == 0 and vocab["<unk>"] == 1 and len(vocab) == 2 + 6
    with pytest.raises(ValueError, match="segmentation"):
        R.segment("x", "spacy")


def test_jieba_cuts_a_sentence_of_the_mandarin_material_into_its_words():
    material = yaml.safe_load(R.CMN_TEXT.read_text())
    assert "我 觉得 {feeling}" in material["frames"]
    assert "特别 开心" in material["kinds"]["positive"]["feeling"]
    # the material's spaces mark its words; the transcript is written without them
    assert R.segment("我觉得特别开心！", "jieba") == ["我", "觉得", "特别", "开心"]
    assert R.segment("我觉得特别开心！") == ["我", "觉", "得", "特", "别", "开", "心"]  # auto
    vocab = R.build_vocab(["我觉得特别开心", "我觉得很难过"], "jieba")
    assert {"觉得", "开心", "难过"} <= set(vocab) and "觉" not in vocab


# ------------------------------------------------------------------------ fixtures


def make_fixture(root: Path, n_labelled: int = 32) -> Path:
    """A tiny synthesised corpus (4 voices, 2 sessions) and a feature store with fake
    text states in the features stage's layout (the stage reads only text features)."""
    df = synth.synthesise(root / "corpus", seed=0, n_speakers=4, n_sessions=2,
                          n_labelled=n_labelled, n_read=0, workers=1, progress=False)
    df["asr_text"] = df["text"].str.lower()
    manifest.write(df, root / "manifest.csv")
    manifest.write_corpus_info(root / "corpus", root / "corpus", name="synthetic",
                               protocol={"name": "loso"})
    texts = sorted(set(df["text"]) | set(df["asr_text"]))
    gen = torch.Generator().manual_seed(0)
    cache = FS.FeatureCache(root / "features", "text-main")
    cache.fill([FS.text_digest(t) for t in texts], texts, [1] * len(texts),
               lambda b: [{"hidden": torch.randn(3, len(t.split()) + 2, 12, generator=gen)
                           .half(), "input_ids": torch.arange(len(t.split()) + 2)}
                          for t in b], batch_size=16)
    ids = df["utt_id"].tolist()
    FS.write_index(root / "features", ids, ids, text={"main": "text-main"})
    return root


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("vcemo"))


def _experiment(root, cfg=TINY, cache=None):
    corpus = D.load_corpus(root / "corpus", root / "manifest.csv")
    store = FS.FeatureStore(root / "features")
    return R.Experiment(corpus, lambda t: store.text(t, layer=None), cfg,
                        cache or root / "mels", seed=0)


def test_training_items_alone_carry_augmented_views_and_never_the_test_fold(fixture,
                                                                             tmp_path):
    exp = _experiment(fixture)
    seen = []
    items = exp.items

    def spy(rows, augment=False):
        out = items(rows, augment)
        seen.append((frozenset(rows["utt_id"]), len(out)))
        return out
    exp.items = spy
    preds = exp.run(R.system("ce"), tmp_path, TRAIN, [0])
    for fold in exp.corpus.folds(seed=0):
        train, val = frozenset(fold.train()["utt_id"]), frozenset(fold.val()["utt_id"])
        fold.select(checkpoint="recorded by cross_validate")
        test = frozenset(fold.test()["utt_id"])
        assert (train, 2 * len(train)) in seen  # clean + one augmented view each
        assert (val, len(val)) in seen and (test, len(test)) in seen
        assert not train & test and not val & test
    assert set(preds["utt_id"]) == set(exp.corpus.labelled["utt_id"])


def test_streamed_inputs_are_references_that_load_the_tensors_of_the_plain_run(fixture):
    """training.stream_states: the items hold references, read per batch, whose batches
    equal the plain run's (float32 of the same float16 log-mels and text states)."""
    plain = _experiment(fixture)
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    store = FS.FeatureStore(fixture / "features", stream=True)
    streamed = R.Experiment(corpus, lambda t: store.text(t, layer=None), TINY,
                            fixture / "mels", seed=0, stream=True)
    assert streamed.word_dim == plain.word_dim
    for utt, views in plain.mels.items():
        refs = streamed.mels[utt]
        assert all(isinstance(r, FS.StateRef) for r in refs)
        loaded = [r.load() for r in refs]
        assert all(x.dtype == torch.float32 and torch.equal(x, v) for x, v in zip(loaded, views))
        assert [len(r) for r in refs] == [len(v) for v in views]  # buckets without reading
    rows = corpus.labelled
    items, plain_items = streamed.items(rows, augment=True), plain.items(rows, augment=True)
    assert len(items) == len(plain_items) == 2 * len(rows)
    # the items hold no tensors: memory grows with the batch, not with the corpus
    assert not any(isinstance(v, torch.Tensor) for item in items for v in item.values())
    for a, b in zip(D.loader(items, 8, bucket_by="mel"), D.loader(plain_items, 8,
                                                                bucket_by="mel")):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_mel_views_read_one_clip_at_a_time_once_cached(tmp_path, monkeypatch):
    """The views' digests need every clip, but never more than one alive at a time."""
    import weakref

    from mmser.corpus.audio import write_audio

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"clip{i}.wav")
        write_audio(paths[-1], (0.3 * np.sin(np.arange(6000) * (0.02 + 0.01 * i)))
                    .astype(np.float32))
    cfg = R.MelConfig(16, 20)
    first = R.mel_views(paths, tmp_path / "mels", cfg, n_augment=1)
    real, alive, most = R.load_audio, [], [0]

    def spy(path):
        audio = real(path)
        alive.append(weakref.ref(audio.wave))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return audio
    monkeypatch.setattr(R, "load_audio", spy)
    again = R.mel_views(paths, tmp_path / "mels", cfg, n_augment=1)
    assert len(alive) == len(paths) and most[0] <= 2  # the one being read, and its last
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))


def test_same_seed_same_metrics(fixture, tmp_path):
    exp = _experiment(fixture)
    a = exp.run(R.system("supcon"), tmp_path / "a", TRAIN, [0])
    b = exp.run(R.system("supcon"), tmp_path / "b", TRAIN, [0])
    pd.testing.assert_frame_equal(a, b)
    assert {"prob_angry", "pred", "system"} <= set(a.columns)


def test_bad_inputs_give_clear_errors(fixture, tmp_path):
    with pytest.raises(ParamsError, match="did you mean 'alpha'"):
        Params.from_dict({"vcemo": {"alpah": 1.0}})
    with pytest.raises(ParamsError, match="word_vectors"):
        Params.from_dict({"vcemo": {"word_vectors": "glove"}})
    with pytest.raises(ValueError, match="unknown vcemo system"):
        R.system("umons")
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    store = FS.FeatureStore(fixture / "features")
    with pytest.raises(KeyError, match="no entry"):
        store.text(["a text nobody encoded"], layer=None)
    lone = corpus.df.copy()
    lone.loc[lone.index[0], "label"] = "fear"  # a class with a single utterance
    bad = D.Corpus(lone, corpus.audio_root, corpus.protocol, corpus.name)
    with pytest.raises(ValueError, match="class 'fear' has 1"):
        R.Experiment(bad, lambda t: store.text(t, layer=None), TINY, tmp_path, 0)


def test_mandarin_corpus_learned_character_vectors(tmp_path):
    cmn = R.synthesise_mandarin(tmp_path / "cmn", seed=0, n_labelled=24, n_speakers=2,
                                n_sessions=2)
    texts = cmn.labelled["text"].tolist()
    assert all(R.CJK.search(t) and " " not in t for t in texts)
    assert cmn.name == "synthetic_cmn" and len(cmn.labelled) == 24
    gen = torch.Generator().manual_seed(0)

    def fake_states(batch):  # stands in for the text encoder: (layers + 1, tokens, dim)
        return [torch.randn(2, len(t) + 2, 12, generator=gen) for t in batch]
    cfg = replace(TINY, word_vectors="learned", segmenter="chars")
    exp = R.Experiment(cmn, fake_states, cfg, tmp_path / "mels", 0)
    preds = exp.run(R.system("supcon"), tmp_path / "models", TRAIN, [0])
    assert len(preds) == 24 and exp.vocab is not None
    assert all(len(w) == 1 for w in exp.vocab if not w.startswith("<"))


# ------------------------------------------------------------------------- reading


def test_reading_states_results_against_the_paper_and_its_inconsistent_tables():
    result = {"a": "VCEMO (SupCon)", "b": "BERT + Acoustic", "metric": "UA",
              "diff": -0.051, "low": -0.084, "high": -0.019}
    paper = R.paper_gap(result["a"], result["b"])
    full, row = R.PAPER_ABLATION["Embeddings + BERT + Acoustic"][0], \
        R.PAPER_ABLATION["BERT + Acoustic"][0]
    assert f"{full:.2f} vs {row:.2f}" in paper and "Table 3" in paper
    line = R.claim_line(result, paper)
    assert line.startswith("AGAINST THE PAPER") and "[-0.084, -0.019]" in line
    assert "→ agrees" in R.claim_line({**result, "low": 0.01, "high": 0.05}, paper)
    assert "inconclusive" in R.claim_line({**result, "low": -0.01, "high": 0.05}, paper)
    # SupCon vs CE reads Table 2 in the metric asked for
    assert R.paper_gap("VCEMO (SupCon)", "VCEMO", "WA").startswith("73.07 vs 71.23")
    assert R.paper_gap("VCEMO (SupCon)", "VCEMO").startswith("74.10 vs 72.46")
    notes = "\n".join(R.paper_table_notes())
    ua_supcon = R.PAPER_IEMOCAP["VCEMO (SupCon)"][1]
    assert f"F1 {ua_supcon:.2f} equals VCEMO (SupCon)'s IEMOCAP UA" in notes
    assert "Table 1" in notes and "1.5%" in notes


def test_chance_line_tells_chance_from_learning():
    folds = pd.DataFrame({"system": ["a"] * 4 + ["b"] * 4,
                          "UA": [0.20, 0.30, 0.24, 0.28, 0.70, 0.72, 0.68, 0.71]})
    assert "no better than chance" in R.chance_line(folds, "a", 4)
    assert "above chance" in R.chance_line(folds, "b", 4)
    assert "chance 0.250" in R.chance_line(folds, "b", 4)


# -------------------------------------------------------------------- paper profile


def test_the_mandarin_profile_names_a_chinese_asr_segmenter_and_bert():
    """profiles/paper/vcemo_cmn.yaml over vcemo.yaml: a multilingual Whisper forced to
    Chinese, jieba words for the learned vectors (segmenter is read only then), Chinese BERT."""
    from mmser.config import merged

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name in ("vcemo", "vcemo_cmn"):
        params = merged(params, yaml.safe_load((ROOT / f"profiles/paper/{name}.yaml").read_text()))
    p = Params.from_dict(params)
    assert p.transcribe.language == "zh" and not p.transcribe.model.endswith(".en")
    assert (p.vcemo.segmenter, p.vcemo.word_vectors) == ("jieba", "learned")
    assert p.vcemo.text_source == p.features.text_source == "asr_text"
    assert p.encoders.text == "bert-base-chinese"
    assert (p.vcemo.alpha, p.vcemo.lr, p.vcemo.weight_decay) == (0.1, 1e-5, 1e-3)


def test_paper_profile_validates_and_trains_one_step_on_a_tiny_local_bert(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmser.encode.encoders import TextEncoder, bundled_text_dir

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "profiles/paper/vcemo.yaml").read_text())
    for section, values in profile.items():
        params[section] = {**params.get(section, {}), **values}
    p = Params.from_dict(params).vcemo
    assert (p.proj_dim, p.temperature, p.alpha, p.queue_size, p.batch_size, p.lr) == \
        (128, 1.0, 100.0, 16384, 256, 1e-4)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(tmp_path)
    lookup = R.cached_text_states(tmp_path / "cache", str(tmp_path), ["so happy", "so sad"])
    encoder = TextEncoder(str(tmp_path))
    frozen = {k: v.clone() for k, v in encoder.state_dict().items()}
    states = lookup(["so happy", "so sad"])
    batch = D.collate([{"mel": torch.randn(40 + 9 * i, 16),
                        "words": R.word_vectors(s[0], p.max_tokens),
                        "sent": R.sentence_vector(s[-1], p.sentence_pool), "label": i}
                       for i, s in enumerate(states)])
    net = V.VcemoNet(V.MODALITIES, 16, 32, 32, dim=16, heads=p.heads // 4, layers=2,
                     dropout=p.dropout)
    model = V.VcemoModel(net, 2, p.alpha, p.temperature, p.proj_dim, 64, p.momentum)
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], p.lr,
                           weight_decay=p.weight_decay)
    before = [q.detach().clone() for q in model.net.parameters()]
    model.train()
    loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net.parameters()))
    encoder_now = TextEncoder(str(tmp_path)).state_dict()
    assert all(torch.equal(frozen[k], encoder_now[k]) for k in frozen)  # frozen: cached


# ------------------------------------------------------------------------- notebook


@pytest.mark.notebook
def test_notebook_runs_under_papermill(fixture, tmp_path):
    import papermill as pm

    out = tmp_path / "vcemo.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks/vcemo.ipynb"), str(out), kernel_name="python3", cwd=str(ROOT),
        parameters={"vcemo": {"dim": 8, "n_mels": 16, "batch_size": 8, "queue_size": 16,
                              "mandarin": True, "mandarin_n": 24, "mandarin_speakers": 2},
                    "corpus_dir": str(fixture / "corpus"),
                    "manifest_path": str(fixture / "manifest.csv"),
                    "features_dir": str(fixture / "features"),
                    "cache_dir": str(tmp_path / "cache"),
                    "results_dir": str(tmp_path / "results"),
                    "models_dir": str(tmp_path / "models")}, progress_bar=False)
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    systems = set(pd.read_csv(tmp_path / "results/tables/fold_metrics.csv")["system"])
    assert {"VCEMO (SupCon)", "VCEMO", "Yoon et al. 2019 (MHA-2)", "Xu et al. 2019",
            "Embeddings", "BERT + Acoustic"} <= systems
    assert len(systems) == 4 + 6 and 0 <= metrics["VCEMO"]["UA"] <= 1
    assert set(metrics) == {"corpus", "protocol", "profile", "VCEMO (SupCon)", "VCEMO", "claim"}
    run = json.loads((tmp_path / "results/run.json").read_text())
    assert set(run["mandarin"]) == {"VCEMO (SupCon)", "VCEMO"}
    assert set(run["versus_baselines"]) == {"Yoon et al. 2019 (MHA-2)", "Xu et al. 2019"}
    import nbformat

    printed = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                      for o in c.get("outputs", []))
    # 2 SupCon-CE + 2 baselines + 6 ablation comparisons, each with a verdict
    assert "of 10 of the paper's comparisons go against it here" in printed
    assert "chance 0.250" in printed and "equals VCEMO (SupCon)'s IEMOCAP UA" in printed
    tables = tmp_path / "results/tables"
    assert "67.40" in (tables / "comparison.md").read_text()
    assert "57.40" in (tables / "ablation.md").read_text()
    assert (tables / "mandarin.md").is_file()
    figures = {f.name for f in (tmp_path / "results/figures").iterdir()}
    assert {"confusion.png", "tsne_supcon.png", "tsne_ce.png", "ablation_ua.png",
            "curves.png"} <= figures


def test_a_mixed_precision_step_enqueues_its_bf16_keys_in_the_full_precision_queue():
    """The paper profile trains in bf16-mixed: the keys then come out in bf16 and must go
    into the float32 queue (found by the profile's end-to-end test)."""
    torch.manual_seed(0)
    net = V.VcemoNet(V.MODALITIES, 16, 12, 12, dim=8, heads=2, dropout=0.0)
    model = V.VcemoModel(net, 2, alpha=3.0, temperature=0.7, queue_size=8, momentum=1.0,
                         dropout=0.0)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(_batch())
    assert model.queue.dtype == torch.float32
    assert (model.queue_labels[:2] >= 0).all() and model.queue[:2].abs().sum() > 0
