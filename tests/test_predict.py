"""The inference command: exported predictors of the tokenwise and distil stages (built by a
tiny training on tiny local encoders) agree with the stages' own predictions, and bad input
(empty, non-audio, too short, missing or corrupt model) gives clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmser.training import data as D
from mmser.papers import distil as M
from mmser.encode import features as F
from mmser import predict as PR
from mmser.models import tokenwise as TWM
from mmser.papers import tokenwise as TW
from mmser.corpus.audio import write_audio
from mmser.config import Params
from mmser.training.loop import Task, fit
from tiny_models import cache_tiny_features, tiny_models, write_tiny_corpus

LABELS = ["sad", "neutral", "happy"]
WORDS = {"sad": "this is awful and sad", "neutral": "it is a plain day",
         "happy": "what a lovely great day"}
TRAINING = {"seeds": [0], "progress": False}


def _tiny_corpus(root: Path) -> pd.DataFrame:
    """2 sessions x 3 speakers x 6 utterances; loudness follows arousal, wording the label."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(2):
        for k in range(3):
            speaker = f"spk{3 * s + k}"
            for i in range(6):
                label, arousal = LABELS[i % 3], float(rng.uniform(1, 5))
                utt = f"{speaker}_{i}"
                n = int(rng.integers(4000, 9000))
                wave = rng.normal(0, 0.02 * arousal, n).astype(np.float32)
                write_audio(root / "corpus" / "wav" / f"{utt}.wav", wave)
                rows.append({"utt_id": utt, "path": f"wav/{utt}.wav", "speaker": speaker,
                             "session": f"S{s}", "fold": s, "split": "labelled",
                             "text": WORDS[label], "asr_text": WORDS[label], "label": label,
                             "arousal": arousal, "valence": 1.0 + 2 * (i % 3),
                             "dominance": 0.5 * arousal + 1, "duration": n / 16000,
                             "sample_rate": 16000, "corpus": "synthetic"})
    return write_tiny_corpus(root, rows)


def _tokenwise(root: Path, encoders: dict) -> dict:
    """Tiny pre-training, the downstream cross-validation of "ours B_s", then the export."""
    P = Params.from_dict({"encoders": encoders, "training": TRAINING,
                          "tokenwise": {"hidden": 8, "epochs": 3}})
    corpus = D.load_corpus(root / "corpus", root / "manifest.csv")
    store = F.FeatureStore(root / "features")
    lab = corpus.labelled.reset_index(drop=True)
    items = TW.pretrain_items(store, lab["utt_id"].tolist(), lab["text"].tolist())
    task = Task(TWM.Aligner(32, 32, 0.1), kind="loss", lr=1e-3, val_metric=TW.knn_val_metric)
    fit(task, items[:24], items[24:], root / "tw" / "pretrain", P.training, max_epochs=1,
        batch_size=8)
    aligner = task.model.eval()
    views = {"ours B_s": TWM.functionals(TW.contextualised(aligner, items))}
    system = TW.System("ours B_s", ["ours B_s"], [8], [1e-3, 1e-2])
    preds, trials = TW.evaluate(corpus, views, [system], seeds=[0], epochs=3, patience=10,
                                hidden=8, val_fraction=0.34,
                                out_dir=root / "tw" / "downstream" / corpus.protocol)
    spec = TW.export_predictor(root / "tw" / "predictor", aligner, trials, corpus,
                               root / "tw", P.encoders, P.tokenwise)
    return {"dir": root / "tw" / "predictor", "spec": spec, "trials": trials,
            "aligner": aligner, "views": views, "corpus": corpus}


