"""Speed figures of this machine: `python -m mmser.bench` (or `make bench`).

Prints, for whatever the last pipeline run left behind:
- speech-encoding throughput for 3-s clips (30-s padding versus each clip's own length);
- the corpus generation time and each stage notebook's wall time (papermill's record);
- training steps per second of each paper stage, summed over its runs' `done.json`
  (`models/<stage>/**/done.json`: optimiser steps and training seconds, written by `fit`);
- wall time and peak memory of each stage and of the whole `dvc repro`, from
  `results/bench/stages.json`, which `python -m mmser.bench --run [--force]` (or
  `make repro-timed`) writes: it runs `dvc repro --single-item <stage>` for each stage in
  dvc.yaml's order under `/usr/bin/time` (peak memory: the largest process of the stage);
- how the frozen encoders were used: live forward passes against cache reads, from the
  features stage's cache counts and every stage's "encoder_use" ({"encoder_forwards": n,
  "cache_reads": n}), both in `results/<stage>/run.json` (written beside metrics.json by
  `mmser.report.headline.write_metrics`). Target: each frozen encoder runs once per
  distinct input.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

STAGES = ("prepare", "transcribe", "features")
TIME_FORMAT = "wall_s=%e cpu_user_s=%U cpu_sys_s=%S max_rss_kb=%M"  # GNU time's -f
STAGES_JSON = Path("results/bench/stages.json")


def _clips(n: int, seconds: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
            for _ in range(n)]


def encoder_throughput(n: int = 16) -> dict[str, float]:
    """Utterances per second of the bundled Whisper encoder, padded vs variable length."""
    from mmser.encode.whisper import encode, load_bundled_whisper

    encoder = load_bundled_whisper()[0].model.encoder
    clips = _clips(n)
    padded = [np.pad(c, (0, 30 * 16_000 - len(c))) for c in clips]
    rates = {}
    with torch.inference_mode():
        for name, batch in (("variable_length", clips), ("padded_30s", padded)):
            encode(encoder, batch[:1])  # warm-up
            start = time.perf_counter()
            for clip in batch:
                encode(encoder, [clip])
            rates[name] = n / (time.perf_counter() - start)
    rates["speed_up"] = rates["variable_length"] / rates["padded_30s"]
    return rates


def stage_times(results: Path = Path("results")) -> dict[str, float]:
    """Wall times recorded by the executed notebooks (papermill's own timing)."""
    times = {}
    for stage in STAGES:
        report = Path("reports") / f"{stage}.ipynb"
        if report.is_file():
            meta = json.loads(report.read_text())["metadata"].get("papermill", {})
            if meta.get("duration") is not None:
                times[stage] = float(meta["duration"])
    return times


def training_rates(models: str | Path = "models") -> dict[str, dict[str, float]]:
    """Per paper stage (first folder under `models`): runs, optimiser steps, training
    seconds and steps per second, summed over every `done.json` that records them."""
    rates: dict[str, dict[str, float]] = {}
    for done in sorted(Path(models).glob("*/**/done.json")):
        record = json.loads(done.read_text())
        stage = rates.setdefault(done.relative_to(models).parts[0],
                                 {"runs": 0, "timed": 0, "steps": 0, "train_seconds": 0.0})
        stage["runs"] += 1
        if "steps" in record and "train_seconds" in record:
            stage["timed"] += 1
            stage["steps"] += int(record["steps"])
            stage["train_seconds"] += float(record["train_seconds"])
    for stage in rates.values():
        seconds = stage["train_seconds"]
        stage["steps_per_s"] = stage["steps"] / seconds if seconds > 0 else float("nan")
    return rates


def parse_time(text: str) -> dict[str, float]:
    """Wall seconds and peak memory (MB) from GNU time's output with `TIME_FORMAT`; other
    lines (such as "Command exited with non-zero status 1") are skipped."""
    values = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key in ("wall_s", "cpu_user_s", "cpu_sys_s", "max_rss_kb"):
            values[key] = float(value)
    if not {"wall_s", "max_rss_kb"} <= set(values):
        raise ValueError(f"no {TIME_FORMAT!r} figures in {text!r}")
    out = {"wall_s": values["wall_s"], "max_rss_mb": values["max_rss_kb"] / 1024}
    if "cpu_user_s" in values:  # CPU seconds: comparable even when other work shared the cores
        out["cpu_s"] = values["cpu_user_s"] + values.get("cpu_sys_s", 0.0)
    return out


def dvc_stages(path: str | Path = "dvc.yaml") -> list[str]:
    """The pipeline's stages in dvc.yaml's order (each comes after the stages it needs)."""
    return list(yaml.safe_load(Path(path).read_text())["stages"])


def run_stages(stages: list[str], force: bool = False,
               out: str | Path = STAGES_JSON) -> dict:
    """`dvc repro --single-item <stage>` for each stage, timed: wall seconds and the peak
    memory of the stage's largest process; written to `out` as it goes."""
    timer = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
    record: dict = {"force": force, "stages": {}}
    start = time.perf_counter()
    for stage in stages:
        with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
            command = [timer, "-o", report.name, "-f", TIME_FORMAT,
                       "dvc", "repro", "--single-item", *(["--force"] if force else []), stage]
            print("$", " ".join(command[5:]), flush=True)
            code = subprocess.call(command)
            record["stages"][stage] = {**parse_time(report.read()), "exit_status": code}
        record["total_wall_s"] = time.perf_counter() - start
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(record, indent=2))
        if code != 0:
            print(f"stage {stage} failed (exit status {code}); stopping")
            break
    return record


