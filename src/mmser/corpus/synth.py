"""The embedded default corpus, synthesised with espeak-ng, deterministically from a seed.

Cues, by design (the corpus card says the same to readers):
- prosody carries arousal: speaking rate, pitch, pitch range and volume (SSML <prosody>)
  and pauses (SSML <break>) are drawn per utterance around emotion-specific means, with
  spreads that overlap; angry and happy share high arousal, so prosody barely tells them
  apart;
- wording carries valence: positive, hostile, loss (and threat, astonished) words fill
  sentence frames that every wording kind shares; a share of every class speaks the
  emotion-neutral script, and some hostile and loss lines are swapped between angry and sad;
- white background noise at a random SNR.
So audio alone confuses classes of similar arousal, text alone confuses the scripted lines,
and the two together do better than either. Everything random about utterance i comes from
a generator seeded with (seed, i), so a process pool gives the same bytes as one process.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import soundfile as sf
import yaml
from scipy.signal import resample_poly

from mmser.corpus.audio import SAMPLE_RATE, write_audio
from mmser.corpus.manifest import conform
from mmser.progress import progress as progress_bar

TEXT_FILE = Path(__file__).with_name("synth_text.yaml")
EMOTIONS_4 = ("angry", "happy", "neutral", "sad")
EMOTIONS_6 = EMOTIONS_4 + ("fear", "surprise")
SPLITS = ("labelled", "read")
ID_PREFIX = {"labelled": "lab", "read": "read"}
DURATION = (1.5, 5.0)  # seconds, labelled utterances (re-drawn when outside)
MAX_DRAWS = 40
ESPEAK_TIMEOUT_S = 30
SCRIPTED_SHARE = 0.3  # lines spoken with neutral wording whatever the emotion
SWAP_SHARE = 0.1  # angry lines worded as loss, sad lines worded as hostility
FRAME_SHARE = 0.6  # lines from the shared frames (valence only in the slot words)
DOMINANT_SHARE = 0.7  # turns of a dialogue that carry its dominant emotion
TURNS = (6, 14)  # turns per dialogue, inclusive
DIALOGUE_STREAM = 2**32 - 1  # seeds the dialogue plan apart from every utterance index

# Voices (espeak-ng language + variant) with their own base pitch (0-99) and rate (words
# per minute). Consecutive pairs are one male- and one female-sounding voice, and
# sessions take consecutive voices, so a session pairs the two where it can.
VOICES = [
    ("en-us+m1", 38, 165), ("en-us+f2", 62, 170), ("en-gb+m3", 42, 160),
    ("en-gb+f3", 58, 175), ("en-gb-scotland+m2", 36, 155), ("en-gb-scotland+f4", 66, 165),
    ("en-us+m5", 44, 175), ("en-gb-x-rp+f1", 60, 160), ("en-gb+m7", 40, 170),
    ("en-us+f5", 64, 160), ("en-029+m2", 34, 170), ("en-gb-x-rp+f2", 56, 165),
]

# Emotion prosody, as SSML values relative to the voice: rate %, pitch shift %, pitch
# range %, volume %, and pause (ms) at one or two word boundaries. Means per emotion; each
# draw adds Gaussian noise of PROSODY_SPREAD, so neighbouring emotions overlap.
CUES = ("rate_pct", "pitch_pct", "range_pct", "volume_pct", "pause_ms")  # x_ columns
PROSODY = {
    "angry": (116, 8, 135, 140, 30),
    "happy": (114, 14, 150, 125, 50),
    "neutral": (100, 0, 100, 100, 150),
    "sad": (90, -6, 65, 80, 260),
    "fear": (120, 20, 75, 95, 200),
    "surprise": (106, 22, 170, 120, 100),
}
PROSODY_SPREAD = (9, 8, 35, 22, 110)
PROSODY_LIMITS = ((60, 180), (-40, 60), (10, 300), (40, 200), (0, 800))
READ_SPREAD = 0.4  # read speech: neutral prosody, with a fraction of the spread
# How far each cue moves arousal (per unit of spread; a longer pause lowers it).
AROUSAL_SIGN = (1, 1, 1, 1, -1)

WORDING = {"angry": "hostile", "happy": "positive", "neutral": "neutral", "sad": "loss",
           "fear": "threat", "surprise": "astonished"}
SWAPPED = {"angry": "loss", "sad": "hostile"}
VALENCE = {"positive": 4.2, "astonished": 3.6, "neutral": 3.0, "threat": 2.0, "hostile": 1.8,
           "loss": 1.6}
DOMINANCE_SHIFT = {"hostile": 0.8, "positive": 0.3, "astonished": 0.0, "neutral": 0.0,
                   "loss": -0.7, "threat": -0.8}
SCALE_NOISE = 0.3  # standard deviation of the noise on arousal, valence and dominance


class SynthError(RuntimeError):
    """espeak-ng is missing or failed; the message says what and how to fix it."""


def require_espeak() -> str:
    """Path of the espeak-ng binary, or a clear error that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise SynthError(
            "espeak-ng was not found on PATH, and the default corpus is synthesised with it. "
            "Install it with `apt-get install espeak-ng` (as root, e.g. with sudo; Debian/"
            "Ubuntu) or `conda install -c conda-forge espeak-ng`, then run again.")
    return path


