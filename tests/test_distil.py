"""The distil stage: losses against hand computations, masks, frozen parts, the protocol,
repeatability, the paper profile on tiny local models, and the notebook under papermill."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mmser.models import distil as DM
from mmser.models.layers import Adapter, mean_max_pool
from mmser.papers import distil as M
from mmser.corpus.audio import write_audio
from mmser.config import Params, ParamsError
from mmser.training.data import load_corpus
from tiny_models import cache_tiny_features, tiny_models, write_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"base": "features:main", "distilled": "features:1"}
TINY = {"profile": "tiny", "sizes": SIZES, "text": "features:2", "adapter_dim": 4,
        "head_hidden": 8, "batch_size": 8, "max_epochs": 2, "patience": None,
        "seen_fraction": 0.15, "layer_size": "base", "asr_size": "distilled",
        "layer_epochs": 1}
TRAINING = {"seeds": [0], "progress": False}


WORDS = {1: "this is awful and sad", 2: "it is a plain day", 3: "what a lovely great day"}


def _tiny_corpus(root: Path) -> pd.DataFrame:
    """2 sessions x 3 speakers x 8 utterances; loudness follows arousal, wording valence."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(2):
        for k in range(3):
            speaker = f"spk{3 * s + k}"
            for i in range(8):
                arousal, valence = rng.uniform(1, 5), float(rng.integers(1, 4))
                utt = f"{speaker}_{i}"
                n = int(rng.integers(4000, 9000))
                wave = rng.normal(0, 0.02 * arousal, n).astype(np.float32)
                write_audio(root / "corpus" / "wav" / f"{utt}.wav", wave)
                text = WORDS[int(valence)]
                rows.append({"utt_id": utt, "path": f"wav/{utt}.wav", "speaker": speaker,
                             "session": f"S{s}", "fold": s, "split": "labelled", "text": text,
                             "asr_text": text.replace("day", "they"),
                             "label": ["sad", "neutral", "happy"][int(valence) - 1],
                             "arousal": arousal, "valence": 2 * valence - 1,
                             "dominance": 0.5 * arousal + 1, "duration": n / 16000,
                             "sample_rate": 16000, "corpus": "synthetic"})
    return write_tiny_corpus(root, rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("distil")
    speech, text = tiny_models(root)
    df = _tiny_corpus(root)
    cache_tiny_features(root, df, speech, text)
    encoders = {"speech": speech, "speech_layers": None, "text": text, "text_layers": None}
    return {"root": root, "encoders": encoders, "df": df}


def _builder(tiny, run_dir, **overrides):
    P = Params.from_dict({"encoders": tiny["encoders"], "training": TRAINING,
                          "distil": {**TINY, **overrides}})
    corpus = load_corpus(tiny["root"] / "corpus", tiny["root"] / "manifest.csv")
    cv_corpus, seen = M.split_seen(corpus, P.distil.seen_fraction, 0)
    states = M.States(tiny["root"] / "features")
    builder = M.Builder(states, corpus, P.distil, P.encoders, run_dir,
                        first_key=corpus.labelled["utt_id"].iloc[0])
    return P, builder, cv_corpus, seen


# ------------------------------------------------------------------------------ losses


def test_ccc_loss_matches_hand_computation():
    pred = torch.tensor([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]])
    target = torch.tensor([[1.0, 0.0], [2.0, 1.0], [4.0, 2.0]])
    # column 0: mu_p = 2, mu_y = 7/3, var_p = 2/3, var_y = 14/9, cov = 1
    # CCC = 2 / (2/3 + 14/9 + 1/9) = 6/7; column 1 is perfect (CCC = 1)
    ccc = DM.ccc_per_dim(pred, target)
    torch.testing.assert_close(ccc, torch.tensor([6 / 7, 1.0]))
    torch.testing.assert_close(DM.ccc_loss(pred, target), torch.tensor(1 - (6 / 7 + 1) / 2))
    from mmser.report.metrics import ccc as metric_ccc

    assert abs(metric_ccc(target[:, 0], pred[:, 0]) - 6 / 7) < 1e-6
    # a constant shift keeps Pearson's r at 1 but lowers the CCC (the bias term)
    assert DM.ccc_per_dim(pred[:, :1] + 1, target[:, :1]).item() < 6 / 7


