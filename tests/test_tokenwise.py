"""Tokenwise contrastive pre-training stage: the loss and 1-NN score by hand, masks, frozen
parts, the protocol, determinism, the paper profile on tiny local models, the notebook."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmser.training import data as D
from mmser.encode import features as F
from mmser.models import tokenwise as TWM
from mmser.papers import tokenwise as TW
from mmser.config import Params, ParamsError, Training, merged
from mmser.training.loop import Task, fit
from tiny_models import CLASSES, read_by_labelled_voices, write_fake_manifest

ROOT = Path(__file__).resolve().parents[1]
SPEECH_DIM, TEXT_DIM = 8, 6  # different widths: W_k and W_v project speech to text width


# ------------------------------------------------------------------------- fixtures


def make_fixture(root: Path, n_per_speaker: int = 12, n_read: int = 12) -> Path:
    """A tiny prepared corpus (2 sessions x 2 speakers x 4 classes + read speech) and a
    feature store in the features stage's layout, with class-dependent fake speech states."""
    rng = np.random.default_rng(0)
    df = write_fake_manifest(root, n_per_speaker, n_read, "read sentence number {}")
    feats = root / "features"
    centre = {c: rng.normal(size=SPEECH_DIM) for c in CLASSES}
    labels = df.set_index("utt_id")["label"]

    def speech(utt):
        base = centre.get(labels[utt], np.zeros(SPEECH_DIM))
        n = 5 + int(rng.integers(0, 6))
        return {"hidden": torch.tensor(base + rng.normal(size=(3, n, SPEECH_DIM)),
                                       dtype=torch.float16)}

    def text(t):
        m = len(t.split()) + 2
        return {"hidden": torch.randn(4, m, TEXT_DIM).half(),
                "input_ids": torch.tensor([101] + [2000 + k for k in range(m - 2)] + [102])}

    ids = df["utt_id"].tolist()
    F.FeatureCache(feats, "speech-main").fill(ids, ids, [1] * len(ids),
                                               lambda b: [speech(u) for u in b], batch_size=8)
    texts = sorted(set(df["text"]) | set(df["asr_text"].dropna()))
    F.FeatureCache(feats, "text-main").fill([F.text_digest(t) for t in texts], texts,
                                            [1] * len(texts), lambda b: [text(t) for t in b],
                                            batch_size=8)
    F.write_index(feats, ids, ids, speech={"main": "speech-main"}, text={"main": "text-main"})
    return root


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("tokenwise"))


def _views(corpus, dim=4, seed=0):
    """Class-dependent feature views in `corpus.labelled` order."""
    g = torch.Generator().manual_seed(seed)
    y = D.label_ids(corpus.labelled["label"].tolist(), corpus.classes)
    centres = torch.randn(len(corpus.classes), dim, generator=g)
    return {"a": centres[y] + 0.5 * torch.randn(len(y), dim, generator=g),
            "b": torch.randn(len(y), dim, generator=g)}


# ---------------------------------------------------------------------------- losses


def test_contrastive_loss_matches_hand_computation():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    student = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    cos = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]  # cos(B_i, B_s,j)
    s = [[c / tau for c in row] for row in cos]
    theta = 0.0
    for i in range(2):
        row = s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(2)))
        col = s[i][i] - math.log(sum(math.exp(s[j][i]) for j in range(2)))
        theta += row + col
    expected = -tau / (2 * 2) * theta
    got = TWM.tokenwise_contrastive_loss(teacher, student, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # perfectly aligned, well-separated tokens give a lower loss than swapped ones
    assert TWM.tokenwise_contrastive_loss(teacher, teacher, tau) < \
        TWM.tokenwise_contrastive_loss(teacher, teacher.flip(0), tau)


def test_knn_accuracy_by_hand_and_ties():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    student = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 1.0]])
    # token 0 -> teacher 0 (right), token 1 -> teacher 0 (wrong), token 2 -> teacher 2 (right)
    assert TW.knn_accuracy(teacher, student) == pytest.approx(2 / 3)
    twice = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # a sentence read twice: a tie is a match
    assert TW.knn_accuracy(twice, twice) == 1.0