@functools.lru_cache(maxsize=1)
def _material() -> dict:
    return yaml.safe_load(TEXT_FILE.read_text())


def _fill(template: str, slots: list[dict], rng: np.random.Generator) -> str:
    """Fill each {slot} from the first of `slots` that has it; capitalise the result."""
    out = template
    while "{" in out:
        start = out.index("{")
        name = out[start + 1:out.index("}", start)]
        choices = next((s[name] for s in slots if name in s), None)
        if choices is None:
            raise KeyError(f"{TEXT_FILE.name}: no word list for slot {{{name}}} in {template!r}")
        out = out[:start] + str(rng.choice(choices)) + out[out.index("}", start) + 1:]
    return out[0].upper() + out[1:]


def _wording(label: str, rng: np.random.Generator) -> str:
    if rng.random() < SCRIPTED_SHARE:
        return "neutral"
    if label in SWAPPED and rng.random() < SWAP_SHARE:
        return SWAPPED[label]
    return WORDING[label]


def _labelled_text(kind: str, rng: np.random.Generator) -> str:
    material = _material()
    words = material["kinds"][kind]
    source = material["frames"] if rng.random() < FRAME_SHARE else words["templates"]
    return _fill(str(rng.choice(source)), [words, material["slots"]], rng)


def _read_text(rng: np.random.Generator) -> str:
    read = _material()["read"]
    return _fill(str(rng.choice(read["frames"])), [read["slots"]], rng)


def _draw_prosody(label: str | None, rng: np.random.Generator) -> np.ndarray:
    mean = np.array(PROSODY[label or "neutral"], dtype=float)
    spread = np.array(PROSODY_SPREAD) * (1.0 if label else READ_SPREAD)
    cue = mean + rng.normal(0, 1, len(CUES)) * spread
    low, high = np.array(PROSODY_LIMITS).T
    return np.clip(np.round(cue), low, high)


def _ssml(text: str, cue: np.ndarray, rng: np.random.Generator) -> str:
    """The sentence as SSML: one <prosody> for the whole line, <break>s between words."""
    rate, pitch, pitch_range, volume, pause = (int(c) for c in cue)
    words = [escape(w) for w in text.split()]
    n_breaks = 0 if pause < 60 else 1 if pause < 300 else 2
    gaps = rng.choice(np.arange(1, len(words)), size=min(n_breaks, len(words) - 1),
                      replace=False) if len(words) > 1 else []
    for gap in sorted(gaps, reverse=True):
        words.insert(int(gap), f'<break time="{pause}ms"/>')
    return (f'<speak><prosody rate="{rate}%" pitch="{pitch:+d}%" range="{pitch_range}%" '
            f'volume="{volume}%">{" ".join(words)}</prosody></speak>')


