"""The embedded default corpus, synthesised with espeak-ng, deterministic from a seed.

Cues, by design:
- prosody carries arousal: speaking rate, pitch, pitch range, loudness and pauses are drawn
  per utterance around emotion-specific means, with spreads that overlap;
- wording carries valence: positive, hostile, loss, threat, astonished or neutral sentence
  templates; a share of every class speaks emotion-neutral scripted lines, and some hostile
  and loss lines are swapped between angry and sad;
- background noise at a random SNR.
So audio alone confuses classes of similar arousal, text alone confuses the scripted lines,
and the two together do better than either.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
import yaml
from tqdm.auto import tqdm

from mmser.audio import SAMPLE_RATE, write_audio
from mmser.manifest import conform

TEXT_FILE = Path(__file__).with_name("synth_text.yaml")
EMOTIONS_4 = ("angry", "happy", "neutral", "sad")
EMOTIONS_6 = EMOTIONS_4 + ("fear", "surprise")
DURATION = (1.5, 5.0)  # seconds, labelled utterances
SCRIPTED_SHARE = 0.35  # lines spoken with neutral wording whatever the emotion
SWAP_SHARE = 0.15  # angry lines worded as loss, sad lines worded as hostility
DOMINANT_SHARE = 0.7  # turns of a dialogue that carry its dominant emotion

# Ten voices (espeak-ng voice + variant), one male- and one female-sounding per session,
# each with its own base pitch (0-99) and rate (words per minute).
VOICES = [
    ("en-us+m1", 38, 165), ("en-us+f2", 62, 170), ("en-gb+m3", 42, 160),
    ("en-gb+f3", 58, 175), ("en-gb-scotland+m2", 36, 155), ("en+f4", 66, 165),
    ("en-us+m5", 44, 175), ("en-gb-x-rp+f1", 60, 160), ("en-gb+m7", 40, 170),
    ("en-us+f5", 64, 160), ("en-us+m2", 34, 170), ("en-gb+f2", 56, 165),
]

# Emotion prosody: (rate factor, pitch shift, pitch range, amplitude, word gap x 10 ms),
# means; every draw adds noise of PROSODY_SPREAD, so neighbouring emotions overlap.
PROSODY = {
    "angry": (1.15, 8, 75, 135, 0),
    "happy": (1.12, 12, 80, 128, 0),
    "neutral": (1.00, 0, 45, 100, 1),
    "sad": (0.88, -4, 32, 88, 2),
    "fear": (1.22, 18, 35, 95, 2),
    "surprise": (1.05, 20, 95, 120, 1),
}
PROSODY_SPREAD = (0.12, 7, 20, 25, 1.5)
WORDING = {"angry": "hostile", "happy": "positive", "neutral": "neutral", "sad": "loss",
           "fear": "threat", "surprise": "astonished"}
VALENCE = {"positive": 4.2, "astonished": 3.6, "neutral": 3.0, "threat": 2.0, "hostile": 1.8,
           "loss": 1.6}
DOMINANCE = {"angry": 4.0, "happy": 3.4, "neutral": 3.0, "sad": 2.0, "fear": 1.8,
             "surprise": 3.0}


def require_espeak() -> str:
    """The espeak-ng binary, or a clear error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "espeak-ng is not installed, and the default corpus is synthesised with it. "
            "Install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu), "
            "`conda install -c conda-forge espeak-ng`, or `brew install espeak-ng`; "
            "`make repro` does this for you when it runs as root.")
    return path


@functools.lru_cache(maxsize=1)
def _material() -> dict:
    return yaml.safe_load(TEXT_FILE.read_text())


def _fill(template: str, rng: np.random.Generator) -> str:
    slots = _material()["slots"]
    out = template
    while "{" in out:
        name = out[out.index("{") + 1:out.index("}")]
        out = out.replace("{" + name + "}", str(rng.choice(slots[name])), 1)
    return out[0].upper() + out[1:]


def _wording(label: str, rng: np.random.Generator) -> str:
    kind = WORDING[label]
    if rng.random() < SCRIPTED_SHARE:
        return "neutral"
    if label in ("angry", "sad") and rng.random() < SWAP_SHARE:
        return "loss" if label == "angry" else "hostile"
    return kind


def _read_sentence(rng: np.random.Generator) -> str:
    read = _material()["read"]
    words = [rng.choice(read[k]) for k in ("subjects", "verbs", "objects", "endings")]
    return str(" ".join(words)).capitalize()


@dataclass(frozen=True)
class Spec:
    """One utterance to make; everything random about it comes from (seed, index)."""

    index: int
    utt_id: str
    speaker: int
    label: str | None  # None: read speech
    seed: int
    snr_db: tuple[float, float]
    out_dir: str