def test_functionals_by_hand():
    seq = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    out = TWM.functionals([seq, torch.tensor([[5.0, 7.0]])])
    assert out.tolist() == [[2.0, 4.0, 1.0, 2.0], [5.0, 7.0, 0.0, 0.0]]
    states = torch.stack([seq, seq + 1, seq * 2])  # 3 hidden states
    # a stack of the states read, named by their absolute indices (FeatureStore.absolute)
    layers = TW.layer_functionals([states[[0, 2]]], layers=[0, 2])
    assert sorted(layers) == [0, 2] and layers[2][0].tolist() == [4.0, 8.0, 2.0, 4.0]
    assert len(TW.layer_functionals([states])) == 3
    with pytest.raises(ValueError, match="a stack of 3 hidden states"):
        TW.layer_functionals([states], layers=[0, 2])


# ------------------------------------------------------------------ shapes and masks


def _item(n, m, g):
    return {"speech_seq": torch.randn(n, SPEECH_DIM, generator=g),
            "tokens_seq": torch.randn(m, TEXT_DIM, generator=g),
            "teacher_seq": torch.randn(m, TEXT_DIM, generator=g)}


def test_padding_does_not_change_an_utterance_and_gets_no_attention():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TWM.Aligner(SPEECH_DIM, TEXT_DIM, tau=0.1).eval()
    short, long = _item(3, 2, g), _item(7, 5, g)
    alone, attention_alone = model.contextualise(D.collate([short]))
    batch = D.collate([short, long])
    together, attention = model.contextualise(batch)
    assert together.shape == (2, 5, TEXT_DIM) and attention.shape == (2, 5, 7)
    torch.testing.assert_close(together[0, :2], alone[0])
    assert attention[0, :, 3:].abs().max() == 0  # padded frames
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 5))
    out = model(batch)  # padded tokens are left out of the loss
    assert out["teacher"].shape == (7, TEXT_DIM) and out["student"].shape == (7, TEXT_DIM)
    assert TW.contextualised(model, [short, long])[0].shape == (2, TEXT_DIM)


def test_attention_equals_the_papers_equation():
    """B_s = softmax(Q K^T) V with Q = T W_q, K = S W_k, V = S W_v, computed naively."""
    torch.manual_seed(0)
    att = TWM.CrossAttention(SPEECH_DIM, TEXT_DIM)
    t, s = torch.randn(1, 3, TEXT_DIM), torch.randn(1, 5, SPEECH_DIM)
    q, k, v = t @ att.q.weight.T, s @ att.k.weight.T, s @ att.v.weight.T
    expected = torch.softmax(q @ k.transpose(1, 2), -1) @ v
    torch.testing.assert_close(att(t, s, torch.ones(1, 5, dtype=bool))[0], expected)


def test_attention_scale_is_optional_and_follows_the_paper_by_default():
    torch.manual_seed(0)
    plain, scaled = TWM.CrossAttention(4, 4), TWM.CrossAttention(4, 4, scale=True)
    scaled.load_state_dict(plain.state_dict())
    assert plain.scale == 1.0 and scaled.scale == pytest.approx(0.5)
    t, s, mask = torch.randn(1, 2, 4), torch.randn(1, 3, 4), torch.ones(1, 3, dtype=bool)
    assert not torch.allclose(plain(t, s, mask)[1], scaled(t, s, mask)[1])


def test_classifier_shape_blocks_and_standardisation():
    x = torch.randn(20, 6) * 5 + 3
    model = TWM.Classifier(x, 4, hidden=8)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Linear", "LayerNorm", "ReLU"] * 3 + ["Linear"]
    assert model(x).shape == (20, 4)
    torch.testing.assert_close(((x - model.mean) / model.std).mean(0), torch.zeros(6),
                               atol=1e-5, rtol=0)


