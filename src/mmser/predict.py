"""Emotion of new recordings with an exported model: `python -m mmser.predict AUDIO ...`.

    python -m mmser.predict clip.wav                     # probabilities, printed
    python -m mmser.predict clip.wav --text "I did it!"  # your transcript instead of ASR
    python -m mmser.predict recordings/                  # a folder: recordings/predictions.csv
    python -m mmser.predict recordings/ --out -          # ... or the CSV on stdout
    python -m mmser.predict clip.wav --model models/distil/predictor   # arousal/valence/dominance

A paper stage exports one model to `models/<stage>/predictor/`: `spec.json` (stage, kind,
classes or dimensions, which encoder states each batch key reads: the params' `encoders`
names and layer cuts, the features cut name and the hidden state; the architecture; how
the model was chosen) and `weights.safetensors` (loaded safely: no pickle). The default is
the tokenwise stage's "ours B_s" (4 emotion classes from speech + text); the distil
stage's predictor gives arousal, valence and dominance on [0, 1].

Here the encoder states are computed live with the project's encoders (each clip on its
own length, no 30-s pad), rounded to float16 as the features cache stores them, batched
by `mmser.training.data.collate` exactly as the stage's items are, and fed to the model. When no
text is given and the model reads text, the bundled Whisper tiny.en transcribes
(`mmser.encode.asr`). Clips must be at least 0.1 s long; Whisper encodes and transcribes
one over 30 s in consecutive 30-s windows.

Reported speed: real-time factor RTF = processing seconds / audio seconds (lower is
faster; 0.33 = three times faster than real time), from reading the audio to the output,
without the one-time model loading (printed separately).

Errors: an unreadable, empty, non-audio or too short file is reported with its
name and the problem; the other files of a folder are still predicted, and the CSV has an
`error` column. Exit status: 0 when at least one file was predicted, 1 when every file
failed, 2 when the model is missing or corrupt or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmser.fingerprint import atomic_write, write_text

SPEC, WEIGHTS = "spec.json", "weights.safetensors"
FORMAT = 1
STAGES = ("tokenwise", "distil")
DEFAULT_MODEL = Path("models/tokenwise/predictor")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                  ".w64", ".caf"}


class PredictorError(RuntimeError):
    """A missing, corrupt or unsupported exported model; the message names the file."""


# ------------------------------------------------------------------------ export / load


SYNTHETIC = "synthetic"  # the embedded default corpus (espeak-ng), by its loader name


def trained_on(corpus, transcripts: str, source: str | Path) -> dict:
    """The spec's record of what a predictor has heard (`corpus` a training.data.Corpus)."""
    return {"corpus": corpus.name, "corpus_key": corpus.key,
            "synthetic": corpus.key == SYNTHETIC, "transcripts": transcripts,
            "source": str(source)}


def heard_warning(spec: dict) -> str | None:
    """A warning when the predictor learnt from synthesised speech: on real recordings its
    probabilities are confident and mean little (README "Real speech")."""
    heard = spec.get("trained_on") or {}
    if not (heard.get("synthetic") or heard.get("corpus") == SYNTHETIC):
        return None
    return ("warning: this model was trained on synthesised speech (espeak-ng, the default "
            "corpus); on real recordings its probabilities mean little. Train one on real "
            "speech and pass --model (README: Real speech)")


