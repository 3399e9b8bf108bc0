"""Loaders for real corpora: each reads a corpus in its release layout into the manifest.

Every `load_<name>(root, classes)` returns `(manifest, summary)`. The manifest follows
mmser.corpus.manifest (audio paths relative to `root`); the summary says how many rows were
kept and, per reason, how many were dropped or noted, with a few example ids, so a
reader can see what the label map and the files on disk removed.

`classes=None` keeps every category a corpus has; an integer picks a documented subset,
e.g. 4 = angry, happy, neutral, sad. A row whose category lies outside the chosen map (or
whose annotators agreed on none) is kept with an empty label, its own category in
`x_raw_label`: regression stages still read its arousal/valence/dominance, and dialogue
context still hears the turn; categorical stages skip it (`Corpus.labelled`). Only a
category the corpus does not know is dropped. `load(name, root, ...)` is the entry point
the pipeline uses: it also refuses duplicate ids and too much missing audio.
"""

from __future__ import annotations

import codecs
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mmser.corpus.audio import AudioError, check_length, load_audio, wave_digest

from mmser.progress import progress
from mmser.corpus.manifest import EXTRA_PREFIX, ManifestError, conform, validate

FOUR = {"angry", "happy", "neutral", "sad"}


def _all_and_four(every: dict[str, str]) -> dict:
    """`classes` -> label map: None or the corpus's own count keep every emotion; 4 keeps
    the four shared ones (cross-corpus)."""
    return {None: every, len(set(every.values())): every,
            4: {k: v for k, v in every.items() if v in FOUR}}
LABELLED = "labelled"  # the split name of labelled emotion data (as in the default corpus)
EXAMPLES = 5  # example ids kept per summary reason
MISSING, UNREADABLE = "missing audio", "unreadable audio"


class CorpusError(ManifestError):
    """A corpus that cannot become a manifest; the message names the file and problem."""


class CorpusLayoutError(CorpusError):
    """A corpus root that does not have the release layout; shows the expected one."""


# ---------------------------------------------------------------------------- helpers


class _Summary:
    """Counts kept, dropped and noted rows by reason, with example ids."""

    def __init__(self, corpus: str, root: Path, classes: int | None):
        self.corpus, self.root, self.classes = corpus, root, classes
        self.listed_audio = 0
        self.lost: list[str] = []  # every id whose audio is missing or unusable, not just examples
        self.problems: dict[str, str] = {}  # id -> what is wrong with its audio (file named)
        self.dropped: Counter = Counter()
        self.noted: Counter = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)
        # id -> why it is kept without a category; noted once its audio proves usable
        self.uncategorised: dict[str, str] = {}

    def drop(self, reason: str, utt_id: str) -> None:
        self.dropped[reason] += 1
        self._example(reason, utt_id)

    def note(self, reason: str, utt_id: str) -> None:
        self.noted[reason] += 1
        self._example(reason, utt_id)

    def _example(self, reason: str, utt_id: str) -> None:
        if len(self.examples[reason]) < EXAMPLES:
            self.examples[reason].append(utt_id)

    def as_dict(self, kept: int) -> dict:
        return {"corpus": self.corpus, "root": str(self.root), "classes": self.classes,
                "listed_audio": self.listed_audio, "lost": self.lost,
                "problems": self.problems, "kept": kept,
                "dropped": dict(self.dropped), "noted": dict(self.noted),
                "examples": dict(self.examples)}


def read_text(path: Path) -> str:
    """A corpus text file as UTF-8 (a byte-order mark is accepted); a byte that is not
    UTF-8 is a CorpusError naming the file, line and column, never a silent U+FFFD."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise CorpusError(f"{path}: line {line}, column {column}: byte "
                          f"0x{data[err.start]:02x} is not UTF-8; save the file as "
                          "UTF-8") from None


def read_table(path: Path) -> pd.DataFrame:
    """A corpus CSV file (UTF-8, see `read_text`), every cell a string."""
    return pd.read_csv(io.StringIO(read_text(path)), dtype=str, keep_default_na=False)


def _layout_error(root: Path, missing: str, expected: str) -> CorpusLayoutError:
    return CorpusLayoutError(f"{root}: {missing}. Expected layout:\n{expected}")


def _require_dir(root: Path, rel: str, expected: str) -> Path:
    path = root / rel
    if not path.is_dir():
        raise _layout_error(root, f"folder '{rel}' not found", expected)
    return path


def _check_root(root: Path, expected: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(root, "corpus root folder not found", expected)
    return root


def _label_map(maps: dict, classes: int | None, corpus: str) -> dict[str, str]:
    if classes not in maps:
        options = ", ".join(str(k) for k in maps if k is not None)
        raise CorpusError(f"{corpus}: classes={classes} is not offered; use one of "
                          f"{options} or None (all categories)")
    return maps[classes]


def _map_label(raw: str, labels: dict[str, str], known: dict[str, str], classes: int | None,
               utt_id: str, summary: _Summary) -> str | None:
    """The label name of `raw` in the chosen map `labels`; '' for a row kept without a
    category (a category of the corpus, `known`, outside the map, or none agreed); None
    when dropped (a category the corpus does not have)."""
    if labels.get(raw):
        return labels[raw]
    if raw in known:
        summary.uncategorised[utt_id] = _without_category(raw, known, classes)
        return ""
    summary.drop(f"unknown label '{raw}'", utt_id)
    return None


def _without_category(raw: str, known: dict[str, str], classes: int | None) -> str:
    """The summary's reason for a row kept with an empty label."""
    if not known.get(raw):
        return f"kept without a category (label '{raw}': no agreed category)"
    return f"kept without a category (label '{raw}' outside the {classes}-class map)"


