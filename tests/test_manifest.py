import pandas as pd
import pytest

from mmser.corpus import manifest
from mmser.corpus.manifest import ManifestError


def _df(paths):
    return manifest.conform(pd.DataFrame({"utt_id": [f"u{i}" for i in range(len(paths))],
                                          "path": paths}))


def test_roundtrip_keeps_schema_order(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    df = _df(["a.wav"])
    manifest.write(df, tmp_path / "m.csv")
    back = manifest.read(tmp_path / "m.csv")
    assert list(back.columns) == manifest.COLUMNS
    manifest.validate(back, tmp_path)


def test_path_escaping_root_is_an_error(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (tmp_path / "secret.wav").write_bytes(b"x")
    with pytest.raises(ManifestError, match="escapes the corpus root"):
        manifest.validate(_df(["../secret.wav"]), root)


def test_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(ManifestError, match="do not exist"):
        manifest.validate(_df(["gone.wav"]), tmp_path)
    (tmp_path / "a.wav").write_bytes(b"x")
    df = _df(["a.wav", "a.wav"])
    df["utt_id"] = "same"
    with pytest.raises(ManifestError, match="duplicate utt_id"):
        manifest.validate(df, tmp_path)


def test_unknown_column_is_refused():
    with pytest.raises(ManifestError, match="outside the schema"):
        manifest.conform(pd.DataFrame({"utt_id": ["a"], "emotion": ["sad"]}))


def test_raw_category_codes_stay_strings(tmp_path):
    """RAVDESS codes its emotions "01".."08": read back as numbers they would lose the 0."""
    df = _df(["a.wav", "b.wav"]).assign(x_raw_label=["01", "xxx"])
    manifest.write(df, tmp_path / "m.csv")
    assert manifest.read(tmp_path / "m.csv")["x_raw_label"].tolist() == ["01", "xxx"]