def test_mean_max_pool_by_hand_and_padding_changes_nothing():
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(mean_max_pool(x, mask), torch.tensor([[2.0, 1.0, 3.0, 4.0]]))
    torch.manual_seed(0)
    model = DM.DistilModel({"speech": Adapter(4, 3), "text": DM.Frozen()},
                           {"speech": 4, "text": 4}, 5, pool_norm=True).eval()
    a = {"speech": torch.randn(5, 4), "text": torch.randn(2, 4)}
    b = {"speech": torch.randn(9, 4), "text": torch.randn(6, 4)}
    from mmser.training.data import collate

    alone = model(collate([a]))["pred"]
    batched = model(collate([a, b]))["pred"]
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[:1], alone)


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Each vector over its features: zero mean, unit (population) variance, by hand."""
    return (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()


def test_layer_weights_are_a_softmax_of_normalised_states_and_start_as_the_mean():
    lw = DM.LayerWeights(3)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 4)  # (batch, time, states, dim)
    torch.testing.assert_close(lw(x, torch.ones(1, 2, dtype=torch.bool)),
                               _standardised(x).mean(2))
    with torch.no_grad():
        lw.logits.copy_(torch.tensor([0.0, 0.0, 100.0]))
    assert abs(lw.weights.sum().item() - 1) < 1e-6
    torch.testing.assert_close(lw(x, None), _standardised(x[:, :, 2]))


def test_layer_weights_see_no_difference_of_scale_between_states():
    """A state 100 times larger than the others gets no larger share of the mix: each
    state is normalised before the weights apply, so the weights of Figure 2 compare
    states, not their scales."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 4)
    loud = x.clone()
    loud[:, :, 1] = 100 * loud[:, :, 1] + 7
    lw = DM.LayerWeights(3)
    torch.testing.assert_close(lw(loud, None), lw(x, None), atol=1e-4, rtol=1e-4)  # eps
    mixed = lw(loud, None)
    assert mixed.abs().max() < 3  # unnormalised, state 1 alone would put it near 100


def test_pooling_sum_has_the_papers_size_d_and_concat_2d():
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(DM.pool(x, mask, "sum"), torch.tensor([[2.0 + 3.0, 1.0 + 4.0]]))
    torch.testing.assert_close(DM.pool(x, mask, "concat"), torch.tensor([[2.0, 1.0, 3.0, 4.0]]))
    with pytest.raises(ValueError, match="pooling 'attention'"):
        DM.pool(x, mask, "attention")
    for pooling, width in (("sum", 4 + 3), ("concat", 2 * (4 + 3))):
        model = DM.DistilModel({"speech": DM.Frozen(), "text": DM.Frozen()},
                               {"speech": 4, "text": 3}, 5, pooling=pooling)
        assert model.head[1].in_features == width  # P_A+T of size d_A + d_T (Sec. 2.2)
    with pytest.raises(ParamsError, match="pooling"):
        Params.from_dict({"distil": {"pooling": "mean"}})


def test_adapter_starts_as_identity():
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(Adapter(8, 2)(x, None), x)


def test_frozen_branch_unchanged_by_a_training_step():
    torch.manual_seed(0)
    tuned = Adapter(4, 2)
    torch.nn.init.normal_(tuned.net[-1].weight)
    model = DM.DistilModel({"speech": DM.Frozen(tuned), "text": DM.Frozen()},
                           {"speech": 4, "text": 4}, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert not tuned.training  # no dropout in a frozen part
    from mmser.training.data import collate

    batch = collate([{"speech": torch.randn(6, 4), "text": torch.randn(3, 4),
                      "target": torch.rand(3)} for _ in range(4)])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(batch)["loss"].backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "branches" in k)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("head"))
    assert DM.n_trainable(model) == sum(p.numel() for p in model.head.parameters())


