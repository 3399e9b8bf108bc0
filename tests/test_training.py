"""The shared training layer: batches, the Lightning task, fit/resume, folds, results."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mmser.training import data as D
from mmser.report import results
from mmser.training import loop as T
from mmser.config import Training
from mmser.corpus.protocols import TestFoldAccessError

QUIET = Training(progress=False)


def _corpus(n=96, classes=("ang", "hap", "neu")) -> D.Corpus:
    df = pd.DataFrame({
        "utt_id": [f"u{i:03d}" for i in range(n)],
        "speaker": [f"spk{i % 8}" for i in range(n)],
        "session": [f"S{i % 4}" for i in range(n)],
        "split": "labelled", "label": [classes[(i // 4) % len(classes)] for i in range(n)],
        "corpus": "toy", "fold": 0,
    })
    return D.Corpus(df, None, "loso", "toy")


def _features(corpus, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for uid, label in zip(corpus.df["utt_id"], corpus.df["label"]):
        centre = np.eye(dim)[corpus.classes.index(label)] * 2
        out[uid] = torch.tensor(rng.normal(centre, 1.0, (int(rng.integers(3, 9)), dim)),
                                dtype=torch.float32)
    return out


class MeanPool(nn.Module):
    def __init__(self, dim=6, n_classes=3):
        super().__init__()
        self.head = nn.Linear(dim, n_classes)

    def forward(self, batch):
        mask = batch["x_mask"][..., None].float()
        logits = self.head((batch["x"] * mask).sum(1) / mask.sum(1))
        return {"loss": nn.functional.cross_entropy(logits, batch["label"]), "logits": logits}


def _make_items(corpus, feats):
    def make(rows):
        ids = D.label_ids(rows["label"], corpus.classes)
        return [{"x": feats[u], "label": int(y), "utt_id": u} for u, y in zip(rows["utt_id"], ids)]
    return make


def test_collate_pads_and_masks_sequences():
    batch = D.collate([{"x": torch.ones(2, 3), "label": 1, "id": "a"},
                       {"x": torch.ones(4, 3), "label": 0, "id": "b"}])
    assert batch["x"].shape == (2, 4, 3)
    assert batch["x_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["x"][0, 2:].abs().sum() == 0 and batch["label"].tolist() == [1, 0]
    assert batch["id"] == ["a", "b"]


def test_bucket_sampler_groups_similar_lengths_and_covers_everything():
    lengths = [1, 100, 2, 99, 3, 98, 4, 97]
    sampler = D.BucketSampler(lengths, batch_size=2, shuffle=True, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(abs(lengths[b[0]] - lengths[b[1]]) < 10 for b in batches)


def test_label_ids_reject_unknown_labels_and_dimensions_scale():
    with pytest.raises(ValueError, match="'fru'"):
        D.label_ids(["ang", "fru"], ["ang", "hap"])
    df = pd.DataFrame({"arousal": [1.0, 5.0], "valence": [3.0, 3.0], "dominance": [2.0, 4.0]})
    assert D.dimensions(df).tolist() == [[0.0, 0.5, 0.25], [1.0, 0.5, 0.75]]
    assert D.dimensions(df.assign(arousal=[1.0, 7.0]), "msp_podcast")[1, 0] == 1.0
    with pytest.raises(ValueError, match="dimensional labels"):
        D.dimensions(df.assign(valence=[np.nan, 3.0]))


def test_cross_validate_selects_before_testing_and_reruns_from_disk(tmp_path):
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus))
    preds = T.cross_validate(corpus, make_items, lambda fold, seed: T.Task(MeanPool(), lr=0.05),
                             tmp_path, QUIET, max_epochs=4, batch_size=16,
                             fingerprint={"v": 1})
    assert sorted(preds["fold"].unique()) == [0, 1, 2, 3]
    assert len(preds) == len(corpus.labelled) and preds["utt_id"].is_unique
    per_fold = results.fold_metrics(preds.assign(system="pool"), corpus.classes)
    assert per_fold["UA"].mean() > 0.6  # separable toy data: the loop really learns
    run = tmp_path / "seed0" / "fold0"
    assert {"best.pt", "done.json", "history.csv"} <= {p.name for p in run.iterdir()}
    assert not (run / "last.ckpt").exists()
    chosen = json.loads((run / "done.json").read_text())["best_epoch"]
    history = pd.read_csv(run / "history.csv")
    assert chosen == int(history.loc[history["val_score"].idxmax(), "epoch"])
    # a finished run with the same fingerprint is read back, not trained again
    again = T.cross_validate(corpus, make_items, lambda fold, seed: T.Task(MeanPool(), lr=0.05),
                             tmp_path, QUIET, max_epochs=4, batch_size=16,
                             fingerprint={"v": 1})
    pd.testing.assert_frame_equal(preds, again)


def test_same_seed_same_predictions_and_changed_fingerprint_retrains(tmp_path):
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus))
    runs = [T.cross_validate(corpus, make_items, lambda fold, seed: T.Task(MeanPool(), lr=0.05),
                             tmp_path / name, QUIET, max_epochs=2, batch_size=16)
            for name in ("a", "b")]
    np.testing.assert_allclose(runs[0].filter(like="prob_"), runs[1].filter(like="prob_"))
    stamp = tmp_path / "a" / "seed0" / "fold0" / "fingerprint.json"
    before = json.loads(stamp.read_text())
    (tmp_path / "a" / "seed0" / "fold0" / "marker").write_text("stale")
    T.cross_validate(corpus, make_items, lambda fold, seed: T.Task(MeanPool(), lr=0.05),
                     tmp_path / "a", QUIET, max_epochs=2, batch_size=16,
                     fingerprint={"lr": 0.05})
    assert not (tmp_path / "a" / "seed0" / "fold0" / "marker").exists()
    after = json.loads(stamp.read_text())
    assert after["params"] != before["params"] and after["data"] == before["data"]


def test_runs_trained_side_by_side_in_processes_match_a_serial_run(tmp_path):
    """`training.workers: 2` trains the runs in two processes, a run that needs another one
    (fine-tuning after pre-training) in a later pass, and gives the serial run's results."""
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus))

    def two_stage(out_dir, cfg):
        def train_fold(fold, seed):
            run = out_dir / f"seed{seed}" / f"fold{fold.index}"
            first = T.Task(MeanPool(), lr=0.05)
            T.fit(first, make_items(fold.train()), make_items(fold.val()), run / "pre", cfg,
                  max_epochs=2, batch_size=16, seed=seed)
            task = T.Task(MeanPool(), lr=0.01)
            task.model.load_state_dict(first.model.state_dict())
            result = T.fit(task, make_items(fold.train()), make_items(fold.val()), run / "ft",
                           cfg, max_epochs=2, batch_size=16, seed=seed)
            return ({"checkpoint": result.best_path},
                    lambda test: T.predictions(task, test, make_items(test), corpus, seed,
                                               fold.index))
        return T.fold_loop(corpus, train_fold, seeds=[0, 1], cfg=cfg)

    serial = two_stage(tmp_path / "serial", QUIET)
    parallel = two_stage(tmp_path / "parallel", Training(progress=False, workers=2))
    pd.testing.assert_frame_equal(serial, parallel)
    for run in ("seed0/fold0/pre", "seed1/fold3/ft"):
        for name in ("done.json", "fingerprint.json", "history.csv"):
            a, b = (tmp_path / side / run / name for side in ("serial", "parallel"))
            if name == "done.json":  # all but the seconds
                a, b = (json.loads(f.read_text()) for f in (a, b))
                assert a.pop("train_seconds") > 0 and b.pop("train_seconds") > 0
                assert a == b
            else:
                assert a.read_text() == b.read_text(), run + "/" + name
    # the processes' runs are reused by a serial rerun: nothing trains again
    mtime = (tmp_path / "parallel/seed1/fold3/ft/done.json").stat().st_mtime_ns
    pd.testing.assert_frame_equal(two_stage(tmp_path / "parallel", QUIET), serial)
    assert (tmp_path / "parallel/seed1/fold3/ft/done.json").stat().st_mtime_ns == mtime


