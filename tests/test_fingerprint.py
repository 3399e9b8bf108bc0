"""Reused work is proven current: fingerprints hold the code, parameters, data and weights;
run files are written atomically, and an unreadable one is set aside and its work redone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmser import fingerprint as F
from mmser.config import Training
from mmser.training import loop as T
from test_clap import make_fixture
from test_training import Interrupt, MeanPool, Stop, _corpus, _features, _make_items

ROOT = Path(__file__).resolve().parents[1]
QUIET = Training(progress=False)
FIT = dict(max_epochs=3, batch_size=16, seed=0)


def test_module_closure_follows_every_import_and_parent_package():
    closure = {str(p.relative_to(F.PACKAGE_DIR)) for p in F.module_closure(["mmser.models.clap"])}
    assert {"__init__.py", "models/__init__.py", "models/clap.py", "models/layers.py"} <= closure
    assert "papers/clap.py" not in closure  # a model does not import its experiment
    papers = {str(p.relative_to(F.PACKAGE_DIR)) for p in F.module_closure(["mmser.papers.clap"])}
    assert {"models/clap.py", "training/loop.py", "fingerprint.py"} <= papers


def test_value_digest_sees_every_value_and_no_order():
    base = {"x": torch.zeros(3), "y": np.arange(4), "n": 1, "s": "a", "l": [1.0, None]}
    assert F.value_digest(base) == F.value_digest(dict(reversed(list(base.items()))))
    for changed in ({**base, "x": torch.tensor([0.0, 0.0, 1e-7])},
                    {**base, "x": torch.zeros(3, dtype=torch.float64)},
                    {**base, "y": np.arange(4).reshape(2, 2)}, {**base, "n": 2},
                    {**base, "l": [1.0]}, {**base, "extra": 0}):
        assert F.value_digest(changed) != F.value_digest(base)
    assert F.value_digest(torch.zeros(2, dtype=torch.bfloat16))  # no NumPy dtype needed
    with pytest.raises(TypeError, match="cannot fingerprint a object"):
        F.value_digest({"x": object()})


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = F.write_text(tmp_path / "done.json", "old")

    def half(tmp):
        tmp.write_text("ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        F.atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["done.json"]


# ------------------------------------------------------------------------------ fit reuse


def _fit(out_dir, lr=0.05, seed=0, task=None, **params):
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus))
    fold = next(corpus.folds())
    torch.manual_seed(seed)
    task = task or T.Task(MeanPool(), lr=lr)
    return T.fit(task, make_items(fold.train()), make_items(fold.val()), out_dir, QUIET,
                 fingerprint=params, **FIT)


def _stamp(run: Path) -> str:
    return (run / "fingerprint.json").read_text()


def test_every_input_of_a_run_is_in_its_fingerprint(tmp_path):
    run = tmp_path / "run"
    _fit(run)
    first = json.loads(_stamp(run))
    assert set(first) == {"code", "params", "training", "options", "data", "initial_weights"}
    done = (run / "done.json").stat().st_mtime_ns
    _fit(run)  # the same inputs: read back, not trained
    assert (run / "done.json").stat().st_mtime_ns == done
    threads = torch.get_num_threads()
    changed = {"params": lambda: _fit(run, alpha=1),  # the caller's parameter section
               "initial_weights": lambda: _fit(run, seed=1),
               "options": lambda: T.fit(*_fit_args(), run, QUIET, max_epochs=2, batch_size=16),
               "training": lambda: T.fit(*_fit_args(), run, Training(progress=False,
                                                                     threads=threads), **FIT),
               "data": lambda: T.fit(*_fit_args(noise=1), run, QUIET, **FIT)}
    for part, rerun in changed.items():
        rerun()
        after = json.loads(_stamp(run))
        assert {k for k in after if after[k] != first[k]} == {part}
        assert (run / "done.json").stat().st_mtime_ns != done  # trained afresh
        done = (run / "done.json").stat().st_mtime_ns


def _fit_args(noise=0):
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus, seed=noise))
    fold = next(corpus.folds())
    torch.manual_seed(0)
    return T.Task(MeanPool(), lr=0.05), make_items(fold.train()), make_items(fold.val())


@pytest.mark.parametrize("name", ["done.json", "best.pt", "history.csv"])
def test_an_unreadable_run_file_is_set_aside_and_the_run_redone(tmp_path, caplog, name):
    reference = _fit(tmp_path / "reference")
    run = tmp_path / "run"
    _fit(run)
    path = run / name
    path.write_bytes(path.read_bytes()[:7])  # cut short, as by a full disk
    with caplog.at_level("WARNING", logger="mmser"):
        result = _fit(run)
    assert str(path) in caplog.text and "moved aside" in caplog.text
    assert (run / f"{name}.corrupt").is_file()  # kept, for whoever wants to look
    assert (result.best_epoch, result.best_score) == (reference.best_epoch,
                                                      reference.best_score)
    assert json.loads((run / "done.json").read_text())["best_epoch"] == reference.best_epoch


def test_a_truncated_checkpoint_is_set_aside_and_training_restarts(tmp_path, caplog):
    reference = _fit(tmp_path / "reference")
    run = tmp_path / "run"
    torch.manual_seed(0)
    with pytest.raises(Stop):
        _fit(run, task=Interrupt(MeanPool(), lr=0.05))
    last = run / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="mmser"):
        result = _fit(run)
    assert str(last) in caplog.text and "unreadable checkpoint" in caplog.text
    assert (run / "last.ckpt.corrupt").is_file()
    assert result.history["epoch"].tolist() == [0, 1, 2]  # from the start
    assert (result.best_epoch, result.best_score) == (reference.best_epoch,
                                                      reference.best_score)


# ---------------------------------------------------------------- a paper stage, edited

SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import mmser
assert mmser.__file__.startswith(sys.argv[4]), mmser.__file__  # the copy, not the checkout
from test_clap import _bank
from mmser.config import Clap, Encoders, Training
from mmser.papers import clap as C
corpus, bank = _bank(Path(sys.argv[2]))
preds, runner = C.run_system(corpus, bank, "full", Clap(batch_size=8), Encoders(),
                             Training(progress=False), Path(sys.argv[3]), use_read=True,
                             fingerprint={})
print(json.dumps({"probs": preds.filter(like="prob_").to_numpy().tolist(),
                  "pretrain_R@1": [r["R@1"] for r in runner.records]}))
"""


def test_an_edited_loss_constant_retrains_the_stage_with_a_different_result(tmp_path):
    """The issue's case: CLAP's contrastive loss multiplied by zero (pre-training made
    useless) must not be answered with the models the real loss trained."""
    fixture = make_fixture(tmp_path / "fixture")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "mmser", src / "mmser",
                    ignore=shutil.ignore_patterns("__pycache__"))
    models = tmp_path / "models"

    def run() -> dict:
        env = {**os.environ, "PYTHONPATH": str(src)}
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(Path(__file__).parent),
                               str(fixture), str(models), str(src)],
                              env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def trained() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in models.rglob("done.json")}

    first = run()
    stamps = trained()
    assert len(stamps) == 4  # two folds: pre-training and fine-tuning each
    assert run() == first and trained() == stamps  # unchanged: read back, nothing trained
    loss = src / "mmser" / "models" / "clap.py"
    text = loss.read_text()
    assert "return (a2t + t2a) / 2" in text
    loss.write_text(text.replace("return (a2t + t2a) / 2", "return (a2t + t2a) * 0"))
    edited = run()
    assert all(trained()[p] != stamps[p] for p in stamps)  # every run trained again
    assert edited["probs"] != first["probs"]