# ------------------------------------------------------------------------------ reading


def _fake_preds(noise: dict[str, dict[str, float]], n: int = 300) -> pd.DataFrame:
    """Predictions of the named systems on the same utterances: the truth plus noise of
    the given size per dimension (1 seed, 2 folds, both scenarios)."""
    rng = np.random.default_rng(0)
    truth = {d: rng.uniform(0, 1, n) for d in DM_DIMS}
    rows = []
    for system, sizes in noise.items():
        for scenario in ("seen", "unseen"):
            part = {"utt_id": [f"u{i}" for i in range(n)], "seed": 0,
                    "fold": np.arange(n) % 2, "label": None, "system": system,
                    "scenario": scenario}
            for d in DM_DIMS:
                part[f"true_{d}"] = truth[d]
                part[f"pred_{d}"] = truth[d] + rng.normal(0, sizes.get(d, 0.1), n)
            rows.append(pd.DataFrame(part))
    return pd.concat(rows, ignore_index=True)


DM_DIMS = ("arousal", "valence", "dominance")


def test_reading_says_plainly_where_the_run_goes_against_the_paper():
    good, bad = {"valence": 0.1}, {"valence": 1.0}
    systems = {"base · A · FT": {"valence": 0.5}, "distilled · A · FT": bad,
               "base · A+T · FT": good, "distilled · A+T · FT": good,
               "distilled · A+T · FT [ASR]": bad}
    preds = _fake_preds(systems)
    summ = M.summary_table(M.scenario_metrics(preds))
    weights = pd.DataFrame([{"seed": 0, "fold": 0, "dimension": d, "state": i, "weight": w}
                            for d, ws in (("arousal", (0.6, 0.3, 0.1)),
                                          ("valence", (0.1, 0.3, 0.6))) for i, w in enumerate(ws)])
    lines = M.reading(summ, preds, ["base", "distilled"], frz=False, asr_size="distilled",
                      wer=0.42, weights=weights)
    text = "\n".join(lines)
    asr = [line for line in lines if line.startswith("- ASR")]
    assert len(asr) == 2 and all("valence" in a and M.AGAINST in a for a in asr)
    assert all("WER 42.0%" in a for a in asr)
    loses = [line for line in lines if line.startswith("- Audio only, distilled − base")]
    assert len(loses) == 2 and all("as the paper" in line for line in loses)
    gains = [line for line in lines if line.startswith("- Valence, A+T − A")]
    assert len(gains) == 4 and all(": as the paper" in line for line in gains)
    assert "as the paper (valence deeper than arousal)" in text
    # the same run with ASR as good as the reference: nothing against the paper there
    systems["distilled · A+T · FT [ASR]"] = good
    preds = _fake_preds(systems)
    summ = M.summary_table(M.scenario_metrics(preds))
    lines = M.reading(summ, preds, ["base", "distilled"], frz=False, asr_size="distilled",
                      wer=0.42, weights=weights.assign(dimension=weights["dimension"][::-1].values))
    asr = [line for line in lines if line.startswith("- ASR")]
    assert asr and not any(M.AGAINST in a for a in asr)
    assert f"{M.AGAINST} (valence not deeper than arousal)" in "\n".join(lines)


# ------------------------------------------------------------------------------ sources