def _distil(root: Path, encoders: dict) -> dict:
    """Tiny cross-validation of the A+T and A systems, then their export."""
    cfg = {"profile": "tiny", "sizes": {"base": "features:main"}, "text": "features:2",
           "adapter_dim": 4, "head_hidden": 8, "batch_size": 8, "max_epochs": 2,
           "patience": None, "seen_fraction": 0.15, "layer_size": None, "asr_size": None,
           "frz": False}
    P = Params.from_dict({"encoders": encoders, "training": TRAINING, "distil": cfg})
    corpus = D.load_corpus(root / "corpus", root / "manifest.csv")
    cv_corpus, seen = M.split_seen(corpus, P.distil.seen_fraction, 0)
    builder = M.Builder(M.States(root / "features"), corpus, P.distil, P.encoders,
                        root / "distil", first_key=corpus.labelled["utt_id"].iloc[0])
    out = {}
    for system in (M.System("base", "A+T"), M.System("base")):
        preds = M.run_system(builder, system, cv_corpus, seen, P.training, batch_size=8,
                             max_epochs=2, patience=None)
        folder = root / "distil" / "predictor" / system.slug
        spec = M.export_predictor(folder, builder, system, cv_corpus, [0])
        out[system.modality] = {"dir": folder, "spec": spec, "preds": preds}
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    speech, text = tiny_models(root)
    df = _tiny_corpus(root)
    cache_tiny_features(root, df, speech, text)
    encoders = {"speech": speech, "speech_layers": None, "text": text, "text_layers": None}
    return {"root": root, "df": df, "encoders": encoders,
            "tokenwise": _tokenwise(root, encoders), "distil": _distil(root, encoders)}


def _wav(tiny, utt: str) -> Path:
    return tiny["root"] / "corpus" / "wav" / f"{utt}.wav"


# ------------------------------------------------------------------------------ export


def test_tokenwise_spec_names_encoders_and_the_best_validation_fold(tiny):
    tw, enc = tiny["tokenwise"], tiny["encoders"]
    spec = json.loads((tw["dir"] / PR.SPEC).read_text())
    assert spec["stage"] == "tokenwise" and spec["kind"] == "classification"
    assert spec["classes"] == sorted(LABELS)
    assert spec["inputs"]["speech_seq"] == {"role": "speech", "encoder": enc["speech"],
                                            "layers": None, "cut": "main", "state": -1}
    assert spec["inputs"]["tokens_seq"]["state"] == 0  # non-contextual token embeddings
    trials = tw["trials"]
    per_fold = trials.groupby(["seed", "fold"])["val_UAR"].max()
    assert spec["selection"]["val_UAR"] == pytest.approx(per_fold.max())
    assert per_fold[(spec["selection"]["seed"], spec["selection"]["fold"])] == per_fold.max()
    assert "validation only" in spec["selection"]["rule"]
    assert not any("test" in k for k in spec["selection"])
    assert {p.name for p in tw["dir"].iterdir()} == {PR.SPEC, PR.WEIGHTS}


def test_distil_spec_reads_the_stage_sources(tiny):
    spec = tiny["distil"]["A+T"]["spec"]
    enc = tiny["encoders"]
    assert spec["kind"] == "regression" and spec["dimensions"] == list(D.DIMENSIONS)
    assert spec["inputs"]["speech"] == {"role": "speech", "encoder": enc["speech"],
                                        "layers": None, "cut": "main", "state": -1}
    assert spec["inputs"]["text"] == {"role": "text", "encoder": enc["text"], "layers": 2,
                                      "cut": "2", "state": -1}
    assert spec["architecture"]["branches"]["speech"]["kind"] == "adapter"
    scores = [json.loads(p.read_text())["best_score"] for p in
              sorted((tiny["root"] / "distil" / "base---A-T---FT" / "seed0").glob("fold*/done.json"))]
    assert spec["selection"]["val_CCC"] == pytest.approx(max(scores))
    assert "text" not in tiny["distil"]["A"]["spec"]["inputs"]


# ------------------------------------------------------------- same as the stage's output


def test_tokenwise_predictor_matches_the_stage_model(tiny):
    """Live encoding + the exported weights give the probabilities that the stage's
    classifier gives on the cached features."""
    tw = tiny["tokenwise"]
    sel = tw["spec"]["selection"]
    classifier = TWM.Classifier(torch.zeros(2, 64), 3, 8)
    classifier.load_state_dict(torch.load(
        tiny["root"] / "tw" / "downstream" / "loso" / f"seed{sel['seed']}" / f"fold{sel['fold']}"
        / "ours B_s.pt", weights_only=True))
    classifier.eval()
    with torch.no_grad():
        expected = torch.softmax(classifier(tw["views"]["ours B_s"]), -1).numpy()
    lab = tw["corpus"].labelled.reset_index(drop=True)
    predictor = PR.load_predictor(tw["dir"])
    got = PR.predict_files(predictor, [_wav(tiny, u) for u in lab["utt_id"]],
                           lab["text"].tolist(), batch_size=5)
    assert (got["error"] == "").all() and (got["text_source"] == "given").all()
    probs = got[[f"prob_{c}" for c in predictor.classes]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=2e-4)
    assert list(got["pred"]) == [predictor.classes[i] for i in expected.argmax(1)]


