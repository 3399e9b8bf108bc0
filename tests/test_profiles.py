"""A paper profile runs end to end as written: `python -m mmser.config --apply
profiles/paper/<paper>.yaml`, then `dvc repro <paper>` on tiny IEMOCAP, MSP-Podcast and
LibriSpeech trees, with tiny locally built models of the paper's classes in place of the
Hugging Face ids and only the sizes a CPU cannot afford changed (epochs, batch, grids, the
top layers of 2-layer models, the read-speech sample)."""

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import torch
import yaml

import background
from test_corpora import build_iemocap, build_librispeech, write_msp_tree
from tiny_models import tiny_whisper

from mmser.papers import clap as C
from test_pipeline import ROOT, _copy_project, _run, _set_params

pytestmark = pytest.mark.notebook
SESSIONS = (1, 2, 3, 4, 5)


def _tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    from mmser.encode.encoders import bundled_text_dir

    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(folder)


# the convolutional front end and transformer of every tiny speech model: 2 layers, 32 wide
SPEECH = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def _ssl(model, folder: Path, **extractor) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(**extractor).save_pretrained(folder)


def _hubert(folder: Path) -> None:
    from transformers import HubertConfig, HubertModel

    _ssl(HubertModel(HubertConfig(**SPEECH)), folder, return_attention_mask=True)


def _wav2vec2(folder: Path) -> None:
    """wav2vec 2.0 base-like with its quantizer (2 groups of 8 codevectors): group-norm front
    end, no attention mask in its extractor, as facebook/wav2vec2-base."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    config = Wav2Vec2Config(**SPEECH, num_codevector_groups=2, num_codevectors_per_group=8,
                            codevector_dim=16, proj_codevector_dim=16)
    _ssl(Wav2Vec2ForPreTraining(config), folder, return_attention_mask=False)


def _wav2vec2_robust(folder: Path) -> None:
    """wav2vec 2.0 large-robust-like: layer-norm front end, stable layer norm."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(**SPEECH, feat_extract_norm="layer", do_stable_layer_norm=True)
    _ssl(Wav2Vec2Model(config), folder, return_attention_mask=True)


def _wavlm(folder: Path) -> None:
    from transformers import WavLMConfig, WavLMModel

    _ssl(WavLMModel(WavLMConfig(**SPEECH, num_buckets=16, max_bucket_distance=64)), folder,
         return_attention_mask=True)