def _espeak(ssml: str, voice: str, base_pitch: int, base_rate: int) -> np.ndarray:
    """Speak SSML with espeak-ng; float32 mono at SAMPLE_RATE."""
    cmd = ["espeak-ng", "-v", voice, "-p", str(base_pitch), "-s", str(base_rate), "-m",
           "--stdout", ssml]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=ESPEAK_TIMEOUT_S)
    except FileNotFoundError as err:
        require_espeak()  # the clear install message when the binary is gone
        raise SynthError(f"cannot run espeak-ng: {err}") from err
    except subprocess.TimeoutExpired as err:
        raise SynthError(f"espeak-ng took over {ESPEAK_TIMEOUT_S} s for {ssml!r} "
                         f"(voice {voice})") from err
    if done.returncode != 0 or not done.stdout:
        raise SynthError(f"espeak-ng failed (exit {done.returncode}) for {ssml!r} with voice "
                         f"{voice}: {done.stderr.decode(errors='replace').strip()}")
    try:
        wave, sr = sf.read(io.BytesIO(done.stdout), dtype="float32")
    except Exception as err:  # soundfile raises several types for unreadable input
        raise SynthError(f"espeak-ng wrote audio that cannot be read for {ssml!r}") from err
    step = math.gcd(sr, SAMPLE_RATE)  # polyphase: 22050 -> 16000 is 320/441, a few ms a clip
    return resample_poly(wave, SAMPLE_RATE // step, sr // step).astype(np.float32)


def _add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    power = float(np.mean(wave ** 2)) or 1e-8
    noisy = wave + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), len(wave))
    return (noisy / max(1.0, float(np.abs(noisy).max()) / 0.95)).astype(np.float32)


def _scales(cue: np.ndarray, wording: str, rng: np.random.Generator) -> dict:
    """Arousal from prosody intensity, valence from wording, dominance from both; 1-5."""
    neutral, spread = np.array(PROSODY["neutral"]), np.array(PROSODY_SPREAD)
    intensity = float(np.mean((cue - neutral) / spread * np.array(AROUSAL_SIGN)))
    noise = rng.normal(0, SCALE_NOISE, 3)
    values = (3.0 + 0.8 * intensity, VALENCE[wording],
              3.0 + 0.5 * intensity + DOMINANCE_SHIFT[wording])
    return {name: round(float(np.clip(v + n, 1.0, 5.0)), 2)
            for name, v, n in zip(("arousal", "valence", "dominance"), values, noise)}


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


def _make(spec: Spec) -> dict:
    rng = np.random.default_rng([spec.seed, spec.index])
    voice, base_pitch, base_rate = VOICES[spec.speaker]
    for _ in range(MAX_DRAWS):
        if spec.label is None:
            wording, text = "read", _read_text(rng)
        else:
            wording = _wording(spec.label, rng)
            text = _labelled_text(wording, rng)
        cue = _draw_prosody(spec.label, rng)
        wave = _espeak(_ssml(text, cue, rng), voice, base_pitch, base_rate)
        if spec.label is None or DURATION[0] <= len(wave) / SAMPLE_RATE <= DURATION[1]:
            break
    else:
        raise SynthError(f"{spec.utt_id}: none of {MAX_DRAWS} draws lasted {DURATION} s")
    snr = round(float(rng.uniform(*spec.snr_db)), 2)
    write_audio(Path(spec.out_dir) / "wav" / f"{spec.utt_id}.wav", _add_noise(wave, snr, rng))
    row = {"utt_id": spec.utt_id, "text": text, "duration": round(len(wave) / SAMPLE_RATE, 4),
           "x_voice": voice, "x_wording": wording, "x_snr_db": snr}
    row.update({f"x_{name}": int(value) for name, value in zip(CUES, cue)})
    if spec.label is not None:
        row.update(_scales(cue, wording, rng))
    return row


def _sessions(n_speakers: int, n_sessions: int) -> list[list[int]]:
    """Consecutive voices per session (a male- and a female-sounding one where it can)."""
    return [chunk.tolist() for chunk in np.array_split(np.arange(n_speakers), n_sessions)]


