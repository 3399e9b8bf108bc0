"""A paper profile runs end to end as written: `python -m mmser.config --apply
profiles/paper/<paper>.yaml`, then `dvc repro <paper>` on a tiny IEMOCAP tree, with tiny
locally built models of the paper's classes in place of the Hugging Face ids and only the
sizes a CPU cannot afford changed (epochs, batch, the top layers of 2-layer models)."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_corpora import build_iemocap

from mmser.papers import clap as C
from test_pipeline import _copy_project, _run, _set_params

pytestmark = pytest.mark.notebook
SESSIONS = (1, 2, 3, 4, 5)


def _tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    from mmser.encode.encoders import bundled_text_dir

    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(folder)


def build_paper_models(root: Path) -> dict[str, str]:
    """Tiny HuBERT, BERT and DistilBERT (2 layers, 32 wide) saved as local folders."""
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel,
                              HubertConfig, HubertModel, Wav2Vec2FeatureExtractor)

    torch.manual_seed(0)
    folders = {name: root / name for name in ("hubert", "bert", "distilbert")}
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                             conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2)).save_pretrained(folders["hubert"])
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folders["hubert"])
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64)
              ).save_pretrained(folders["bert"])
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2,
                                     hidden_dim=64)).save_pretrained(folders["distilbert"])
    for name in ("bert", "distilbert"):
        _tokenizer(folders[name])
    return {name: str(folder) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = tmp_path_factory.mktemp("profiles")
    _copy_project(project)
    root = project / "data/IEMOCAP_full_release"
    build_iemocap(root, sessions=SESSIONS)
    for n in SESSIONS:  # the tree leaves one turn untranscribed; the paper's text needs all
        utt = f"Ses0{n}F_impro01_M003"
        with open(root / f"Session{n}/dialog/transcriptions/Ses0{n}F_impro01.txt", "a") as f:
            f.write(f"{utt} [016.0000-017.5000]: Words of {utt}.\n")
    _run(["dvc", "config", "core.no_scm", "true"], project)
    return project


def _apply(project: Path, paper: str, **tiny) -> dict:
    """The profile applied through the real entry point, then the CPU-sized overrides."""
    _run(["python", "-m", "mmser.config", "--apply", f"profiles/paper/{paper}.yaml"], project)
    _set_params(project, **tiny)
    return yaml.safe_load((project / "params.yaml").read_text())


def test_clap_profile_runs_end_to_end(project, tmp_path):
    models = build_paper_models(tmp_path)
    params = _apply(
        project, "clap",
        encoders={"speech": models["hubert"], "text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        clap={"small_text": models["distilbert"], "speech_top_layers": 2, "batch_size": 4,
              "pretrain_epochs": 1, "finetune_epochs": 1})
    # as written: every text block trained (12 asks for more than these models have),
    # bf16 pre-training, both pre-trained systems against none
    assert params["clap"]["text_top_layers"] == 12
    assert params["clap"]["pretrain_precision"] == "bf16-mixed"
    out = _run(["dvc", "repro", "clap"], project).stdout
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


def test_vcemo_profile_runs_end_to_end(project, tmp_path):
    models = build_paper_models(tmp_path)
    params = _apply(
        project, "vcemo",
        encoders={"text": models["bert"]},
        training={"accelerator": "cpu", "workers": 1, "seeds": [0], "claim_seeds": [0]},
        transcribe={"compare_n": 0},
        vcemo={"dim": 16, "heads": 2, "layers": 1, "proj_dim": 8, "queue_size": 16,
               "batch_size": 8, "max_epochs": 1})
    # as written: ASR text in, three augmented views, the paper's 50-epoch schedule without
    # early stopping, the modality ablation
    assert params["vcemo"]["text_source"] == "asr_text" and params["vcemo"]["n_augment"] == 3
    assert params["vcemo"]["patience"] is None and params["vcemo"]["ablation"] is True
    out = _run(["dvc", "repro", "vcemo"], project).stdout
    assert "Running stage 'vcemo'" in out
    metrics = json.loads((project / "results/vcemo/metrics.json").read_text())
    folds = pd.read_csv(project / "results/vcemo/tables/fold_metrics.csv")
    assert {"VCEMO (SupCon)", "VCEMO", "Yoon et al. 2019 (MHA-2)",
            "Xu et al. 2019"} <= set(folds["system"])
    assert (folds.groupby("system")["fold"].nunique() == len(SESSIONS)).all()
    assert (project / "results/vcemo/tables/ablation.md").is_file()
    assert metrics["corpus"] == "iemocap"