def _whisper(folder: Path) -> None:
    """Whisper base-like, with its feature extractor and the bundled tiny.en tokenizer."""
    from transformers import WhisperFeatureExtractor

    from mmser.encode.whisper import bundled_whisper_dir, load_tokenizer

    tiny_whisper(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    load_tokenizer(bundled_whisper_dir()).save_pretrained(folder)


def _bert(folder: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    _tokenizer(folder)


def _distilbert(folder: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2,
                                     hidden_dim=64)).save_pretrained(folder)
    _tokenizer(folder)


BUILDERS = {"hubert": _hubert, "distilhubert": _hubert,  # DistilHuBERT: a 2-layer HubertModel
            "wav2vec2": _wav2vec2, "wav2vec2_robust": _wav2vec2_robust,
            "wavlm": _wavlm, "whisper": _whisper, "bert": _bert, "distilbert": _distilbert}


def build_paper_models(root: Path, names=("hubert", "bert", "distilbert")) -> dict[str, str]:
    """Tiny models of the papers' classes (2 layers, 32 wide), saved as local folders."""
    torch.manual_seed(0)
    for name in names:
        BUILDERS[name](root / name)
    return {name: str(root / name) for name in names}


def _new_project(project: Path) -> Path:
    """A copy of the project with tiny IEMOCAP, MSP-Podcast and LibriSpeech release trees."""
    _copy_project(project)
    root = project / "data/IEMOCAP_full_release"
    build_iemocap(root, sessions=SESSIONS)
    for n in SESSIONS:  # the tree leaves one turn untranscribed; the paper's text needs all
        utt = f"Ses0{n}F_impro01_M003"
        with open(root / f"Session{n}/dialog/transcriptions/Ses0{n}F_impro01.txt", "a") as f:
            f.write(f"{utt} [016.0000-017.5000]: Words of {utt}.\n")
    build_msp_podcast(project / "data/MSP-Podcast")
    build_librispeech(project / "data/LibriSpeech", n=12)
    _run(["dvc", "config", "core.no_scm", "true"], project)
    return project


MSP_SPLITS = {"Train": 16, "Development": 6, "Test1": 6, "Test2": 6}


def build_msp_podcast(root: Path) -> None:
    """An MSP-Podcast release tree (labels_consensus.csv, Audios/, Transcripts/) with enough
    rated utterances in each official partition for CCC; a third have no agreed category."""
    rows, n = [], 0
    for split, count in MSP_SPLITS.items():
        for i in range(count):
            n += 1
            speaker = str(100 + n % 4 + 4 * (split == "Test2"))  # Test2: speakers of its own
            act, val, dom = (round(1 + 6 * ((n * k) % 11) / 10, 1) for k in (3, 5, 7))
            rows.append((f"MSP-PODCAST_{n:04d}_0001.wav", "ANSX"[n % 4], act, val, dom,
                         speaker, "Female" if n % 2 else "Male", split))
    write_msp_tree(root, rows, lambda name: f"words of {name}")


def _apply(project: Path, paper: str, **tiny) -> dict:
    """The profile applied over the project's own params.yaml (not over the profile an
    earlier test applied) through the real entry point, then the CPU-sized overrides."""
    shutil.copy2(ROOT / "params.yaml", project / "params.yaml")
    _run(["python", "-m", "mmser.config", "--apply", f"profiles/paper/{paper}.yaml"], project)
    _set_params(project, **tiny)
    return yaml.safe_load((project / "params.yaml").read_text())


class Run(NamedTuple):
    """A paper profile applied in `project` and `dvc repro <paper>` run there."""
    project: Path
    models: dict[str, str]  # the tiny local models in place of the profile's
    params: dict  # params.yaml as applied
    out: str  # what `dvc repro` printed


def _repro(project: Path, models: dict[str, str], paper: str, **tiny) -> Run:
    params = _apply(project, paper, **tiny)
    return Run(project, models, params, _run(["dvc", "repro", paper], project).stdout)


def _clap(project: Path, models_root: Path) -> Run:
    models = build_paper_models(models_root)
    return _repro(
        project, models, "clap",
        encoders={"speech": models["hubert"], "text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        clap={"small_text": models["distilbert"], "speech_top_layers": 2, "batch_size": 4,
              "pretrain_epochs": 1, "finetune_epochs": 1})


def _vcemo(project: Path, models_root: Path) -> Run:
    models = build_paper_models(models_root)
    return _repro(
        project, models, "vcemo",
        encoders={"text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "seeds": [0], "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        vcemo={"dim": 16, "heads": 2, "layers": 1, "proj_dim": 8, "queue_size": 16,
               "batch_size": 8, "max_epochs": 1})


def _lemer(project: Path, models_root: Path) -> Run:
    models = build_paper_models(models_root, ("wav2vec2", "bert"))
    return _repro(
        project, models, "lemer",
        encoders={"speech": models["wav2vec2"], "text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        lemer={"text_top_layers": 2, "speech_top_layers": 2, "k_grid": [10], "max_epochs": 1})


def _distil(project: Path, models_root: Path) -> Run:
    models = build_paper_models(models_root, ("hubert", "distilhubert", "wav2vec2_robust", "bert"))
    return _repro(
        project, models, "distil",
        encoders={"speech": models["hubert"], "text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        distil={"sizes": {"large": f"{models['wav2vec2_robust']}@1", "base": "features:main",
                          "distilled": models["distilhubert"]},
                "max_epochs": 1, "layer_epochs": 1})


def _tokenwise(project: Path, models_root: Path) -> Run:
    models = build_paper_models(models_root, ("whisper", "wavlm", "bert"))
    grid = {"batch_sizes": [4], "lrs": [1.0e-3]}
    return _repro(
        project, models, "tokenwise",
        dataset={"read_max": 8},
        encoders={"speech": models["whisper"], "text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        tokenwise={"extra_speech": [models["wavlm"]], "pretrain_epochs": 1, "epochs": 1,
                   "pretrain_batch_sizes": [4], "pretrain_lrs": [1.0e-4], "bootstrap_n": 50,
                   **{f"{role}_{k}": v for role in ("baseline", "ours") for k, v in grid.items()}})


def _iemocap_runs(root: Path) -> dict[str, Run]:
    """clap's profile, then vcemo's and lemer's each in a copy of clap's project: the three
    apply the same `dataset` and `transcribe` sections, so their prepare and transcribe
    stages are up to date there (as in one project, one profile after the other)."""
    runs = {"clap": _clap(_new_project(root / "clap"), root / "clap_models")}
    for paper, run in (("vcemo", _vcemo), ("lemer", _lemer)):
        shutil.copytree(root / "clap", root / paper, symlinks=True)
        runs[paper] = run(root / paper, root / f"{paper}_models")
    return runs


def _distil_run(root: Path) -> Run:
    return _distil(_new_project(root / "project"), root / "models")


def _tokenwise_run(root: Path) -> Run:
    return _tokenwise(_new_project(root / "project"), root / "models")


# built on the second core while other tests run (background.py); each needs its own trees
iemocap_runs = background.module_fixture(_iemocap_runs)
distil_run = background.module_fixture(_distil_run)
tokenwise_run = background.module_fixture(_tokenwise_run)


def test_clap_profile_runs_end_to_end(iemocap_runs):
    project, _, params, out = iemocap_runs["clap"]
    # as written: every text block trained (12 asks for more than these models have),
    # bf16 pre-training, both pre-trained systems against none
    assert params["clap"]["text_top_layers"] == 12
    assert params["clap"]["pretrain_precision"] == "bf16-mixed"
    assert all(f"Running stage '{s}'" in out for s in ("prepare", "transcribe", "features",
                                                       "clap"))
    metrics = json.loads((project / "results/clap/metrics.json").read_text())
    folds = pd.read_csv(project / "results/clap/tables/fold_metrics.csv")
    dot = C.ablation_name("full", "dot")  # the profile's other reading of the CLIP logits
    assert set(folds["system"]) == {"none", "small", "full", dot}
    assert (folds.groupby("system")["fold"].nunique() == len(SESSIONS)).all()
    run = json.loads((project / "results/clap/run.json").read_text())
    assert {r["system"] for r in run["retrieval"]} == {"small", "full", dot}
    assert "iemocap" in metrics["setting"].lower()
    # HuBERT trains from the clips (speech_from_waves): the state below its trained blocks is
    # computed per batch, the cache keeps only the probe's last state, which clap cannot read
    # (a cached state 0 would be an error); BERT's input state and its last
    assert params["training"]["speech_from_waves"]
    assert _layouts(project) == {"speech": [2], "text": [0, 2]}


def _layouts(project: Path) -> dict:
    """The hidden states the features stage kept per role (absolute indices; None: all)."""
    from mmser.encode.features import FeatureCache, FeatureStore

    store = FeatureStore(project / "interim/features")
    kept = {role: FeatureCache(store.root, store.keys[role]["main"]).layout.kept
            for role in ("speech", "text")}
    return {role: None if k is None else list(k) for role, k in kept.items()}


def test_vcemo_profile_runs_end_to_end(iemocap_runs):
    project, _, params, out = iemocap_runs["vcemo"]
    # as written: ASR text in, three augmented views, the paper's 50-epoch schedule without
    # early stopping, the modality ablation
    assert params["vcemo"]["text_source"] == "asr_text" and params["vcemo"]["n_augment"] == 3
    assert params["vcemo"]["patience"] is None and params["vcemo"]["ablation"] is True
    assert "Running stage 'vcemo'" in out
    metrics = json.loads((project / "results/vcemo/metrics.json").read_text())
    folds = pd.read_csv(project / "results/vcemo/tables/fold_metrics.csv")
    assert {"VCEMO (SupCon)", "VCEMO", "Yoon et al. 2019 (MHA-2)",
            "Xu et al. 2019"} <= set(folds["system"])
    assert (folds.groupby("system")["fold"].nunique() == len(SESSIONS)).all()
    assert (project / "results/vcemo/tables/ablation.md").is_file()
    assert metrics["corpus"] == "iemocap"
    # BERT's input embeddings and last layer; of Whisper only the last (the probe's)
    assert _layouts(project) == {"speech": [4], "text": [0, 2]}


def test_lemer_profile_runs_end_to_end(iemocap_runs):
    project, models, params, out = iemocap_runs["lemer"]
    # as written: quantizer units scored per class, both encoders fine-tuned at the paper's
    # rates, bf16, the 8,000-step warm-up, every system of Tables 1-3
    assert params["lemer"]["units"] == "quantizer" and params["lemer"]["unit_scoring"] == "class"
    assert params["lemer"]["warmup_steps"] == 8000 and params["lemer"]["batch_size"] == 16
    assert params["training"]["precision"] == "bf16-mixed"
    assert "Running stage 'lemer'" in out
    metrics = json.loads((project / "results/lemer/metrics.json").read_text())
    folds = pd.read_csv(project / "results/lemer/tables/fold_metrics.csv")
    assert set(params["lemer"]["systems"]) <= set(folds["system"])
    assert (folds.groupby("system")["fold"].nunique() == len(SESSIONS)).all()
    assert metrics["corpus"] == "iemocap"
    run = json.loads((project / "results/lemer/run.json").read_text())
    assert run["encoders"]["speech"] == models["wav2vec2"]
    assert run["encoder_states"] == "top 2 text / 2 speech layers trained"
    sweep = pd.read_csv(project / "results/lemer/k_sweep.csv")
    assert set(sweep["K"]) == {10, params["lemer"]["speech_k"]}  # Figure 3: the grid and K
    assert _layouts(project) == {"speech": [2], "text": [0, 2]}  # speech: from the clips


def test_distil_profile_runs_end_to_end(distil_run):
    project, _, params, out = distil_run
    # as written: every rated utterance regressed (no category subset), the official
    # partitions, whole encoders fine-tuned (text too), FT => FRZ, the ASR row
    assert params["dataset"]["classes"] is None and params["dataset"]["protocol"] == "official"
    cfg = params["distil"]
    assert cfg["speech_ft_layers"] is None and cfg["text_ft_layers"] is None and cfg["frz"]
    assert cfg["batch_size"] == 16 and cfg["output"] == "linear" and cfg["lr"] == 1e-5
    assert "Running stage 'distil'" in out
    prepare = json.loads((project / "results/prepare/metrics.json").read_text())
    assert prepare["utterances"] == {split.lower(): n for split, n in MSP_SPLITS.items()}
    folds = pd.read_csv(project / "results/distil/tables/fold_metrics.csv")
    names = {f"{size} · {modality} · FT" for size in ("large", "base", "distilled")
             for modality in ("A", "A+T")}
    names |= {f"{size} · A+T · FT=>FRZ" for size in ("large", "base", "distilled")}
    assert names | {"distilled · A+T · FT [ASR]"} <= {s.split(" | ")[0] for s in folds["system"]}
    for table in ("table1_ccc", "table2_transcripts", "figure3_valence_gain"):
        assert (project / f"results/distil/tables/{table}.md").is_file(), table
    metrics = json.loads((project / "results/distil/metrics.json").read_text())
    assert metrics["context"].startswith("msp_podcast") and "profile paper" in metrics["context"]
    run = json.loads((project / "results/distil/run.json").read_text())
    assert names <= set(run["params"]) and run["layer_weights"]  # Figure 2: frozen base
    # every size, and Figure 2's frozen base, from the clips: none of their states cached
    assert _layouts(project) == {"speech": [2], "text": [0, 2]}
    assert not (project / "interim/distil/features/keys.json").exists() or "speech" not in \
        json.loads((project / "interim/distil/features/keys.json").read_text())


def test_tokenwise_profile_runs_end_to_end(tokenwise_run):
    project, _, params, out = tokenwise_run
    # as written: LibriSpeech read speech for pre-training (per fold), reference text, the
    # Whisper last layer (the paper searches WavLM's layers only), both protocols
    assert params["dataset"]["read_corpus"] == "librispeech"
    cfg = params["tokenwise"]
    assert cfg["pretrain_speakers"] == "fold" and not cfg["speech_layer_search"]
    assert cfg["protocols"] == ["random_70_20_10", "corpus"] and cfg["hidden"] == 256
    assert "Running stage 'tokenwise'" in out
    prepare = json.loads((project / "results/prepare/metrics.json").read_text())
    assert prepare["utterances"]["read"] == 8
    metrics = json.loads((project / "results/tokenwise/metrics.json").read_text())
    assert metrics["corpus"] == "iemocap" and len(metrics["protocols"]) == 2
    folds = pd.read_csv(project / "results/tokenwise/tables/fold_metrics.csv")
    systems = {"speech whisper", "speech wavlm", "text bert", "ours B_s"}
    assert {f"{s} [{p}]" for s in systems for p in ("loso", "random_70_20_10")} \
        == set(folds["system"])
    assert (project / "results/tokenwise/tables/table3.md").is_file()
    # the frozen baseline pairs on the corpus's own folds although the random split is first
    beside = (project / "results/tokenwise/tables/beside_baseline.md").read_text()
    assert "frozen probe" in beside
    run = json.loads((project / "results/tokenwise/run.json").read_text())
    assert run["pretraining"]["speakers"] == "fold" and run["pretraining"]["folds"]
    assert _layouts(project) == {"speech": [2], "text": [0, 2]}  # S; T and B
