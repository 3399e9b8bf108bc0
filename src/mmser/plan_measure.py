"""The plan checked against measurement: `python -m mmser.plan --measure` (`make bench-profiles`).

Each paper profile's data path runs on tiny locally built models of the paper's classes
(HuBERT, wav2vec 2.0, Whisper, BERT, DistilBERT) over a synthetic corpus at 1x and 4x
size, each stage in its own child process as DVC runs it: the features stage (the
notebook's calls: every clip loaded, each cut encoded into a FeatureCache, texts of both
transcript columns), then what the paper stage loads, through the stage's own code
(clap `Bank`, distil `States`, vcemo `Experiment` and one pass of its training
batches, tokenwise `pretrain_items`, `encode_speech` and `knn_accuracy`, lemer's context
states). The peak RSS of each child
(its VmHWM, read by the child itself) and the bytes it wrote are printed beside `mmser.plan`'s estimate of the
same tiny setting, with the relative error. The plan's "runtime" term (python, torch,
transformers) is replaced by the measured peak RSS of a child that imports exactly the
modules the stage's child had imported, and nothing else; the rest of each estimate is
the plan's arithmetic (of the CPU path, the one measured here). Not measured: lemer's quantizer units
(the tiny run uses k-means units) and training (`make gpu-check` measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmser import plan as PL

SIZES = (1, 4)
N_BASE = 64  # clips at 1x (and as many read clips for tokenwise)
WORDS = ("calm bright river stone table window quiet yellow morning paper music garden "
         "story letter voice simple open green travel number").split()


# ------------------------------------------------------------------------- tiny models

def _tokenizer(folder: Path) -> None:
    from transformers import AutoTokenizer

    from mmser.encode.encoders import bundled_text_dir

    AutoTokenizer.from_pretrained(bundled_text_dir()).save_pretrained(folder)


def tiny_models(root: Path, dim: int = 128) -> dict[str, str]:
    """Tiny HuBERT, wav2vec 2.0, Whisper, BERT, DistilBERT and a narrower BERT (the
    TinyBERT role) saved as local folders. The speech models keep the real models' 50
    frames a second (conv strides multiply to 320) so that frames per second match."""
    import torch
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel,
                              HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor,
                              Wav2Vec2Model, WhisperConfig, WhisperModel)

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    ssl = dict(hidden_size=dim, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=2 * dim, conv_dim=(32, 32), conv_stride=(10, 32),
               conv_kernel=(10, 32), num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=2)
    out = {}
    for name, model in (("hubert", HubertModel(HubertConfig(**ssl))),
                        ("wav2vec2", Wav2Vec2Model(Wav2Vec2Config(**ssl)))):
        model.save_pretrained(root / name)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(root / name)
    WhisperModel(WhisperConfig(d_model=dim, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2,
                               encoder_ffn_dim=2 * dim, decoder_ffn_dim=2 * dim,
                               num_mel_bins=80, vocab_size=512, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)).save_pretrained(root / "whisper")
    BertModel(BertConfig(hidden_size=dim, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * dim)).save_pretrained(root / "bert")
    BertModel(BertConfig(hidden_size=dim // 2, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=dim)).save_pretrained(root / "tinybert")
    DistilBertModel(DistilBertConfig(dim=dim, n_layers=2, n_heads=2, hidden_dim=2 * dim)
                    ).save_pretrained(root / "distilbert")
    for name in ("bert", "tinybert", "distilbert"):
        _tokenizer(root / name)
    for name in ("hubert", "wav2vec2", "whisper", "bert", "tinybert", "distilbert"):
        out[name] = str(root / name)
    return out


def tiny_overrides(paper: str, m: dict[str, str]) -> dict:
    """The profile's encoders replaced by the tiny folders of the same classes; the rest
    of the profile as written (its layer choices, cuts, views, batch sizes)."""
    speech = {"clap": m["hubert"], "lemer": m["wav2vec2"], "distil": m["hubert"],
              "vcemo": m["whisper"], "tokenwise": m["whisper"]}[paper]
    text = m["tinybert"] if paper == "distil" else m["bert"]
    out: dict = {"encoders": {"speech": speech, "text": text}}
    # the profiles train every block (12); the tiny models have 2
    if paper == "clap":
        out["clap"] = {"small_text": m["distilbert"], "speech_top_layers": 2,
                       "text_top_layers": 2}
    if paper == "lemer":  # k-means: the quantizer batch is not measured here
        out["lemer"] = {"units": "kmeans", "speech_top_layers": 2, "text_top_layers": 2}
    if paper == "distil":
        out["distil"] = {"sizes": {"large": f"{m['wav2vec2']}@2", "base": "features:main",
                                   "distilled": f"{m['hubert']}@1"}}
    if paper == "tokenwise":
        out["tokenwise"] = {"extra_speech": [m["hubert"]]}
    return out


# ----------------------------------------------------------------------- tiny corpora

def tiny_corpus(root: Path, n: int, read: int = 0, seed: int = 0) -> Path:
    """`n` labelled and `read` unlabelled clips of 2-6 s (quiet noise) with 8-16 words
    each, in dialogues of 10 turns; a manifest.csv beside them. Returns the manifest."""
    import pandas as pd
    import soundfile as sf

    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + read):
        seconds = rng.uniform(2, 6)
        wave = (0.05 * rng.standard_normal(int(seconds * PL.SAMPLE_RATE))).astype(np.float32)
        path = root / "wav" / f"u{i:05d}.wav"
        sf.write(path, wave, PL.SAMPLE_RATE, subtype="FLOAT")
        text = " ".join(rng.choice(WORDS, rng.integers(8, 17)))
        rows.append({"utt_id": f"u{i:05d}", "path": str(path), "duration": seconds,
                     "split": "labelled" if i < n else "read", "text": text,
                     "asr_text": " ".join(text.split()[1:]) if i < n else None,
                     "label": ["angry", "happy", "neutral", "sad"][i % 4],
                     "dialog_id": f"d{i // 10}", "turn_index": i % 10})
    table = pd.DataFrame(rows)
    table.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def corpus_of(manifest: Path) -> PL.Corpus:
    """The plan's view of a manifest (exact counts, durations, words and word pieces a word
    under the bundled tokenizer: the synthetic words are whole pieces, 1.0, not 1.3)."""
    import pandas as pd
    from transformers import AutoTokenizer

    from mmser.encode.encoders import bundled_text_dir

    df = pd.read_csv(manifest)
    tokenizer = AutoTokenizer.from_pretrained(bundled_text_dir())

    def split(rows) -> PL.Split:
        words = rows["text"].str.split().str.len()
        pieces = sum(len(tokenizer.tokenize(t)) for t in rows["text"]) / words.sum()
        return PL.Split(len(rows), float(rows["duration"].sum()),
                        float(rows["duration"].max()), float(words.mean()), pieces,
                        len(df) / df["dialog_id"].nunique())

    lab, read = df[df["split"] == "labelled"], df[df["split"] == "read"]
    return PL.Corpus("tiny", split(df), split(lab), 4, split(read) if len(read) else None)


# -------------------------------------------------------------------------- children

def child(stage: str, spec_path: str) -> None:
    """One stage's data path (run in a child process: its peak RSS is the stage's)."""
    if stage == "runtime":  # a stage's imports and no data: the modules it had loaded
        import importlib

        for name in json.loads(Path(spec_path).read_text()):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - e.g. __main__, or one only importable in place
                pass
        return
    spec = json.loads(Path(spec_path).read_text())
    import pandas as pd
    import torch  # noqa: F401 - the runtime every stage imports

    from mmser.config import Params
    from mmser.corpus.audio import Clips
    from mmser.encode import features as F

    P = Params.from_dict(spec["params"])
    df = pd.read_csv(spec["manifest"])
    out = Path(spec["out"])
    cache_dir = out / "features"
    if stage == "features":  # notebooks/features.ipynb, cells 3 and 4
        clips = Clips(df["path"])
        digests, sizes = F.clip_digests(clips)
        keys, _ = F.cache_cuts("speech", cache_dir, P.encoders, P.features, clips,
                               digests=digests, sizes=sizes)
        F.write_index(cache_dir, df["utt_id"], digests,
                      speech=F.cut_keys(keys, P.encoders.speech_layers))
        texts = sorted({t for col in ("text", "asr_text") for t in df[col].dropna()})
        keys, _ = F.cache_cuts("text", cache_dir, P.encoders, P.features, texts)
        F.write_index(cache_dir, text=F.cut_keys(keys, P.encoders.text_layers))
        return
    from mmser.encode.live import live_speech
    from mmser.training import data as D

    corpus = D.Corpus(df.assign(fold=0), Path("/"), "loso", "tiny")  # absolute paths
    # speech_from_waves: the speech states computed from the clips, as the stages do
    store = F.FeatureStore(cache_dir, stream=P.training.stream_states,
                           live=live_speech(P.training, P.encoders, corpus))
    own = out / stage
    lab = df[df["split"] == "labelled"].reset_index(drop=True)
    held = []  # what the stage keeps alive
    if stage == "clap":
        from mmser.papers.clap import Bank

        bank = Bank(store, lab, P.clap, P.encoders, cache_root=own)
        held.append(bank)
        draw(bank.pairs(lab, "main"), P.clap.batch_size)
    elif stage == "lemer":
        from mmser.papers import lemer as LE

        C = P.lemer
        n_text, n_speech = store.depth("text"), store.depth("speech")
        t_layer = -1 if not C.text_top_layers else n_text - C.text_top_layers
        s_layer = -1 if not C.speech_top_layers else n_speech - C.speech_top_layers
        sequences = {"text": store.text(lab["text"].tolist(), layer=t_layer),
                     "speech": store.speech(lab["utt_id"], layer=s_layer)}
        new_text = LE.TextStates(P.encoders.text, str(own / "text"), max_length=C.context_tokens,
                                 stream=P.training.stream_states, keep=[t_layer, -1])
        context = LE.context_texts(df, "text", C.context_turns, C.context_tokens,
                                   new_text.count_tokens)
        sequences["context"] = new_text(context.reindex(lab["utt_id"]).tolist(), layer=t_layer)
        table = LE.item_table(lab, ["angry", "happy", "neutral", "sad"], **sequences)
        held.append(table)
        draw(LE.make_items(table, ("context", "speech"))(lab), C.batch_size)
    elif stage == "distil":
        from mmser.papers import distil as DI

        # DI.encode_own's calls (it takes a Corpus): the clips' keys, then each size's states
        # that are not computed from the clips (`live_sources`)
        live = DI.live_sources(P.training, P.encoders, corpus, list(P.distil.sizes.values()))
        clips = Clips(lab["path"])
        digests, sizes = F.clip_digests(clips)
        keys = {}
        for size, spec_ in P.distil.sizes.items():
            if not spec_.startswith(DI.FEATURES) and spec_ not in live:
                encoder = DI.load_encoder(spec_, "speech", P.encoders)
                cache = F.FeatureCache(own, f"{encoder.key}-{DI.parse_source(spec_)[2]}")
                F.speech_features(cache, encoder, clips, 8, digests=digests, sizes=sizes)
                keys[spec_] = cache.dir.name
        if keys:
            F.write_index(own, lab["utt_id"], digests, speech=keys)
        states = DI.States(cache_dir, own, stream=P.training.stream_states, live=live)
        for size, spec_ in P.distil.sizes.items():
            states.speech(spec_, lab["utt_id"], layer=0)
        states.text(P.distil.text, lab["text"], layer=0)
        layer_spec = P.distil.sizes.get(P.distil.layer_size)
        if layer_spec:
            every = states.speech(layer_spec, lab["utt_id"], layer=None)
            draw([{"speech": s} for s in every], P.distil.batch_size)
        held.append(states)
    elif stage == "vcemo":  # notebooks/vcemo.ipynb, cell 3, then one pass of batches
        from mmser.papers import vcemo as VC

        stream = P.training.stream_states
        corpus = D.Corpus(lab.assign(fold=0), Path("/"), "loso", "tiny")  # absolute paths
        exp = VC.Experiment(corpus, lambda t: store.text(t, layer=VC.TEXT_STATES), P.vcemo,
                            own / "mels", 0, stream=stream)
        items = exp.items(corpus.labelled, augment=True)  # a training part, every view
        for _ in D.loader(items, P.vcemo.batch_size, shuffle=True, bucket_by="mel"):
            pass
        held += [exp, items]
    elif stage == "tokenwise":
        from mmser.papers import tokenwise as TW

        read = df[df["split"] == "read"]
        items = TW.pretrain_items(store, read["utt_id"].tolist(), read["text"].tolist())
        items += TW.pretrain_items(store, lab["utt_id"].tolist(), lab["text"].tolist())
        held.append(items)
        draw(items, max(P.tokenwise.pretrain_batch_sizes))
        n_val = max(1, int(len(read) * P.tokenwise.pretrain_val_fraction))
        teacher = torch.cat([F.load_refs(i["teacher_seq"]) for i in items[:n_val]])
        TW.knn_accuracy(teacher, teacher)
        for name in P.tokenwise.extra_speech:
            TW.encode_speech(own / "extra", lab, "/", name)
    else:
        raise ValueError(f"unknown stage {stage!r}")


def draw(items: list[dict], batch_size: int) -> None:
    """One epoch of training batches over `items`, as `fit`'s loader builds them (streamed
    states are read here): the stage's peak includes a batch."""
    from mmser.training.data import loader

    for _ in loader(items, batch_size, shuffle=True):
        pass