# --------------------------------------------------------------------- frozen parts


def test_pretraining_step_moves_only_the_attention(fixture, tmp_path):
    """The cached encoder states (the frozen encoders' output) are unchanged by training;
    W_q, W_k and W_v move; fit selects on the 1-NN validation score."""
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    store = F.FeatureStore(fixture / "features")
    read = corpus.read
    items = TW.pretrain_items(store, read["utt_id"].tolist(), read["text"].tolist())
    assert items[0]["speech_seq"].shape[1] == SPEECH_DIM
    assert items[0]["tokens_seq"].shape == items[0]["teacher_seq"].shape
    # each item holds its own two text layers, not views of every layer (memory per item)
    assert all(v.untyped_storage().nbytes() == v.numel() * v.element_size()
               for item in items for v in item.values())
    frozen = [{k: v.clone() for k, v in item.items()} for item in items]
    model = TWM.Aligner(SPEECH_DIM, TEXT_DIM)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = Task(model, kind="loss", lr=1e-2, val_metric=TW.knn_val_metric)
    result = fit(task, items[:8], items[8:], tmp_path / "pre", Training(progress=False),
                 max_epochs=2, batch_size=4)
    assert 0 <= result.best_score <= 1 and set(result.history["epoch"]) == {0, 1}
    assert all(torch.equal(a[k], b[k]) for a, b in zip(items, frozen) for k in a)
    after = task.model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == \
        {"attention.q.weight", "attention.k.weight", "attention.v.weight"}


def test_missing_transcripts_and_cache_entries_are_clear_errors(fixture):
    store = F.FeatureStore(fixture / "features")
    with pytest.raises(ValueError, match="no transcript"):
        TW.pretrain_items(store, ["r0"], [float("nan")])
    with pytest.raises(KeyError, match="not encoded"):
        TW.pretrain_items(store, ["nope"], ["read sentence number 0"])
    with pytest.raises(KeyError, match="no entry"):
        TW.pretrain_items(store, ["r0"], ["a text nobody encoded"])
    with pytest.raises(ValueError, match="random_70_20_10"):
        TW.check_protocols(["corpus", "random_70_20_1O"])
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    df = corpus.df.copy()
    df.loc[(df["label"] == "sad") & (df["session"] == "S1"), "label"] = "angry"
    with pytest.raises(ValueError, match="no validation utterances"):
        TW.evaluate(corpus, _views(corpus), [TW.System("s", ["a"], [8], [1e-3])],
                    seeds=[0], epochs=1, patience=1, hidden=4, val_fraction=0.0)
    lopsided = D.Corpus(df, corpus.audio_root, "loso", "synthetic")
    with pytest.raises(ValueError, match=r"no training utterance of class\(es\) \['sad'\]"):
        TW.evaluate(lopsided, _views(lopsided), [TW.System("s", ["a"], [8], [1e-3])],
                    seeds=[0], epochs=1, patience=1, hidden=4)


# ---------------------------------------------------------------------- the protocol


def test_training_never_sees_the_test_fold(fixture, monkeypatch):
    """Every feature row is its own index; the rows given to training and validation are
    recorded and never include a test row of the fold being evaluated."""
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    n = len(corpus.labelled)
    views = {"idx": torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)}
    seen = []
    real = TW.train_classifier

    def spy(x_train, y_train, x_val, y_val, *args, **kwargs):
        seen.append(set(x_train[:, 0].long().tolist()) | set(x_val[:, 0].long().tolist()))
        return real(x_train, y_train, x_val, y_val, *args, **kwargs)

    monkeypatch.setattr(TW, "train_classifier", spy)
    system = TW.System("s", ["idx"], [8, 16], [1e-3])
    preds, trials = TW.evaluate(corpus, views, [system], seeds=[0], epochs=1, patience=1,
                                hidden=4)
    position = {u: i for i, u in enumerate(corpus.labelled["utt_id"])}
    assert len(seen) == 2 * 2  # 2 folds x 2 grid points
    for k, rows in enumerate(seen):
        fold = k // 2
        test = {position[u] for u in preds.loc[preds["fold"] == fold, "utt_id"]}
        assert test and not rows & test
    assert set(trials["search"]) == {"view", "grid"}
    assert sorted(preds["utt_id"]) == sorted(corpus.labelled["utt_id"])