def test_sources_parse_and_bad_input_is_clear(tiny, tmp_path):
    assert M.parse_source("features:2") == ("2", None, None)
    assert M.parse_source("facebook/wav2vec2-large-robust@12") == (
        None, "facebook/wav2vec2-large-robust", 12)
    with pytest.raises(ValueError, match="layer count"):
        M.parse_source("model@twelve")
    with pytest.raises(ParamsError, match="did you mean 'max_epochs'"):
        Params.from_dict({"distil": {"max_epoch": 3}})
    with pytest.raises(ParamsError, match="asr_size"):
        Params.from_dict({"distil": {"asr_size": "large"}})
    _, builder, _, _ = _builder(tiny, tmp_path)
    with pytest.raises(KeyError, match="cached cuts"):
        builder.states.speech("features:7", ["spk0_0"])
    with pytest.raises(KeyError, match="not encoded by the features stage"):
        builder.states.speech("features:main", ["nobody"])
    rows = tiny["df"].head(3).assign(asr_text=None)
    with pytest.raises(ValueError, match="no asr_text"):
        builder.items(M.System("base", "A+T", "FT", "asr_text"))(rows)
    with pytest.raises(ValueError, match="dimensional labels"):
        builder.items(M.System("base"))(tiny["df"].head(3).assign(valence=None))


# ------------------------------------------------------------------------------ protocol


def test_training_never_sees_the_test_fold_or_the_seen_rows(tiny, tmp_path):
    P, builder, cv_corpus, seen = _builder(tiny, tmp_path)
    calls = []
    make = builder.items

    def spy(system):
        inner = make(system)
        return lambda rows: calls.append(list(rows["utt_id"])) or inner(rows)

    builder.items = spy
    preds = M.run_system(builder, M.System("distilled", "A+T"), cv_corpus, seen, P.training,
                         batch_size=8, max_epochs=1, patience=None)
    session = tiny["df"].set_index("utt_id")["session"]
    speaker = tiny["df"].set_index("utt_id")["speaker"]
    held_back = set(seen["utt_id"])
    assert len(held_back) == 6  # 15 % of 8, rounded, for each of 6 speakers
    for train, val, test in zip(calls[0:6:3], calls[1:6:3], calls[2:6:3]):
        assert session[test].nunique() == 1
        assert not set(train) & set(test) and not set(val) & set(test)
        assert not (set(train) | set(val)) & held_back
        assert not set(speaker[val]) & set(speaker[train])  # speaker-disjoint validation
    # the unseen test part of each fold is the corpus's own test fold, held-back rows
    # included: the same utterances as every other stage's
    corpus_fold = tiny["df"].set_index("utt_id")["fold"]
    unseen = preds[preds["scenario"] == "unseen"]
    assert len(unseen) == len(tiny["df"])
    for fold, test in zip((0, 1), calls[2:6:3]):
        expected = set(corpus_fold.index[corpus_fold == fold])
        assert set(test) == expected == set(unseen.loc[unseen["fold"] == fold, "utt_id"])
        assert set(test) & held_back  # held back from training, still tested as unseen
    # seen predictions: held-back rows of speakers that the fold's model was trained on,
    # never rows of the fold's own test part
    seen_preds = preds[preds["scenario"] == "seen"]
    assert len(seen_preds) and set(seen_preds["utt_id"]) <= held_back
    trained = [set(speaker[train]) for train in calls[0:6:3]]
    assert all(speaker[u] in trained[f] for u, f in zip(seen_preds["utt_id"], seen_preds["fold"]))
    assert not any(corpus_fold[u] == f for u, f in zip(seen_preds["utt_id"], seen_preds["fold"]))


def test_same_seed_same_metrics_and_frz_uses_the_fold_checkpoint(tiny, tmp_path):
    out = []
    for run in ("a", "b"):
        P, builder, cv_corpus, seen = _builder(tiny, tmp_path / run)
        preds = pd.concat([M.run_system(builder, s, cv_corpus, seen, P.training, batch_size=8,
                                        max_epochs=1, patience=None)
                           for s in (M.System("base"), M.System("base", "A+T", "FT=>FRZ"))])
        out.append(M.scenario_metrics(preds))
    pd.testing.assert_frame_equal(out[0], out[1])
    assert out[0]["CCC_valence"].notna().all()
    # FT=>FRZ's speech branch is the audio-only FT adapter of the same fold, frozen
    frz = builder.model(M.System("base", "A+T", "FT=>FRZ"), 0, 1)
    ft = builder.task(builder.model(M.System("base"), 0, 1))
    ft.load_state_dict(torch.load(tmp_path / "b" / M.System("base").slug / "seed0" / "fold1" /
                                  "best.pt", weights_only=True))
    for (k, v), w in zip(frz.branches["speech"].module.state_dict().items(),
                         ft.model.branches["speech"].state_dict().values()):
        assert torch.equal(v, w), k
    assert DM.n_trainable(frz) == sum(p.numel() for p in frz.head.parameters())


