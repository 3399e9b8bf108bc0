"""LE-MER: losses by hand, masks, frozen parts, the fold guard, determinism, the paper
profile on tiny local models, and the notebook under papermill."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml

from mmser.training import data as D
from mmser.models import lemer as LEM
from mmser.models.layers import masked_mean
from mmser.papers import lemer as LE
from mmser.config import Lemer, Params, ParamsError, merged

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny heads: one thread (thread hand-offs dominate on a shared CPU); restored after."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def _batch(lengths_t, lengths_s, d=8, seed=0, c=4):
    g = torch.Generator().manual_seed(seed)
    items = [{"text": torch.randn(lt, d, generator=g), "speech": torch.randn(ls, d, generator=g),
              "label": i % c} for i, (lt, ls) in enumerate(zip(lengths_t, lengths_s))]
    return items


def _lemer(fusion="constraint", d=8, c=4, seed=0, label_attention="normalised"):
    torch.manual_seed(seed)
    return LEM.LEMER("text", LEM.Branch(torch.randn(c, d)), LEM.Branch(torch.randn(c, d)), d, d,
                     c, fusion, label_attention=label_attention)


# --------------------------------------------------------------------------- losses by hand


def test_cosine_map_and_label_loss_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])  # last position is padding
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    g = LEM.cosine_map(h, labels)
    r = 1 / math.sqrt(2)
    assert torch.allclose(g[0, :2], torch.tensor([[1.0, 0.0, r], [0.0, 1.0, r]]))
    mask = torch.tensor([[True, True, False]])
    # eq. 2-3: mean over the two real tokens -> [0.5, 0.5, r]; CE with label 2
    scores = torch.tensor([0.5, 0.5, r])
    expected = -math.log(math.exp(r) / torch.exp(scores).sum().item())
    assert LEM.label_loss(g, mask, torch.tensor([2])).item() == pytest.approx(expected, abs=1e-6)


def test_lemer_loss_is_eq_12_by_hand():
    model = _lemer().eval()
    assert model.label_attention == "normalised"
    batch = D.collate(_batch([3, 2], [4, 5]))
    out = model(batch)
    tm, sm, y = batch["text_mask"], batch["speech_mask"], batch["label"]
    # eq. 7 and 9 by hand on the first utterance (3 tokens, 4 frames)
    ht, hs = batch["text"][0, :3], batch["speech"][0, :4]
    ar = torch.softmax(ht @ model.W(hs).T / math.sqrt(8), -1)
    gt = F.normalize(ht, dim=-1) @ F.normalize(model.text.label, dim=-1).T
    gs = F.normalize(hs, dim=-1) @ F.normalize(model.speech.label, dim=-1).T
    assert torch.allclose(out["A_r"][0, :3, :4], ar, atol=1e-6)
    assert torch.allclose(out["A_l"][0, :3, :4], gt @ gs.T, atol=1e-6)
    assert torch.all(out["A_r"][0, :, 4:] == 0)  # padded frames get no attention
    pairs = tm[:, :, None] & sm[:, None, :]
    # eq. 10, normalised reading: A_l softmaxed over the real frames, like A_r
    al = torch.cat([torch.softmax(out["A_l"][i, :, : int(sm[i].sum())], -1)
                    for i in range(2)], -1)
    ar_real = torch.cat([out["A_r"][i, :, : int(sm[i].sum())] for i in range(2)], -1)
    real = torch.cat([pairs[i, :, : int(sm[i].sum())] for i in range(2)], -1)
    lc = ((al - ar_real)[real] ** 2).mean()
    lm = F.cross_entropy(out["logits"], y)
    lt = F.cross_entropy(masked_mean(out["G_t"], tm), y)
    ls = F.cross_entropy(masked_mean(out["G_s"], sm), y)
    assert out["loss"].item() == pytest.approx((lm + 0.5 * lc + 0.2 * lt + 0.2 * ls).item(),
                                               abs=1e-6)
    assert out["parts"]["L_c"].item() == pytest.approx(lc.item(), abs=1e-6)
    assert out["parts"]["L_m"].item() == pytest.approx(lm.item(), abs=1e-6)
    # the raw reading: eq. 10 as printed, on A_l itself
    raw = _lemer(label_attention="raw").eval()(batch)
    lc_raw = ((raw["A_l"] - raw["A_r"])[pairs] ** 2).mean()
    assert raw["loss"].item() == pytest.approx((lm + 0.5 * lc_raw + 0.2 * lt + 0.2 * ls).item(),
                                               abs=1e-6)
    # ablations without the constraint measure L_c but do not train on it
    vanilla = _lemer("vanilla").eval()(batch)
    assert torch.allclose(vanilla["A"], vanilla["A_r"])
    assert vanilla["parts"]["L_c"].item() == pytest.approx(lc.item(), abs=1e-6)
    assert vanilla["loss"].item() == pytest.approx((lm + 0.2 * lt + 0.2 * ls).item(), abs=1e-6)


@pytest.mark.parametrize("reading", LEM.LABEL_ATTENTIONS)
def test_c1_c2_c3_use_a_l_the_same_way(reading):
    batch = D.collate(_batch([3, 2], [4, 5]))
    c2 = _lemer("sum", label_attention=reading).eval()(batch)
    c3 = _lemer("label", label_attention=reading).eval()(batch)
    assert torch.allclose(c2["A"], c2["A_r"] + c3["A"], atol=1e-6)
    sm = batch["speech_mask"]
    assert torch.all(c3["A"][0, :, 4:] == 0)  # padded frames weigh nothing in either reading
    if reading == "normalised":
        assert torch.allclose(c3["A"][0].sum(-1), torch.ones(3))
        assert torch.allclose(c3["A_l_target"], c3["A"])
    else:
        assert torch.allclose(c3["A"], c3["A_l"] * sm[:, None, :])


def test_normalised_constraint_trains_a_r_only():
    """The normalised reading's A_l is a fixed target: L_c moves W, not the label maps;
    the raw reading's gradient reaches the label embeddings too."""
    batch = D.collate(_batch([3, 2], [4, 5]))
    for reading, reaches_labels in (("normalised", False), ("raw", True)):
        model = _lemer(label_attention=reading)
        model(batch)["parts"]  # the parts are detached: logged, never a second graph
        out = model(batch)
        lc = LEM.attention_mse(out["A_l_target"], out["A_r"], batch["text_mask"],
                               batch["speech_mask"])
        grads = torch.autograd.grad(lc, [model.W.weight, model.text.label], allow_unused=True)
        assert grads[0] is not None and grads[0].abs().sum() > 0
        assert (grads[1] is not None and grads[1].abs().sum() > 0) == reaches_labels
        assert not out["parts"]["L_c"].requires_grad


