"""The papers' central claims, each a comparison of two systems of one stage, and the
seeds they rest on.

The report tests every claim with a paired bootstrap (`mmser.report.compare.claims`). A
verdict from one training run can flip with the floating-point rounding of another machine
or thread count, so the systems a claim compares train on `training.claim_seeds` as well
as `training.seeds` (`claim_seeds`), and the bootstrap pools their predictions, resampling
utterances with all their seeds' predictions together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "does not agree", "inconclusive"
NOT_RUN = "not run"  # a stage or system that has no results
NOT_APPLICABLE = "not applicable"  # a stage or system the corpus does not allow


def find_system(systems: Sequence[str], candidates: Sequence[str]) -> str | None:
    """The first candidate present (`name*` matches a prefix)."""
    systems = [str(s) for s in dict.fromkeys(systems)]
    for cand in candidates:
        if cand.endswith("*"):
            hit = next((s for s in systems if s.startswith(cand[:-1])), None)
        else:
            hit = cand if cand in systems else None
        if hit is not None:
            return hit
    return None


def verdict(low: float, high: float, direction: int = 1) -> str:
    """`agrees` when the CI excludes 0 on the claimed side (direction +1: a > b, -1: a < b),
    `does not agree` when it excludes 0 on the other side, else `inconclusive`."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if any(v is None or not np.isfinite(v) for v in (low, high)):
        return INCONCLUSIVE
    if low > 0:
        return AGREES if direction > 0 else DISAGREES
    if high < 0:
        return AGREES if direction < 0 else DISAGREES
    return INCONCLUSIVE


@dataclass(frozen=True)
class Claim:
    """One paper's central claim: system a versus system b on `metric`, claimed sign."""

    key: str  # its name in metrics.json
    stage: str
    text: str
    pairs: tuple[tuple[str, str], ...]  # alternatives (a, b), first present wins
    metric: str  # UA | WA | valence-gain - arousal-gain
    direction: int  # +1: a > b claimed; -1: a < b claimed


GAIN = "CCC gain (valence − arousal)"

CLAIMS = (
    Claim("clap", "clap", "Contrastive audio-text pre-training beats no pre-training",
          (("full", "none"), ("small", "none")), "UA", 1),
    Claim("lemer", "lemer", "The full model (label-guided fusion with the attention constraint) "
          "beats vanilla cross-attention fusion; label embeddings help",
          (("C1", "C4"), ("A5", "A2"), ("A5", "A1")), "UA", 1),
    Claim("distil", "distil", "Adding text helps valence more than arousal",
          (("distilled · A+T · FT", "distilled · A · FT"),
           ("base · A+T · FT", "base · A · FT")),
          GAIN, 1),
    Claim("vcemo", "vcemo",
          "Supervised contrastive regulation (SupCon) beats cross-entropy alone",
          (("VCEMO (SupCon)", "VCEMO"),), "UA", 1),
    Claim("tokenwise_vs_speech", "tokenwise",
          "Tokenwise multimodal features trail speech-only features",
          (("ours B_s", "speech *"),), "UA", -1),
    Claim("tokenwise_vs_text", "tokenwise",
          "Tokenwise multimodal features beat text-only (BERT) features",
          (("ours B_s", "text *"),), "UA", 1),
)


def measured(tests: Mapping[str, Mapping]) -> dict[str, dict]:
    """What a stage's metrics.json says of the claims it tests: per claim key, the measured
    difference and its verdict. `tests`: claim key -> a paired bootstrap of the claim's
    systems (diff, low, high; and a, b, metric when it names them, which must be the
    claim's: an error says when they are not)."""
    out = {}
    for key, test in tests.items():
        claim = next((c for c in CLAIMS if c.key == key), None)
        if claim is None:
            raise KeyError(f"no claim {key!r}; the claims are {[c.key for c in CLAIMS]}")
        if test.get("metric", claim.metric) != claim.metric:
            raise ValueError(f"claim {key!r} is about {claim.metric}, not {test['metric']}")
        if "a" in test and not any(find_system([test["a"]], [a]) and find_system([test["b"]], [b])
                                   for a, b in claim.pairs):
            raise ValueError(f"claim {key!r} compares one of {claim.pairs}, not "
                             f"({test['a']!r}, {test['b']!r})")
        out[key] = {"diff": float(test["diff"]),
                    "verdict": verdict(test["low"], test["high"], claim.direction)}
    return out


def claim_seeds(stage: str, system: str, training) -> list[int]:
    """The seeds `system` of `stage` trains on: `training.seeds`, plus `training.claim_seeds`
    when a claim compares it (the claim's first pair: the paper's own comparison)."""
    claimed = any(find_system([system], [name]) for claim in CLAIMS if claim.stage == stage
                  for name in claim.pairs[0])
    extra = training.claim_seeds if claimed else []
    return sorted(set(training.seeds) | set(extra))