def _run_child(stage: str, spec: Path) -> int:
    """Peak RSS (bytes) of one child process running `stage`."""
    log = spec.with_name(f"{stage}.log")
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mmser.plan_measure", stage, str(spec),
                                 str(spec.with_name(f"{stage}.modules.json"))],
                                stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                     "OMP_NUM_THREADS": "1"})
        status = proc.wait()
    if status != 0:
        raise RuntimeError(f"{stage} child failed (status {status}):\n{log.read_text()[-3000:]}")
    # the child's own high-water mark: not ru_maxrss, which Linux raises at exec to the
    # parent's peak (this process, with torch and the tiny models loaded)
    return json.loads(spec.with_name(f"{stage}.modules.json").read_text())["peak_rss"]


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM, bytes) since it was exec'd."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _runtime(modules: Path, seen: dict[str, int]) -> int:
    """Peak RSS of a child that imports exactly the modules a stage child had imported and
    touches no data (one child per distinct set of modules)."""
    key = json.dumps(json.loads(modules.read_text())["modules"])
    if key not in seen:
        spec = modules.with_name("runtime.spec.json")
        spec.write_text(key)
        seen[key] = _run_child("runtime", spec)
    return seen[key]


def _bytes(folder: Path) -> int:
    """Apparent size of every file under `folder` (what the cache writes, not blocks)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def measure(papers=PL.PAPERS, sizes=SIZES, n_base: int = N_BASE,
            params: str = "params.yaml", keep: Path | None = None) -> list[dict]:
    """One row per (paper, size, stage): measured and planned peak RSS and disk. `keep`: a
    folder to work in and leave behind (its rows.json, models, corpora and specs), else a
    temporary one."""
    from mmser.config import merged

    rows = []
    with tempfile.TemporaryDirectory(prefix="mmser-plan-") as tmp:
        tmp = Path(keep or tmp)
        models = tiny_models(tmp / "models")
        runtimes: dict[str, int] = {}  # a stage's imports -> their peak RSS
        for size in sizes:
            for paper in papers:
                read = n_base * size if paper == "tokenwise" else 0
                manifest = tiny_corpus(tmp / f"corpus-{size}{'-read' if read else ''}",
                                       n_base * size, read)
                out = tmp / f"run-{paper}-{size}"
                base = PL.yaml.safe_load(Path(params).read_text())
                profile = PL.yaml.safe_load(Path(f"profiles/paper/{paper}.yaml").read_text())
                data = merged(merged(base, profile), tiny_overrides(paper, models))
                for role in ("speech_cuts", "text_cuts"):  # a cut keeps 1 of the 2 layers
                    data["features"][role] = [1 for _ in data["features"][role]]
                spec = out / "spec.json"
                out.mkdir(parents=True)
                spec.write_text(json.dumps({"params": data, "manifest": str(manifest),
                                            "out": str(out)}))
                for stage in ("features", paper):
                    start = time.perf_counter()
                    rss = _run_child(stage, spec)
                    runtime = _runtime(spec.with_name(f"{stage}.modules.json"), runtimes)
                    rows.append({"paper": paper, "size": size, "stage": stage, "rss": rss,
                                 "disk": _bytes(out / ("features" if stage == "features" else paper)),
                                 "runtime": runtime, "spec": str(spec),
                                 "seconds": time.perf_counter() - start})
                    rows[-1].update(planned(rows[-1]))
                    print(_line(rows[-1]), flush=True)
                    if keep:  # as it goes: a long run's rows survive it
                        (tmp / "rows.json").write_text(json.dumps(rows, indent=1))
    return rows


def planned(row: dict) -> dict:
    """The plan's peak RSS and disk for a measured row (its spec.json, corpus and measured
    runtime): the CPU path, as measured here, with the measured runtime in place of the
    plan's allowance, and no checkpoints (nothing is trained)."""
    from mmser.config import Params

    spec = json.loads(Path(row["spec"]).read_text())
    data = {**spec["params"], "training": {**spec["params"]["training"], "accelerator": "cpu"}}
    need = next(n for n in PL.plan(Params.from_dict(data), corpus_of(Path(spec["manifest"])),
                                   row["paper"]) if n.stage == row["stage"])
    disk = {k: v for k, v in need.disk.items() if not k.startswith("checkpoints")}
    return {"rss_plan": sum({**need.ram, "runtime": row["runtime"]}.values()),
            "disk_plan": sum(disk.values())}


