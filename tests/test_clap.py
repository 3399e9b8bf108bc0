"""HuBERT-CLAP stage: losses by hand, masks, frozen parts, the protocol, and the notebook."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmser.models import clap as CM
from mmser.papers import clap as C
from mmser.training import data as D
from mmser.encode import features as F
from mmser.config import Clap, Encoders, Params, ParamsError, Training
from tiny_models import CLASSES, read_by_labelled_voices, write_fake_manifest

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------- fixtures


def make_fixture(root: Path, n_per_speaker: int = 20, dim: int = 8, n_read: int = 6) -> Path:
    """A tiny prepared corpus (2 sessions x 2 speakers x 4 classes, plus read speech) and a
    feature store in the layout of the features stage, with class-dependent fake states."""
    rng = np.random.default_rng(0)
    df = write_fake_manifest(root, n_per_speaker, n_read)
    feats = root / "features"
    centre = {c: rng.normal(size=dim) for c in CLASSES}

    def speech(utt):
        row = df.set_index("utt_id").loc[utt]
        n = 5 + int(rng.integers(0, 6))
        base = centre.get(row["label"], np.zeros(dim)) if isinstance(row["label"], str) \
            else np.zeros(dim)
        return {"hidden": torch.tensor(base + rng.normal(size=(3, n, dim)),
                                       dtype=torch.float16)}

    ids = df["utt_id"].tolist()
    cache = F.FeatureCache(feats, "speech-main")
    cache.fill(ids, ids, [1] * len(ids), lambda b: [speech(u) for u in b], batch_size=8)
    texts = sorted(set(df["text"]) | set(df["asr_text"].dropna()))
    for key, layers in (("text-main", 4), ("text-3", 3)):
        cache = F.FeatureCache(feats, key)
        cache.fill([F.text_digest(t) for t in texts], texts, [1] * len(texts),
                   lambda b, L=layers: [{"hidden": torch.randn(L, len(t.split()) + 2, 6)
                                         .half(), "input_ids": torch.arange(len(t.split()) + 2)}
                                        for t in b], batch_size=8)
    F.write_index(feats, ids, ids, speech={"main": "speech-main"},
                  text={"main": "text-main", "3": "text-3"})
    return root


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("clap"))


def _bank(root, p=None, roles=("main", "small")):
    corpus = D.load_corpus(root / "corpus", root / "manifest.csv")
    p = p or Clap()
    return corpus, C.Bank(F.FeatureStore(root / "features"), corpus.df, p, Encoders(), roles)


# ---------------------------------------------------------------------------- losses


def test_clip_loss_matches_hand_computation():
    audio = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: [[1, 1/sqrt2], [0, 1/sqrt2]]; temperature 0.5 doubles them
    c = 1 / math.sqrt(2)
    logits = torch.tensor([[1.0, c], [0.0, c]]) / 0.5
    a2t = -(logits[0, 0] - torch.logsumexp(logits[0], 0) + logits[1, 1]
            - torch.logsumexp(logits[1], 0)) / 2
    t2a = -(logits[0, 0] - torch.logsumexp(logits[:, 0], 0) + logits[1, 1]
            - torch.logsumexp(logits[:, 1], 0)) / 2
    expected = (a2t + t2a) / 2
    torch.testing.assert_close(CM.clip_loss(audio, text, 0.5), expected)
    # distinct keys = CLIP's identity targets
    torch.testing.assert_close(CM.clip_loss(audio, text, 0.5, torch.tensor([7, 9])), expected)


def test_clip_loss_shares_targets_between_identical_transcripts():
    audio, text = torch.eye(2), torch.eye(2)
    # same transcript twice: each row's target is (1/2, 1/2) in both directions
    logits = torch.eye(2)
    row = -(0.5 * logits[0].log_softmax(0)).sum()
    expected = -(0.5 * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(CM.clip_loss(audio, text, 1.0, torch.tensor([5, 5])), expected)
    assert float(expected) == pytest.approx(float(row))
    assert float(expected) != pytest.approx(float(CM.clip_loss(audio, text, 1.0)))


def test_dot_similarity_reading_matches_hand_computation():
    audio = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    dots = torch.tensor([[3.0, 1.0], [0.0, 2.0]])  # plain dot products, no normalising
    torch.testing.assert_close(CM.similarity(audio, text, "dot"), dots)
    logits = dots / 2.0
    a2t = -(logits.log_softmax(1).diagonal()).mean()
    t2a = -(logits.T.log_softmax(1).diagonal()).mean()
    torch.testing.assert_close(CM.clip_loss(audio, text, 2.0, kind="dot"), (a2t + t2a) / 2)
    assert float(CM.clip_loss(audio, text, 2.0, kind="dot")) != pytest.approx(
        float(CM.clip_loss(audio, text, 2.0)))
    with pytest.raises(ValueError, match="similarity"):
        CM.similarity(audio, text, "euclid")
    # retrieval ranks by the model's own similarity: a long vector wins only under dot
    pairs = (torch.tensor([[1.0, 0.9], [1.0, 0.0]]), torch.tensor([[1.0, 1.0], [5.0, 0.0]]),
             torch.tensor([1, 2]))
    assert C.retrieval(*pairs, ks=(1,), kind="dot")["R@1"] == 0.5
    assert C.retrieval(*pairs, ks=(1,))["R@1"] == 1.0


def test_similarity_ablation_rows_are_named_and_checked():
    name = C.ablation_name("full", C.other_similarity("cosine"))
    assert name == "full · dot" and C.system_key(name) == "full"
    assert "dot logits (ablation)" in C.model_name(name)
    assert C.folder(name) == "full-dot"
    assert C.ablation_systems(Clap(similarity_ablation=["full"])) == ["full"]
    with pytest.raises(ValueError, match="similarity_ablation"):
        C.ablation_systems(Clap(similarity_ablation=["none"]))
    with pytest.raises(ParamsError):
        Params.from_dict({"clap": {"similarity": "euclid"}})


def test_reading_says_plainly_where_it_goes_against_the_paper():
    summary = pd.DataFrame({"system": ["none", "small", "full", "full · dot"],
                            "WA": [0.62, 0.60, 0.58, 0.61], "WA_std": [0.01] * 4})
    ci = pd.DataFrame([
        {"a": "full", "b": "none", "metric": "UA", "diff": -0.04, "low": -0.07, "high": -0.01},
        {"a": "small", "b": "none", "metric": "UA", "diff": -0.01, "low": -0.03, "high": 0.02},
        {"a": "full · dot", "b": "full", "metric": "UA", "diff": 0.03, "low": 0.01,
         "high": 0.05}])
    retrieval = pd.DataFrame({"R@1": [0.05], "chance@1": [0.04]}, index=["full"])
    text = "\n".join(C.reading(summary, ci, retrieval))
    assert "against the paper's order" in text
    assert "full − none (UA)**: -4.0 points" in text and "goes against the paper" in text
    assert "+7.18" in text  # the paper's gap, from PAPER_TABLE1
    assert "not reproduced" in text  # small - none: interval includes 0
    assert "Similarity ablation, full · dot − full" in text and "better" in text
    assert "below twice chance" in text


def test_projection_block_follows_the_paper():
    torch.manual_seed(0)
    block = CM.Projection(4, 3, dropout=0.2).eval()
    x = torch.randn(2, 4)
    h = block.linear1(x)
    expected = torch.nn.functional.layer_norm(
        h + block.linear2(torch.nn.functional.gelu(h)), (3,), block.norm.weight, block.norm.bias)
    torch.testing.assert_close(block(x), expected)


def test_retrieval_recall_and_chance():
    text = torch.eye(3)
    audio = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    out = C.retrieval(audio, text, torch.tensor([1, 2, 3]), ks=(1, 2))
    assert out["R@1"] == pytest.approx(2 / 3) and out["chance@1"] == pytest.approx(1 / 3)
    assert out["R@2"] == pytest.approx(1.0) and out["chance@2"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------- shapes, masks


def test_padding_does_not_change_a_sequence_output():
    torch.manual_seed(0)
    side = CM.Side(8, 5, 0.2).eval()
    short, long = torch.randn(3, 8), torch.randn(6, 8)
    batch = D.collate([{"speech": short}, {"speech": long}])
    both = side(batch["speech"], batch["speech_mask"])
    alone = side(short[None], torch.ones(1, 3, dtype=torch.bool))
    assert both.shape == (2, 5)
    torch.testing.assert_close(both[0], alone[0])


def test_bank_items_and_crop(fixture):
    p = Clap(max_seconds=0.1)  # 5 frames
    corpus, bank = _bank(fixture, p)
    items = bank.pairs(corpus.labelled.head(3), "small")
    assert all(len(i["speech"]) <= 5 for i in items)
    assert items[0]["text"].shape[-1] == 6 and isinstance(items[0]["text_key"], int)
    labelled = bank.labelled(corpus.labelled.head(4), corpus.classes)
    assert [i["label"] for i in labelled] == [0, 1, 2, 3]


def test_missing_transcripts_and_cache_entries_are_clear_errors(fixture):
    corpus = D.load_corpus(fixture / "corpus", fixture / "manifest.csv")
    store = F.FeatureStore(fixture / "features")
    with pytest.raises(ValueError, match="asr_text"):
        C.Bank(store, corpus.df, Clap(text_source="asr_text"), Encoders())  # read has none
    with pytest.raises(KeyError, match="not encoded"):
        C.Bank(store, corpus.df.assign(utt_id="nope"), Clap(), Encoders(), roles=())
    with pytest.raises(ParamsError, match="did you mean"):
        Params.from_dict({"clap": {"temprature": 1.0}})
    with pytest.raises(ValueError, match="unknown system"):
        C.Runner(None, "bert", [], Clap(), Encoders(), Training(), "x", None, {})


# ------------------------------------------------------------------------- training


def test_pretraining_never_sees_the_test_fold_and_is_repeatable(fixture, tmp_path,
                                                                monkeypatch):
    corpus, bank = _bank(fixture)
    pools = []
    real = C.pretrain

    def spy(bank_, rows, *args, **kwargs):
        pools.append(set(rows["utt_id"]))
        return real(bank_, rows, *args, **kwargs)

    monkeypatch.setattr(C, "pretrain", spy)
    p = Clap(batch_size=8)
    cfg = Training(progress=False)
    preds, runner = C.run_system(corpus, bank, "full", p, Encoders(), cfg, tmp_path / "a",
                                 use_read=True, fingerprint={})
    assert len(runner.records) == 2 and set(preds["fold"]) == {0, 1}
    assert set(preds["utt_id"]) == set(corpus.labelled["utt_id"])
    for k, pool in enumerate(pools):  # each fold's pre-training excluded its test rows
        test = set(corpus.labelled.loc[corpus.labelled["fold"] == k, "utt_id"])
        assert test and pool and not pool & test
        assert any(u.startswith("r") for u in pool)  # and used the read split
    assert all(0 <= r["R@1"] <= 1 and r["chance@5"] > 0 for r in runner.records)
    assert runner.histories[0]["val_score"].between(0, 1).all()
    # trained ahead in two processes (pre-training, then fine-tuning, in passes): the
    # same predictions, and one pre-training record per run however often a fold is built
    again, ahead = C.run_system(corpus, bank, "full", p, Encoders(),
                                Training(progress=False, workers=2), tmp_path / "b",
                                use_read=True, fingerprint={})
    pd.testing.assert_frame_equal(preds, again)
    assert pd.DataFrame(ahead.records).equals(pd.DataFrame(runner.records))
    assert len(ahead.histories) == 2


def test_pretraining_never_hears_the_test_speakers_read_speech(fixture, tmp_path,
                                                              monkeypatch):
    corpus, bank = _bank(fixture)
    corpus = read_by_labelled_voices(corpus)  # as in the default corpus
    pools = []
    real = C.pretrain

    def spy(bank_, rows, *args, **kwargs):
        pools.append(rows)
        return real(bank_, rows, *args, **kwargs)

    monkeypatch.setattr(C, "pretrain", spy)
    preds, runner = C.run_system(corpus, bank, "full", Clap(batch_size=8), Encoders(),
                                 Training(progress=False), tmp_path, use_read=True,
                                 fingerprint={})
    assert len(pools) == 2
    for k, pool in enumerate(pools):
        test_speakers = set(corpus.labelled.loc[corpus.labelled["fold"] == k, "speaker"])
        pooled_read = pool[pool["split"] == "read"]
        assert len(pooled_read) and not set(pooled_read["speaker"]) & test_speakers
        # the other voices' read speech stays in
        assert set(pooled_read["speaker"]) == set(corpus.read["speaker"]) - test_speakers
    expected = [len(corpus.read_for_fold(fold)) for fold in corpus.folds()]
    assert sorted(r["read_pairs"] for r in runner.records) == sorted(expected) == [2, 4]


def _tiny_whisper(path):
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(d_model=16, encoder_layers=2, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2,
                           encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                           vocab_size=100, max_source_positions=1500, pad_token_id=0,
                           bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
    WhisperModel(config).save_pretrained(path)
    return str(path)


def test_frozen_parts_unchanged_by_a_training_step(tmp_path):
    """A trainable top layer (copied from a tiny local Whisper) and the projection move in a
    training step; the encoder it was copied from (the frozen, cached part) does not."""
    torch.manual_seed(0)
    enc = Encoders(speech=_tiny_whisper(tmp_path / "w"))
    p = Clap(speech_top_layers=1)
    model = CM.SpeechClassifier(C.speech_side(p, enc, 16), 4)
    frozen = C._encoder("speech", enc.speech, None)
    before_frozen = {k: v.clone() for k, v in frozen.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = C.param_groups(model, p)
    assert {g["name"]: g["lr"] for g in groups} == {"speech": p.speech_lr, "head": p.head_lr}
    opt = torch.optim.AdamW(groups)
    batch = D.collate([{"speech": torch.randn(n, 16), "label": n % 4} for n in (3, 5)])
    model(batch)["loss"].backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(v, frozen.state_dict()[k]) for k, v in before_frozen.items())
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".top." in f".{k}" for k in moved) and any("projection" in k for k in moved)
    assert "head.weight" in moved


def test_trained_folds_reload_the_chosen_models(fixture, tmp_path):
    corpus, bank = _bank(fixture)
    cfg = Training(progress=False)
    preds, runner = C.run_system(corpus, bank, "none", Clap(finetune_epochs=2), Encoders(),
                                 cfg, tmp_path, use_read=False, fingerprint={})
    for seed, k, task, test in C.trained_folds(corpus, runner, tmp_path, [0]):
        items = bank.labelled(test, corpus.classes)
        emb = C.embeddings(task, items)
        assert emb.shape == (len(test), Clap().proj_dim)
        again = preds[preds["fold"] == k]
        logits = torch.tensor(
            np.asarray(again[[f"prob_{c}" for c in corpus.classes]]))
        assert np.array_equal(again["pred"].to_numpy(),
                              np.asarray(corpus.classes)[logits.argmax(1).numpy()])
    speakers = C.by_speaker(preds, corpus)
    assert set(speakers["fold"]) == set(corpus.labelled["speaker"])


# ------------------------------------------------------------------ profile, notebook


def test_paper_profile_validates_over_params_yaml():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "profiles/paper/clap.yaml").read_text())
    merged = {k: {**base.get(k, {}), **v} if isinstance(v, dict) else v
              for k, v in {**base, **profile}.items()}
    P = Params.from_dict(merged)
    assert P.clap.pretrain_epochs == 50 and P.clap.finetune_epochs == 30
    assert P.clap.temperature == 1.0 and P.clap.batch_size == 16
    assert P.encoders.speech == "facebook/hubert-base-ls960"
    assert P.clap.pretrain_precision == "bf16-mixed" and P.training.precision == "32-true"


def test_paper_architecture_trains_one_step_on_tiny_local_models(tmp_path):
    """HuBERT speech side with every transformer layer trainable, BERT text side with its
    top layer at the text lr: one pre-training step on tiny locally built models."""
    from transformers import AutoTokenizer, BertConfig, BertModel, HubertConfig, HubertModel
    from transformers import Wav2Vec2FeatureExtractor

    from mmser.encode.encoders import SpeechEncoder, TextEncoder, bundled_text_dir

    torch.manual_seed(0)
    hubert = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4),
                          conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2)
    HubertModel(hubert).save_pretrained(tmp_path / "hubert")
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path / "hubert")
    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(
        tmp_path / "bert")
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(tmp_path / "bert")
    enc = Encoders(speech=str(tmp_path / "hubert"), text=str(tmp_path / "bert"))
    p = Clap(speech_top_layers=2, text_top_layers=1, text_pool="cls")
    speech, text = SpeechEncoder(enc.speech), TextEncoder(enc.text)
    with torch.inference_mode():
        s_states, s_len = speech([np.random.randn(4000).astype(np.float32),
                                  np.random.randn(3000).astype(np.float32)])
        t_states, t_mask, _ = text(["I am happy", "this is so sad and long"])
    items = [{"speech": s_states[0, i, :n].clone(), "text": t_states[1, i, :m].clone(),
              "text_key": i} for i, (n, m) in enumerate(zip(s_len.tolist(),
                                                           t_mask.sum(-1).tolist()))]
    model = CM.ClapModel(C.speech_side(p, enc, 16), C.text_side(p, enc, 16, "main"))
    task = C.make_task(model, p, "loss")
    lrs = {g["name"]: g["lr"] for g in task.param_groups}
    assert lrs == {"speech": 1e-4, "text": 1e-5, "head": p.head_lr}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(task.param_groups)
    loss = model(D.collate(items))["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = {k.split(".")[0] + "." + k.split(".")[1] for k, v in model.state_dict().items()
             if not torch.equal(v, before[k])}
    assert {"speech.top", "text.top", "speech.projection", "text.projection"} <= moved


@pytest.mark.notebook
def test_notebook_runs_under_papermill(fixture, tmp_path):
    import papermill as pm

    out = tmp_path / "clap.ipynb"
    pm.execute_notebook(
        str(ROOT / "notebooks/clap.ipynb"), str(out), kernel_name="python3", cwd=str(ROOT),
        parameters={"clap": {"use_read": True, "batch_size": 8,
                             "similarity_ablation": ["full"]},
                    "corpus_dir": str(fixture / "corpus"),
                    "manifest_path": str(fixture / "manifest.csv"),
                    "features_dir": str(fixture / "features"),
                    "results_dir": str(tmp_path / "results"),
                    "models_dir": str(tmp_path / "models"),
                    "cache_dir": str(tmp_path / "cache"),
                    "curves_csv": str(tmp_path / "curves.csv")}, progress_bar=False)
    metrics = json.loads((tmp_path / "results/metrics.json").read_text())
    folds = pd.read_csv(tmp_path / "results/tables/fold_metrics.csv")
    assert set(folds["system"]) == {"none", "small", "full", "full · dot"}
    assert set(metrics) == {"setting", "full", "none", "claim"}  # the claim's two systems
    assert 0 <= metrics["full"]["WA"] <= 1 and metrics["claim"]["clap"]["verdict"]
    run = json.loads((tmp_path / "results/run.json").read_text())
    assert run["similarity"]["ablation"] == {"full · dot": "dot"}
    assert "test speakers" in run["pretraining_read"]
    for name in ("table1.md", "table3.md", "retrieval.md", "bootstrap.md"):
        assert (tmp_path / "results/tables" / name).is_file()
    figures = {f.name for f in (tmp_path / "results/figures").iterdir()}
    assert {"confusion_full.png", "tsne_none.png", "pretrain_curves.png"} <= figures
    assert "77.22" in (tmp_path / "results/tables/table1.md").read_text()
    assert "dot logits (ablation)" in (tmp_path / "results/tables/table1.md").read_text()
    # the reading is computed: it names this run's ordering and the paper's
    executed = json.loads(out.read_text())
    shown = "".join(str(o.get("data", {}).get("text/markdown", ""))
                    for c in executed["cells"] for o in c.get("outputs", []))
    assert "the paper's: none 70.04" in shown and "Similarity ablation" in shown


def test_pooling_once_in_the_bank_equals_pooling_in_the_model():
    torch.manual_seed(0)
    side = CM.Side(8, 5, 0.2).eval()
    seq = torch.randn(7, 8)
    full = side(seq[None], torch.ones(1, 7, dtype=torch.bool))
    once = C._pool_once(seq, "mean")
    torch.testing.assert_close(side(once[None], torch.ones(1, 1, dtype=torch.bool)), full)