def test_same_seed_same_metrics_and_layer_chosen_on_validation(fixture, tmp_path):
    from mmser.report import results

    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    views = _views(corpus)
    systems = [TW.System("speech", ["a", "b"], [8], [1e-2, 1e-3])]
    run = lambda workers: TW.evaluate(TW.with_protocol(corpus, "random_70_20_10"), views,
                                      systems, seeds=[0, 1], epochs=4, patience=2, hidden=8,
                                      out_dir=tmp_path / f"w{workers}", workers=workers)
    # the searches run side by side in worker processes give the same choices and scores
    (preds, trials), (again, again_trials) = run(1), run(2)
    pd.testing.assert_frame_equal(preds, again)
    pd.testing.assert_frame_equal(trials, again_trials)
    assert set(preds["seed"]) == {0, 1} and (tmp_path / "w2/seed1/fold0/speech.pt").is_file()
    # the informative view wins on validation
    assert (preds["view"] == "a").all()
    assert set(trials.loc[trials["search"] == "view", "view"]) == {"a", "b"}
    summary = results.summary(results.fold_metrics(preds, corpus.classes))
    table = TW.table3({"random": summary}, {"speech": "speech"}, "bert-base-uncased")
    assert table.loc[0, "paper row"] == "Whisper" and table.loc[0, "paper IEMOCAP UAR"] == "75.90"
    assert table.loc[0, "paper EmoDB UAR"] == "86.53*"  # repeated as the paper's IEMOCAP WavLM


def test_pretraining_per_fold_never_hears_the_test_speakers(fixture, tmp_path, monkeypatch):
    """pretrain_speakers = fold: no read utterance of a fold's test speakers is in that
    fold's pre-training set; each fold's classifiers read B_s of its own pre-training."""
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    store = F.FeatureStore(fixture / "features")
    corpus = read_by_labelled_voices(corpus)  # as in the default corpus
    pools = []
    real = TW.pretrain

    def spy(store_, rows, *args, **kwargs):
        pools.append(set(rows["speaker"]))
        return real(store_, rows, *args, **kwargs)

    monkeypatch.setattr(TW, "pretrain", spy)
    tw = Params.from_dict({"tokenwise": {"pretrain_epochs": 1}}).tokenwise
    lab = corpus.labelled.reset_index(drop=True)
    items = TW.pretrain_items(store, lab["utt_id"].tolist(), lab["text"].tolist())
    per_fold = TW.FoldPretraining(corpus, store, items, tw, Training(progress=False), 0,
                                  tmp_path / "pre", {})
    seen = {}
    real_choose = TW.choose

    def spy_choose(system, views, *args, **kwargs):
        seen.setdefault(len(seen), views[TW.OURS])
        return real_choose(system, views, *args, **kwargs)

    monkeypatch.setattr(TW, "choose", spy_choose)
    views = {TW.OURS: torch.zeros(len(lab), 2 * TEXT_DIM)}  # replaced per fold
    preds, _ = TW.evaluate(corpus, views, [TW.System(TW.OURS, [TW.OURS], [8], [1e-3])],
                           seeds=[0], epochs=1, patience=1, hidden=4, fold_views=per_fold)
    assert len(pools) == 2 and per_fold.left_out_everywhere
    for k, record in enumerate(per_fold.records):
        test = set(lab.loc[lab["fold"] == k, "speaker"])
        assert pools[k] and not pools[k] & test
        assert record["speakers left out"] == ", ".join(sorted(test))
    assert not torch.equal(seen[0], seen[1]) and not seen[0].eq(0).all()
    assert per_fold.aligner(0) is not per_fold.aligner(1)
    assert "without the test speakers" in TW.pretraining_label(corpus, True)
    assert TW.SPEAKER_DEPENDENT_PRETRAINING in TW.pretraining_label(corpus, False)
    other = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")  # read by spk9 only
    assert "other speakers" in TW.pretraining_label(other, False)