def test_layer_importance_weights_sum_to_one(tiny, tmp_path):
    P, builder, cv_corpus, _ = _builder(tiny, tmp_path)
    weights = M.layer_importance(builder, cv_corpus, "base", P.training, batch_size=8,
                                 max_epochs=1, patience=None)
    assert set(weights["state"]) == {0, 1, 2}  # front end + 2 layers
    sums = weights.groupby(["fold", "dimension"])["weight"].sum()
    assert len(sums) == 6 and np.allclose(sums, 1)


def test_top_layer_fine_tuning_trains_a_copy(tiny, tmp_path):
    P, builder, cv_corpus, seen = _builder(tiny, tmp_path, speech_ft_layers=1,
                                           text_ft_layers=1)
    system = M.System("base", "A+T")
    assert builder.input_layer("features:main", "speech") == 1
    encoder = builder.encoder("features:main", "speech")
    before = [p.clone() for p in encoder.parameters()]
    task = builder.task(builder.model(system, 0, 0))
    items = builder.items(system)(cv_corpus.labelled.head(8))
    from mmser.training.data import collate

    top_before = [p.clone() for p in task.model.branches["speech"].parameters()]
    opt = torch.optim.Adam(task.model.parameters(), lr=1e-2)
    task.model(collate(items))["loss"].backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in
                   zip(top_before, task.model.branches["speech"].parameters()))
    counts = M.param_counts(builder, system, 0, 0)
    assert counts["trainable"] < counts["total"]


# --------------------------------------------------------------------------- paper profile


def test_paper_profile_validates_and_runs_a_step_on_tiny_hubert_and_bert(tiny, tmp_path):
    from transformers import (AutoTokenizer, BertConfig, BertModel, HubertConfig, HubertModel,
                              Wav2Vec2FeatureExtractor)

    from mmser.encode.encoders import bundled_text_dir

    from mmser.config import merged

    paper = Params.from_dict(merged(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                    yaml.safe_load((ROOT / "profiles/paper/distil.yaml").read_text())))
    assert paper.distil.speech_ft_layers is None and paper.distil.lr == 1e-5
    assert set(paper.distil.sizes) == {"large", "base", "distilled"}

    torch.manual_seed(0)
    hubert, bert = tmp_path / "hubert", tmp_path / "tinybert"
    for folder, layers in ((hubert, 2),):
        HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=layers,
                                 num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
                    ).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=30522, hidden_size=24, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=48)).save_pretrained(bert)
    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(bert)
    distil = {**paper.distil.__dict__, "sizes": {"base": str(hubert), "distilled": f"{hubert}@1"},
              "text": str(bert), "asr_size": "distilled", "layer_size": "base"}
    P = Params.from_dict({"encoders": tiny["encoders"], "distil": distil})
    corpus = load_corpus(tiny["root"] / "corpus", tiny["root"] / "manifest.csv")
    own = tmp_path / "own"
    M.encode_own(corpus, list(P.distil.sizes.values()), [P.distil.text], own)
    builder = M.Builder(M.States(tiny["root"] / "features", own), corpus, P.distil,
                        P.encoders, tmp_path / "runs",
                        first_key=corpus.labelled["utt_id"].iloc[0])
    assert builder.n_layers(f"{hubert}@1", "speech") == 1
    assert builder.input_layer(str(hubert), "speech") == 0  # every layer trains, conv frozen
    system = M.System("distilled", "A+T")
    task = builder.task(builder.model(system, 0, 0))
    items = builder.items(system)(corpus.labelled.head(8))
    assert items[0]["speech"].shape[-1] == 32 and items[0]["text"].shape[-1] == 24
    encoder = builder.encoder(f"{hubert}@1", "speech")
    frozen = [p.clone() for p in encoder.parameters()]
    from mmser.training.data import collate

    opt = task.configure_optimizers()
    loss = task.training_step(collate(items), 0)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(frozen, encoder.parameters()))
    counts = M.param_counts(builder, system, 0, 0)
    assert counts["total"] >= counts["trainable"] > 0


