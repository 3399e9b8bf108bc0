"""Reading audio safely: mono, 16 kHz, float32, with clear errors that name the file."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000
# What every stage can use: at least 0.1 s (a few encoder frames). No upper limit: Whisper
# encodes and transcribes a clip over its 30-s window window by window (mmser.encode.whisper)
MIN_SECONDS = 0.1


# libsndfile's log line for a WAV whose data chunk is longer than the file
_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Audio:
    wave: np.ndarray  # float32, mono, SAMPLE_RATE
    original_sample_rate: int
    original_channels: int

    @property
    def duration(self) -> float:
        return len(self.wave) / SAMPLE_RATE

    @property
    def resampled(self) -> bool:
        return self.original_sample_rate != SAMPLE_RATE

    @property
    def downmixed(self) -> bool:
        return self.original_channels > 1


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Read a file as mono float32 at `sample_rate`; resample and down-mix when needed.

    Raises AudioError for a missing, empty, corrupt or silent-length file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as handle:
            data, sr = handle.read(dtype="float32", always_2d=True), handle.samplerate
            cut = _TRUNCATED.search(handle.extra_info)
    except Exception as err:  # soundfile raises several types for unreadable input
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    if cut:  # libsndfile reads a cut WAV up to its end and only logs the shortfall
        raise AudioError(f"{path}: truncated audio (its header lists {cut[1]} bytes of "
                         f"samples, the file holds {cut[2]})")
    channels = data.shape[1]
    wave = data.mean(axis=1) if channels > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if sr != sample_rate:
        wave = AF.resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, sample_rate).numpy()
    return Audio(np.ascontiguousarray(wave, dtype=np.float32), int(sr), int(channels))


class Clips(Sequence[np.ndarray]):
    """The waves of audio files (`load_audio(path).wave`), each read when indexed and kept by
    no one here: whoever encodes a corpus holds the clips it is working on, not the corpus
    (960 h as float32 is 224 GB). Reading a clip twice costs time, never memory."""

    def __init__(self, paths: Iterable[str | Path]):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> Clips: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | Clips:
        if isinstance(index, slice):
            return Clips(self.paths[index])
        return load_audio(self.paths[index]).wave


def check_length(seconds: float, path: str | Path) -> None:
    """AudioError unless `seconds` is at least MIN_SECONDS."""
    if seconds < MIN_SECONDS:
        raise AudioError(f"{path}: too short ({seconds:.3f} s; at least {MIN_SECONDS} s)")


def write_audio(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def wave_digest(wave: np.ndarray) -> str:
    """Content hash of a waveform (the feature-cache key for audio)."""
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()
