"""The resource plan (mmser.plan) and the GPU check's dry mode (mmser.gpucheck)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from mmser import plan as PL


def _plan(paper: str, **params):
    from mmser.config import Params, merged

    P = PL.load_profile(f"profiles/paper/{paper}.yaml")
    if params:
        P = Params.from_dict(merged(P.to_dict(), params))
    return P, {n.stage: n for n in PL.plan(P, PL.paper_corpus(P), paper)}


def test_features_disk_grows_with_the_cached_layers():
    every = {"speech_states": None}  # every state of every cut
    _, one = _plan("clap", features={"speech_cuts": [], **every})
    _, two = _plan("clap", features={"speech_cuts": [2], **every})
    _, six = _plan("clap", features={"speech_cuts": [6], **every})
    disks = [sum(n["features"].disk.values()) for n in (one, two, six)]
    assert disks[0] < disks[1] < disks[2]
    # a 2-layer cut stores 3 states per frame, the 12-layer encoder 13
    hubert = PL.model_info("facebook/hubert-base-ls960")
    cut = PL.cache_bytes(PL.model_info("facebook/hubert-base-ls960", 2), PL.IEMOCAP)
    assert cut / PL.cache_bytes(hubert, PL.IEMOCAP) == pytest.approx(3 / 13, rel=0.01)


def _speech_disk(needs) -> float:
    return sum(v for k, v in needs["features"].disk.items() if k.startswith("speech"))


def test_the_profiles_cache_only_the_states_their_stage_reads():
    # clap trains HuBERT from the clips: its cache keeps only the probe's last state, 1 of
    # 13; reading the state below its 12 blocks from the cache would keep that too
    _, kept = _plan("clap")
    _, every = _plan("clap", features={"speech_states": None})
    _, cached = _plan("clap", features={"speech_states": [0]},
                      training={"speech_from_waves": False})
    # (`speech_states: []`: no stage reads a sequence, so the probe's time average alone)
    assert _speech_disk(kept) < _speech_disk(every) / 13 / 50
    assert _speech_disk(cached) / _speech_disk(every) == pytest.approx(2 / 13, rel=0.01)
    # computing that state from the clips in every step costs GPU time instead
    assert kept["clap"].gpu_hours > cached["clap"].gpu_hours
    assert PL.stage_states([0], PL.model_info("facebook/hubert-base-ls960")) == 2
    assert PL.stage_states([-1], PL.model_info("facebook/hubert-base-ls960")) == 1
    assert PL.stage_states(None, PL.model_info("facebook/hubert-base-ls960")) == 13


def test_tokenwise_read_max_scales_the_features_stage():
    _, full = _plan("tokenwise")
    _, sample = _plan("tokenwise", dataset={"read_max": 10_000})
    assert sum(sample["features"].disk.values()) < sum(full["features"].disk.values()) / 10
    # all of LibriSpeech 960 h, every state in fp16: the issue's ~1.2 TB order of magnitude;
    # the profile keeps Whisper's last state (1 of 7) and BERT's first and last (2 of 13)
    _, every = _plan("tokenwise", features={"speech_states": None, "text_states": None})
    assert sum(every["features"].disk.values()) > 1e12
    assert _speech_disk(full) / _speech_disk(every) == pytest.approx(1 / 7, rel=0.01)


def test_the_limit_message_names_the_exceeded_limit():
    P, needs = _plan("lemer")
    roomy = PL.Machine(disk=1e15, ram=1e15, gpu_mem=1e15)
    assert PL.exceeded(list(needs.values()), roomy) == []
    small_ram = PL.exceeded(list(needs.values()), replace(roomy, ram=1e9))
    assert small_ram and all("(RAM)" in line for line in small_ram)
    small_gpu = PL.exceeded(list(needs.values()), replace(roomy, gpu_mem=1e6))
    assert [line for line in small_gpu if line.startswith("lemer:") and "(GPU memory)" in line]
    text = PL.report("lemer", P, PL.paper_corpus(P), replace(roomy, disk=1e9))
    assert "EXCEEDED" in text and "(disk)" in text


def test_a_local_config_overrides_the_table(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bert", "hidden_size": 48, "num_hidden_layers": 3,
         "num_attention_heads": 2}))
    m = PL.model_info(str(tmp_path))
    assert (m.kind, m.dim, m.layers, m.source) == ("text", 48, 3, "config.json")
    assert PL.model_info("facebook/wav2vec2-large-robust@12").layers == 12
    with pytest.raises(KeyError, match="not a local folder"):
        PL.model_info("no/such-model")


def test_sizes_parse_and_print():
    assert PL.size("64G") == 64e9 and PL.size("141GB") == 141e9
    assert PL.human(2.5e9) == "2.5 GB"


def test_dry_gpu_check_prints_steps_per_second_for_every_profile(capsys, monkeypatch):
    from mmser import gpucheck
    from mmser.encode import live

    computed = []  # the profiles that train from the waveforms compute their speech per batch
    load = live.LiveRef.load
    monkeypatch.setattr(live.LiveRef, "load", lambda ref: computed.append(ref.model) or load(ref))
    assert gpucheck.main(dry=True, steps=2) == 0
    # clap (HuBERT), lemer and distil (wav2vec 2.0 sizes): 2 steps of 4 clips, 4 to validate
    assert len(computed) == 3 * (2 * 4 + 4) and len(set(computed)) == 2
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines
            if line.split() and line.split()[0] in PL.PAPERS}
    assert sorted(rows) == sorted(PL.PAPERS)
    for paper, cells in rows.items():
        # the row's steps column is 2 and its steps/s a positive number
        numbers = [c for c in cells if c.replace(".", "", 1).isdigit()]
        assert "2" in numbers, (paper, cells)
        assert any(float(c) > 0 for c in numbers if "." in c), (paper, cells)
        # measured and planned GPU memory; the plan's, for 32-wide models at batch 4 on 2-s
        # clips, is megabytes (a corpus of 64 clips of 12 h in all once planned 224 GB)
        memory = re.findall(r"[\d.,]+ [kMGT]?B\b", " ".join(cells))
        assert len(memory) == 2 and 0 < PL.size(memory[1]) < 100e6, (paper, cells)


def test_steps_in_sequence_peak_at_the_largest_transient():
    terms = {"runtime": 10.0}
    PL.sequential(terms, [("reading a", 5.0, "x", 1.0), ("reading b", 20.0, "y", 2.0),
                          ("", 0.0, "x", 3.0)])
    # the peak is while b is read: 10 + 1 held, 20 transient, 2 kept = 33; 16 kept at the end
    assert terms == {"runtime": 10.0, "x": 4.0, "y": 2.0, "while reading b": 17.0}
    assert sum(terms.values()) == 33.0


def test_features_encode_on_the_gpu_when_the_profile_has_one():
    P, gpu = _plan("clap")
    assert P.training.accelerator == "gpu"
    _, cpu = _plan("clap", training={"accelerator": "cpu"})
    assert gpu["features"].gpu_mem > 0 and gpu["features"].gpu_hours > 0
    assert gpu["features"].cpu_tflop == 0 < cpu["features"].cpu_tflop
    assert cpu["features"].gpu_mem == 0
    # on a GPU the host keeps the states' copies only, not the weights and activations
    assert sum(gpu["features"].ram.values()) < sum(cpu["features"].ram.values())