def _with_audio(rows: list[dict], root: Path, summary: _Summary) -> list[dict]:
    """Keep the rows whose audio every stage can use: each clip is decoded once here (not
    just its header), so that a missing, empty, corrupt, truncated, NaN-holding or too short
    clip is dropped and recorded now, not found by a later stage. Adds the
    duration and the original rate and channels."""
    kept = []
    for row in progress(rows, desc="checking audio", unit="clip"):
        summary.listed_audio += 1
        path = root / row["path"]
        try:
            audio = load_audio(path)
            length = audio.duration
            segment = not (pd.isna(row.get("start")) or pd.isna(row.get("end")))
            if segment and not 0 <= row["start"] < row["end"] <= length + 0.01:
                raise AudioError(f"{path}: segment outside its audio file (start "
                                 f"{row['start']}, end {row['end']}, file {length:.2f} s)")
            row["duration"] = float(row["end"]) - float(row["start"]) if segment else length
            check_length(row["duration"], path)
        except AudioError as err:
            _lose(row["utt_id"], str(err), path, summary)
            continue
        row["x_audio_sha256"] = wave_digest(audio.wave)  # the same clip under two ids
        # the original format, recorded: every stage reads mono 16 kHz (mmser.corpus.audio.load_audio)
        row["sample_rate"] = audio.original_sample_rate
        row["x_channels"] = audio.original_channels
        row["x_resampled"] = audio.resampled
        row["x_downmixed"] = audio.downmixed
        kept.append(row)
    return kept


def _lose(utt_id: str, message: str, path: Path, summary: _Summary) -> None:
    """Drop a row for its audio: the reason (the message's kind, e.g. 'truncated audio')
    is counted, the full message kept per id."""
    problem = message.removeprefix(f"{path}: ")
    reason = (MISSING if "not found" in problem else UNREADABLE
              if problem.startswith("cannot decode") else problem.split(" (")[0])
    summary.drop(reason, utt_id)
    summary.lost.append(utt_id)
    summary.problems[utt_id] = message


def _finish(rows: list[dict], corpus: str, summary: _Summary) -> tuple[pd.DataFrame, dict]:
    rows = _with_audio(rows, summary.root, summary)
    for row in rows:  # counted among the rows kept, not those lost for their audio
        if row["utt_id"] in summary.uncategorised:
            summary.note(summary.uncategorised[row["utt_id"]], row["utt_id"])
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["utt_id", "path"])
    df["corpus"] = corpus
    df = conform(df)
    for col in ("turn_index", "sample_rate"):
        df[col] = df[col].astype("Int64")
    for col in ("start", "end", "arousal", "valence", "dominance", "duration"):
        df[col] = df[col].astype("Float64")
    df["fold"] = df["fold"].astype("Int64")
    return df.reset_index(drop=True), summary.as_dict(len(df))


