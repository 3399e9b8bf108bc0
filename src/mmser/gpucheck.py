"""A GPU check ready to run: `make gpu-check` (`python -m mmser.plan --gpu-check`).

On a CUDA machine with the profiles' Hugging Face weights in its cache, every paper
profile trains its heaviest model for a few hundred steps in bf16 (on every visible GPU,
DDP through `mmser.training.launch`, when there are several) and the check prints steps
per second, peak GPU memory and the time of the full run those steps imply, beside the
plan's (`mmser.plan`) estimates. The model is built as the stage builds it (the paper
module's encoder top layers, `mmser.models` classes, the paper module's `make_task`
where it has one) and trained by the project's `mmser.training.loop.fit`; its inputs are
random tensors of the shapes the stage feeds it at the paper's corpus size (mean clip
length, tokens), so no corpus is needed. `--dry` runs the same on the CPU with tiny local
models and a handful of steps, so that CI keeps it working.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from mmser import plan as PL

POOL = 32  # distinct random inputs; items share them (a few hundred steps need no more)
# --dry: the code paths of the GPU check at tiny shapes, so that CI runs all five in about a
# minute of CPU: 64 clips of 2 s with 8 words (100 frames at 50 a second, ~12 tokens), a
# batch of 4, and VCEMO's own network (not a pretrained encoder) made small
DRY_SPLIT = PL.Split(64, 64 * 2.0, 2.0, 8)
DRY_SHAPES = {"clap": {"batch_size": 4},
              "lemer": {"batch_size": 4, "context_tokens": 16},
              "distil": {"batch_size": 4},
              "vcemo": {"batch_size": 4, "n_mels": 16, "dim": 32, "heads": 2, "layers": 1,
                        "proj_dim": 16, "queue_size": 16, "max_tokens": 8},
              "tokenwise": {"pretrain_batch_sizes": [4]}}


def _items(n: int, make) -> list[dict]:
    pool = [make(i) for i in range(POOL)]
    return [{**pool[i % POOL], **({"text_key": i} if "text_key" in pool[0] else {})}
            for i in range(n)]


def _from_waves(make, P, name: str, layers: int | None, state: int, seconds: float,
                root: Path):
    """`make` with its speech input computed from clips per batch, as a stage with
    `training.speech_from_waves` computes it (`mmser.encode.live`): POOL clips of noise of
    `seconds`, written once, each read and run through the frozen encoder when its batch
    is built, so that steps/s counts that forward too."""
    if not P.training.speech_from_waves:
        return make
    import numpy as np
    import soundfile as sf

    from mmser.encode.live import LiveSpeech

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(POOL):
        paths[str(i)] = root / f"clip{i}.wav"
        wave = 0.1 * rng.standard_normal(int(seconds * PL.SAMPLE_RATE))
        sf.write(paths[str(i)], wave.astype(np.float32), PL.SAMPLE_RATE)
    live = LiveSpeech(name, layers, paths)
    refs = live.refs(list(paths), state, {u: f"noise{u}" for u in paths})
    return lambda i: {**make(i), "speech": refs[i % POOL]}


def build(paper: str, P, corpus: PL.Corpus, clips_dir: Path | None = None):
    """(task, make_item, batch size, plan's Trained) of a profile's heaviest training;
    with `training.speech_from_waves` its speech computed from clips written to
    `clips_dir`."""
    clips_dir = clips_dir or Path(tempfile.mkdtemp(prefix="mmser-gpucheck-"))
    from mmser.encode.encoders import SpeechEncoder, TextEncoder, top_layers

    e, lab = P.encoders, corpus.labelled
    stage = next(n for n in PL.plan(P, corpus, paper) if n.stage == paper)
    trained = max(stage.trained, key=lambda t: t.gpu_mem(P.training.precision))
    r = torch.randn
    if paper == "clap":
        from mmser.models.clap import ClapModel
        from mmser.papers import clap as CL

        p = P.clap
        speech = CL.speech_side(p, e, CL._encoder("speech", e.speech, e.speech_layers).dim)
        text = CL.text_side(p, e, CL._encoder("text", e.text, e.text_layers).dim, "main")
        model = ClapModel(speech, text, p.temperature, p.similarity)
        task = CL.make_task(model, p, "loss")
        s_len, t_len = _len(trained, 0), _len(trained, 1)
        encoder = CL._encoder("speech", e.speech, e.speech_layers)
        ds, dt = encoder.dim, CL._encoder("text", e.text, e.text_layers).dim
        make = _from_waves(lambda i: {"speech": r(s_len, ds), "text": r(t_len, dt),
                                      "text_key": i}, P, e.speech, e.speech_layers,
                           CL._below_top(encoder.n_layers, p.speech_top_layers),
                           lab.mean_seconds, clips_dir)
        return task, make, p.batch_size, trained
    if paper == "lemer":
        from mmser.models.lemer import LEMER, Branch
        from mmser.papers import lemer as LE

        p = P.lemer
        se, te = SpeechEncoder(e.speech, e.speech_layers), TextEncoder(e.text, e.text_layers)
        text = Branch(r(4, te.dim), top_layers(te, PL._top(p.text_top_layers, PL.model_info(
            e.text, e.text_layers))), top_lr=p.text_lr)
        speech = Branch(r(4, se.dim), top_layers(se, PL._top(p.speech_top_layers, PL.model_info(
            e.speech, e.speech_layers))), top_lr=p.speech_lr)
        model = LEMER("text", text, speech, te.dim, se.dim, 4, "constraint", p.mu,
                      p.label_attention)
        s_len, t_len = _len(trained, 0), _len(trained, 1)
        k = PL._top(p.speech_top_layers, PL.model_info(e.speech, e.speech_layers))
        make = _from_waves(lambda i: {"text": r(t_len, te.dim), "speech": r(s_len, se.dim),
                                      "label": i % 4}, P, e.speech, e.speech_layers,
                           se.n_layers - k if k else -1, lab.mean_seconds, clips_dir)
        return LE.make_task(model, p), make, p.batch_size, trained
    if paper == "distil":
        from mmser.models.distil import DistilModel
        from mmser.papers import distil as DI
        from mmser.training.loop import Task

        p = P.distil
        spec = max(p.sizes.values(), key=lambda s: PL.model_info(
            *DI.encoder_of(s, "speech", e)).params)
        se = DI.load_encoder(spec, "speech", e)
        te = DI.load_encoder(p.text, "text", e)
        branches = {"speech": top_layers(se, p.speech_ft_layers or se.n_layers),
                    "text": top_layers(te, p.text_ft_layers or te.n_layers)}
        model = DistilModel(branches, {"speech": se.dim, "text": te.dim}, p.head_hidden, 3,
                            p.dropout, p.pool_norm, p.output, p.pooling)
        s_len, t_len = _len(trained, 0), _len(trained, 1)
        k = p.speech_ft_layers or se.n_layers
        make = _from_waves(lambda i: {"speech": r(s_len, se.dim), "text": r(t_len, te.dim),
                                      "target": torch.rand(3)},
                           P, *DI.encoder_of(spec, "speech", e), se.n_layers - k,
                           lab.mean_seconds, clips_dir)
        return Task(model, kind="regression", lr=p.lr, optimizer="adam"), make, \
            p.batch_size, trained
    if paper == "vcemo":
        from mmser.models import vcemo as V
        from mmser.training.loop import Task

        p = P.vcemo
        dt = TextEncoder(e.text, e.text_layers).dim
        net = V.VcemoNet(("acoustic", "words", "bert"), p.n_mels, dt, dt, p.dim, p.heads,
                         p.layers, p.dropout)
        model = V.VcemoModel(net, 4, p.alpha, p.temperature, p.proj_dim, p.queue_size,
                             p.momentum, p.dropout)
        frames = int(_len(trained, 0))
        return Task(model, kind="classification", lr=p.lr, weight_decay=p.weight_decay), \
            lambda i: {"mel": r(frames, p.n_mels), "words": r(p.max_tokens, dt),
                       "sent": r(dt), "label": i % 4}, p.batch_size, trained
    if paper == "tokenwise":
        from mmser.models.tokenwise import Aligner
        from mmser.papers import tokenwise as TW
        from mmser.training.loop import Task

        p = P.tokenwise
        ds = SpeechEncoder(e.speech, e.speech_layers).dim
        dt = TextEncoder(e.text, e.text_layers).dim
        read = corpus.read or lab
        frames = PL.model_info(e.speech, e.speech_layers).frames(read.mean_seconds)
        tokens = int(read.tokens())
        task = Task(Aligner(ds, dt, p.tau, p.scale_attention), kind="loss",
                    lr=p.pretrain_lrs[0], val_metric=TW.knn_val_metric)
        return task, lambda i: {"speech_seq": r(frames, ds), "tokens_seq": r(tokens, dt),
                                "teacher_seq": r(tokens, dt)}, trained.batch, trained
    raise ValueError(f"unknown paper {paper!r}")


def _len(trained: PL.Trained, block: int) -> int:
    """The sequence length the plan gives block `block` of a trained model."""
    return max(1, int(round(trained.blocks[block][2])))


class GpuMemory:
    """Peak GPU memory over a run: torch's own counter in this process (one device), or
    `nvidia-smi` polled every 0.5 s (DDP processes), summed over devices."""

    def __init__(self, devices: int):
        self.devices, self.peak, self._stop = devices, 0.0, threading.Event()
        self._thread = None

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            if self.devices > 1:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            self.peak = max(self.peak, max((float(x) * 2 ** 20 for x in out.split()), default=0))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elif torch.cuda.is_available():
            self.peak = float(torch.cuda.max_memory_allocated())


def check(paper: str, P, corpus: PL.Corpus, steps: int, out_dir: Path) -> dict:
    """Train `paper`'s heaviest model for `steps` optimiser steps; its figures."""
    from mmser.training.loop import fit

    task, make, batch, trained = build(paper, P, corpus, out_dir / f"{paper}-clips")
    cfg = replace(P.training, workers=1, progress=False, seeds=[0])
    world = max(1, cfg.devices)
    train = _items(steps * batch * world, make)
    val = _items(batch, make)
    with GpuMemory(world) as memory:
        result = fit(task, train, val, out_dir / paper, cfg, max_epochs=1, batch_size=batch)
    done = json.loads((out_dir / paper / "done.json").read_text())
    rate = done["steps"] / max(done["train_seconds"], 1e-9)
    stage = next(n for n in PL.plan(P, corpus, paper) if n.stage == paper)
    total = sum(t.steps for t in stage.trained)
    return {"paper": paper, "model": trained.label, "batch": batch, "devices": world,
            "steps": done["steps"], "steps_per_s": rate, "gpu_mem": memory.peak,
            "gpu_mem_plan": stage.gpu_mem, "hours": total / world / rate / 3600,
            "hours_plan": stage.gpu_hours, "best_score": result.best_score}


def configure(paper: str, params: str, dry: bool, models: dict | None):
    """The profile as written on a GPU (bf16, every visible device), or, dry, on the CPU
    with the tiny models in place of the paper's and the plan's paper corpus size."""
    from mmser.config import Params, merged

    base = PL.yaml.safe_load(Path(params).read_text())
    data = merged(base, PL.yaml.safe_load(Path(f"profiles/paper/{paper}.yaml").read_text()))
    if dry:
        from mmser.plan_measure import tiny_overrides

        data = merged(data, tiny_overrides(paper, models))
        data = merged(data, {"training": {"accelerator": "cpu", "devices": 1,
                                          "precision": "32-true", "strategy": "auto"},
                             paper: DRY_SHAPES[paper]})
    else:
        n = torch.cuda.device_count()
        data = merged(data, {"training": {"accelerator": "gpu", "devices": n,
                                          "precision": "bf16-mixed",
                                          "strategy": "ddp" if n > 1 else "auto"}})
    P = Params.from_dict(data)
    corpus = PL.paper_corpus(P)
    if dry:  # every split the tiny one: the plan's sequence lengths, steps and hours with it
        corpus = replace(corpus, encoded=DRY_SPLIT, labelled=DRY_SPLIT,
                         read=DRY_SPLIT if corpus.read else None)
    return P, corpus


def _quiet() -> None:
    """The table is the output: no weight-loading bars, no Lightning notes (e.g. that the
    frozen encoders are in eval mode, which they are on purpose)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")


def main(dry: bool = False, steps: int | None = None, params: str = "params.yaml",
         papers=PL.PAPERS) -> int:
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or `--dry` (CPU, tiny models)")
        return 2
    steps = steps or (2 if dry else 300)
    _quiet()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmser-gpucheck-") as tmp:
        models = None
        if dry:
            from mmser.plan_measure import tiny_models

            models = tiny_models(Path(tmp) / "models", dim=32)
        print(f"{'paper':<10}{'model':<34}{'batch':>6}{'dev':>4}{'steps':>6}{'steps/s':>9}"
              f"{'GPU mem':>10}{'plan':>10}{'full run h':>11}{'plan h':>8}", flush=True)
        for paper in papers:
            P, corpus = configure(paper, params, dry, models)
            start = time.perf_counter()
            r = check(paper, P, corpus, steps, Path(tmp) / "runs")
            rows.append(r)
            print(f"{paper:<10}{r['model'][:33]:<34}{r['batch']:>6}{r['devices']:>4}"
                  f"{r['steps']:>6}{r['steps_per_s']:>9.2f}{PL.human(r['gpu_mem']):>10}"
                  f"{PL.human(r['gpu_mem_plan']):>10}{r['hours']:>11.1f}{r['hours_plan']:>8.1f}"
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    print("steps/s and GPU memory measured; 'full run h' = the plan's step count / measured "
          "steps/s; 'plan' columns extrapolated" + (" (dry: CPU, tiny models, 32-bit)"
                                                     if dry else ""))
    return 0