def _err(measured: float, planned: float) -> str:
    return f"{(planned - measured) / measured:+.0%}" if measured else "-"


HEADER = (f"{'paper':<10}{'size':>5} {'stage':<10}{'RSS meas.':>11}{'RSS plan':>11}{'err':>6}"
          f"{'above runtime m/p':>21}{'disk meas.':>12}{'disk plan':>11}{'err':>6}{'s':>6}")


def _line(r: dict) -> str:
    above = f"{PL.human(r['rss'] - r['runtime'])}/{PL.human(r['rss_plan'] - r['runtime'])}"
    return (f"{r['paper']:<10}{r['size']:>4}x {r['stage']:<10}{PL.human(r['rss']):>11}"
            f"{PL.human(r['rss_plan']):>11}{_err(r['rss'], r['rss_plan']):>6}{above:>21}"
            f"{PL.human(r['disk']):>12}{PL.human(r['disk_plan']):>11}"
            f"{_err(r['disk'], r['disk_plan']):>6}{r['seconds']:>6.0f}")


def main() -> int:
    print(__doc__.split("\n\n")[0])
    print(HEADER, flush=True)
    rows = measure()
    summary(rows)
    return 0


def summary(rows: list[dict]) -> None:
    """The runtime baselines, the plan's largest errors and each stage's 4x/1x ratios."""
    runtimes = [r["runtime"] for r in rows]
    print(f"\nruntime (a stage's imports only, measured): {PL.human(min(runtimes))} to "
          f"{PL.human(max(runtimes))}")
    for k in ("rss", "disk"):
        worst = max((abs(r[k + "_plan"] - r[k]) / r[k], r["paper"], r["stage"], r["size"])
                    for r in rows if r[k])
        print(f"largest relative error of the plan's {k}: {worst[0]:.0%} ({worst[1]} "
              f"{worst[3]}x {worst[2]}; the issue asks for <= 25 %)")
    for paper in PL.PAPERS:
        for stage in ("features", paper):
            at = {r["size"]: r for r in rows if r["paper"] == paper and r["stage"] == stage}
            if 1 in at and 4 in at:
                a, b = at[1], at[4]
                print(f"{paper:<10} {stage:<10} peak RSS 4x/1x: {b['rss'] / a['rss']:.2f}; "
                      f"above the runtime: {(b['rss'] - b['runtime']) / (a['rss'] - a['runtime']):.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        child(sys.argv[1], sys.argv[2])
        # the modules this stage imported, for its runtime baseline (`measure`)
        Path(sys.argv[3]).write_text(json.dumps({"peak_rss": _peak_rss(),
                                                  "modules": list(sys.modules)}))
    else:
        raise SystemExit(main())
