"""Speech recognition with the bundled Whisper tiny.en, and word error rate.

Two back-ends run the same weights:
- `converted`: our transformers port (mmser.whisper), a short common window per batch and
  batched greedy decoding; the fast default.
- `faster-whisper`: the reference implementation (CTranslate2, int8, beam 1), which always
  encodes a 30-s window.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import jiwer
import numpy as np

from mmser.audio import load_audio

BACKENDS = ("converted", "faster-whisper")


def _waves(items: Sequence) -> list[np.ndarray]:
    return [load_audio(x).wave if isinstance(x, (str, Path)) else np.asarray(x, np.float32)
            for x in items]


def transcribe_files(items: Sequence, backend: str = "converted", batch_size: int = 8,
                     progress: bool = True) -> list[str]:
    """Transcripts of audio files or 16-kHz waveforms, in order."""
    waves = _waves(items)
    if backend == "converted":
        from mmser.whisper import load_bundled_whisper, transcribe

        model, tokenizer = load_bundled_whisper()
        return transcribe(model, tokenizer, waves, batch_size=batch_size, progress=progress)
    if backend == "faster-whisper":
        return _faster_whisper(waves, progress)
    raise ValueError(f"unknown ASR backend {backend!r}; choose one of {BACKENDS}")


def load(backend: str) -> None:
    """Load a back-end's model now (memoised), so that timings leave loading out."""
    if backend == "converted":
        from mmser.whisper import load_bundled_whisper

        load_bundled_whisper()
    else:
        _faster_whisper_model()


@functools.lru_cache(maxsize=1)
def _faster_whisper_model():
    from faster_whisper import WhisperModel

    from mmser.whisper import bundled_whisper_dir

    return WhisperModel(str(bundled_whisper_dir()), device="cpu", compute_type="int8",
                        cpu_threads=2)


def _faster_whisper(waves: list[np.ndarray], progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    model = _faster_whisper_model()
    texts = []
    for wave in tqdm(waves, desc="faster-whisper", unit="clip", disable=not progress):
        segments, _ = model.transcribe(wave, beam_size=1, language="en", vad_filter=False,
                                       condition_on_previous_text=False,
                                       without_timestamps=True)
        texts.append(" ".join(seg.text.strip() for seg in segments).strip())
    return texts


def normalise(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), white space collapsed."""
    text = re.sub(r"[^\w\s']", " ", str(text).lower())
    return " ".join(text.replace("'", "").split())


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level word error rate after `normalise` on both sides."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(normalise(r), normalise(h)) for r, h in zip(refs, hyps) if normalise(r)]
    if not pairs:
        raise ValueError("no non-empty reference to score")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
