from pathlib import Path

import pytest
import yaml

from mmser.config import Params, ParamsError, load, main

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_file_is_valid():
    params = load(ROOT / "params.yaml")
    assert params.dataset.name == "synthetic"
    assert params.synthetic.n_labelled >= 800 and params.synthetic.n_read >= 1000


def test_misspelt_top_level_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"synthetc": {"n_speakers": 3}}))
    with pytest.raises(ParamsError, match="unknown key 'synthetc'.*did you mean 'synthetic'"):
        load(path)


def test_misspelt_nested_key_is_named():
    with pytest.raises(ParamsError, match=r"params\.transcribe: unknown key 'bakcend'"):
        Params.from_dict({"transcribe": {"bakcend": "converted"}})


def test_wrong_type_and_bad_choice_are_errors():
    with pytest.raises(ParamsError, match="synthetic.n_speakers"):
        Params.from_dict({"synthetic": {"n_speakers": "ten"}})
    with pytest.raises(ParamsError, match="transcribe.backend"):
        Params.from_dict({"transcribe": {"backend": "whisperx"}})


def test_cli_exit_code(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("seeed: 1\n")
    assert main([str(bad)]) == 2
    assert "seeed" in capsys.readouterr().err
    assert main([str(ROOT / "params.yaml")]) == 0


def test_corpus_and_protocol_choices_match_the_code():
    from mmser.corpus import corpora, protocols
    from mmser.config import CORPORA, PROTOCOLS

    assert CORPORA - {"synthetic"} <= set(corpora.LOADERS)
    assert PROTOCOLS <= set(protocols.PROTOCOLS)


def test_profile_merges_into_params_and_a_bad_profile_changes_nothing(tmp_path):
    from mmser.config import apply_profile

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"training": {"precision": "bf16-mixed", "devices": 2}}))
    merged = apply_profile(good, params)
    assert merged.training.precision == "bf16-mixed" and merged.training.devices == 2
    assert merged.training.seeds == [0]  # keys the profile leaves out keep their value
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"training": {"precison": "bf16-mixed"}}))
    assert main(["--apply", str(bad), str(params)]) == 2
    assert params.read_text() == before
