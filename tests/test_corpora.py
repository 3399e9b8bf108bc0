"""Each corpus loader on a tiny tree built here in the corpus's release layout."""

import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from mmser.corpus import corpora, manifest
from mmser.corpus.corpora import CorpusError, CorpusLayoutError

SR = 16_000


def wav(path: Path, seconds: float = 0.2, sr: int = SR, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = zlib.crc32(path.as_posix().encode())  # each file its own audio: copies are refused
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, int(seconds * sr))
    sf.write(str(path), noise, sr, format=fmt)


# ---------------------------------------------------------------------------- IEMOCAP

# (start, utt id, label, [V, A, D]); listed out of time order on purpose
DIALOG = [
    (8.50, "Ses01F_impro01_M001", "fru", "[2.0000, 3.5000, 3.0000]"),
    (6.29, "Ses01F_impro01_F000", "neu", "[2.5000, 2.0000, 2.5000]"),
    (10.1, "Ses01F_impro01_F001", "hap", "[4.0000, 3.0000, 3.0000]"),
    (12.0, "Ses01F_impro01_M002", "exc", "[4.5000, 4.0000, 3.5000]"),
    (14.0, "Ses01F_impro01_F002", "xxx", "[3.0000, 3.0000, 3.0000]"),
    (16.0, "Ses01F_impro01_M003", "sad", "[1.5000, 1.5000, 2.0000]"),
    (18.0, "Ses01F_impro01_F003", "oth", "[3.0000, 2.5000, 3.0000]"),
]


def build_iemocap(root: Path, sessions=(1, 2)) -> None:
    for n in sessions:
        ses = f"Ses0{n}"
        dialog = f"{ses}F_impro01"
        evals, trans = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
        for start, utt, label, vad in DIALOG:
            utt = utt.replace("Ses01", ses)
            evals += [f"[{start:.4f} - {start + 1.5:.4f}]\t{utt}\t{label}\t{vad}",
                      "C-E1:\tNeutral;\t()", ""]
            if not utt.endswith("M003"):  # one utterance has no transcript line
                trans.append(f"{utt} [{start:08.4f}-{start + 1.5:08.4f}]: Words of {utt}.")
            wav(root / f"Session{n}/sentences/wav/{dialog}/{utt}.wav")
        base = root / f"Session{n}/dialog"
        (base / "EmoEvaluation").mkdir(parents=True)
        (base / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evals) + "\n")
        (base / "transcriptions").mkdir(parents=True)
        (base / "transcriptions" / f"{dialog}.txt").write_text("\n".join(trans) + "\n")
        (base / "EmoEvaluation" / "Categorical").mkdir()  # sub-folders of the release


def test_iemocap_four_classes(tmp_path):
    build_iemocap(tmp_path)
    df, summary = corpora.load("iemocap", tmp_path, classes=4)
    assert list(df.columns[:len(manifest.COLUMNS)]) == manifest.COLUMNS
    # every turn stays; the 6 outside the 4-class map have no label, their category kept
    assert len(df) == 14 and summary["kept"] == 14 and summary["dropped"] == {}
    assert df["label"].notna().sum() == 8
    uncategorised = df[df["label"].isna()].set_index("utt_id")
    assert sorted(uncategorised["x_raw_label"]) == ["fru", "fru", "oth", "oth", "xxx", "xxx"]
    assert uncategorised.loc["Ses01F_impro01_M001", "arousal"] == 3.5  # A/V/D kept
    row = df.set_index("utt_id").loc["Ses01F_impro01_M002"]
    assert row["label"] == "happy"  # exc merged into happy
    assert (row["valence"], row["arousal"], row["dominance"]) == (4.5, 4.0, 3.5)
    assert row["speaker"] == "Ses01_M" and row["session"] == "Ses01"
    assert row["dialog_id"] == "Ses01F_impro01"
    assert row["path"] == "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M002.wav"
    assert row["text"] == "Words of Ses01F_impro01_M002."
    assert row["duration"] == pytest.approx(0.2) and row["sample_rate"] == SR
    assert pd.isna(row["start"]) and pd.isna(row["end"])
    # turn order counts the dropped 'fru' utterance that came before in time
    turns = df[df["session"] == "Ses01"].set_index("utt_id")["turn_index"]
    assert turns["Ses01F_impro01_F000"] == 0 and turns["Ses01F_impro01_F001"] == 2
    assert set(df["label"].dropna()) == {"neutral", "happy", "sad"}
    # missing transcript: kept with empty text, counted
    no_text = df.set_index("utt_id").loc["Ses01F_impro01_M003"]
    assert pd.isna(no_text["text"]) and no_text["label"] == "sad"
    assert summary["noted"] == {
        "no transcript (text left empty)": 2,
        "kept without a category (label 'fru' outside the 4-class map)": 2,
        "kept without a category (label 'xxx': no agreed category)": 2,
        "kept without a category (label 'oth': no agreed category)": 2}
    assert summary["examples"]["no transcript (text left empty)"][0].endswith("M003")
    assert df["corpus"].eq("iemocap").all()