def _audio_files(folder: Path, suffix: str) -> list[Path]:
    """The files of `folder` with `suffix` in any case (.wav, .WAV). macOS copies of some
    releases carry "._name" resource-fork files: not audio."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix
                  and not p.name.startswith("._"))


def _coded_files(folder: Path, pattern: re.Pattern, corpus: str,
                 summary: "_Summary") -> Iterator[tuple[Path, tuple[str, ...]]]:
    """WAVs whose names encode their metadata; others are dropped with the reason."""
    for path in _audio_files(folder, ".wav"):
        m = pattern.match(path.stem)
        if m:
            yield path, m.groups()
        else:
            summary.drop(f"file name outside the {corpus} pattern", path.name)


# ---------------------------------------------------------------------------- IEMOCAP

IEMOCAP_LAYOUT = """\
  <root>/Session1 .. Session5/
      dialog/EmoEvaluation/<dialog>.txt      e.g. Ses01F_impro01.txt
      dialog/transcriptions/<dialog>.txt
      sentences/wav/<dialog>/<utterance>.wav e.g. Ses01F_impro01/Ses01F_impro01_F000.wav"""

IEMOCAP_MAPS = {
    4: {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"},
    # all categories; 'oth' and 'xxx' (no majority) keep their A/V/D with an empty label
    None: {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
           "fru": "frustrated", "sur": "surprise", "fea": "fear", "dis": "disgust",
           "oth": "", "xxx": ""},
}
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"; the file's own
# header names the bracket "[V, A, D]": valence, activation (arousal), dominance.
_IEMOCAP_EVAL = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+"
    r"\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]")
# "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me."
_IEMOCAP_TRANS = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s*(.*?)\s*$")


def _iemocap_evaluations(eval_file: Path) -> list[dict]:
    """All rated utterances of one dialogue, with turn_index over all of them."""
    entries = []
    for line in read_text(eval_file).splitlines():
        m = _IEMOCAP_EVAL.match(line)
        if m:
            start, end, utt, raw, val, act, dom = m.groups()
            entries.append({"utt_id": utt, "raw": raw, "t0": float(start), "t1": float(end),
                            "valence": float(val), "arousal": float(act),
                            "dominance": float(dom)})
    # the turn order is the time order over every utterance, also those lost later for
    # their audio, so that context windows see the whole dialogue
    entries.sort(key=lambda e: (e["t0"], e["utt_id"]))
    for i, entry in enumerate(entries):
        entry["turn_index"] = i
    return entries


def _iemocap_transcripts(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in read_text(path).splitlines():
        m = _IEMOCAP_TRANS.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _open(root: Path, classes: int | None, name: str, layout: str, maps: dict,
          folders: str, described: str) -> tuple[Path, dict, list[Path], _Summary]:
    """A corpus of one folder per session or speaker: (root, label map, the folders
    matching `folders`, its summary); no such folder is a layout error."""
    root = _check_root(root, layout)
    labels = _label_map(maps, classes, name)
    found = sorted(p for p in root.glob(folders) if p.is_dir())
    if not found:
        raise _layout_error(root, f"no {described} folders", layout)
    return root, labels, found, _Summary(name, root, classes)


def load_iemocap(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """IEMOCAP release layout; classes=4 merges excited into happy (5,531 utterances)."""
    root, labels, sessions, summary = _open(root, classes, "iemocap", IEMOCAP_LAYOUT,
                                            IEMOCAP_MAPS, "Session[1-5]", "Session1..Session5")
    rows = []
    for session in sessions:
        eval_dir = _require_dir(root, f"{session.name}/dialog/EmoEvaluation", IEMOCAP_LAYOUT)
        _require_dir(root, f"{session.name}/sentences/wav", IEMOCAP_LAYOUT)
        for eval_file in _audio_files(eval_dir, ".txt"):
            dialog = eval_file.stem
            texts = _iemocap_transcripts(
                session / "dialog" / "transcriptions" / f"{dialog}.txt")
            for e in _iemocap_evaluations(eval_file):
                utt = e["utt_id"]
                label = _map_label(e["raw"], labels, IEMOCAP_MAPS[None], classes, utt,
                                   summary)
                if label is None:
                    continue
                if utt not in texts:
                    summary.note("no transcript (text left empty)", utt)
                rows.append({
                    "utt_id": utt,
                    "path": f"{session.name}/sentences/wav/{dialog}/{utt}.wav",
                    # "Ses01F_impro01_M003": the last part's letter is the speaker's gender
                    "speaker": f"{utt[:5]}_{utt.rsplit('_', 1)[-1][0]}",
                    "session": utt[:5], "split": LABELLED, "text": texts.get(utt),
                    "label": label or None, "arousal": e["arousal"],
                    "valence": e["valence"], "dominance": e["dominance"],
                    "dialog_id": dialog, "turn_index": e["turn_index"],
                    "x_raw_label": e["raw"]})
    return _finish(rows, "iemocap", summary)


# ---------------------------------------------------------------------------- MSP-Podcast

MSP_LAYOUT = """\
  <root>/Labels/labels_consensus.csv   FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID,
                                       Gender, Split_Set
  <root>/Audios/<FileName>             e.g. MSP-PODCAST_0001_0008.wav
  <root>/Transcripts/<stem>.txt        (optional; text is left empty without it)"""

_MSP_ALL = {"A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear",
            "D": "disgust", "C": "contempt", "N": "neutral"}
MSP_MAPS = {
    4: {k: v for k, v in _MSP_ALL.items() if v in FOUR},
    8: _MSP_ALL,
    None: {**_MSP_ALL, "O": "", "X": ""},  # other / no agreement: A/V/D still usable
}
_MSP_COLUMNS = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set"]


def _msp_float(value: str, column: str, name: str, csv: Path) -> float | None:
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise CorpusError(f"{csv}: {column} of {name} is not a number: {value!r}") from None


def load_msp_podcast(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """MSP-Podcast with its official partitions as `split` (train, development, test1, ...)."""
    root = _check_root(root, MSP_LAYOUT)
    labels = _label_map(MSP_MAPS, classes, "msp_podcast")
    csv = root / "Labels" / "labels_consensus.csv"
    if not csv.is_file():
        raise _layout_error(root, "file 'Labels/labels_consensus.csv' not found", MSP_LAYOUT)
    _require_dir(root, "Audios", MSP_LAYOUT)
    table = read_table(csv)
    absent = [c for c in _MSP_COLUMNS if c not in table.columns]
    if absent:
        raise _layout_error(root, f"{csv.name} lacks columns {absent}", MSP_LAYOUT)
    summary = _Summary("msp_podcast", root, classes)
    rows = []
    for rec in table.to_dict("records"):
        name = rec["FileName"].strip()
        stem = Path(name).stem
        raw = rec["EmoClass"].strip()
        label = _map_label(raw, labels, MSP_MAPS[None], classes, stem, summary)
        if label is None:
            continue
        transcript = root / "Transcripts" / f"{stem}.txt"
        text = (read_text(transcript).strip()
                if transcript.is_file() else None)
        if text is None:
            summary.note("no transcript (text left empty)", stem)
        speaker = rec["SpkrID"].strip()
        if speaker.lower() in ("", "unknown"):
            summary.note("speaker unknown (speaker left empty)", stem)
            speaker = None
        # "MSP-PODCAST_0001_0008": podcast 0001, segment 0008 (segments in time order)
        m = re.match(r"^(.*)_(\d+)$", stem)
        rows.append({
            "utt_id": stem, "path": f"Audios/{name}", "speaker": speaker,
            "split": rec["Split_Set"].strip().lower(), "text": text, "label": label or None,
            "arousal": _msp_float(rec["EmoAct"], "EmoAct", name, csv),
            "valence": _msp_float(rec["EmoVal"], "EmoVal", name, csv),
            "dominance": _msp_float(rec["EmoDom"], "EmoDom", name, csv),
            "dialog_id": m.group(1) if m else None, "x_segment": int(m.group(2)) if m else None,
            "x_raw_label": raw})
    df, info = _finish(rows, "msp_podcast", summary)
    # turn order within a podcast from the segment numbers
    df["turn_index"] = (df.groupby("dialog_id")["x_segment"].rank(method="first") - 1
                        ).astype("Int64")
    return df.drop(columns="x_segment"), info


# ---------------------------------------------------------------------------- EmoDB

EMODB_LAYOUT = """\
  <root>/wav/<SS><TTT><E><V>.wav   e.g. wav/03a01Fa.wav: speaker 03, text a01,
                                   emotion F (happiness), version a"""

EMODB_TEXTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute Abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hoch getragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
_EMODB_ALL = {"W": "angry", "L": "bored", "E": "disgust", "A": "fear", "F": "happy",
              "T": "sad", "N": "neutral"}
EMODB_MAPS = _all_and_four(_EMODB_ALL)
_EMODB_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])$")


def load_emodb(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Berlin EmoDB: 10 speakers, 10 German sentences, 7 emotions (4 for cross-corpus)."""
    return _load_coded(root, classes, _CodedCorpus(
        "emodb", "EmoDB", EMODB_LAYOUT, EMODB_MAPS, "wav", _EMODB_NAME, EMODB_TEXTS,
        "text id", ("speaker", "text", "emotion", "version"), {"x_text_id": "text"}))