def test_a_corpus_without_read_speech_pretrains_each_fold_on_its_own_training_rows(fixture):
    """RAVDESS and EmoDB have no read speech: each fold pre-trains on its own training and
    validation utterances (never a test one), per fold whatever was asked, and says so."""
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    corpus = replace(corpus, df=corpus.df[corpus.df["split"] != "read"])
    assert len(corpus.read) == 0
    assert TW.pretrain_speakers(corpus, "all") == "fold"
    for fold in corpus.folds(seed=0):
        rows = TW.pretraining_rows(corpus, fold)
        assert set(rows["utt_id"]) == set(fold.train()["utt_id"]) | set(fold.val()["utt_id"])
        fold.select(checkpoint="none: this test only reads the fold's parts")
        assert not set(rows["utt_id"]) & set(fold.test()["utt_id"]) and len(fold.test())
    assert TW.pretraining_label(corpus, True) == TW.OWN_SPEECH
    assert TW.pretraining_label(corpus, False).startswith(TW.SPEAKER_DEPENDENT_PRETRAINING)
    with_read = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    assert TW.pretrain_speakers(with_read, "all") == "all"


def test_paper_table3_duplicate_is_flagged():
    assert TW.paper_duplicates() == [("EmoDB Whisper", "IEMOCAP WavLM")]
    assert TW.duplicated_cells() == {("EmoDB", "Whisper"), ("IEMOCAP", "WavLM")}
    clean = TW.PAPER_TABLE3.drop(index=TW.PAPER_TABLE3.index[
        (TW.PAPER_TABLE3["dataset"] == "IEMOCAP") & (TW.PAPER_TABLE3["features"] == "WavLM")])
    assert TW.paper_duplicates(clean) == []


def _summary(values):
    return pd.DataFrame({"system": list(values), "UA": list(values.values()),
                         "UA_std": [0.01] * len(values)})


def test_reading_says_plainly_where_it_goes_against_the_paper():
    label = "leave-one-session-out"
    summaries = {label: _summary({TW.OURS: 0.70, "speech w": 0.60, "text m": 0.75,
                                  TW.LAYER_SEARCH + "speech w": 0.66})}
    boot = pd.DataFrame([
        {"protocol": label, "comparison": f"ours - {s}", "UA diff": d, "95% CI low": lo,
         "95% CI high": hi}
        for s, d, lo, hi in (("speech w", 0.10, 0.05, 0.15), ("text m", -0.05, -0.09, -0.01),
                             (TW.LAYER_SEARCH + "speech w", 0.04, -0.01, 0.08))])
    names = {"speech": "speech w", "text": "text m", "search": TW.LAYER_SEARCH + "speech w"}
    text = "\n".join(TW.reading(summaries, boot, names,
                                {label: TW.SPEAKER_DEPENDENT_PRETRAINING}))
    assert "above speech-only" in text and text.count("**against the paper**") == 2
    assert "below text-only" in text and "speaker-dependent pre-training" in text
    assert "searches every speech layer reaches 66.0" in text
    assert "IEMOCAP WavLM equals EmoDB Whisper" in text


def test_same_seed_same_classifier():
    x, y = torch.randn(40, 4), torch.arange(40) % 4
    kwargs = dict(batch_size=8, lr=1e-2, epochs=5, patience=1, hidden=8, seed=3)
    a = TW.train_classifier(x[:30], y[:30], x[30:], y[30:], 4, **kwargs)
    b = TW.train_classifier(x[:30], y[:30], x[30:], y[30:], 4, **kwargs)
    assert a.score == b.score and a.epoch == b.epoch and len(a.history) == 5
    assert a.score == max(h["val_UAR"] for h in a.history)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