def test_iemocap_all_classes_keeps_dimensions(tmp_path):
    build_iemocap(tmp_path, sessions=(1,))
    df, summary = corpora.load("iemocap", tmp_path)
    assert len(df) == 7 and summary["dropped"] == {}
    labels = df.set_index("utt_id")["label"]
    assert labels["Ses01F_impro01_M002"] == "excited"
    assert labels["Ses01F_impro01_M001"] == "frustrated"
    assert pd.isna(labels["Ses01F_impro01_F002"])  # xxx: no agreement, A/V/D kept


def test_iemocap_layout_errors_name_the_missing_piece(tmp_path):
    with pytest.raises(CorpusLayoutError, match="no Session1..Session5 folders") as err:
        corpora.load("iemocap", tmp_path)
    assert "dialog/EmoEvaluation" in str(err.value)  # the expected layout is shown
    (tmp_path / "Session1" / "sentences" / "wav").mkdir(parents=True)
    with pytest.raises(CorpusLayoutError, match="'Session1/dialog/EmoEvaluation' not found"):
        corpora.load("iemocap", tmp_path)
    with pytest.raises(CorpusLayoutError, match="corpus root folder not found"):
        corpora.load("iemocap", tmp_path / "nowhere")


def test_missing_audio_listed_and_too_much_fails(tmp_path):
    build_iemocap(tmp_path, sessions=(1,))
    gone = tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    gone.unlink()
    df, summary = corpora.load("iemocap", tmp_path, classes=4, max_lost_fraction=0.5)
    assert summary["dropped"]["missing audio"] == 1
    assert summary["examples"]["missing audio"] == ["Ses01F_impro01_F000"]
    assert "Ses01F_impro01_F000" not in set(df["utt_id"])
    assert summary["lost"] == ["Ses01F_impro01_F000"]
    with pytest.raises(CorpusError, match=r"1 of 7 listed audio files .*_F000") as err:
        corpora.load("iemocap", tmp_path, classes=4)  # 14% > 5%
    assert err.value.summary["lost"] == ["Ses01F_impro01_F000"]


def test_unreadable_audio_counts_as_lost(tmp_path):
    build_iemocap(tmp_path, sessions=(1,))
    bad = tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav"
    bad.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    _, summary = corpora.load("iemocap", tmp_path, classes=4, max_lost_fraction=1.0)
    assert summary["dropped"]["unreadable audio"] == 1


