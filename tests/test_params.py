"""params.yaml: typos and wrong types are errors naming the key; --set uses dvc's dotted keys."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from pipeline.core.params import ParamsError, load_params


def load(tmp_path, text: str, overrides=()):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_params(path, overrides)


def test_shipped_params_are_valid():
    from conftest import REPO

    p = load_params(REPO / "params.yaml")
    assert p.synthesize.provider == "import"
    assert p.train.base_model == "smollm2"


def test_typo_names_key_suggests_and_lists_allowed(tmp_path):
    with pytest.raises(ParamsError) as info:
        load(tmp_path, "train:\n  lora:\n    rr: 16\n")
    msg = str(info.value)
    assert "unknown key 'train.lora.rr'" in msg
    assert "did you mean 'train.lora.r'" in msg
    assert "alpha, dropout, r, target_modules" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown key 'trian'.*did you mean 'train'"):
        load(tmp_path, "trian:\n  epochs: 1\n")


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ParamsError, match=r"train\.epochs: .*number.*got 'lots'"):
        load(tmp_path, "train:\n  epochs: lots\n")
    with pytest.raises(ParamsError, match=r"dedupe\.threshold: .*less than or equal to 100"):
        load(tmp_path, "dedupe:\n  threshold: 150\n")
    with pytest.raises(ParamsError, match=r"train\.quantization: .*'4bit'"):
        load(tmp_path, "train:\n  quantization: 3bit\n")


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ParamsError, match=r"params.yaml:2: not valid YAML"):
        load(tmp_path, "train:\n  epochs: [1\n")


def test_overrides_use_dotted_keys_and_yaml_values(tmp_path):
    p = load(tmp_path, "train:\n  lora:\n    r: 8\n", ["train.lora.r=16", "train.lora.target_modules=[c_attn]",
                                                        "build.system_prompt=You are Tenny: dry."])
    assert p.train.lora.r == 16
    assert p.train.lora.target_modules == ["c_attn"]
    assert p.build.system_prompt == "You are Tenny: dry."
    with pytest.raises(ParamsError, match="unknown key 'train.lora.rank'"):
        load(tmp_path, "", ["train.lora.rank=4"])
    with pytest.raises(ParamsError, match="expected dotted.key=value"):
        load(tmp_path, "", ["train.lora.r"])


def test_empty_section_means_defaults(tmp_path):
    assert load(tmp_path, "dedupe:\ntrain:\n").dedupe.threshold == 90


def test_cli_prints_one_line_error(tmp_path, tenny_bin):
    (tmp_path / "params.yaml").write_text("build:\n  val_fractoin: 0.2\n")
    proc = subprocess.run([tenny_bin, "params"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "unknown key 'build.val_fractoin' (did you mean 'build.val_fraction'?)" in proc.stderr


def test_cli_set_after_command_matches_dvc_exp_keys(tmp_path, tenny_bin):
    proc = subprocess.run([tenny_bin, "params", "--set", "train.lora.r=32"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["train"]["lora"]["r"] == 32


def test_every_param_dvc_yaml_names_is_in_params_yaml():
    """DVC refuses to run a stage whose declared param is missing from params.yaml."""
    from conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = shipped
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml stage {name} uses {key}, missing from params.yaml"
                node = node[part]