def test_distil_predictor_matches_the_stage_predictions(tiny):
    for modality in ("A+T", "A"):
        run = tiny["distil"][modality]
        sel = run["spec"]["selection"]
        preds = run["preds"]
        rows = preds[(preds["seed"] == sel["seed"]) & (preds["fold"] == sel["fold"])
                     & (preds["scenario"] == "unseen")].reset_index(drop=True)
        texts = tiny["df"].set_index("utt_id").loc[rows["utt_id"], "text"].tolist()
        predictor = PR.load_predictor(run["dir"])
        got = PR.predict_files(predictor, [_wav(tiny, u) for u in rows["utt_id"]],
                               texts if modality == "A+T" else None)
        assert (got["error"] == "").all()
        for dim in D.DIMENSIONS:
            np.testing.assert_allclose(got[dim], rows[f"pred_{dim}"], atol=2e-4)
        if modality == "A":
            assert (got["text_source"] == "none").all() and not predictor.needs_text


# ------------------------------------------------------------------------------- CLI


def test_cli_one_file_prints_probabilities_and_real_time_factor(tiny, capsys):
    code = PR.main([str(_wav(tiny, "spk0_0")), "--text", "what a lovely day",
                    "--model", str(tiny["tokenwise"]["dir"])])
    out, err = capsys.readouterr()
    assert code == 0
    assert "emotion:" in out and all(c in out for c in LABELS)
    assert "text (given): 'what a lovely day'" in out
    assert "real-time factor" in err and "processing / audio" in err
    assert "trained on synthesised speech" in err  # the tiny corpus is the synthetic kind


def test_a_predictor_records_what_it_heard_and_warns_only_for_synthetic_speech(tiny):
    spec = json.loads((tiny["tokenwise"]["dir"] / PR.SPEC).read_text())
    assert spec["trained_on"]["synthetic"] and spec["trained_on"]["corpus_key"] == "synthetic"
    assert PR.heard_warning(spec)
    real = {**spec, "trained_on": {**spec["trained_on"], "corpus": "RAVDESS (2.4-s public copy)",
                                   "corpus_key": "ravdess", "synthetic": False}}
    assert PR.heard_warning(real) is None


def test_cli_transcribes_with_the_bundled_asr_when_no_text(tiny, tmp_path):
    out = tmp_path / "one.csv"
    code = PR.main([str(_wav(tiny, "spk1_1")), "--model", str(tiny["tokenwise"]["dir"]),
                    "--out", str(out)])
    table = pd.read_csv(out, keep_default_na=False)
    assert code == 0 and table.loc[0, "text_source"] == "asr" and table.loc[0, "error"] == ""
    assert table.filter(like="prob_").sum(axis=1).iloc[0] == pytest.approx(1, abs=1e-3)


def test_cli_distil_model_gives_dimensions(tiny, capsys):
    code = PR.main([str(_wav(tiny, "spk0_0")), "--text", "it is a plain day",
                    "--model", str(tiny["distil"]["A+T"]["dir"])])
    out, _ = capsys.readouterr()
    assert code == 0 and all(d in out for d in D.DIMENSIONS)