@dataclass(frozen=True)
class _CodedCorpus:
    """A corpus of one folder whose file names code speaker, sentence and emotion (EmoDB,
    CREMA-D): `fields` name the groups of `pattern`; `extra` maps manifest columns to
    fields kept beside the schema."""
    name: str
    title: str
    layout: str
    maps: dict
    folder: str
    pattern: re.Pattern
    texts: dict[str, str]
    text_word: str
    fields: tuple[str, ...]
    extra: dict[str, str]


def _load_coded(root: Path, classes: int | None, spec: _CodedCorpus
                ) -> tuple[pd.DataFrame, dict]:
    root = _check_root(root, spec.layout)
    labels = _label_map(spec.maps, classes, spec.name)
    directory = _require_dir(root, spec.folder, spec.layout)
    summary = _Summary(spec.name, root, classes)
    rows = []
    for path, groups in _coded_files(directory, spec.pattern, spec.title, summary):
        coded = dict(zip(spec.fields, groups))
        label = _map_label(coded["emotion"], labels, spec.maps[None], classes, path.stem,
                           summary)
        if label is None:
            continue
        if coded["text"] not in spec.texts:
            summary.note(f"{spec.text_word} '{coded['text']}' unknown (text left empty)",
                         path.stem)
        rows.append({"utt_id": path.stem, "path": f"{spec.folder}/{path.name}",
                     "speaker": coded["speaker"], "split": LABELLED,
                     "text": spec.texts.get(coded["text"]), "label": label or None,
                     "x_raw_label": coded["emotion"],
                     **{column: coded[field] for column, field in spec.extra.items()}})
    return _finish(rows, spec.name, summary)