# ------------------------------------------------------------------ profile, notebook


def test_paper_profile_validates_over_params_yaml():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "profiles/paper/tokenwise.yaml").read_text())
    P = Params.from_dict(merged(base, profile))
    assert P.encoders.speech == "openai/whisper-base" and P.tokenwise.epochs == 30
    assert P.tokenwise.pretrain_lrs == [1e-4] and 64 in P.tokenwise.pretrain_batch_sizes
    assert P.tokenwise.baseline_batch_sizes == [2 ** k for k in range(2, 11)]
    assert P.tokenwise.ours_lrs == [1e-3, 1e-2] and P.dataset.read_corpus == "librispeech"
    assert P.tokenwise.extra_speech == ["microsoft/wavlm-base-plus"]
    default = Params.from_dict(base)
    TW.check_protocols(default.tokenwise.protocols)
    with pytest.raises(ParamsError, match="text_source"):
        Params.from_dict(merged(base, {"tokenwise": {"text_source": "asr"}}))


def test_paper_architecture_trains_one_step_on_tiny_local_models(tmp_path):
    """Whisper (speech, 16-d) and BERT (text, 12-d) built locally: T is BERT's embedding
    output, B its last layer; W_k and W_v project 16 -> 12; one step moves only them; a
    WavLM baseline encodes through `encode_speech`."""
    from transformers import (AutoTokenizer, BertConfig, BertModel, WavLMConfig, WavLMModel,
                              Wav2Vec2FeatureExtractor, WhisperConfig, WhisperModel)

    from mmser.encode.encoders import SpeechEncoder, TextEncoder, bundled_text_dir

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                               vocab_size=100, max_source_positions=1500, pad_token_id=0,
                               bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
                 ).save_pretrained(tmp_path / "whisper")
    BertModel(BertConfig(vocab_size=30522, hidden_size=12, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=24)).save_pretrained(
        tmp_path / "bert")
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(tmp_path / "bert")
    speech, text = SpeechEncoder(str(tmp_path / "whisper")), TextEncoder(str(tmp_path / "bert"))
    frozen = {k: v.clone() for k, v in {**speech.state_dict(), **text.state_dict()}.items()}
    with torch.inference_mode():
        s_states, s_len = speech([np.random.randn(16000).astype(np.float32),
                                  np.random.randn(8000).astype(np.float32)])
        t_states, t_mask, _ = text(["I am happy", "this is so sad and long"])
    items = [{"speech_seq": s_states[-1, i, :n].clone(),
              "tokens_seq": t_states[0, i, :m].clone(),
              "teacher_seq": t_states[-1, i, :m].clone()}
             for i, (n, m) in enumerate(zip(s_len.tolist(), t_mask.sum(-1).tolist()))]
    model = TWM.Aligner(speech.dim, text.dim, tau=0.1)
    assert model.attention.k.weight.shape == (12, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss = model(D.collate(items))["loss"]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    now = {**speech.state_dict(), **text.state_dict()}
    assert all(torch.equal(v, now[k]) for k, v in frozen.items())
    assert TWM.functionals(TW.contextualised(model, items)).shape == (2, 24)

    WavLMModel(WavLMConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                           conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                           num_conv_pos_embedding_groups=2)).save_pretrained(tmp_path / "wavlm")
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path / "wavlm")
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    for i in range(2):
        sf.write(tmp_path / "audio" / f"a{i}.wav", np.random.randn(8000 + 800 * i) * 0.1,
                 16000)
    df = pd.DataFrame({"utt_id": ["a0", "a1"], "path": ["a0.wav", "a1.wav"]})
    store = TW.encode_speech(tmp_path / "extra", df, tmp_path / "audio",
                             str(tmp_path / "wavlm"))
    states = store.speech(["a0", "a1"], layer=None)
    assert states[0].shape[0] == 3 and states[0].shape[2] == 16
    assert len(TW.layer_functionals(states)) == 3