def encoder_use(results: str | Path = "results") -> dict[str, float]:
    """Live encoder forward passes against reads served from the feature cache, from each
    stage's run.json: the features stage by its cache counts (a miss is one forward of one
    input), every other stage by its `encoder_use`. `per_input`: forwards per distinct input
    of the features stage."""
    forwards = reads = inputs = 0
    for path in sorted(Path(results).glob("*/run.json")):
        record = json.loads(path.read_text())
        if "cache" in record:  # the features stage (its encoder_use counts the same misses)
            for counts in record["cache"].values():
                forwards += counts["misses"]
                reads += counts["hits"]
                inputs += counts["hits"] + counts["misses"]  # each input asked once per run
            continue
        counts = record.get("encoder_use", {})
        forwards += int(counts.get("encoder_forwards", 0))
        reads += int(counts.get("cache_reads", 0))
    total = forwards + reads
    return {"encoder_forwards": forwards, "cache_reads": reads,
            "cached_share": reads / total if total else float("nan"),
            "per_input": forwards / inputs if inputs else float("nan")}


def _print_pipeline() -> None:
    rates = training_rates()
    if rates:
        print("training (paper stages, summed over runs' done.json):")
        for stage, r in rates.items():
            if r["timed"]:
                print(f"  {stage:<12} {r['steps_per_s']:8.1f} steps/s  ({r['steps']} steps in "
                      f"{r['train_seconds']:.0f} s, {r['timed']}/{r['runs']} runs timed)")
            else:
                print(f"  {stage:<12}      n/a  ({r['runs']} runs, none timed: trained "
                      "before fit recorded steps)")
    if STAGES_JSON.is_file():
        record = json.loads(STAGES_JSON.read_text())
        kind = "forced" if record.get("force") else "changed stages only"
        print(f"dvc repro, stage by stage ({kind}; {STAGES_JSON}):")
        for stage, r in record["stages"].items():
            flag = "" if r["exit_status"] == 0 else f"  FAILED ({r['exit_status']})"
            cpu = f"  cpu {r['cpu_s']:7.1f} s" if "cpu_s" in r else ""
            print(f"  {stage:<12} {r['wall_s']:8.1f} s{cpu}  peak {r['max_rss_mb']:7.0f} MB{flag}")
        print(f"  {'all':<12} {record['total_wall_s']:8.1f} s")
    else:
        print("no results/bench/stages.json: `make repro-timed` times every stage")
    use = encoder_use()
    if use["encoder_forwards"] or use["cache_reads"]:
        print(f"frozen encoders: {use['encoder_forwards']} live forwards, "
              f"{use['cache_reads']} cache reads ({100 * use['cached_share']:.1f} % from "
              f"the cache); {use['per_input']:.2f} forwards per input (target: 1 on a "
              "fresh cache, 0 after)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="3-s clips to encode")
    parser.add_argument("--run", action="store_true",
                        help="first run dvc repro stage by stage, timed (results/bench/)")
    parser.add_argument("--force", action="store_true",
                        help="with --run: rerun every stage, not only the changed ones")
    args = parser.parse_args(argv)
    if args.run:
        run_stages(dvc_stages(), force=args.force)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch threads: {torch.get_num_threads()}")
    rates = encoder_throughput(args.clips)
    print("speech encoding, 3-s clips, one at a time (bundled Whisper tiny.en encoder):")
    print(f"  padded to 30 s     {rates['padded_30s']:8.1f} utterances/s")
    print(f"  own length         {rates['variable_length']:8.1f} utterances/s")
    print(f"  speed-up           {rates['speed_up']:8.1f} x  (target: >= 10 x)")
    prep = Path("results/prepare")
    if (prep / "run.json").is_file():
        n = sum(json.loads((prep / "metrics.json").read_text())["utterances"].values())
        seconds = json.loads((prep / "run.json").read_text())["generation_s"]
        print(f"corpus generation    {seconds:8.1f} s for {n} utterances (target: < 180 s)")
    times = stage_times()
    if times:
        for stage, seconds in times.items():
            print(f"stage {stage:<14} {seconds:8.1f} s (notebook wall time)")
        print(f"all stages           {sum(times.values()):8.1f} s (target: < 300 s)")
    else:
        print("no executed stage notebooks under reports/: run `make repro` first")
    _print_pipeline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