# ---------------------------------------------------------------------------- RAVDESS

RAVDESS_LAYOUT = """\
  <root>/Actor_01 .. Actor_24/MM-VV-EE-II-SS-RR-AA.wav   e.g. Actor_01/03-01-05-01-02-01-01.wav
      modality 03 (audio-only), vocal channel 01 (speech), emotion, intensity, statement,
      repetition, actor"""

_RAVDESS_ALL = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
                "06": "fear", "07": "disgust", "08": "surprise"}
RAVDESS_MAPS = _all_and_four(_RAVDESS_ALL)
RAVDESS_TEXTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def load_ravdess(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """RAVDESS audio-only speech; song files (vocal channel 02) are dropped."""
    root, labels, actors, summary = _open(root, classes, "ravdess", RAVDESS_LAYOUT,
                                          RAVDESS_MAPS, "Actor_*", "Actor_XX")
    rows = []
    for actor in actors:
        for path, groups in _coded_files(actor, _RAVDESS_NAME, "RAVDESS", summary):
            modality, channel, emotion, intensity, statement, _rep, actor_id = groups
            if modality != "03":
                summary.drop(f"modality {modality} is not audio-only (03)", path.stem)
                continue
            if channel != "01":
                summary.drop(f"vocal channel {channel} is song, not speech (01)", path.stem)
                continue
            label = _map_label(emotion, labels, RAVDESS_MAPS[None], classes, path.stem,
                               summary)
            if label is None:
                continue
            rows.append({"utt_id": path.stem, "path": f"{actor.name}/{path.name}",
                         "speaker": f"Actor_{actor_id}", "split": LABELLED,
                         "text": RAVDESS_TEXTS.get(statement), "label": label or None,
                         "x_raw_label": emotion,
                         "x_intensity": {"01": "normal", "02": "strong"}.get(intensity)})
    for actor in actors:
        _lose_absent_ravdess_speech(actor, summary)
    return _finish(rows, "ravdess", summary)


def _ravdess_speech_names(actor_id: str) -> list[str]:
    """The 60 speech files RAVDESS records per actor: 8 emotions (neutral at normal
    intensity only) x 2 statements x 2 repetitions."""
    return [f"03-01-{emotion}-{intensity}-{statement}-{rep}-{actor_id}"
            for emotion in _RAVDESS_ALL for intensity in ("01", "02")
            if not (emotion == "01" and intensity == "02")
            for statement in ("01", "02") for rep in ("01", "02")]


def _lose_absent_ravdess_speech(actor: Path, summary: _Summary) -> None:
    """A copy that lacks some of an actor's speech files (the public 2.4-s copy lacks six)
    has them listed as lost, so `max_lost_fraction` applies to them like to a broken file."""
    present = {p.stem for p in _audio_files(actor, ".wav")}
    for name in _ravdess_speech_names(actor.name.removeprefix("Actor_")):
        if name not in present:
            summary.listed_audio += 1
            path = actor / f"{name}.wav"
            _lose(name, f"{path}: not found (RAVDESS records 60 speech files per actor)",
                  path, summary)


# ---------------------------------------------------------------------------- CREMA-D

CREMAD_LAYOUT = """\
  <root>/AudioWAV/AAAA_SSS_EEE_LL.wav   e.g. AudioWAV/1001_DFA_ANG_XX.wav: actor 1001,
                                        sentence DFA, emotion ANG, level XX"""

CREMAD_TEXTS = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting", "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before",
    "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes",
}
_CREMAD_ALL = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
               "NEU": "neutral", "SAD": "sad"}