def write_predictor(out_dir: str | Path, spec: dict, state: dict[str, torch.Tensor]) -> Path:
    """Write `spec.json` and `weights.safetensors` (the paper modules' export_predictor)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"format": FORMAT, **spec, "weights": WEIGHTS, "states_dtype": "float16"}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    write_text(out / SPEC, json.dumps(spec, indent=2, default=str))
    return out


def read_spec(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    path = model_dir / SPEC
    if not model_dir.is_dir():
        raise PredictorError(f"{model_dir}: no such model folder. Export one with the stage "
                             "(`dvc repro tokenwise` writes models/tokenwise/predictor) or "
                             "pass --model FOLDER")
    if not path.is_file():
        raise PredictorError(f"{path}: not found; {model_dir} is not an exported predictor "
                             "(it needs spec.json and weights.safetensors)")
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PredictorError(f"{path}: corrupt spec ({err})") from err
    if not isinstance(spec, dict):
        raise PredictorError(f"{path}: corrupt spec (not a JSON object)")
    missing = [k for k in ("format", "stage", "kind", "inputs", "architecture") if k not in spec]
    if missing:
        raise PredictorError(f"{path}: corrupt spec (missing {missing})")
    if spec["format"] != FORMAT:
        raise PredictorError(f"{path}: format {spec['format']!r}; this version reads {FORMAT}")
    if spec["stage"] not in STAGES:
        raise PredictorError(f"{path}: stage {spec['stage']!r} has no predictor; known: "
                             f"{list(STAGES)}")
    return spec


@dataclass
class Predictor:
    """An exported model with its encoders, ready for `predict_waves`."""
    spec: dict
    model: torch.nn.Module
    encoders: dict[tuple, torch.nn.Module] = field(repr=False)
    folder: Path

    @property
    def needs_text(self) -> bool:
        return any(i["role"] == "text" for i in self.spec["inputs"].values())

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("classes") or [])

    @property
    def dimensions(self) -> list[str]:
        return list(self.spec.get("dimensions") or [])


def _encoder_key(source: dict) -> tuple:
    return source["role"], source["encoder"], source["layers"]


def load_predictor(model_dir: str | Path = DEFAULT_MODEL) -> Predictor:
    """Spec, weights (safetensors) and the encoders the spec names. PredictorError for a
    missing or corrupt model; the encoders' own errors (e.g. ModelNotFoundError) pass."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmser.encode.encoders import SpeechEncoder, TextEncoder

    model_dir = Path(model_dir)
    spec = read_spec(model_dir)
    weights = model_dir / spec.get("weights", WEIGHTS)
    if not weights.is_file():
        raise PredictorError(f"{weights}: not found; the export is incomplete")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise PredictorError(f"{weights}: corrupt weights ({err})") from err
    try:
        model = importlib.import_module(f"mmser.papers.{spec['stage']}").predictor_model(spec)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise PredictorError(f"{weights}: does not fit {model_dir / SPEC} "
                             f"({type(err).__name__}: {str(err)[:300]})") from err
    model.eval()
    encoders = {}
    for source in spec["inputs"].values():
        key = _encoder_key(source)
        if key not in encoders:
            kind = SpeechEncoder if source["role"] == "speech" else TextEncoder
            encoders[key] = kind(source["encoder"], source["layers"]).eval()
    return Predictor(spec, model, encoders, model_dir)


# ----------------------------------------------------------------------------- predict


@torch.inference_mode()
def predict_waves(predictor: Predictor, waves: Sequence[np.ndarray],
                  texts: Sequence[str] | None = None) -> np.ndarray:
    """Model outputs for 16-kHz mono clips (and their texts): class probabilities
    (n, classes) or dimensions on [0, 1] (n, dims). One batch: the caller chunks."""
    from mmser.training import data as D

    spec, n = predictor.spec, len(waves)
    if predictor.needs_text and (texts is None or len(texts) != n):
        raise ValueError("this model reads text: give one text per clip")
    items: list[dict] = [{} for _ in range(n)]
    states: dict[tuple, list[torch.Tensor]] = {}
    for source in spec["inputs"].values():
        key = _encoder_key(source)
        if key in states:
            continue
        encoder = predictor.encoders[key]
        if source["role"] == "speech":
            hidden, lengths = encoder(list(waves))
            states[key] = [hidden[:, i, :m] for i, m in enumerate(lengths.tolist())]
        else:
            hidden, mask, _ = encoder([str(t) for t in texts])
            states[key] = [hidden[:, i, :m] for i, m in enumerate(mask.sum(-1).tolist())]
    for name, source in spec["inputs"].items():
        for item, s in zip(items, states[_encoder_key(source)]):
            # the stages trained on the features cache, which stores float16
            item[name] = s[int(source["state"])].half().float()
    out = predictor.model(D.collate(items))
    if spec["kind"] == "classification":
        return torch.softmax(out["logits"].float(), -1).numpy()
    return out["pred"].float().numpy()