def test_folder_with_bad_files_still_predicts_the_others(tiny, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for utt in ("spk0_0", "spk3_4"):
        shutil.copy(_wav(tiny, utt), folder / f"{utt}.wav")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    write_audio(folder / "blip.wav", np.zeros(400, np.float32))  # 0.025 s
    (folder / "notes.txt").write_text("not audio, not collected")
    code = PR.main([str(folder), "--model", str(tiny["distil"]["A"]["dir"]), "--quiet"])
    _, err = capsys.readouterr()
    assert code == 0
    table = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    assert len(table) == 5
    errors = dict(zip(table["file"].map(lambda f: Path(f).name), table["error"]))
    assert errors["spk0_0.wav"] == "" and errors["spk3_4.wav"] == ""
    assert "empty.wav" in errors["empty.wav"] and "empty" in errors["empty.wav"]
    assert "garbage.wav" in errors["garbage.wav"] and "cannot decode" in errors["garbage.wav"]
    assert "too short" in errors["blip.wav"]
    assert "garbage.wav" in err and "2 of 5 files predicted" in err


def test_every_file_bad_exits_1_and_a_missing_file_is_named(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    assert PR.main([str(bad), "--model", str(tiny["distil"]["A"]["dir"])]) == 1
    assert PR.main([str(tmp_path / "nowhere.wav"), "--model",
                    str(tiny["distil"]["A"]["dir"])]) == 1
    err = capsys.readouterr().err
    assert "bad.wav: cannot decode audio" in err
    assert "nowhere.wav: audio file not found" in err


def test_missing_or_corrupt_model_is_a_clear_error(tiny, tmp_path, capsys):
    clip = str(_wav(tiny, "spk0_0"))
    assert PR.main([clip, "--model", str(tmp_path / "none")]) == 2
    assert "no such model folder" in capsys.readouterr().err
    with pytest.raises(PR.PredictorError, match="spec.json: not found"):
        PR.load_predictor(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny["tokenwise"]["dir"], broken)
    (broken / PR.WEIGHTS).write_bytes(b"\x00\x01garbage")
    with pytest.raises(PR.PredictorError, match="weights.safetensors: corrupt weights"):
        PR.load_predictor(broken)
    assert PR.main([clip, "--text", "hi", "--model", str(broken)]) == 2
    shutil.copy(tiny["distil"]["A"]["dir"] / PR.WEIGHTS, broken / PR.WEIGHTS)
    with pytest.raises(PR.PredictorError, match="does not fit"):
        PR.load_predictor(broken)
    (broken / PR.SPEC).write_text("{ not json")
    with pytest.raises(PR.PredictorError, match="spec.json: corrupt spec"):
        PR.load_predictor(broken)


def test_text_needs_exactly_one_file(tiny, tmp_path, capsys):
    assert PR.main([str(tmp_path), "--text", "hello",
                    "--model", str(tiny["tokenwise"]["dir"])]) in (1, 2)
    a, b = str(_wav(tiny, "spk0_0")), str(_wav(tiny, "spk0_1"))
    assert PR.main([a, b, "--text", "hello", "--model", str(tiny["tokenwise"]["dir"])]) == 2
    assert "one audio file" in capsys.readouterr().err


def test_distil_top_layer_branch_reads_state_n_minus_k(tiny, tmp_path):
    """Fine-tuned top layers (TopLayers) are exported and rebuilt from the encoder: the
    predictor reads hidden state n - k and matches the stage's predictions."""
    cfg = {"profile": "tiny", "sizes": {"base": "features:main"}, "text": "features:2",
           "speech_ft_layers": 1, "head_hidden": 8, "batch_size": 8, "max_epochs": 1,
           "patience": None, "seen_fraction": 0.15, "layer_size": None, "asr_size": None,
           "frz": False}
    P = Params.from_dict({"encoders": tiny["encoders"], "training": TRAINING, "distil": cfg})
    corpus = D.load_corpus(tiny["root"] / "corpus", tiny["root"] / "manifest.csv")
    cv_corpus, seen = M.split_seen(corpus, P.distil.seen_fraction, 0)
    builder = M.Builder(M.States(tiny["root"] / "features"), corpus, P.distil, P.encoders,
                        tmp_path, first_key=corpus.labelled["utt_id"].iloc[0])
    system = M.System("base")
    preds = M.run_system(builder, system, cv_corpus, seen, P.training, batch_size=8,
                         max_epochs=1, patience=None)
    spec = M.export_predictor(tmp_path / "predictor", builder, system, cv_corpus, [0])
    assert spec["architecture"]["branches"]["speech"] == {"kind": "top", "frozen": False, "k": 1}
    assert spec["inputs"]["speech"]["state"] == 1  # 2 layers, the top one trained
    sel = spec["selection"]
    rows = preds[(preds["fold"] == sel["fold"]) & (preds["scenario"] == "unseen")]
    got = PR.predict_files(PR.load_predictor(tmp_path / "predictor"),
                           [_wav(tiny, u) for u in rows["utt_id"]])
    for dim in D.DIMENSIONS:
        np.testing.assert_allclose(got[dim], rows[f"pred_{dim}"], atol=2e-4)