def _spoil(path: Path, how: str) -> None:
    """Rewrite one clip with the defect `how`."""
    import soundfile as sf

    if how == "nan":
        wave = np.full(16_000, 0.1, dtype=np.float32)
        wave[100] = np.nan
        sf.write(str(path), wave, 16_000, subtype="FLOAT")
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: 44 + (len(data) - 44) // 2])  # header intact, data cut
    elif how == "short":
        sf.write(str(path), np.zeros(80, dtype=np.float32), 16_000)  # 5 ms
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how, reason", [
    ("nan", "audio holds NaN or infinite samples"), ("truncated", "truncated audio"),
    ("short", "too short"), ("empty", "audio file is empty"),
])
def test_prepare_decodes_every_clip_and_records_what_fails(tmp_path, how, reason):
    build_iemocap(tmp_path, sessions=(1,))
    clip = tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav"
    before, summary_before = corpora.load("iemocap", tmp_path, classes=4)
    kept_before = set(before["utt_id"])
    _spoil(clip, how)
    df, summary = corpora.load("iemocap", tmp_path, classes=4, max_lost_fraction=0.5)
    assert summary["dropped"] == {**summary_before["dropped"], reason: 1}
    assert summary["lost"] == ["Ses01F_impro01_F001"]
    assert summary["problems"]["Ses01F_impro01_F001"].startswith(f"{clip}: {reason}")
    assert set(df["utt_id"]) == kept_before - {"Ses01F_impro01_F001"}  # nothing else changes
    with pytest.raises(CorpusError, match="1 of 7 listed audio files") as err:
        corpora.load("iemocap", tmp_path, classes=4)  # 14% > 5%: stop, with the list
    assert err.value.summary["problems"] == summary["problems"]