CREMAD_MAPS = _all_and_four(_CREMAD_ALL)
_CREMAD_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def load_crema_d(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """CREMA-D: 91 actors, 12 sentences, 6 emotions (4 for cross-corpus)."""
    return _load_coded(root, classes, _CodedCorpus(
        "crema_d", "CREMA-D", CREMAD_LAYOUT, CREMAD_MAPS, "AudioWAV", _CREMAD_NAME,
        CREMAD_TEXTS, "sentence", ("speaker", "text", "emotion", "level"), {"x_level": "level"}))


# ---------------------------------------------------------------------------- LibriSpeech

LIBRISPEECH_LAYOUT = """\
  <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
  <root>/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
      e.g. dev-clean/84/121123/84-121123-0000.flac"""


def load_librispeech(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """LibriSpeech read speech (split 'read', no labels) for the pre-training papers."""
    root = _check_root(root, LIBRISPEECH_LAYOUT)
    if classes is not None:
        raise CorpusError(f"librispeech ({root}) has no emotion labels; use classes=None")
    transcripts = sorted(root.glob("*/*/*/*.trans.txt"))
    if not transcripts:
        raise _layout_error(root, "no <subset>/<speaker>/<chapter>/*.trans.txt files",
                            LIBRISPEECH_LAYOUT)
    summary = _Summary("librispeech", root, classes)
    rows = []
    for trans in transcripts:
        chapter_dir = trans.parent
        rel_dir = chapter_dir.relative_to(root).as_posix()
        for line in read_text(trans).splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            speaker, chapter, number = (utt.split("-") + ["", "", ""])[:3]
            rows.append({"utt_id": utt, "path": f"{rel_dir}/{utt}.flac", "speaker": speaker,
                         "split": "read", "text": text.strip(),
                         "dialog_id": f"{speaker}-{chapter}",
                         "turn_index": int(number) if number.isdigit() else None,
                         "x_subset": chapter_dir.parent.parent.name})
    return _finish(rows, "librispeech", summary)


# ---------------------------------------------------------------------------- generic CSV

CSV_LAYOUT = """\
  <root>/manifest.csv   utf-8, columns path,label (required) and optionally utt_id, start,
                        end, text, speaker, session, split, arousal, valence, dominance,
                        dialog_id, turn_index, and x_* extras; paths relative to <root>
  <root>/<path>         the audio files"""

CSV_REQUIRED = ["path", "label"]
CSV_OPTIONAL = ["utt_id", "start", "end", "text", "speaker", "session", "split", "arousal",
                "valence", "dominance", "dialog_id", "turn_index"]
_CSV_NUMERIC = ["start", "end", "arousal", "valence", "dominance", "turn_index"]


def _csv_numbers(table: pd.DataFrame, csv: Path) -> None:
    for col in _CSV_NUMERIC:
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col].mask(table[col] == ""), errors="coerce")
        bad = table[col][values.isna() & (table[col] != "")]
        if not bad.empty:
            raise CorpusError(f"{csv}: column {col} holds non-numbers, e.g. row "
                              f"{bad.index[0] + 2}: {bad.iloc[0]!r}")
        table[col] = values


def _refuse_segments(table: pd.DataFrame, csv: Path) -> None:
    """Every stage reads whole files, so a `start`/`end` segment would silently get its whole
    file's audio: refused, with the way out."""
    for col in ("start", "end"):
        if col in table.columns and table[col].notna().any():
            row = int(table.index[table[col].notna()][0]) + 2
            raise CorpusError(
                f"{csv}: column {col} is set (e.g. row {row}), but every stage reads whole "
                "audio files; cut each segment into its own file (e.g. `sox talk.wav "
                "seg1.wav trim 0.5 =0.9`), list those files, and leave start and end empty")


def _normalise_labels(table: pd.DataFrame, csv: Path) -> None:
    """Labels are names: ' Angry' and 'angry' are one class. Written variants that differ
    only in case or surrounding spaces are read as the lower-case name; text that is only
    whitespace is no transcript."""
    table["label"] = table["label"].str.strip().str.lower()
    if "text" in table.columns:
        table["text"] = table["text"].where(table["text"].str.strip() != "", "")


def _csv_label_filter(table: pd.DataFrame, classes: int | None, csv: Path) -> pd.Series:
    """Which rows keep their label under the class choice: all, the four standard names, or
    an exact count (the others are kept without a category)."""
    found = sorted(set(table["label"]) - {""})
    if classes is None:
        return table["label"] != ""
    if classes == 4 and FOUR & set(found):
        return table["label"].isin(FOUR)
    if len(found) != classes:
        raise CorpusError(f"{csv}: classes={classes} but the file has {len(found)} labels "
                          f"{found}; keep only those rows in the CSV, use the names "
                          f"{sorted(FOUR)} for classes=4, or set classes to None")
    return table["label"] != ""


