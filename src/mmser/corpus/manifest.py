"""The one manifest schema that every corpus loader writes (see DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = [
    "utt_id", "path", "start", "end", "speaker", "session", "fold", "split", "text",
    "asr_text", "label", "arousal", "valence", "dominance", "dialog_id", "turn_index",
    "duration", "sample_rate", "corpus",
]
# Columns beyond the schema that a loader may add (the synthesised corpus records its cues).
EXTRA_PREFIX = "x_"


class ManifestError(ValueError):
    """A manifest that does not match the schema or the files; the message says where."""


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Order the schema's columns first (adding any missing as empty), keep `x_` extras."""
    unknown = [c for c in df.columns if c not in COLUMNS and not c.startswith(EXTRA_PREFIX)]
    if unknown:
        raise ManifestError(f"manifest has columns outside the schema: {unknown}")
    out = df.copy()
    for col in COLUMNS:
        if col not in out.columns:
            out[col] = pd.NA
    extras = [c for c in out.columns if c.startswith(EXTRA_PREFIX)]
    return out[COLUMNS + extras]


def validate(df: pd.DataFrame, root: str | Path, source: str = "manifest") -> None:
    """Check ids are unique and every audio path resolves to a file inside `root`."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing columns {missing}")
    dup = df["utt_id"][df["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{source}: duplicate utt_id values, e.g. {dup[:5]}")
    resolve_paths(df, root, source)


def resolve_paths(df: pd.DataFrame, root: str | Path, source: str = "manifest") -> list[Path]:
    """Absolute audio paths; a path that escapes `root` or does not exist is an error."""
    root = Path(root).resolve()
    paths, absent = [], []
    for rel in df["path"]:
        path = (root / str(rel)).resolve()
        if not path.is_relative_to(root):
            raise ManifestError(f"{source}: audio path {rel!r} escapes the corpus root {root}")
        if not path.is_file():
            absent.append(str(rel))
        paths.append(path)
    if absent:
        raise ManifestError(
            f"{source}: {len(absent)} listed audio files do not exist under {root}, "
            f"e.g. {absent[:3]}"
        )
    return paths


def read(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV with stable dtypes (ids and text stay strings)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found (run the prepare stage first)")
    df = pd.read_csv(path, dtype={"utt_id": str, "speaker": str, "session": str,
                                  "dialog_id": str, "text": str, "asr_text": str,
                                  "label": str, "split": str, "corpus": str,
                                  # a corpus's own category code, e.g. RAVDESS "01"
                                  "x_raw_label": str},
                     keep_default_na=False, na_values=[""])
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing columns {missing}")
    return df


def write(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conform(df).to_csv(path, index=False)


def write_corpus_info(corpus_dir: str | Path, audio_root: str | Path, **info) -> None:
    """Record where the manifest's relative audio paths point (corpus.json beside it)."""
    import json

    corpus_dir = Path(corpus_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    (corpus_dir / "corpus.json").write_text(
        json.dumps({"audio_root": str(audio_root), **info}, indent=2, default=str))


def corpus_info(corpus_dir: str | Path) -> dict:
    """What `prepare` recorded beside the manifest: audio root, corpus name, protocol."""
    import json

    info = Path(corpus_dir) / "corpus.json"
    if not info.is_file():
        raise ManifestError(f"{info}: not found (run the prepare stage first)")
    return json.loads(info.read_text())


def audio_root(corpus_dir: str | Path) -> Path:
    """The folder the manifest's audio paths are relative to."""
    return Path(corpus_info(corpus_dir)["audio_root"])
