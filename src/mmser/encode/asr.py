"""Speech recognition with the bundled Whisper tiny.en, and word (or character) error rate.

Two back-ends run the same weights:
- `converted`: our transformers port (mmser.encode.whisper): batches of similar-length clips in a
  short common window (at least 8 s instead of 30 s), batched greedy decoding; the default.
- `faster-whisper`: the reference implementation (CTranslate2, int8, greedy, no VAD),
  which always encodes a 30-s window, one clip at a time.
`model_dir` swaps the bundled model for another: a CTranslate2 Whisper folder (both
back-ends), or a Hugging Face Whisper id or folder (`converted` only). `language` (a
Whisper code, default en) is forced in the decoder prompt; other than en needs a
multilingual model (e.g. openai/whisper-small with zh for Mandarin).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import jiwer
import numpy as np

from mmser.corpus.audio import Clips, load_audio

BACKENDS = ("converted", "faster-whisper")
# languages written without spaces between words: scored by characters (CER), the usual
# measure for them, which no word segmenter's dictionary can move
CHARACTER_SCORED = {"zh", "yue", "ja"}
CJK = re.compile(r"([\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff])")  # kana and Han characters


def _waves(items: Sequence) -> Sequence[np.ndarray]:
    """The clips of `items` (paths or waveforms). Paths become a `Clips`: each file is read
    when its batch is transcribed, so memory follows the batch, not the corpus."""
    if isinstance(items, Clips):
        return items
    if all(isinstance(x, (str, Path)) for x in items):
        return Clips(items)
    return [load_audio(x).wave if isinstance(x, (str, Path)) else np.asarray(x, np.float32)
            for x in items]


def transcribe_files(items: Sequence, backend: str = "converted",
                     model_dir: str | Path | None = None, batch_size: int = 8,
                     progress: bool = True, language: str = "en") -> list[str]:
    """Transcripts of audio files (any rate, mono or not) or 16-kHz waveforms, in order."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown ASR backend {backend!r}; choose one of {BACKENDS}")
    waves = _waves(items)
    key = None if model_dir is None else str(model_dir)
    if backend == "converted":
        from mmser.encode.whisper import transcribe

        model, tokenizer = _converted(key)
        return transcribe(model, tokenizer, waves, batch_size=batch_size, progress=progress,
                          language=language)
    return _faster_whisper(_faster_whisper_model(key), waves, progress, language)


def load(backend: str, model_dir: str | Path | None = None) -> None:
    """Load a back-end's model now (memoised), so that timings leave loading out."""
    key = None if model_dir is None else str(model_dir)
    if backend == "converted":
        _converted(key)
    else:
        _faster_whisper_model(key)


@functools.lru_cache(maxsize=2)
def _converted(model_dir: str | None):
    from mmser.encode import whisper

    if model_dir is None:
        return whisper.load_bundled_whisper()
    if (Path(model_dir) / "model.bin").is_file():  # a CTranslate2 folder
        return whisper.convert_ct2_to_hf(model_dir), whisper.load_tokenizer(model_dir)
    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    from mmser.encode.encoders import _from_pretrained

    return (_from_pretrained(WhisperForConditionalGeneration, model_dir).eval(),
            _from_pretrained(AutoTokenizer, model_dir))


@functools.lru_cache(maxsize=2)
def _faster_whisper_model(model_dir: str | None):
    from faster_whisper import WhisperModel

    from mmser.encode.whisper import bundled_whisper_dir

    return WhisperModel(model_dir or str(bundled_whisper_dir()), device="cpu",
                        compute_type="int8", cpu_threads=2)


def _faster_whisper(model, waves: list[np.ndarray], progress: bool, language: str = "en"
                    ) -> list[str]:
    from mmser.progress import progress as bar

    texts = []
    for wave in bar(waves, desc="faster-whisper", unit="clip", disable=not progress):
        # greedy, the language forced, no VAD; no timestamps and no previous-text prompt, like `converted`;
        # temperature 0 only: the default falls back to unseeded sampling on hard clips
        segments, _ = model.transcribe(wave, beam_size=1, temperature=0.0, language=language,
                                       vad_filter=False, condition_on_previous_text=False,
                                       without_timestamps=True)
        texts.append(" ".join(seg.text.strip() for seg in segments).strip())
    return texts


def normalise(text: str) -> str:
    """Lower case; apostrophes dropped ("don't" -> "dont"); every other non-word character
    (punctuation, hyphens) made a space; white space collapsed. Numbers are left as they
    are, so "7" against "seven" counts as an error."""
    text = str(text).lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def tokens(text: str, language: str = "en") -> str:
    """`normalise`d text as the space-separated tokens jiwer scores: words, and for the
    CHARACTER_SCORED languages each Han or kana character alone (Latin words stay whole)."""
    text = normalise(text)
    if language in CHARACTER_SCORED:
        text = " ".join(CJK.sub(r" \1 ", text).split())
    return text


def wer(refs: Sequence[str], hyps: Sequence[str], language: str = "en") -> float:
    """Corpus-level word error rate (jiwer) after `tokens` on both sides: for Chinese and
    Japanese (CHARACTER_SCORED) the character error rate.

    Pairs whose reference normalises to nothing are left out (WER is undefined there).
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs = [(tokens(r, language), tokens(h, language)) for r, h in zip(refs, hyps)
             if normalise(r)]
    if not pairs:
        raise ValueError("no non-empty reference to score")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