def _espeak(text: str, voice: str, rate: int, pitch: int, amplitude: int, gap: int,
            pitch_range: int) -> np.ndarray:
    ssml = f'<speak><prosody range="{pitch_range}">{text}</prosody></speak>'
    cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-a", str(amplitude),
           "-g", str(gap), "-m", "--stdout", ssml]
    done = subprocess.run(cmd, capture_output=True, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed for {text!r} with voice {voice}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    wave, sr = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return AF.resample(torch.from_numpy(wave), sr, SAMPLE_RATE).numpy()


def _prosody(label: str, rng: np.random.Generator) -> np.ndarray:
    return np.array(PROSODY[label]) + rng.normal(0, 1, 5) * np.array(PROSODY_SPREAD)


def _make(spec: Spec) -> dict:
    rng = np.random.default_rng([spec.seed, spec.index])
    voice, base_pitch, base_rate = VOICES[spec.speaker]
    label = spec.label or "neutral"
    for attempt in range(30):
        if spec.label is None:
            wording, text = "read", _read_sentence(rng)
            cue = np.array(PROSODY["neutral"]) + rng.normal(0, 0.3, 5) * np.array(PROSODY_SPREAD)
        else:
            wording = _wording(label, rng)
            text = _fill(str(rng.choice(_material()["templates"][wording])), rng)
            cue = _prosody(label, rng)
        rate = int(np.clip(base_rate * cue[0], 80, 320))
        pitch = int(np.clip(base_pitch + cue[1], 0, 99))
        pitch_range = int(np.clip(cue[2], 0, 100))
        amplitude = int(np.clip(cue[3], 20, 200))
        gap = int(np.clip(round(cue[4]), 0, 10))
        wave = _espeak(text, voice, rate, pitch, amplitude, gap, pitch_range)
        if spec.label is None or DURATION[0] <= len(wave) / SAMPLE_RATE <= DURATION[1]:
            break
    else:
        raise RuntimeError(f"{spec.utt_id}: no draw of 30 fell inside {DURATION} s")
    snr = float(rng.uniform(*spec.snr_db))
    power = float(np.mean(wave ** 2)) or 1e-8
    wave = wave + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), len(wave)).astype(np.float32)
    wave = (wave / max(1.0, float(np.abs(wave).max()) / 0.95)).astype(np.float32)
    path = Path(spec.out_dir) / "wav" / f"{spec.utt_id}.wav"
    write_audio(path, wave)
    return {"utt_id": spec.utt_id, "text": text, "duration": len(wave) / SAMPLE_RATE,
            "x_wording": wording, "x_rate": rate, "x_pitch": pitch, "x_pitch_range": pitch_range,
            "x_amplitude": amplitude, "x_gap": gap, "x_snr_db": round(snr, 2),
            "x_voice": voice}