def _dialogues(n_labelled: int, sessions: list[list[int]], labels: tuple[str, ...],
               rng: np.random.Generator) -> Iterator[dict]:
    """Dialogues of TURNS turns alternating between a session's speakers; each has a
    dominant emotion (round-robin over dialogues, so classes stay balanced). Every turn
    carries one of `labels` (the chosen classes): unlike IEMOCAP with 4 classes, no turn of
    a dialogue lies outside the class map, so dialogue context never misses one."""
    per_session = np.full(len(sessions), n_labelled // len(sessions))
    per_session[: n_labelled % len(sessions)] += 1
    dialogue = 0
    for session, count in enumerate(per_session):
        speakers, made = sessions[session], 0
        while made < count:
            turns = int(min(count - made, rng.integers(TURNS[0], TURNS[1] + 1)))
            dominant = labels[dialogue % len(labels)]
            first = int(rng.integers(len(speakers)))
            for turn in range(turns):
                label = dominant if rng.random() < DOMINANT_SHARE else str(rng.choice(labels))
                yield {"session": session, "speaker": speakers[(first + turn) % len(speakers)],
                       "label": label, "dialog_id": f"S{session + 1}_D{dialogue:03d}",
                       "turn_index": turn}
            made += turns
            dialogue += 1


def synthesise(out_dir: str | Path, *, seed: int, n_speakers: int = 10, n_sessions: int = 5,
               n_labelled: int = 800, n_read: int = 1000, classes: int = 4,
               snr_db: tuple[float, float] = (10, 30), workers: int = 2,
               progress: bool = True) -> pd.DataFrame:
    """Write the corpus's 16 kHz WAVs under out_dir/wav and return its manifest.

    Paths in the manifest are relative to out_dir. Labelled rows (split "labelled") carry
    a class, arousal/valence/dominance, a dialogue and fold = session index; read rows
    (split "read") carry only a transcript. `x_` columns record each utterance's cues.
    """
    require_espeak()
    if classes not in (4, 6):
        raise ValueError(f"classes must be 4 or 6, not {classes}")
    if not 1 <= n_sessions <= n_speakers <= len(VOICES):
        raise ValueError(f"need 1 <= n_sessions <= n_speakers <= {len(VOICES)}, got "
                         f"n_sessions={n_sessions}, n_speakers={n_speakers}")
    if min(n_labelled, n_read) < 0 or n_labelled + n_read == 0 or snr_db[0] > snr_db[1]:
        raise ValueError(f"bad sizes or SNR range: n_labelled={n_labelled}, n_read={n_read}, "
                         f"snr_db={snr_db}")
    labels = EMOTIONS_4 if classes == 4 else EMOTIONS_6
    out_dir = Path(out_dir)
    if (out_dir / "wav").exists():
        shutil.rmtree(out_dir / "wav")  # a stale clip must never survive into a new corpus
    sessions = _sessions(n_speakers, n_sessions)
    session_of = {spk: s for s, spks in enumerate(sessions) for spk in spks}
    plan = np.random.default_rng([seed, DIALOGUE_STREAM])
    rows = list(_dialogues(n_labelled, sessions, labels, plan))
    rows += [{"session": session_of[i % n_speakers], "speaker": i % n_speakers, "label": None,
              "dialog_id": None, "turn_index": None} for i in range(n_read)]
    specs = []
    for i, row in enumerate(rows):
        split = SPLITS[row["label"] is None]
        row.update(utt_id=f"{ID_PREFIX[split]}_{i:05d}", split=split)
        specs.append(Spec(i, row["utt_id"], row["speaker"], row["label"], seed,
                          (float(snr_db[0]), float(snr_db[1])), str(out_dir)))
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        made = list(progress_bar(pool.map(_make, specs, chunksize=8), total=len(specs),
                         desc="synthesising", unit="utt", disable=not progress))
    return _manifest(pd.DataFrame(rows).merge(pd.DataFrame(made), on="utt_id"))


def _manifest(df: pd.DataFrame) -> pd.DataFrame:
    labelled = df["split"] == "labelled"
    df["speaker"] = df["speaker"].map(lambda s: f"spk{s + 1:02d}")
    df["fold"] = df["session"].where(labelled).astype("Int64")
    df["session"] = df["session"].map(lambda s: f"S{s + 1}")
    df["turn_index"] = df["turn_index"].astype("Int64")
    df["path"] = "wav/" + df["utt_id"] + ".wav"
    df["sample_rate"], df["corpus"] = SAMPLE_RATE, "synthetic"
    return conform(df)


def _table(counts: pd.DataFrame | pd.Series) -> str:
    """A small Markdown table (no tabulate dependency)."""
    frame = counts.to_frame() if isinstance(counts, pd.Series) else counts
    head = [str(frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i)] + [f"{v:g}" if isinstance(v, float) else str(v)
                                            for v in row]) + " |"
              for i, row in zip(frame.index, frame.to_numpy().tolist())]
    return "\n".join(lines)


