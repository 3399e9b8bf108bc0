"""Speed figures of this machine: `python -m mmser.bench` (or `make bench`).

Prints speech-encoding throughput for 3-s clips (30-s padding versus each clip's own
length), the corpus generation time, and the wall time that each pipeline stage recorded.
A benchmark, not a test: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

STAGES = ("prepare", "transcribe", "features")


def _clips(n: int, seconds: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
            for _ in range(n)]


def encoder_throughput(n: int = 16) -> dict[str, float]:
    """Utterances per second of the bundled Whisper encoder, padded vs variable length."""
    from mmser.whisper import encode, load_bundled_whisper

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="3-s clips to encode")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch threads: {torch.get_num_threads()}")
    rates = encoder_throughput(args.clips)
    print(f"speech encoding, 3-s clips, one at a time (bundled Whisper tiny.en encoder):")
    print(f"  padded to 30 s     {rates['padded_30s']:8.1f} utterances/s")
    print(f"  own length         {rates['variable_length']:8.1f} utterances/s")
    print(f"  speed-up           {rates['speed_up']:8.1f} x  (target: >= 10 x)")
    prep = Path("results/prepare/metrics.json")
    if prep.is_file():
        meta = json.loads(prep.read_text())
        n = sum(meta["utterances"].values())
        print(f"corpus generation    {meta['generation_s']:8.1f} s for {n} utterances "
              "(target: < 180 s)")
    times = stage_times()
    if times:
        for stage, seconds in times.items():
            print(f"stage {stage:<14} {seconds:8.1f} s (notebook wall time)")
        print(f"all stages           {sum(times.values()):8.1f} s (target: < 300 s)")
    else:
        print("no executed stage notebooks under reports/: run `make repro` first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