@pytest.mark.notebook
def test_notebook_runs_under_papermill(fixture, tmp_path):
    import papermill as pm

    pm.execute_notebook(
        str(ROOT / "notebooks/tokenwise.ipynb"), str(tmp_path / "tokenwise.ipynb"),
        kernel_name="python3", cwd=str(ROOT), progress_bar=False,
        parameters={"tokenwise": {"pretrain_epochs": 2, "pretrain_batch_sizes": [4, 8],
                                  "epochs": 3, "hidden": 8, "baseline_batch_sizes": [8, 16],
                                  "pretrain_speakers": "fold"},
                    "corpus_dir": str(fixture / "corpus"),
                    "manifest_path": str(fixture / "manifest.csv"),
                    "features_dir": str(fixture / "features"),
                    "interim_dir": str(tmp_path / "interim"),
                    "results_dir": str(tmp_path / "results"),
                    "models_dir": str(tmp_path / "models"),
                    "curves_csv": str(tmp_path / "curves.csv")})
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    run = json.loads((tmp_path / "results/run.json").read_text())
    systems = set(pd.read_csv(tmp_path / "results/tables/fold_metrics.csv")["system"])
    assert {"ours B_s [loso]", "ours B_s [random_70_20_10]"} <= systems
    # the main protocol's ours, speech and text systems, and both claims
    assert {"ours B_s [loso]", "speech whisper-tiny.en [loso]"} <= set(metrics)
    assert set(metrics["claim"]) == {"tokenwise_vs_speech", "tokenwise_vs_text"}
    assert 0 <= metrics["ours B_s [loso]"]["UA"] <= 1
    assert 0 <= run["pretraining"]["knn_val_accuracy"] <= 1
    tables = tmp_path / "results/tables"
    for name in ("table3.md", "pretraining.md", "bootstrap.md", "layers_val_uar.md"):
        assert (tables / name).is_file()
    assert "75.90" in (tables / "table3.md").read_text()
    assert "speaker-dependent" in (tables / "table3.md").read_text()
    # the speech row is the last layer; the every-layer search is an extra, labelled row
    assert {"speech whisper-tiny.en [loso]",
            "layer search: speech whisper-tiny.en [loso]"} <= systems
    chosen = pd.read_csv(tables / "chosen_views.csv")
    last = chosen[chosen["system"].str.startswith("speech ")]
    assert len(last) and last["view"].str.endswith("L2").all()  # 3 states: the last is 2
    assert "86.53*" in (tables / "table3.md").read_text()
    assert run["paper_table3_duplicates"] == [["EmoDB Whisper", "IEMOCAP WavLM"]]
    assert set(run["notes"]) == {"ours B_s [loso]", "ours B_s [random_70_20_10]"}
    assert run["pretraining"]["speakers"] == "fold"
    assert len(run["pretraining"]["folds"]) >= 2
    figures = {f.name for f in (tmp_path / "results/figures").iterdir()}
    assert {"fig2_3_pretraining.png", "fig4_attention.png", "confusion_ours.png",
            "layers_val_uar.png"} <= figures
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert set(curves["config"]) == {"batch 4, lr 0.0001", "batch 8, lr 0.0001"}


def test_a_corpus_prepared_with_the_papers_split_runs_it_once(fixture):
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    both = ["corpus", "random_70_20_10"]
    assert TW.distinct_protocols(corpus, both) == both
    random = replace(corpus, protocol="random_70_20_10")
    assert TW.distinct_protocols(random, both) == ["corpus"]


def test_knn_accuracy_in_chunks_equals_the_whole_matrix():
    torch.manual_seed(0)
    teacher = torch.randn(50, 8)
    student = teacher + 0.8 * torch.randn(50, 8)
    whole = TW.knn_accuracy(teacher, student, chunk=1000)
    assert 0 < whole < 1
    for chunk in (1, 7, 49):
        assert TW.knn_accuracy(teacher, student, chunk=chunk) == whole