def corpus_card(df: pd.DataFrame) -> str:
    """A Markdown card: how the corpus is made, its cues, and its statistics."""
    lab = df[df["split"] == "labelled"]
    read = df[df["split"] == "read"]
    by_session = lab.groupby(["session", "label"]).size().unstack(fill_value=0)
    by_speaker = df.groupby(["speaker", "split"]).size().unstack(fill_value=0)
    by_speaker.insert(0, "voice", df.groupby("speaker")["x_voice"].first())
    by_speaker.insert(1, "session", df.groupby("speaker")["session"].first())
    wording = lab.groupby("label")["x_wording"].value_counts(normalize=True).unstack(
        fill_value=0).round(2)
    prosody = lab.groupby("label")[[f"x_{c}" for c in CUES]].mean().round(0)
    scales = lab.groupby("label")[["arousal", "valence", "dominance"]].mean().round(2)
    durations = df.groupby("split")["duration"].describe()[["min", "mean", "max"]].round(2)
    return "\n".join([
        "# The synthesised default corpus",
        "",
        f"Made with espeak-ng by `mmser.corpus.synth`, deterministically from the seed: "
        f"{df['speaker'].nunique()} espeak-ng voices as speakers in "
        f"{df['session'].nunique()} sessions, {len(lab)} labelled utterances "
        f"({', '.join(sorted(lab['label'].unique()))}) in {lab['dialog_id'].nunique()} "
        f"dialogues, and {len(read)} unlabelled read-speech utterances for pre-training. "
        f"16 kHz mono 16-bit WAV; labelled clips last {DURATION[0]}-{DURATION[1]} s "
        f"(a draw outside is re-drawn). {lab['text'].nunique()} distinct labelled sentences "
        f"and {read['text'].nunique()} distinct read sentences.",
        "",
        "## Cues",
        "- **Prosody carries arousal**: speaking rate, pitch, pitch range and volume (SSML "
        "`<prosody>`, relative to each voice's own base pitch and rate) and pauses (SSML "
        "`<break>`) are drawn per utterance around emotion-specific means, with spreads that "
        "overlap. Angry and happy share high arousal and differ little in prosody.",
        f"- **Wording carries valence**: positive, hostile and loss words (plus threat and "
        f"astonished with six classes) fill sentence frames that all kinds share "
        f"({FRAME_SHARE:.0%} of lines) or kind-specific templates. {SCRIPTED_SHARE:.0%} of "
        f"every class speaks the emotion-neutral script, and {SWAP_SHARE:.0%} of the "
        "remaining angry and sad lines swap hostile and loss wording.",
        f"- Each dialogue alternates between a session's two voices and has a dominant "
        f"emotion ({DOMINANT_SHARE:.0%} of its turns), so context is informative.",
        f"- White background noise at an SNR drawn per utterance "
        f"({df['x_snr_db'].min():.0f}-{df['x_snr_db'].max():.0f} dB here).",
        "- Arousal, valence and dominance (1-5) are computed from the drawn cues: arousal "
        "from prosody intensity, valence from the wording, dominance from both, plus "
        f"Gaussian noise (sd {SCALE_NOISE}).",
        "- Read speech: neutral prosody with a narrow spread, plain sentences over a broad "
        "vocabulary, the same voices and sessions.",
        "",
        "This is synthetic speech with known, planted cues: numbers measured on it check the "
        "code and teach the methods; they are not comparable to results on acted or natural "
        "corpora. A speech encoder also hears the words, so audio-only models get some "
        "wording cues too.",
        "",
        "## Labelled utterances per session and class",
        "",
        _table(by_session),
        "",
        "## Utterances per speaker and split",
        "",
        _table(by_speaker),
        "",
        "## Duration (s) per split",
        "",
        _table(durations),
        "",
        "## Wording kind share per class",
        "",
        _table(wording),
        "",
        "## Mean prosody per class (rate, pitch shift, range, volume in %; pause in ms)",
        "",
        _table(prosody),
        "",
        "## Mean arousal, valence and dominance per class",
        "",
        _table(scales),
        "",
    ])