def load_csv(root: Path, classes: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Any corpus described by `root/manifest.csv`; `corpus` is the root folder's name."""
    root = _check_root(root, CSV_LAYOUT)
    csv = root / "manifest.csv"
    if not csv.is_file():
        raise _layout_error(root, "file 'manifest.csv' not found", CSV_LAYOUT)
    table = read_table(csv)
    absent = [c for c in CSV_REQUIRED if c not in table.columns]
    unknown = [c for c in table.columns
               if c not in CSV_REQUIRED + CSV_OPTIONAL and not c.startswith(EXTRA_PREFIX)]
    if absent or unknown:
        problems = ([f"missing columns {absent}"] if absent else []) + (
            [f"unknown columns {unknown}"] if unknown else [])
        raise CorpusError(f"{csv}: {'; '.join(problems)}. Expected:\n{CSV_LAYOUT}")
    _csv_numbers(table, csv)
    _refuse_segments(table, csv)
    _normalise_labels(table, csv)
    keep = _csv_label_filter(table, classes, csv)
    corpus = root.resolve().name
    summary = _Summary(corpus, root, classes)
    rows = []
    for i, rec in table.iterrows():
        rel = rec["path"].strip()
        if not rel or not (root / rel).resolve().is_relative_to(root.resolve()):
            raise CorpusError(f"{csv}: row {i + 2} has path {rel!r}; paths must be "
                              f"relative and inside {root}")
        utt = rec.get("utt_id") or str(Path(rel).with_suffix("").as_posix())
        row = {k: (v if v != "" else None) for k, v in rec.items()}
        row.update(utt_id=utt, path=Path(rel).as_posix(), split=row.get("split") or LABELLED,
                   x_raw_label=row["label"])
        if not keep[i]:
            row["label"] = None
            if rec["label"]:
                summary.uncategorised[utt] = _without_category(
                    rec["label"], {rec["label"]: rec["label"]}, classes)
        rows.append(row)
    return _finish(rows, corpus, summary)


# ---------------------------------------------------------------------------- dispatcher

LOADERS: dict[str, Callable[..., tuple[pd.DataFrame, dict]]] = {
    "iemocap": load_iemocap, "msp_podcast": load_msp_podcast, "emodb": load_emodb,
    "ravdess": load_ravdess, "crema_d": load_crema_d, "librispeech": load_librispeech,
    "csv": load_csv,
}


def load(name: str, root: str | Path, classes: int | None = None,
         max_lost_fraction: float = 0.05) -> tuple[pd.DataFrame, dict]:
    """Load corpus `name` from `root`; refuse duplicate ids and too much lost audio.

    Lost audio is what the corpus lists but is missing or unreadable on disk; beyond
    `max_lost_fraction` of the listed audio the copy is probably incomplete.
    """
    if name not in LOADERS:
        raise CorpusError(f"unknown corpus {name!r}; known: {sorted(LOADERS)}")
    root = Path(root)
    df, summary = LOADERS[name](root, classes)
    dup = df["utt_id"][df["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise CorpusError(f"{root}: {name} lists {len(dup)} utterance ids more than once, "
                          f"e.g. {dup[:EXAMPLES]}")
    _refuse_shared_audio(df, root, name, "path", "the same file")
    df = _keep_copies_once(df, summary)
    _refuse_shared_audio(df, root, name, "x_audio_sha256", "identical audio",
                         ", which differ in speaker, text or label")
    lost, listed = len(summary["lost"]), summary["listed_audio"]
    if listed and lost / listed > max_lost_fraction:
        err = CorpusError(
            f"{root}: {lost} of {listed} listed audio files are missing, unreadable or copies "
            f"({lost / listed:.1%} > max_lost_fraction {max_lost_fraction:.1%}), "
            f"e.g. {summary['lost'][:EXAMPLES]}; is the copy complete? "
            f"(the error's .summary lists them all)")
        err.summary = summary
        raise err
    if df.empty:
        raise CorpusError(f"{root}: {name} yielded no utterances; summary: {summary}")
    validate(df, root, source=f"{name} at {root}")
    return df, summary


# What makes two ids one recording's copies rather than two recordings: the same audio,
# speaker, transcript and category. A copy that differs in any of them is refused.
_COPY_KEYS = ["x_audio_sha256", "speaker", "text", "label", "x_raw_label"]
COPY = "identical audio under another id (kept once)"


def _keep_copies_once(df: pd.DataFrame, summary: dict) -> pd.DataFrame:
    """A public copy of a corpus can hold one file twice under two ids with the same label,
    speaker and text (RAVDESS's 2.4-s copy: Actor 07's happy statement 02, repetitions 1
    and 2). The first id keeps the audio; the others are lost (their own recording is not
    on disk), recorded in the summary with both files named, and counted against
    `max_lost_fraction`. Copies that disagree on any of `_COPY_KEYS` stay an error."""
    if df.empty or "x_audio_sha256" not in df.columns:
        return df
    keys = [c for c in _COPY_KEYS if c in df.columns]
    group = df.groupby(keys, dropna=False, sort=False).ngroup()
    first = df.index.to_series().groupby(group).transform("first")  # each group's first row
    copies = df.index[first != df.index]
    for i in copies:
        row, kept = df.loc[i], df.loc[first[i]]
        message = (f"{summary['root']}/{row['path']}: identical audio to {kept['path']} "
                   f"(id {kept['utt_id']}), with the same speaker, text and label; kept once")
        summary["dropped"][COPY] = summary["dropped"].get(COPY, 0) + 1
        summary["examples"].setdefault(COPY, []).append(row["utt_id"])
        summary["lost"].append(row["utt_id"])
        summary["problems"][row["utt_id"]] = message
    summary["kept"] = len(df) - len(copies)
    return df.drop(index=copies).reset_index(drop=True)


def _refuse_shared_audio(df: pd.DataFrame, root: Path, name: str, column: str,
                         what: str, why: str = "") -> None:
    """One recording under two ids could land in a training and a test fold (a leak), or
    carry two labels: refused, naming the ids and their files."""
    if column not in df.columns or df.empty:
        return
    shared = df[df[column].duplicated(keep=False)]
    if not shared.empty:
        first = shared[shared[column] == shared[column].iloc[0]]
        ids = ", ".join(f"{u} ({p})" for u, p in zip(first["utt_id"], first["path"]))
        raise CorpusError(f"{root}: {name} lists {what} under {shared[column].nunique()} "
                          f"group(s) of ids, e.g. {ids}{why}; one recording must have one "
                          "id (remove the copies from the listing)")


# ------------------------------------------------------------------- several corpora at once


def combine(parts: list[tuple[pd.DataFrame, Path]]) -> tuple[pd.DataFrame, Path]:
    """One manifest from several corpora: audio paths re-rooted at the roots' common folder.

    Used for cross-corpus runs (train on one corpus, test on another) and for adding an
    external read-speech corpus for pre-training. Utterance ids must stay unique.
    """
    import os

    roots = [Path(root).resolve() for _, root in parts]
    common = Path(os.path.commonpath(roots))
    frames = []
    for (df, _), root in zip(parts, roots):
        prefix = root.relative_to(common).as_posix()
        frames.append(df.assign(path=[p if prefix == "." else f"{prefix}/{p}"
                                      for p in df["path"]]))
    out = pd.concat(frames, ignore_index=True)
    dup = out["utt_id"][out["utt_id"].duplicated()].unique().tolist()
    if dup:
        raise CorpusError(f"the corpora {[str(r) for r in roots]} share utterance ids, e.g. "
                          f"{dup[:EXAMPLES]}; they cannot be combined in one manifest")
    return out, common


def add_extra_corpora(df: pd.DataFrame, root: Path, summary: dict, *, protocol: str,
                      test_corpus: str | None = None, test_root: str | None = None,
                      test_classes: int | None = None, read_corpus: str | None = None,
                      read_root: str | None = None, read_max: int | None = None,
                      seed: int = 0, max_lost_fraction: float = 0.05
                      ) -> tuple[pd.DataFrame, Path, dict]:
    """Add the cross-corpus test corpus and/or an external read-speech corpus to a manifest.

    `test_corpus` (e.g. emodb with `test_classes: 4`) is what the `cross_corpus` protocol
    tests on; the main corpus is trained on, over the labels both share. `read_corpus`
    (librispeech) replaces any read split of the main corpus; `read_max` keeps a seeded
    sample of that many utterances. The summary gains one entry per added corpus.
    """
    parts, summary = [(df, Path(root))], {"main": summary}
    if (protocol == "cross_corpus") != bool(test_corpus):
        raise CorpusError("dataset.protocol cross_corpus and dataset.test_corpus go together: "
                          f"protocol={protocol!r}, test_corpus={test_corpus!r}")
    if test_corpus:
        if not test_root:
            raise CorpusError(f"dataset.test_root: the folder of {test_corpus} is not set")
        test, summary["test"] = load(test_corpus, test_root, test_classes, max_lost_fraction)
        parts.append((test, Path(test_root)))
    if read_corpus:
        if not read_root:
            raise CorpusError(f"dataset.read_root: the folder of {read_corpus} is not set")
        read, summary["read"] = load(read_corpus, read_root, None, max_lost_fraction)
        read = read[read["split"] == "read"]
        if read_max is not None and len(read) > read_max:
            read = read.sample(n=read_max, random_state=seed).sort_index()
        parts[0] = (df[df["split"] != "read"], Path(root))
        parts.append((read, Path(read_root)))
    if len(parts) == 1:
        return df, Path(root), summary["main"]
    out, common = combine(parts)
    return out, common, summary