# ------------------------------------------------------------------------------ notebook


@pytest.mark.notebook
def test_notebook_runs_under_papermill(tiny, tmp_path):
    import papermill as pm

    out = tmp_path / "out"
    pm.execute_notebook(
        str(ROOT / "notebooks/distil.ipynb"), str(tmp_path / "distil.ipynb"), kernel_name="python3",
        cwd=str(ROOT), progress_bar=False,
        parameters={"encoders": tiny["encoders"], "training": TRAINING,
                    "distil": {**TINY, "max_epochs": 1},
                    "corpus_dir": str(tiny["root"] / "corpus"),
                    "manifest_path": str(tiny["root"] / "manifest.csv"),
                    "features_dir": str(tiny["root"] / "features"),
                    "own_features_dir": str(out / "own"), "models_dir": str(out / "models"),
                    "results_dir": str(out / "results")})
    metrics = json.loads((out / "results/metrics.json").read_text())
    folds = pd.read_csv(out / "results/tables/fold_metrics.csv")
    assert {"distilled · A+T · FT | seen", "base · A+T · FT=>FRZ | unseen"} <= set(folds["system"])
    # the claim's two systems on unseen speakers, CCC per dimension
    assert set(metrics) == {"context", "distilled · A+T · FT | unseen",
                            "distilled · A · FT | unseen"}
    assert "CCC_valence_std" in metrics["distilled · A · FT | unseen"]
    assert json.loads((out / "results/run.json").read_text())["wer"] > 0
    for name in ("table1_ccc", "table2_transcripts", "figure3_valence_gain"):
        assert (out / "results/tables" / f"{name}.md").is_file()
    for name in ("figure2_layer_weights", "figure3_valence_gain"):
        assert (out / "results/figures" / f"{name}.png").is_file()
    table = pd.read_csv(out / "results/tables/table1_ccc.csv")
    assert {"ours", "paper"} <= set(table["source"])
    # the reading is computed from the run and shown
    executed = json.loads((tmp_path / "distil.ipynb").read_text())
    shown = [o for cell in executed["cells"] for o in cell.get("outputs", [])]
    markdown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for o in shown)
    assert "- ASR − reference transcripts, distilled A+T FT, unseen" in markdown
    assert "of these lines go against the paper" in markdown


def test_sigmoid_output_bounds_predictions_and_unknown_output_is_refused():
    torch.manual_seed(0)
    batch = {"speech": 50 * torch.randn(3, 6, 4), "speech_mask": torch.ones(3, 6, dtype=torch.bool)}
    linear = DM.DistilModel({"speech": DM.Frozen()}, {"speech": 4}, 8, 3, 0.0,
                            output="linear")
    bounded = DM.DistilModel({"speech": DM.Frozen()}, {"speech": 4}, 8, 3, 0.0,
                             output="sigmoid")
    bounded.load_state_dict(linear.state_dict())
    raw = linear.eval()(batch)["pred"]
    squashed = bounded.eval()(batch)["pred"]
    torch.testing.assert_close(squashed, torch.sigmoid(raw))
    assert ((squashed > 0) & (squashed < 1)).all()
    with pytest.raises(ValueError, match="output 'tanh'"):
        DM.DistilModel({"speech": DM.Frozen()}, {"speech": 4}, 8, output="tanh")