def audio_files(folder: str | Path) -> list[Path]:
    """The audio files of a folder (recursively, by suffix), sorted."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _load(path: Path) -> np.ndarray:
    from mmser.corpus.audio import SAMPLE_RATE, check_length, load_audio

    wave = load_audio(path).wave
    check_length(len(wave) / SAMPLE_RATE, path)
    return wave


def predict_files(predictor: Predictor, paths: Sequence[str | Path],
                  texts: Sequence[str | None] | None = None, asr_backend: str = "converted",
                  batch_size: int = 8, progress: bool = False) -> pd.DataFrame:
    """One row per file, in order: file, duration_s, text, text_source (given | asr | none),
    the prediction (`pred` and `prob_<class>`, or one column per dimension) and `error`
    (empty when it worked). A bad file gets its error and the others still get predictions.
    `texts`: one per file (None = transcribe that one), or None for all."""
    from mmser.progress import progress as bar

    paths = [Path(p) for p in paths]
    texts = list(texts) if texts is not None else [None] * len(paths)
    rows = [{"file": str(p), "duration_s": np.nan, "text": "", "text_source": "",
             "error": ""} for p in paths]
    good: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            good.append((i, _load(path)))
        except Exception as err:  # every problem of one file stays that file's problem
            rows[i]["error"] = _message(err, path)
    good.sort(key=lambda g: len(g[1]))  # similar lengths batch with less padding
    chunks = [good[s:s + batch_size] for s in range(0, len(good), batch_size)]
    for chunk in bar(chunks, desc="predicting", unit="batch", disable=not progress):
        _run_chunk(predictor, chunk, paths, texts, rows, asr_backend)
    table = pd.DataFrame(rows)
    columns = ["file", "duration_s", "text", "text_source"]
    if predictor.spec["kind"] == "classification":
        columns += ["pred"] + [f"prob_{c}" for c in predictor.classes]
    else:
        columns += predictor.dimensions
    return table.reindex(columns=columns + ["error"])


def _message(err: Exception, path: Path) -> str:
    text = str(err) or type(err).__name__
    return text if str(path) in text else f"{path}: {text}"


def _run_chunk(predictor, chunk, paths, texts, rows, asr_backend) -> None:
    try:
        waves = [w for _, w in chunk]
        given = [texts[i] for i, _ in chunk]
        if predictor.needs_text:
            todo = [k for k, t in enumerate(given) if t is None]
            if todo:
                from mmser.encode.asr import transcribe_files

                heard = transcribe_files([waves[k] for k in todo], backend=asr_backend,
                                         batch_size=len(todo), progress=False)
                for k, t in zip(todo, heard):
                    given[k] = t
        outputs = predict_waves(predictor, waves, given if predictor.needs_text else None)
    except Exception as err:
        if len(chunk) > 1:  # find which file it was: the rest still get predictions
            for one in chunk:
                _run_chunk(predictor, [one], paths, texts, rows, asr_backend)
            return
        i = chunk[0][0]
        rows[i]["error"] = _message(err, paths[i])
        return
    for (i, wave), text, out in zip(chunk, given, outputs):
        row = rows[i]
        row["duration_s"] = round(len(wave) / 16_000, 3)
        if predictor.needs_text:
            row["text"] = text
            row["text_source"] = "given" if texts[i] is not None else "asr"
        else:
            row["text_source"] = "none"
        if predictor.spec["kind"] == "classification":
            row["pred"] = predictor.classes[int(np.argmax(out))]
            row.update({f"prob_{c}": float(p) for c, p in zip(predictor.classes, out)})
        else:
            row.update({d: float(v) for d, v in zip(predictor.dimensions, out)})


# --------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmser.predict",
        description="Emotion probabilities (or arousal/valence/dominance) of audio files "
                    "with an exported model. Exit status: 0 = at least one file predicted, "
                    "1 = every file failed, 2 = model missing or corrupt, or bad arguments.")
    p.add_argument("audio", nargs="+", help="audio file(s) and/or folder(s) of audio files")
    p.add_argument("--text", help="transcript of the one audio file (default: Whisper ASR)")
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help=f"exported predictor folder (default: {DEFAULT_MODEL}; "
                        "models/distil/predictor gives arousal/valence/dominance)")
    p.add_argument("--out", help="CSV path; '-' = stdout. Default: a folder's predictions go "
                                 "to FOLDER/predictions.csv, several files' to "
                                 "./predictions.csv, one file's are printed")
    p.add_argument("--asr-backend", default="converted", choices=("converted", "faster-whisper"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _format_one(row: pd.Series, predictor: Predictor) -> str:
    lines = [f"{row['file']} ({row['duration_s']:.2f} s)"]
    if predictor.needs_text:
        lines.append(f"text ({row['text_source']}): {row['text']!r}")
    if predictor.spec["kind"] == "classification":
        lines.append(f"emotion: {row['pred']}")
        probs = sorted(((row[f'prob_{c}'], c) for c in predictor.classes), reverse=True)
        lines += [f"  {c:<10} {p:.3f}" for p, c in probs]
    else:
        low, high = predictor.spec.get("dimension_scale", {}).get("corpus_rating", [1, 5])
        lines.append(f"dimensions on [0, 1] (the training corpus's {low:g}-{high:g} rating "
                     "scale mapped to 0-1):")
        lines += [f"  {d:<10} {row[d]:.3f}" for d in predictor.dimensions]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def fail(message: str, status: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        return status

    files, folders = [], []
    for item in map(Path, args.audio):
        if item.is_dir():
            found = audio_files(item)
            if not found:
                print(f"warning: {item}: no audio files (suffixes "
                      f"{', '.join(sorted(AUDIO_SUFFIXES))})", file=sys.stderr)
            files += found
            folders.append(item)
        else:
            files.append(item)  # a missing or bad file gets its error in its row
    if not files:
        return fail("no audio files to predict", 1)
    if args.text is not None and (len(files) != 1 or folders):
        return fail("--text is the transcript of one audio file; give one file", 2)
    if args.batch_size < 1:
        return fail("--batch-size must be at least 1", 2)

    t0 = time.perf_counter()
    try:
        predictor = load_predictor(args.model)
    except Exception as err:  # PredictorError, or an encoder the spec names is missing
        return fail(str(err), 2)
    warning = heard_warning(predictor.spec)
    if warning:
        print(warning, file=sys.stderr)
    if predictor.needs_text and args.text is None:
        from mmser.encode import asr

        asr.load(args.asr_backend)  # load the ASR model now: the RTF leaves loading out
    loading = time.perf_counter() - t0

    t1 = time.perf_counter()
    texts = [args.text] if args.text is not None else None
    table = predict_files(predictor, files, texts, args.asr_backend, args.batch_size,
                          progress=not args.quiet and len(files) > 1)
    seconds = time.perf_counter() - t1

    ok = table["error"].fillna("") == ""
    audio_s = float(table.loc[ok, "duration_s"].sum())
    out = args.out
    if out is None and (len(files) > 1 or folders):
        out = str(folders[0] / "predictions.csv") if len(folders) == 1 and \
            len(args.audio) == 1 else "predictions.csv"
    if out == "-":
        table.to_csv(sys.stdout, index=False, float_format="%.4f")
    elif out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False, float_format="%.4f")
        print(f"wrote {out}: {int(ok.sum())} of {len(table)} files predicted", file=sys.stderr)
    if out is None:
        for _, row in table[ok].iterrows():
            print(_format_one(row, predictor))
    elif out != "-" and ok.any():
        shown = table[ok].drop(columns="error")
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for _, row in table[~ok].iterrows():
        print(f"error: {row['error']}", file=sys.stderr)
    if audio_s > 0:
        rtf = seconds / audio_s
        print(f"model: {predictor.spec['stage']} / {predictor.spec.get('system', '?')} "
              f"({predictor.folder}); loading {loading:.1f} s (once, not in the RTF)\n"
              f"processed {audio_s:.1f} s of audio in {seconds:.2f} s: real-time factor "
              f"{rtf:.3f} (processing / audio; {1 / rtf:.1f}x faster than real time)",
              file=sys.stderr)
    return 0 if ok.any() else 1


if __name__ == "__main__":
    sys.exit(main())