def _dialogues(n_labelled: int, n_sessions: int, speakers_per_session: list[list[int]],
               labels: tuple[str, ...], rng: np.random.Generator) -> Iterator[dict]:
    """Sessions hold dialogues of 6-14 turns between their two speakers; each dialogue has
    a dominant emotion (round-robin over dialogues, so classes stay balanced)."""
    per_session = np.full(n_sessions, n_labelled // n_sessions)
    per_session[: n_labelled % n_sessions] += 1
    dialogue = 0
    for session, count in enumerate(per_session):
        made = 0
        while made < count:
            turns = int(min(count - made, rng.integers(6, 15)))
            dominant = labels[dialogue % len(labels)]
            speakers = speakers_per_session[session]
            for turn in range(turns):
                label = (dominant if rng.random() < DOMINANT_SHARE
                         else str(rng.choice(labels)))
                yield {"session": session, "speaker": speakers[turn % len(speakers)],
                       "label": label, "dialog_id": f"S{session + 1}_D{dialogue:03d}",
                       "turn_index": turn}
            made += turns
            dialogue += 1


def synthesise(out_dir: str | Path, *, seed: int, n_speakers: int = 10, n_sessions: int = 5,
               n_labelled: int = 800, n_read: int = 1000, classes: int = 4,
               snr_db: tuple[float, float] = (0, 15), workers: int = 2,
               progress: bool = True) -> pd.DataFrame:
    """Write the corpus's WAVs under out_dir/wav and return its manifest."""
    require_espeak()
    if classes not in (4, 6):
        raise ValueError(f"classes must be 4 or 6, not {classes}")
    if not 1 <= n_sessions <= n_speakers <= len(VOICES):
        raise ValueError(f"need 1 <= n_sessions <= n_speakers <= {len(VOICES)}")
    labels = EMOTIONS_4 if classes == 4 else EMOTIONS_6
    out_dir = Path(out_dir)
    if (out_dir / "wav").exists():
        shutil.rmtree(out_dir / "wav")  # a stale clip must never survive into a new corpus
    sessions = [list(range(s, n_speakers, n_sessions)) for s in range(n_sessions)]
    rng = np.random.default_rng([seed, 2**31 - 1])
    rows = list(_dialogues(n_labelled, n_sessions, sessions, labels, rng))
    session_of = {spk: s for s, spks in enumerate(sessions) for spk in spks}
    for i in range(n_read):
        spk = i % n_speakers
        rows.append({"session": session_of[spk], "speaker": spk, "label": None,
                     "dialog_id": None, "turn_index": None})
    specs = []
    for i, row in enumerate(rows):
        split = "labelled" if row["label"] else "read"
        row.update(utt_id=f"{split[:3]}_{i:05d}", split=split)
        specs.append(Spec(i, row["utt_id"], row["speaker"], row["label"], seed,
                          tuple(snr_db), str(out_dir)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        made = list(tqdm(pool.map(_make, specs, chunksize=8), total=len(specs),
                         desc="synthesising", unit="utt", disable=not progress))
    df = pd.DataFrame(rows).merge(pd.DataFrame(made), on="utt_id")
    return _manifest(df, rng)


def _manifest(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    labelled = df["label"].notna()
    z = lambda col: (df[col] - df[col].mean()) / (df[col].std() or 1.0)  # noqa: E731
    intensity = (z("x_rate") + z("x_pitch_range") + z("x_amplitude") + z("x_pitch")) / 4
    noise = rng.normal(0, 0.25, (3, len(df)))
    arousal = 3.0 + 1.1 * intensity + noise[0]
    valence = df["x_wording"].map(VALENCE).fillna(3.0) + noise[1]
    dominance = df["label"].map(DOMINANCE).fillna(3.0) + 0.4 * intensity + noise[2]
    for name, values in (("arousal", arousal), ("valence", valence), ("dominance", dominance)):
        df[name] = np.where(labelled, np.clip(values, 1.0, 5.0).round(2), np.nan)
    df["speaker"] = df["speaker"].map(lambda s: f"spk{s + 1:02d}")
    df["session"] = df["session"].map(lambda s: f"S{s + 1}")
    df["fold"] = df["session"].str[1:].astype(int) - 1
    df["path"] = "wav/" + df["utt_id"] + ".wav"
    df["sample_rate"], df["corpus"] = SAMPLE_RATE, "synthetic"
    df["duration"] = df["duration"].round(4)
    return conform(df.sort_values("utt_id").reset_index(drop=True))


def corpus_card(df: pd.DataFrame) -> str:
    """A Markdown card: how the corpus is made, its cues, and its statistics."""
    lab = df[df["label"].notna()]
    counts = lab.groupby(["session", "label"]).size().unstack(fill_value=0)
    wording = lab.groupby("label")["x_wording"].value_counts(normalize=True).unstack(fill_value=0)
    prosody = lab.groupby("label")[["x_rate", "x_pitch", "x_pitch_range", "x_amplitude"]].mean()
    return "\n".join([
        "# The synthesised default corpus",
        "",
        f"Made with espeak-ng by `mmser.synth`, deterministically from the seed: "
        f"{df['speaker'].nunique()} voices as speakers in {df['session'].nunique()} sessions, "
        f"{len(lab)} labelled utterances ({', '.join(sorted(lab['label'].unique()))}) in "
        f"{lab['dialog_id'].nunique()} dialogues, and {int((df['split'] == 'read').sum())} "
        "unlabelled read-speech utterances for pre-training. 16 kHz mono; labelled durations "
        f"{lab['duration'].min():.2f}-{lab['duration'].max():.2f} s.",
        "",
        "## Cues",
        "- **Prosody carries arousal**: rate, pitch, pitch range (SSML), loudness and pauses "
        "are drawn around emotion-specific means with overlapping spreads.",
        f"- **Wording carries valence**: positive / hostile / loss / neutral templates; "
        f"{SCRIPTED_SHARE:.0%} of every class speaks neutral scripted lines, and "
        f"{SWAP_SHARE:.0%} of angry and sad lines swap hostile and loss wording.",
        f"- Each dialogue has a dominant emotion ({DOMINANT_SHARE:.0%} of its turns), so "
        "context is informative.",
        "- White background noise at an SNR drawn per utterance "
        f"({df['x_snr_db'].min():.0f}-{df['x_snr_db'].max():.0f} dB).",
        "- Arousal / valence / dominance (1-5) are computed from the drawn prosody and the "
        "wording, with noise.",
        "",
        "This is synthetic speech: numbers measured on it check the code and teach the "
        "methods; they are not comparable to results on acted or natural corpora.",
        "",
        "## Utterances per session and class",
        "",
        counts.to_markdown(),
        "",
        "## Wording share per class",
        "",
        wording.round(2).to_markdown(),
        "",
        "## Mean prosody per class",
        "",
        prosody.round(1).to_markdown(),
        "",
    ])
