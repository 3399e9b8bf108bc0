import re
from pathlib import Path

import pytest
import yaml

from mmser.config import Params, ParamsError, load, main, merged

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


@pytest.mark.parametrize("section, key, value, message", [
    ("dataset", "name", "emodbb", "is not one of"),
    ("dataset", "protocol", "losoo", "is not one of"),
    ("training", "precision", "64-true", "is not one of"),
    ("transcribe", "backend", "whisperx", "is not one of"),
    ("vcemo", "batch_size", 0, "must be >= 1"),
    ("dataset", "max_lost_fraction", -1, "must be >= 0"),
    ("clap", "dropout", 1.5, "must be < 1"),
    ("clap", "temperature", 0, "must be > 0"),
    ("training", "seeds", [0, "one"], r"training\.seeds\[1\]: expected int"),
    ("tokenwise", "pretrain_lrs", [1e-4, -1e-3], r"pretrain_lrs\[1\]: -0\.001 must be > 0"),
    ("lemer", "systems", ["A1", 2], r"lemer\.systems\[1\]: expected str"),
])
def test_every_entry_point_refuses_a_bad_value(tmp_path, capsys, section, key, value, message):
    """The bug this guards: key paths once began with the file's name, whose dot shifted
    every key, so no choice or range was ever checked from a file."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    bad = {**base, section: {**base[section], key: value}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(ParamsError, match=message) as err:
        load(path)
    assert f"{path}.{section}.{key}" in str(err.value)  # names the file and the key
    assert main([str(path)]) == 2
    assert f"{section}.{key}" in capsys.readouterr().err
    params = tmp_path / "target.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({section: {key: value}}))
    before = params.read_text()
    assert main(["--apply", str(profile), str(params)]) == 2
    assert params.read_text() == before


def test_numbers_and_lists_that_fit_are_kept():
    params = Params.from_dict({"synthetic": {"snr_db": [5, 20.5]},
                               "training": {"claim_seeds": [0, 1]},
                               "clap": {"min_lr": 0, "dropout": 0}})
    assert params.synthetic.snr_db == [5.0, 20.5] and params.clap.min_lr == 0.0
    assert params.training.claim_seeds == [0, 1]


def test_applying_a_profile_keeps_the_comments_and_writes_nothing_else(tmp_path):
    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)
    profile = tmp_path / "gpu.yaml"
    profile.write_text("training:\n  precision: bf16-mixed\n  seeds: [0, 1, 2]\n")
    assert main(["--apply", str(profile), str(params)]) == 0
    after = params.read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), after.splitlines()) if a != b]
    assert len(original.splitlines()) == len(after.splitlines())
    assert [b.split("#")[0].strip() for _, b in changed] == ["precision: bf16-mixed",
                                                             "seeds: [0, 1, 2]"]
    assert all("#" in b for a, b in changed if "#" in a)  # their comments stay
    assert load(params).training.seeds == [0, 1, 2]
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_paper_profile_applies_cleanly(tmp_path):
    for profile in sorted((ROOT / "profiles").rglob("*.yaml")):
        params = tmp_path / "params.yaml"
        params.write_text((ROOT / "params.yaml").read_text())
        assert main(["--apply", str(profile), str(params)]) == 0, profile
        # what was written reads back as what was checked (1e-05 is a string to YAML 1.1)
        expected = Params.from_dict(merged(yaml.safe_load((ROOT / "params.yaml").read_text()),
                                           yaml.safe_load(profile.read_text())))
        assert load(params) == expected, profile
        assert params.read_text().count("#") >= (ROOT / "params.yaml").read_text().count("#") - \
            5, profile  # comments kept (a profile may replace a commented list)


@pytest.mark.parametrize("paper", ["clap", "distil", "lemer", "tokenwise", "vcemo"])
def test_a_paper_profile_inherits_nothing_by_accident(paper):
    """Every setting of the paper's section is written in its profile with the reason (the
    paper's section, or "not stated (our choice)", or "unused"), and so are the corpus, its
    classes and protocol and the training's device, precision and seeds: an inherited CPU
    default (e.g. patience 1, 4 classes for a regression corpus) cannot slip into a GPU run."""
    text = (ROOT / "profiles" / "paper" / f"{paper}.yaml").read_text()
    profile = yaml.safe_load(text)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(params[paper]) <= set(profile[paper]), set(params[paper]) - set(profile[paper])
    assert {"name", "root", "classes", "protocol"} <= set(profile["dataset"])
    assert {"accelerator", "precision", "seeds"} <= set(profile["training"])
    section = re.split(r"\n\S", text.split(f"\n{paper}:\n")[1])[0]  # to the next section
    for line in section.splitlines():  # each setting of the paper's section says why
        if line.startswith("  ") and not line.startswith("   ") and ":" in line:
            key = line.strip().split(":")[0]
            if key != "sizes":  # a mapping: its entries carry the reasons
                assert "#" in line, f"{paper}.yaml: {key} has no reason beside it"


def test_the_classroom_profile_keeps_every_table_and_says_why():
    """profiles/classroom.yaml (README "Teaching") shrinks the corpus, epochs, grids and
    seeds only: every key it sets carries its reason, and none chooses which systems,
    ablations or stages run, so every table of the default is still written."""
    text = (ROOT / "profiles" / "classroom.yaml").read_text()
    for line in text.splitlines():
        if line.startswith("  ") and not line.lstrip().startswith("#"):
            assert "#" in line, f"classroom.yaml: {line.strip()} has no reason beside it"
    chooses = {"systems", "ablation", "mandarin", "protocols", "stages", "similarity_ablation",
               "frz", "speech_layer_search", "extra_speech", "sizes", "speech_cuts", "text_cuts"}
    profile = yaml.safe_load(text)
    assert not {f"{s}.{k}" for s, keys in profile.items() for k in keys if k in chooses}