def test_training_never_sees_the_test_fold(tmp_path):
    corpus = _corpus()
    seen = []
    base = _make_items(corpus, _features(corpus))

    def make_task(fold, seed):
        seen.append(set(fold.train()["session"]))
        return T.Task(MeanPool(), lr=0.05)

    preds = T.cross_validate(corpus, base, make_task, tmp_path, QUIET, max_epochs=1,
                             batch_size=16)
    tested = preds.merge(corpus.df[["utt_id", "session"]]).groupby("fold")["session"]
    for fold, sessions in tested:
        assert not set(sessions) & seen[fold]


def test_the_test_fold_cannot_choose_after_it_was_opened():
    corpus = _corpus()
    fold = next(corpus.folds())
    with pytest.raises(TestFoldAccessError):
        fold.test()
    fold.select(epoch=1)
    fold.test()
    with pytest.raises(TestFoldAccessError):
        fold.select(epoch=2)


class Stop(Exception):
    pass


class Interrupt(T.Task):
    """Stops training at the end of epoch 1, after its checkpoint (a killed run)."""

    def on_train_epoch_end(self):
        if self.current_epoch == 1:
            raise Stop()


def test_interrupted_fit_resumes_from_last_checkpoint(tmp_path, monkeypatch):
    corpus = _corpus()
    make_items = _make_items(corpus, _features(corpus))
    fold = next(corpus.folds())
    train, val = make_items(fold.train()), make_items(fold.val())

    torch.manual_seed(0)  # the rerun builds the same task, as a stage rerun does
    with pytest.raises(Stop):
        T.fit(Interrupt(MeanPool(), lr=0.05), train, val, tmp_path / "run", QUIET,
              max_epochs=4, batch_size=16)
    assert (tmp_path / "run" / "last.ckpt").is_file()
    resumed_from = []
    fit = T.L.Trainer.fit
    monkeypatch.setattr(T.L.Trainer, "fit", lambda self, *a, ckpt_path=None, **k: (
        resumed_from.append(ckpt_path), fit(self, *a, ckpt_path=ckpt_path, **k))[1])
    torch.manual_seed(0)
    resumed = T.fit(T.Task(MeanPool(), lr=0.05), train, val, tmp_path / "run", QUIET,
                    max_epochs=4, batch_size=16)
    assert resumed_from == [str(tmp_path / "run" / "last.ckpt")]  # epochs 0, 1 not redone
    assert resumed.history["epoch"].tolist() == [0, 1, 2, 3]


