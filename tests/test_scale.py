"""Scaling: DDP in launched processes, exact resumption of a killed run, bench helpers."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmser import bench
from mmser.training import loop as T
from mmser.config import Training

QUIET = Training(progress=False, threads=1)


class Tiny(nn.Module):
    """Mean-pooled sequences -> dropout -> 3 classes (dropout: resumption must restore
    the random state, not only the weights)."""

    def __init__(self, dim=6, n_classes=3):
        super().__init__()
        self.hidden, self.head = nn.Linear(dim, 16), nn.Linear(16, n_classes)
        self.drop = nn.Dropout(0.3)

    def forward(self, batch):
        mask = batch["x_mask"][..., None].float()
        pooled = (batch["x"] * mask).sum(1) / mask.sum(1)
        logits = self.head(self.drop(torch.relu(self.hidden(pooled))))
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]), "logits": logits}


def items(n, seed, dim=6):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 3
        x = rng.normal(np.eye(dim)[label] * 1.5, 1.0, (int(rng.integers(3, 9)), dim))
        out.append({"x": torch.tensor(x, dtype=torch.float32), "label": label,
                    "utt_id": f"u{i}"})
    return out


def task(seed=0):
    torch.manual_seed(seed)
    return T.Task(Tiny(), lr=0.02)


FIT = dict(max_epochs=4, batch_size=8, seed=3)


class KilledAt(T.Task):
    """Kills its own process (SIGKILL: no clean-up, like a lost machine) mid-epoch 2."""

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 3:
            os.kill(os.getpid(), signal.SIGKILL)


def killed_fit(out_dir, bucket_by):  # run in a subprocess by the test below
    torch.manual_seed(0)
    T.fit(KilledAt(Tiny(), lr=0.02), items(96, 0), items(24, 1), out_dir, QUIET,
          bucket_by=bucket_by or None, **FIT)


def test_ddp_two_cpu_processes_train_and_load_in_one_process(tmp_path):
    cfg = Training(accelerator="cpu", devices=2, strategy="ddp", progress=False, threads=1)
    model = task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = T.fit(model, items(96, 0), items(24, 1), tmp_path / "ddp", cfg, max_epochs=3,
                   batch_size=8, seed=0)
    done = json.loads((tmp_path / "ddp" / "done.json").read_text())
    assert done["devices"] == 2 and done["steps"] == 3 * 6  # 12 batches, half per process
    assert result.history["epoch"].tolist() == [0, 1, 2]
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    assert not (tmp_path / "ddp" / "launch").exists()  # the job is deleted
    fresh = T.Task(Tiny())  # single-process evaluation of the DDP weights
    fresh.load_state_dict(torch.load(result.best_path, weights_only=True))
    assert any(not torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    out = T.predict(fresh, items(24, 1))
    assert out["logits"].shape == (24, 3) and np.isfinite(out["logits"]).all()
    np.testing.assert_allclose(out["logits"], T.predict(model, items(24, 1))["logits"])


@pytest.mark.parametrize("bucket_by", ["", "x"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, bucket_by, monkeypatch):
    reference = T.fit(task(), items(96, 0), items(24, 1), tmp_path / "ref", QUIET,
                      bucket_by=bucket_by or None, **FIT)
    run = tmp_path / "run"
    code = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import test_scale; test_scale.killed_fit(sys.argv[2], sys.argv[3])",
         str(Path(__file__).parent),
         str(run), bucket_by], capture_output=True, text=True, env={
             **os.environ, "OMP_NUM_THREADS": "1"}).returncode
    assert code == -signal.SIGKILL
    assert (run / "last.ckpt").is_file() and not (run / "done.json").exists()
    # resumes from the end of epoch 1 (checkpoints are written at epoch ends): epoch 2 is
    # redone from its start with the same batches and random state
    resumed_from = []
    fit = T.L.Trainer.fit
    monkeypatch.setattr(T.L.Trainer, "fit", lambda self, *a, ckpt_path=None, **k: (
        resumed_from.append(ckpt_path), fit(self, *a, ckpt_path=ckpt_path, **k))[1])
    resumed = T.fit(task(), items(96, 0), items(24, 1), run, QUIET,  # the same task, rebuilt
                    bucket_by=bucket_by or None, **FIT)
    assert resumed_from == [str(run / "last.ckpt")]
    assert (resumed.best_epoch, resumed.best_score) == (reference.best_epoch,
                                                        reference.best_score)
    pd.testing.assert_frame_equal(resumed.history, reference.history)
    ours, theirs = (torch.load(r.best_path, weights_only=True) for r in (resumed, reference))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    done = [json.loads((d / "done.json").read_text()) for d in (run, tmp_path / "ref")]
    assert done[0]["steps"] == done[1]["steps"] == 4 * 12


def test_bench_helpers(tmp_path):
    assert bench.parse_time("Command exited with non-zero status 1\nwall_s=12.50 "
                            "max_rss_kb=2048\n") == {"wall_s": 12.5, "max_rss_mb": 2.0}
    assert bench.parse_time("wall_s=3.00 cpu_user_s=4.50 cpu_sys_s=0.50 max_rss_kb=1024") == \
        {"wall_s": 3.0, "max_rss_mb": 1.0, "cpu_s": 5.0}
    with pytest.raises(ValueError):
        bench.parse_time("garbage")
    for path, record in {"distil/a/seed0/fold0": {"steps": 10, "train_seconds": 2.0},
                         "distil/b/seed0/fold0": {"steps": 30, "train_seconds": 6.0},
                         "clap/x": {"best_epoch": 1}}.items():
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / "done.json").write_text(json.dumps({"best_score": 0.5, **record}))
    rates = bench.training_rates(tmp_path)
    assert rates["distil"]["steps_per_s"] == 5.0 and rates["distil"]["runs"] == 2
    assert rates["clap"]["timed"] == 0
    (tmp_path / "features").mkdir()
    # run.json: the features stage's own encoder use counts its cache misses again
    (tmp_path / "features" / "run.json").write_text(json.dumps({"cache": {
        "speech": {"hits": 0, "misses": 10}, "text": {"hits": 2, "misses": 8}},
        "encoder_use": {"encoder_forwards": 18}}))
    (tmp_path / "clap" / "run.json").write_text(json.dumps(
        {"seconds": 1.0, "encoder_use": {"encoder_forwards": 0, "cache_reads": 20}}))
    use = bench.encoder_use(tmp_path)
    assert use["encoder_forwards"] == 18 and use["cache_reads"] == 22
    assert use["per_input"] == 0.9