def test_tfidf_top_by_hand():
    docs = {"a": ["mad", "mad", "day"], "b": ["glad", "day"]}
    top = LE.tfidf_top(docs, 1)
    # idf(mad) = ln(3/2) + 1 > idf(day) = 1, and mad has tf 2: "mad" first for a
    assert top == {"a": ["mad"], "b": ["glad"]}
    assert LE.tfidf_top(docs, 5)["b"] == ["glad", "day"]
    with pytest.raises(ValueError, match="no training material"):
        LE.tfidf_top({"a": ["x"], "b": []}, 2)


def test_unit_label_embedding_averages_the_top_units():
    units = {"a": [np.array([0, 0, 1])], "b": [np.array([2, 2, 1])]}
    book = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    emb, top = LE.unit_label_embedding(units, 2, lambda ids: book[list(ids)])
    assert top == {"a": [0, 1], "b": [2, 1]}
    assert torch.allclose(emb, torch.tensor([[0.5, 0.5], [1.5, 2.0]]))


def test_unit_scorings_by_hand():
    """Unit 0 is frequent in every class: one document per class ranks it first for both
    (IDF 1: term frequency), the contrast ranks each class's own units first."""
    docs = {"a": [["0", "0", "0", "1"], ["0", "2"]], "b": [["0", "0", "0", "1", "1"], ["0", "3"]]}
    assert [t[0] for t in LE.top_terms(LE.term_scores(docs, "class"), 2).values()] == ["0", "0"]
    scores = LE.term_scores(docs, "contrast")
    # unit 2, only in a's second utterance: tf-idf idf/sqrt(1 + idf^2) there (unit 0 has
    # idf 1: it is in all four utterances), 0 elsewhere; mean over a's 2 utterances, minus b's 0
    idf = math.log(5 / 2) + 1
    assert scores.loc["a", "2"] == pytest.approx(idf / math.sqrt(1 + idf ** 2) / 2)
    assert np.allclose(scores.sum(0), 0)  # a unit typical of one class is atypical of the rest
    top = LE.top_terms(scores, 2)
    assert top == {"a": ["2", "0"], "b": ["3", "1"]}
    overlap = LE.top_overlap(top)
    assert overlap.loc["a", "b"] == 0 and overlap.loc["a", "a"] == 1
    assert LE.top_overlap({"a": [1, 2, 3], "b": [2, 3, 4]}).loc["a", "b"] == pytest.approx(0.5)
    units = {c: [np.array([int(t) for t in d]) for d in ds] for c, ds in docs.items()}
    _, chosen = LE.unit_label_embedding(units, 1, lambda ids: torch.eye(4)[list(ids)],
                                        "contrast")
    assert chosen == {"a": [2], "b": [3]}
    with pytest.raises(ValueError, match="scoring"):
        LE.term_scores(docs, "chi2")
    below = pd.DataFrame([[-0.3, -0.1, -0.2]], index=["c"], columns=["x", "y", "z"])
    assert LE.top_terms(below, 2) == {"c": ["y", "z"]}  # never an empty description