def test_text_files_must_be_utf8_and_may_carry_a_bom(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbfutt_id,text\nu1,ok\nu2,caf\xe9 latin-1\n")
    with pytest.raises(CorpusError, match=r"manifest.csv: line 3, column 7: byte 0xe9 is not UTF-8"):
        corpora.read_table(path)
    path.write_bytes(b"\xef\xbb\xbfutt_id,text\nu1,ok\nu2,caf\xc3\xa9\n")
    table = corpora.read_table(path)
    assert list(table.columns) == ["utt_id", "text"] and table["text"].tolist() == ["ok", "café"]


def test_a_non_utf8_iemocap_transcript_is_named_not_replaced(tmp_path):
    build_iemocap(tmp_path, sessions=(1,))
    trans = next((tmp_path / "Session1/dialog/transcriptions").glob("*.txt"))
    trans.write_bytes(trans.read_bytes() + b"Ses01F_impro01_F009 [1.0-2.0]: na\xefve\n")
    with pytest.raises(CorpusError, match=rf"{trans.name}: line \d+, column \d+: byte 0xef"):
        corpora.load("iemocap", tmp_path, classes=4)


def test_duplicate_utterance_ids_are_an_error(tmp_path):
    build_iemocap(tmp_path, sessions=(1,))
    shutil.copytree(tmp_path / "Session1", tmp_path / "Session2")  # same ids twice
    with pytest.raises(CorpusError, match="more than once.*Ses01F_impro01_F000"):
        corpora.load("iemocap", tmp_path, classes=4)


# ---------------------------------------------------------------------------- MSP-Podcast


def build_msp(root: Path) -> None:
    rows = [("MSP-PODCAST_0001_0002.wav", "A", "5.2", "2.0", "5.0", "127", "Male", "Train"),
            ("MSP-PODCAST_0001_0001.wav", "N", "4.0", "4.0", "4.0", "127", "Male", "Train"),
            ("MSP-PODCAST_0002_0001.wav", "H", "5.0", "6.0", "4.5", "31", "Female",
             "Development"),
            ("MSP-PODCAST_0003_0001.wav", "S", "2.0", "2.5", "3.0", "Unknown", "Unknown",
             "Test1"),
            ("MSP-PODCAST_0004_0001.wav", "X", "4.2", "3.8", "4.0", "44", "Female", "Test2"),
            ("MSP-PODCAST_0004_0002.wav", "U", "6.0", "5.0", "4.0", "44", "Female", "Test2")]
    write_msp_tree(root, rows, lambda name: None if name == "MSP-PODCAST_0002_0001.wav"
                   else "so I said hello", sr=16_000)


def write_msp_tree(root: Path, rows: list[tuple], transcript: Callable[[str], str | None],
                   sr: int = SR) -> None:
    """An MSP-Podcast release tree (Labels/labels_consensus.csv, Audios/, Transcripts/):
    rows of (FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set);
    `transcript(file name)` is its text, None for no transcript file."""
    table = pd.DataFrame(rows, columns=["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom",
                                        "SpkrID", "Gender", "Split_Set"])
    (root / "Labels").mkdir(parents=True)
    table.to_csv(root / "Labels" / "labels_consensus.csv", index=False)
    (root / "Transcripts").mkdir()
    for name in table["FileName"]:
        wav(root / "Audios" / name, sr=sr)
        text = transcript(name)
        if text is not None:
            (root / "Transcripts" / f"{Path(name).stem}.txt").write_text(text + "\n")


def test_msp_podcast(tmp_path):
    build_msp(tmp_path)
    df, summary = corpora.load("msp_podcast", tmp_path, classes=4)
    assert sorted(df["label"].dropna()) == ["angry", "happy", "neutral", "sad"]
    assert summary["dropped"] == {}  # X (no agreement) and U (surprise) stay, unlabelled
    by_id = df.set_index("utt_id")
    assert by_id.loc["MSP-PODCAST_0004_0002", "x_raw_label"] == "U"
    assert pd.isna(by_id.loc["MSP-PODCAST_0004_0002", "label"])
    assert set(df["split"]) == {"train", "development", "test1", "test2"}
    row = by_id.loc["MSP-PODCAST_0001_0002"]
    assert (row["arousal"], row["valence"], row["dominance"]) == (5.2, 2.0, 5.0)
    assert row["speaker"] == "127" and row["path"] == "Audios/MSP-PODCAST_0001_0002.wav"
    assert row["text"] == "so I said hello" and row["dialog_id"] == "MSP-PODCAST_0001"
    assert row["turn_index"] == 1 and by_id.loc["MSP-PODCAST_0001_0001", "turn_index"] == 0
    assert pd.isna(by_id.loc["MSP-PODCAST_0003_0001", "speaker"])  # SpkrID "Unknown"
    assert pd.isna(by_id.loc["MSP-PODCAST_0002_0001", "text"])
    assert summary["noted"] == {
        "no transcript (text left empty)": 1, "speaker unknown (speaker left empty)": 1,
        "kept without a category (label 'X': no agreed category)": 1,
        "kept without a category (label 'U' outside the 4-class map)": 1}

    df_all, summary = corpora.load("msp_podcast", tmp_path)
    assert len(df_all) == 6 and summary["dropped"] == {}
    by_id = df_all.set_index("utt_id")
    assert pd.isna(by_id.loc["MSP-PODCAST_0004_0001", "label"])  # X: no agreement
    assert by_id.loc["MSP-PODCAST_0004_0001", "arousal"] == 4.2
    assert by_id.loc["MSP-PODCAST_0004_0002", "label"] == "surprise"
    assert set(df_all["split"]) == {"train", "development", "test1", "test2"}


def test_msp_layout_error(tmp_path):
    (tmp_path / "Audios").mkdir()
    with pytest.raises(CorpusLayoutError, match="Labels/labels_consensus.csv' not found"):
        corpora.load("msp_podcast", tmp_path)


# ---------------------------------------------------------------------------- EmoDB


def build_emodb(root: Path) -> None:
    for name in ["03a01Fa", "03a01Wa", "08b10Tb", "09a05Nc", "10b03La", "11a02Ea", "12a07Ac",
                 "13b01Wa"]:
        wav(root / "wav" / f"{name}.wav")
    (root / "wav" / "._03a01Fa.wav").write_bytes(b"\0")  # macOS resource fork: ignored


def test_emodb_seven_and_four_classes(tmp_path):
    build_emodb(tmp_path)
    df7, summary7 = corpora.load("emodb", tmp_path, classes=7)
    assert len(df7) == 8 and summary7["dropped"] == {}
    assert set(df7["label"]) == {"angry", "bored", "disgust", "fear", "happy", "sad",
                                 "neutral"}
    row = df7.set_index("utt_id").loc["03a01Fa"]
    assert row["speaker"] == "03" and row["label"] == "happy"
    assert row["text"] == "Der Lappen liegt auf dem Eisschrank."
    assert row["path"] == "wav/03a01Fa.wav"
    df4, summary4 = corpora.load("emodb", tmp_path, classes=4)
    assert set(df4["label"].dropna()) == {"angry", "happy", "neutral", "sad"}
    assert len(df4) == 8 and df4["label"].notna().sum() == 5 and summary4["dropped"] == {}
    assert summary4["noted"] == {
        "kept without a category (label 'L' outside the 4-class map)": 1,
        "kept without a category (label 'E' outside the 4-class map)": 1,
        "kept without a category (label 'A' outside the 4-class map)": 1}
    assert df4.set_index("utt_id").loc["10b03La", "x_raw_label"] == "L"
    with pytest.raises(CorpusError, match="classes=5 is not offered"):
        corpora.load("emodb", tmp_path, classes=5)


# ---------------------------------------------------------------------------- RAVDESS


def test_ravdess_speech_only(tmp_path):
    for name in ["03-01-05-01-01-01-01", "03-01-02-01-02-01-01", "03-01-01-01-01-01-02",
                 "03-02-05-01-01-01-02", "03-01-03-02-02-02-02"]:
        actor = name[-2:]
        wav(tmp_path / f"Actor_{actor}" / f"{name}.wav", sr=48_000)
    df, summary = corpora.load("ravdess", tmp_path, max_lost_fraction=1.0)
    assert len(df) == 4 and set(df["label"]) == {"angry", "calm", "neutral", "happy"}
    # the two actors' 116 other speech files are missing: listed as lost, by name
    assert summary["dropped"] == {"vocal channel 02 is song, not speech (01)": 1,
                                  "missing audio": 116}
    assert summary["listed_audio"] == 120 and len(summary["lost"]) == 116
    assert "03-01-08-02-02-02-02" in summary["lost"]
    assert "03-01-01-02-01-01-01" not in summary["lost"]  # neutral has no strong intensity
    with pytest.raises(CorpusError, match="116 of 120 listed audio files are missing"):
        corpora.load("ravdess", tmp_path)
    row = df.set_index("utt_id").loc["03-01-03-02-02-02-02"]
    assert row["speaker"] == "Actor_02" and row["text"] == "Dogs are sitting by the door"
    assert row["sample_rate"] == 48_000 and row["x_intensity"] == "strong"
    df4, summary4 = corpora.load("ravdess", tmp_path, classes=4, max_lost_fraction=1.0)
    assert "calm" not in set(df4["label"]) and len(df4) == 4
    assert summary4["noted"]["kept without a category (label '02' outside the 4-class map)"] == 1


# ---------------------------------------------------------------------------- CREMA-D


def test_crema_d(tmp_path):
    for name in ["1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1002_TIE_DIS_LO", "1091_WSI_SAD_MD"]:
        wav(tmp_path / "AudioWAV" / f"{name}.wav")
    df, _ = corpora.load("crema_d", tmp_path)
    assert len(df) == 4
    row = df.set_index("utt_id").loc["1001_DFA_ANG_XX"]
    assert (row["speaker"], row["label"], row["text"]) == ("1001", "angry",
                                                          "Don't forget a jacket")
    df4, summary4 = corpora.load("crema_d", tmp_path, classes=4)
    assert len(df4) == 4 and df4["label"].notna().sum() == 3 and summary4["dropped"] == {}
    assert summary4["noted"] == {"kept without a category (label 'DIS' outside the 4-class map)": 1}
    with pytest.raises(CorpusLayoutError, match="'AudioWAV' not found"):
        corpora.load("crema_d", tmp_path / "AudioWAV")


# ---------------------------------------------------------------------------- LibriSpeech


def test_librispeech(tmp_path):
    chapter = tmp_path / "dev-clean" / "84" / "121123"
    for utt in ["84-121123-0000", "84-121123-0001"]:
        wav(chapter / f"{utt}.flac", fmt="FLAC")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n")
    df, _ = corpora.load("librispeech", tmp_path)
    assert list(df["split"]) == ["read", "read"] and df["label"].isna().all()
    row = df.set_index("utt_id").loc["84-121123-0001"]
    assert row["path"] == "dev-clean/84/121123/84-121123-0001.flac"
    assert (row["speaker"], row["text"], row["turn_index"]) == (
        "84", "BUT IN LESS THAN FIVE MINUTES", 1)
    with pytest.raises(CorpusError, match="no emotion labels"):
        corpora.load("librispeech", tmp_path, classes=4)


# ---------------------------------------------------------------------------- generic CSV


def test_csv_with_chinese_text(tmp_path):
    root = tmp_path / "casia"
    for i in range(3):
        wav(root / "audio" / f"{i}.wav")
    pd.DataFrame({"path": ["audio/0.wav", "audio/1.wav", "audio/2.wav"],
                  "label": ["angry", "happy", "fear"],
                  "text": ["我今天很生气", "太好了！", "别过来"],
                  "speaker": ["01", "02", "01"], "valence": ["1.5", "", "2"]}
                 ).to_csv(root / "manifest.csv", index=False, encoding="utf-8")
    df, summary = corpora.load("csv", root)
    assert list(df["text"]) == ["我今天很生气", "太好了！", "别过来"]
    assert list(df["utt_id"]) == ["audio/0", "audio/1", "audio/2"]
    assert df["corpus"].eq("casia").all() and df["split"].eq("labelled").all()
    assert df["speaker"].tolist() == ["01", "02", "01"]  # strings, not numbers
    assert df["valence"].iloc[0] == 1.5 and pd.isna(df["valence"].iloc[1])
    manifest.write(df, tmp_path / "out.csv")
    assert manifest.read(tmp_path / "out.csv")["text"].iloc[0] == "我今天很生气"
    df4, summary4 = corpora.load("csv", root, classes=4)
    assert len(df4) == 3 and summary4["dropped"] == {}
    fear = df4.set_index("utt_id").loc["audio/2"]
    assert pd.isna(fear["label"]) and fear["x_raw_label"] == "fear"
    assert summary4["noted"] == {"kept without a category (label 'fear' outside the 4-class map)": 1}


def test_csv_segments_are_refused_with_the_way_out(tmp_path):
    """Every stage reads whole files: a segment would get its whole file's audio."""
    wav(tmp_path / "talk.wav", seconds=1.0)
    for columns in ({"start": [0.1, 0.5], "end": [0.4, 0.9]}, {"start": ["", 0.5]}):
        pd.DataFrame({"utt_id": ["a", "b"], "path": ["talk.wav"] * 2, "label": ["sad", "happy"],
                      **columns}).to_csv(tmp_path / "manifest.csv", index=False)
        with pytest.raises(CorpusError, match=r"manifest.csv: column start is set \(e.g. row "
                                              r"\d\).*cut each segment into its own file"):
            corpora.load("csv", tmp_path)


def test_the_same_audio_under_two_ids_is_refused(tmp_path):
    wav(tmp_path / "a.wav")
    wav(tmp_path / "b.wav")
    (tmp_path / "copy.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    pd.DataFrame({"utt_id": ["x", "y"], "path": ["a.wav", "a.wav"], "label": ["sad", "happy"],
                  "speaker": ["s1", "s2"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match=r"the same file under 1 group.*x \(a.wav\), y \(a.wav\)"):
        corpora.load("csv", tmp_path)
    pd.DataFrame({"utt_id": ["x", "y", "z"], "path": ["a.wav", "copy.wav", "b.wav"],
                  "label": ["sad", "happy", "sad"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match=r"identical audio .*x \(a.wav\), y \(copy.wav\)"):
        corpora.load("csv", tmp_path)


def test_a_copy_with_the_same_label_speaker_and_text_is_kept_once(tmp_path):
    """RAVDESS's public 2.4-s copy holds one file under two repetitions' names: the first
    id keeps it, the other is lost, named in the summary and counted against
    max_lost_fraction."""
    actor = tmp_path / "Actor_07"
    wav(actor / "03-01-03-01-02-01-07.wav", sr=48_000)
    wav(actor / "03-01-05-01-02-01-07.wav", sr=48_000)
    (actor / "03-01-03-01-02-02-07.wav").write_bytes((actor / "03-01-03-01-02-01-07.wav")
                                                     .read_bytes())
    df, summary = corpora.load("ravdess", tmp_path, max_lost_fraction=1.0)
    assert sorted(df["utt_id"]) == ["03-01-03-01-02-01-07", "03-01-05-01-02-01-07"]
    assert summary["kept"] == 2 and summary["lost"][-1] == "03-01-03-01-02-02-07"
    assert summary["dropped"][corpora.COPY] == 1 and len(summary["lost"]) == 58
    assert "identical audio to Actor_07/03-01-03-01-02-01-07.wav" in \
        summary["problems"]["03-01-03-01-02-02-07"]
    with pytest.raises(CorpusError, match=r"58 of 60 listed audio files are missing, "
                                          r"unreadable or copies"):
        corpora.load("ravdess", tmp_path, max_lost_fraction=0.5)


def test_label_variants_are_one_class_and_blank_text_is_no_text(tmp_path):
    for name in ("a", "b", "c", "d"):
        wav(tmp_path / f"{name}.WAV" if name == "d" else tmp_path / f"{name}.wav")
    pd.DataFrame({"path": ["a.wav", "b.wav", "c.wav", "d.WAV"],
                  "label": ["Angry", " angry", "happy ", "HAPPY"],
                  "text": ["hi", "   ", "", "yes"]}).to_csv(tmp_path / "manifest.csv", index=False)
    df, _ = corpora.load("csv", tmp_path)
    assert df["label"].tolist() == ["angry", "angry", "happy", "happy"]
    assert df["text"].isna().tolist() == [False, True, True, False]


def test_upper_case_suffixes_are_audio_too(tmp_path):
    build_emodb(tmp_path)
    first = tmp_path / "wav" / "03a01Fa.wav"
    first.rename(first.with_suffix(".WAV"))
    df, _ = corpora.load("emodb", tmp_path)
    assert first.stem in set(df["utt_id"])


def test_csv_errors(tmp_path):
    wav(tmp_path / "a.wav")
    pd.DataFrame({"path": ["a.wav"], "label": ["sad"], "mood": ["x"]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match=r"unknown columns \['mood'\]"):
        corpora.load("csv", tmp_path)
    pd.DataFrame({"path": ["a.wav", "a.wav"], "label": ["sad", "sad"]}).to_csv(
        tmp_path / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match="more than once"):
        corpora.load("csv", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusLayoutError, match="'manifest.csv' not found"):
        corpora.load("csv", tmp_path / "empty")
    pd.DataFrame({"path": ["../a.wav"], "label": ["sad"]}).to_csv(
        tmp_path / "empty" / "manifest.csv", index=False)
    with pytest.raises(CorpusError, match="must be relative and inside"):
        corpora.load("csv", tmp_path / "empty")
    with pytest.raises(CorpusError, match="unknown corpus 'timit'"):
        corpora.load("timit", tmp_path)


def test_stereo_and_other_rates_are_recorded_in_the_manifest(tmp_path):
    import numpy as np
    import soundfile as sf

    from mmser.corpus import corpora

    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a/x.wav", np.zeros((4410, 2)), 44_100)
    (tmp_path / "manifest.csv").write_text("path,label\na/x.wav,happy\n")
    df, _ = corpora.load("csv", tmp_path)
    row = df.iloc[0]
    assert row["sample_rate"] == 44_100 and row["x_channels"] == 2
    assert bool(row["x_resampled"]) and bool(row["x_downmixed"])


# ----------------------------------------------------------------- several corpora at once


def build_librispeech(root: Path, n: int = 3) -> None:
    chapter = root / "dev-clean" / "84" / "121123"
    ids = [f"84-121123-{i:04d}" for i in range(n)]
    for utt in ids:
        wav(chapter / f"{utt}.flac", fmt="FLAC")
    (chapter / "84-121123.trans.txt").write_text(
        "".join(f"{utt} WORDS NUMBER {i}\n" for i, utt in enumerate(ids)))


def test_cross_corpus_and_librispeech_join_one_manifest(tmp_path):
    from mmser.corpus import protocols

    build_iemocap(tmp_path / "iemocap")
    build_emodb(tmp_path / "emodb")
    build_librispeech(tmp_path / "libri", n=5)
    main, summary = corpora.load("iemocap", tmp_path / "iemocap", classes=4)
    df, root, summaries = corpora.add_extra_corpora(
        main, tmp_path / "iemocap", summary, protocol="cross_corpus", test_corpus="emodb",
        test_root=str(tmp_path / "emodb"), test_classes=4, read_corpus="librispeech",
        read_root=str(tmp_path / "libri"), read_max=3)
    assert root == tmp_path.resolve()
    assert set(summaries) == {"main", "test", "read"}
    assert df.groupby("corpus").size().to_dict() == {"emodb": 8, "iemocap": 14,
                                                     "librispeech": 3}
    manifest.validate(manifest.conform(df), root)  # every re-rooted path resolves
    assert df.loc[df.corpus == "emodb", "path"].str.startswith("emodb/wav/").all()
    folded = protocols.assign_folds(df, "cross_corpus", test_corpus="emodb")
    tested = folded[folded["fold"] == 0]
    assert set(tested["corpus"]) == {"emodb"}
    assert set(tested["label"]) <= set(folded.loc[folded.corpus == "iemocap", "label"])
    assert folded.loc[folded.split == "read", "fold"].isna().all()
    assert folded.loc[folded["label"].isna(), "fold"].isna().all()  # no category, no test


def test_extra_corpora_are_checked(tmp_path):
    build_emodb(tmp_path / "emodb")
    main, summary = corpora.load("emodb", tmp_path / "emodb", classes=4)
    with pytest.raises(CorpusError, match="go together"):
        corpora.add_extra_corpora(main, tmp_path / "emodb", summary, protocol="cross_corpus")
    with pytest.raises(CorpusError, match="test_root"):
        corpora.add_extra_corpora(main, tmp_path / "emodb", summary, protocol="cross_corpus",
                                  test_corpus="iemocap")
    same, root, _ = corpora.add_extra_corpora(main, tmp_path / "emodb", summary,
                                              protocol="speaker_kfold")
    assert same is main and root == tmp_path / "emodb"
    with pytest.raises(CorpusError, match="share utterance ids"):
        corpora.combine([(main, tmp_path / "emodb"), (main, tmp_path / "emodb")])


def test_a_clip_over_whispers_30_s_window_is_kept(tmp_path):
    # Whisper windows it (mmser.encode.whisper.encode): IEMOCAP has clips of about 34 s
    build_iemocap(tmp_path, sessions=(1,))
    clip = tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav"
    sf.write(str(clip), np.full(31 * 8_000, 0.1, dtype=np.float32), 8_000)  # 31 s at 8 kHz
    df, summary = corpora.load("iemocap", tmp_path, classes=4)
    assert df.set_index("utt_id").loc["Ses01F_impro01_F001", "duration"] == pytest.approx(31)
    assert not summary["lost"]