def test_regression_task_scores_mean_ccc():
    task = T.Task(nn.Identity(), kind="regression")
    target = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.9], [0.9, 0.8, 0.1]])
    perfect = [{"pred": target.clone(), "target": target, "loss": torch.tensor(0.0)}]
    assert task.score(perfect) == pytest.approx(1.0)
    flat = [{"pred": torch.full_like(target, 0.5), "target": target, "loss": torch.tensor(0.0)}]
    assert task.score(flat) == pytest.approx(0.0)


def test_results_tables_and_paired_bootstrap(tmp_path):
    preds = pd.DataFrame({
        "utt_id": [f"u{i}" for i in range(8)] * 2, "seed": 0, "fold": [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4,
        "label": ["a", "b"] * 8,
        "pred": ["a", "b"] * 4 + ["a", "a"] * 4,
        "system": ["good"] * 8 + ["bad"] * 8,
    })
    per_fold = results.fold_metrics(preds, ["a", "b"])
    table = results.summary(per_fold).set_index("system")
    assert table.loc["good", "UA"] == 1.0 and table.loc["bad", "UA"] == 0.5
    assert table.loc["good", "folds"] == 2
    ci = results.bootstrap(preds, "good", "bad", n=200)
    assert ci["diff"] == pytest.approx(0.5) and ci["low"] <= 0.5 <= ci["high"]
    md = results.write_table(results.formatted(results.summary(per_fold), ["UA"]),
                             tmp_path / "t")
    assert "1.000 ± 0.000" in md and (tmp_path / "t.csv").is_file()
    with pytest.raises(ValueError, match="same utterances"):
        results.bootstrap(preds[~((preds.system == "bad") & (preds.utt_id == "u0"))],
                          "good", "bad")


def test_empty_validation_set_is_a_clear_error(tmp_path):
    corpus = _corpus()
    items = _make_items(corpus, _features(corpus))(corpus.labelled)
    with pytest.raises(ValueError, match="0 validation items"):
        T.fit(T.Task(MeanPool()), items, [], tmp_path, QUIET, max_epochs=1, batch_size=4)