def test_verdicts_follow_the_signs_of_ours_and_the_papers():
    ua = {"C1": 0.60, "C2": 0.65, "C3": 0.62, "C4": 0.55, "B5": 0.5, "B1": 0.5}
    agree, against = LE.verdicts(ua)
    assert [line.split(":")[0] for line in agree] == [
        "the attention constraint beats plain cross-attention", "A_r + A_l beats A_l alone"]
    assert len(against) == 3  # C1 below C2 and C3; B5 = B1 is no gain
    assert any("C1 0.600 vs C2 0.650 UA, -0.050 (paper C1 - C2: +0.004)" in x for x in against)
    # the speech label-embedding gain is read against the paper's B5 - B2, not B5 - B1
    assert any("paper B5 - B2: +0.013" in x for x in against)


def test_label_only_ua_by_hand():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    seqs = [torch.tensor([[2.0, 0.1], [1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
            torch.tensor([[0.9, 0.1]])]  # the last is class 1 but closer to label 0
    assert LE.label_only_ua(labels, seqs, [0, 1, 1]) == pytest.approx((1 + 0.5) / 2)


def test_pairwise_cosines():
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    cos = LE.pairwise_cosines(emb, ["x", "y", "z"])
    assert cos.loc["x", "y"] == pytest.approx(1.0) and cos.loc["x", "z"] == pytest.approx(0.0)


def test_context_splices_previous_turns_within_the_token_limit():
    df = pd.DataFrame({"utt_id": ["u0", "u1", "u2", "x"], "text": ["a b", "c d", "e f", "z"],
                       "dialog_id": ["d", "d", "d", None], "turn_index": [0, 1, 2, None]})
    count = lambda s: len(s.split())  # noqa: E731
    ctx = LE.context_texts(df, "text", turns=10, max_tokens=4, count_tokens=count)
    assert ctx["u0"] == "a b" and ctx["u1"] == "a b c d" and ctx["u2"] == "c d e f"
    assert ctx["x"] == "z"
    assert LE.context_texts(df, "text", 1, 99, count)["u2"] == "c d e f"
    # a corpus without dialogues (RAVDESS, EmoDB): every row is its own text
    alone = LE.context_texts(df.drop(columns=["dialog_id", "turn_index"]), "text", 1, 99, count)
    assert alone.to_dict() == {"u0": "a b", "u1": "c d", "u2": "e f", "x": "z"}


def test_a_corpus_without_dialogues_leaves_out_only_the_history_row():
    run = LE.systems(["A1", "A2", "A5", "B5", "C1", "C4"])
    kept, skipped = LE.for_corpus(run, dialogues=False)
    assert [s.name for s in kept] == ["A1", "A5", "B5", "C1", "C4"]
    assert list(skipped) == ["A2"] and skipped["A2"].startswith("not applicable, because")
    assert LE.for_corpus(run, dialogues=True) == (run, {})
    df = pd.DataFrame({"dialog_id": [None, None]})
    assert not LE.has_dialogues(df) and LE.has_dialogues(df.assign(dialog_id=["d", None]))


# ------------------------------------------------------------------------ shapes and masks


@pytest.mark.parametrize("reading", LEM.LABEL_ATTENTIONS)
@pytest.mark.parametrize("fusion", LEM.FUSIONS)
def test_padding_does_not_change_an_utterance(fusion, reading):
    model = _lemer(fusion, label_attention=reading).eval()
    items = _batch([3, 7], [4, 9])
    alone = model(D.collate(items[:1]))
    together = model(D.collate(items))
    assert together["logits"].shape == (2, 4) and together["A_r"].shape == (2, 7, 9)
    assert torch.allclose(alone["logits"][0], together["logits"][0], atol=1e-5)
    uni = LEM.Unimodal("speech", LEM.Branch(torch.randn(4, 8)), 8, 4, 0.2).eval()
    assert torch.allclose(uni(D.collate(items[:1]))["logits"][0],
                          uni(D.collate(items))["logits"][0], atol=1e-5)
    assert torch.allclose(uni(D.collate(items[:1]))["loss"], uni(D.collate(items[:1]))["loss"])


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="unknown rows"):
        LE.systems(["A1", "Z9"])
    with pytest.raises(ValueError, match="not among the classes"):
        LE.item_table(pd.DataFrame({"utt_id": ["a"], "label": ["bored"]}), CLASSES,
                      text=[torch.zeros(2, 3)])
    with pytest.raises(ParamsError, match="speech_kk"):
        Params.from_dict({"lemer": {"speech_kk": 3}})
    with pytest.raises(ParamsError, match="units"):
        Params.from_dict({"lemer": {"units": "vq"}})
    for key in ("unit_scoring", "label_attention"):
        with pytest.raises(ParamsError, match=key):
            Params.from_dict({"lemer": {key: "soft"}})
    sources = LE.LabelSources(CLASSES, {"a": "x"}, None, None, Lemer())
    with pytest.raises(ValueError, match="no training rows"):
        sources.text(pd.DataFrame({"utt_id": ["a"], "label": ["angry"]}), "tfidf", 4)


# ------------------------------------------------------- training on a tiny fake corpus


def _fake_corpus(n_per_session=16, sessions=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    words = {"angry": "mad furious", "happy": "glad joy", "neutral": "table chair",
             "sad": "tears gloomy"}
    rows, seqs = [], {"text": [], "context": [], "speech": []}
    for s in range(sessions):
        for i in range(n_per_session):
            label = CLASSES[i % 4]
            rows.append({"utt_id": f"s{s}_{i:02d}", "speaker": f"spk{s}{i % 4}",
                         "session": f"S{s}", "split": "labelled", "label": label,
                         "text": f"I am {words[label]} today", "fold": s,
                         "dialog_id": f"S{s}_D{i // 8}", "turn_index": i % 8})
            shift = CLASSES.index(label)
            for key, n in (("text", 5), ("context", 9), ("speech", 12 + i % 5)):
                x = rng.normal(size=(n, d)).astype(np.float32)
                x[:, shift] += 1.5
                seqs[key].append(torch.from_numpy(x))
    df = pd.DataFrame(rows)
    corpus = D.Corpus(df, Path("."), "loso", "fake")
    return corpus, LE.item_table(df, CLASSES, **seqs)


def _sources(corpus, items, cfg):
    def encode(words):  # a stand-in text encoder: one one-hot-ish state per character
        return [torch.tensor([[float(len(w)), 1.0] + [0.0] * 6] * 3) for w in words]
    frames = lambda ids: [items[u]["speech"] for u in ids]  # noqa: E731
    return LE.LabelSources(CLASSES, dict(zip(corpus.df.utt_id, corpus.df.text)), frames,
                           encode, cfg, seed=0)


def _run(tmp_path, corpus, items, name="C1", seed=0):
    from mmser.config import Training
    from mmser.training.loop import cross_validate

    cfg = Lemer(n_units=8, speech_k=3, max_epochs=2, batch_size=8)
    sources = _sources(corpus, items, cfg)
    system = LE.SYSTEMS[name]
    dims = LE.Encoders(8, 8)
    make = lambda fold, seed: LE.make_task(LE.build_model(system, fold.train(), sources, dims, cfg), cfg)  # noqa
    return cross_validate(corpus, LE.make_items(items, LE.item_keys(system)), make,
                          tmp_path / name, Training(progress=False), seeds=[seed],
                          max_epochs=cfg.max_epochs, batch_size=cfg.batch_size), sources


def test_training_never_sees_the_test_fold_and_is_repeatable(tmp_path, monkeypatch):
    corpus, items = _fake_corpus()
    seen = []
    build = LE.make_items

    def spy(table, keys):
        inner = build(table, keys)
        def wrapped(rows):
            seen.append(set(rows["utt_id"]))
            return inner(rows)
        return wrapped

    monkeypatch.setattr(LE, "make_items", spy)
    preds, sources = _run(tmp_path / "a", corpus, items)
    # per fold: train, val, test; train and val never hold a test utterance
    for k in range(3):
        train, val, test = seen[3 * k: 3 * k + 3]
        assert test == set(corpus.df.utt_id[corpus.df.fold == k])
        assert not (train | val) & test
    # every fold's label embeddings came from its own training rows only
    assert len(sources.keywords) == 3 and len(sources._units) == 3
    for kw in sources.keywords.values():
        assert kw["angry"][:1] in (["mad"], ["furious"])
    again, _ = _run(tmp_path / "b", corpus, items)
    pd.testing.assert_frame_equal(preds, again)
    # the terms of eq. 12 are logged per epoch; the constraint's size is that of the
    # normalised maps (squared differences of weights in [0, 1])
    history = pd.read_csv(next((tmp_path / "a" / "C1").glob("seed0/fold0/history.csv")))
    assert {"train_L_m", "train_L_c", "train_L_gt", "train_L_gs"} <= set(history.columns)
    assert len(history) == 2 and history["train_L_c"].between(0, 1).all()
    assert (history["train_L_c"] > 0).all()
    assert set(preds.columns) >= {"utt_id", "fold", "pred", "prob_angry"}


def test_frozen_parts_are_unchanged_by_a_training_step():
    from transformers import BertConfig, BertModel

    from mmser.encode.encoders import top_layers

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=16)
    from mmser.encode.encoders import TextEncoder

    enc = TextEncoder.__new__(TextEncoder)
    torch.nn.Module.__init__(enc)
    enc.model, enc.name = BertModel(config).eval(), "tiny"
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    cfg = Lemer(text_top_layers=1)
    top = top_layers(enc, 1)
    branch = LEM.Branch(torch.randn(4, 8), top, top_lr=cfg.text_lr)
    model = LEM.Unimodal("text", branch, 8, 4, 0.2)
    task = LE.make_task(model, cfg)
    lrs = sorted(g["lr"] for g in task.param_groups)
    assert lrs == [cfg.text_lr, cfg.lr]
    opt = torch.optim.Adam(task.param_groups)
    batch = D.collate(_batch([3, 4], [2, 2]))
    top_before = [p.clone() for p in top.parameters()]
    model(batch)["loss"].backward()
    opt.step()
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(top_before, top.parameters()))


# ---------------------------------------------------------------------- the paper profile


def _tiny_wav2vec2(path, norm: str = "layer"):
    """norm: "layer" (the large, robust models) or "group" (wav2vec 2.0 base)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4),
                            conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
                            do_stable_layer_norm=norm == "layer", num_codevector_groups=2,
                            num_codevectors_per_group=5, codevector_dim=8,
                            proj_codevector_dim=6)
    torch.manual_seed(0)
    Wav2Vec2ForPreTraining(config).save_pretrained(path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(path)


def test_quantizer_units_of_a_clip_do_not_depend_on_the_clips_beside_it(tmp_path):
    """wav2vec 2.0 base normalises its first convolution over time (group norm): a clip
    padded to a longer one's length would get other units than alone."""
    _tiny_wav2vec2(tmp_path / "w2v", norm="group")
    units = LE.QuantizerUnits(str(tmp_path / "w2v"))
    rng = np.random.default_rng(0)
    short, long = (rng.normal(0, 0.1, n).astype(np.float32) for n in (3200, 16000))
    alone = units.units([short])[0]
    beside = units.units([short, long])[0]
    assert len(alone) == (((3200 - 10) // 5 + 1) - 8) // 4 + 1  # the clip's own frames
    assert np.array_equal(alone, beside)


def _tiny_bert(path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mmser.encode.encoders import bundled_text_dir

    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(path)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(path)


def test_paper_profile_validates_and_trains_one_step(tmp_path):
    from mmser.encode.encoders import SpeechEncoder, TextEncoder, top_layers

    profile = yaml.safe_load((ROOT / "profiles/paper/lemer.yaml").read_text())
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    P = Params.from_dict(merged(base, profile))
    assert P.lemer.units == "quantizer" and P.lemer.text_k == 9 and P.lemer.speech_k == 100
    assert P.lemer.mu == [1.0, 0.5, 0.2, 0.2] and P.training.precision == "bf16-mixed"
    # the same families as the paper's encoders, tiny and built here
    _tiny_wav2vec2(tmp_path / "w2v")
    _tiny_bert(tmp_path / "bert")
    units = LE.QuantizerUnits(str(tmp_path / "w2v"))
    waves = [np.random.default_rng(i).normal(size=1600 + 400 * i).astype(np.float32)
             for i in range(4)]
    ids = units.units(waves)
    assert [len(u) for u in ids][0] < [len(u) for u in ids][-1]
    assert all(0 <= u.min() and u.max() < 25 for u in ids)
    assert units.vectors([0, 7]).shape == (2, 6)
    speech = SpeechEncoder(str(tmp_path / "w2v"))
    text = TextEncoder(str(tmp_path / "bert"))
    with torch.no_grad():
        hs, lengths = speech(waves)
        ht, mask, _ = text(["so mad", "glad", "a table", "in tears"])
    rows = pd.DataFrame({"utt_id": list("abcd"), "label": CLASSES,
                         "text": ["so mad", "glad", "a table", "in tears"]})
    cfg = P.lemer
    assert P.lemer.text_top_layers == 12 and P.lemer.speech_top_layers == 12  # base models
    cfg = Lemer(**{**cfg.__dict__, "speech_k": 2, "text_k": 2, "text_top_layers": 2,
                   "speech_top_layers": 2})  # every layer of the 2-layer tiny models
    sources = LE.LabelSources(CLASSES, dict(zip(rows.utt_id, rows.text)), None,
                              lambda words: [s[-1] for s in text(words)[0].unbind(1)], cfg,
                              units=units, waves=lambda u: [waves["abcd".index(x)] for x in u])
    dims = LE.Encoders(16, 16, lambda: top_layers(text, cfg.text_top_layers),
                       lambda: top_layers(speech, cfg.speech_top_layers), units.projection)
    model = LE.build_model(LE.SYSTEMS["C1"], rows, sources, dims, cfg)
    assert isinstance(model.speech.proj, torch.nn.Linear) and model.speech.label.shape == (4, 6)
    items = [{"text": ht[0, i, : int(mask[i].sum())], "speech": hs[0, i, : int(n)], "label": i}
             for i, n in enumerate(lengths)]
    batch = D.collate(items)
    batch["context"], batch["context_mask"] = batch["text"], batch["text_mask"]
    task = LE.make_task(model, cfg)
    assert sorted({g["lr"] for g in task.param_groups}) == sorted({cfg.speech_lr, cfg.text_lr,
                                                                   cfg.lr})
    opt = torch.optim.Adam(task.param_groups)
    before = model.W.weight.clone()
    loss = model(batch)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.W.weight)


# ------------------------------------------------------------------------------ notebook


def _tiny_project(tmp_path):
    """A tiny corpus (two sessions, dialogues, wav files) and a feature store: real MiniLM
    text states, random speech states."""
    from mmser.encode import features as F
    from mmser.corpus import manifest
    from mmser.corpus.audio import write_audio
    from mmser.encode.encoders import TextEncoder

    words = {"angry": "furious mad", "happy": "glad joyful", "neutral": "table chair",
             "sad": "tears gloomy"}
    rng = np.random.default_rng(0)
    rows = []
    for s in range(2):
        for i in range(12):
            label = CLASSES[i % 4]
            rows.append({"utt_id": f"u{s}{i:02d}", "path": f"wav/u{s}{i:02d}.wav",
                         "speaker": f"spk{s}{i % 3}", "session": f"S{s + 1}", "fold": s,
                         "split": "labelled", "text": f"I feel {words[label]} now",
                         "label": label, "dialog_id": f"S{s}_D{i // 6}", "turn_index": i % 6,
                         "duration": 0.5, "sample_rate": 16000, "corpus": "synthetic"})
    df = pd.DataFrame(rows)
    corpus_dir = tmp_path / "corpus"
    for r in rows:
        write_audio(corpus_dir / r["path"], rng.normal(0, 0.1, 8000).astype(np.float32))
    manifest.write(df, tmp_path / "manifest.csv")
    manifest.write_corpus_info(corpus_dir, corpus_dir, name="synthetic",
                               protocol={"name": "loso"})
    feats = tmp_path / "features"
    speech = F.FeatureCache(feats, "fake-speech")
    speech.dir.mkdir(parents=True)
    digests = []
    for i, r in enumerate(rows):
        x = torch.from_numpy(rng.normal(size=(5, 20 + i % 7, 384)).astype(np.float32))
        x[:, :, CLASSES.index(r["label"])] += 1.0
        from safetensors.torch import save_file
        digests.append(f"d{i}")
        save_file({"hidden": x.half()}, str(speech.path(f"d{i}")))
    enc = TextEncoder()
    text = F.FeatureCache(feats, enc.key)
    F.text_features(text, enc, sorted(set(df["text"])))
    F.write_index(feats, df["utt_id"], digests, speech={"main": "fake-speech"},
                  text={"main": enc.key})
    return corpus_dir, tmp_path / "manifest.csv", feats


@pytest.mark.notebook
def test_notebook_runs_with_tiny_parameters(tmp_path):
    corpus_dir, manifest_path, feats = _tiny_project(tmp_path)
    out = tmp_path / "out.ipynb"
    params = {"corpus_dir": str(corpus_dir), "manifest_path": str(manifest_path),
              "cache_dir": str(feats), "lemer_cache": str(tmp_path / "lemer"),
              "models_dir": str(tmp_path / "models"), "results_dir": str(tmp_path / "results")}
    args = [sys.executable, "-m", "papermill", "-k", "python3", str(ROOT / "notebooks/lemer.ipynb"),
            str(out)] + [x for k, v in params.items() for x in ("-p", k, v)]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    folds = pd.read_csv(tmp_path / "results/tables/fold_metrics.csv")
    assert {"A1", "A5", "B5", "C1", "C4", "C1raw", "B5_K4", "score fusion"} <= set(
        folds["system"])
    assert {"C1", "C4"} <= set(metrics) and "lemer" in metrics["claim"]
    assert "C1raw" in (tmp_path / "results/tables/table3_fusion.md").read_text()
    terms = pd.read_csv(tmp_path / "results/tables/loss_terms.csv")
    assert set(terms["system"]) == {"C1", "C4", "C1raw"} and terms["train_L_c"].gt(0).all()
    c1 = folds[folds["system"] == "C1"]
    assert set(zip(c1["seed"], c1["fold"])) == {(0, 0), (0, 1)} and len(c1) == 2
    for name in ("table1_unimodal", "table2_multimodal", "table3_fusion"):
        assert "leave-one-session-out" in (tmp_path / f"results/tables/{name}.md").read_text()
    for fig in ("k_sweep", "label_maps", "confusion_full", "loss_terms"):
        assert (tmp_path / f"results/figures/{fig}.png").stat().st_size > 1000


def test_kmeans_units_draw_the_same_frames_one_clip_at_a_time(tmp_path):
    # the draw over clip lengths keeps only the drawn frames, and reads each clip once
    # (streamed references included), yet fits on exactly the frames that drawing from
    # every frame stacked would give
    from safetensors.torch import save_file
    from sklearn.cluster import MiniBatchKMeans

    from mmser.encode.features import FeatureCache

    def kmeans(frames):
        return MiniBatchKMeans(4, random_state=3, n_init=1, batch_size=2048).fit(frames)

    generator = torch.Generator().manual_seed(0)
    clips = [torch.randn(n, 6, generator=generator).half().float() for n in (40, 25, 60, 33)]
    stacked = torch.cat(clips).numpy()
    drawn = kmeans(stacked[np.random.default_rng(3).choice(len(stacked), 50, replace=False)])
    whole = kmeans(stacked)
    cache = FeatureCache(tmp_path, "key")
    cache.dir.mkdir(parents=True)
    for i, clip in enumerate(clips):
        save_file({"hidden": clip[None].half()}, str(cache.path(f"c{i}")))
    refs = [cache.ref(f"c{i}") for i in range(len(clips))]
    for frames in (clips, refs):
        units = LE.KMeansUnits(4, 50, seed=3).fit(frames)
        assert np.array_equal(units.model.cluster_centers_, drawn.cluster_centers_)
        assert [u.tolist() for u in units.units(frames)] == [
            drawn.predict(c.numpy()).tolist() for c in clips]
        every = LE.KMeansUnits(4, 10_000, seed=3).fit(frames)  # fewer frames: no draw
        assert np.array_equal(every.model.cluster_centers_, whole.cluster_centers_)
