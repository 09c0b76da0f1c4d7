"""Training configs: every shipped file loads, overrides apply, bad keys/types fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from panoptic_detr.train.config import ConfigError, TrainConfig, load_config, model_config

ROOT = Path(__file__).resolve().parents[1]
# the configs in the repo, and the demo's (it ships with the package, beside its checkpoint)
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src/panoptic_detr/assets/demo/demo.yaml"]


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    expected = {"synth_small.yaml", "two_stage.yaml", "finetune_coco_r50.yaml", "learning_cpu.yaml",
                "demo.yaml"}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    pytest.importorskip("panoptic_detr.model.config")
    model_config(cfg, num_classes=7)


def test_overrides_and_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 2.0e-4}\nbatch_size: 3\n")
    overrides = ["optim.lr=1e-3", "data.scales=[64, 96]", "bf16=true", "model.overrides.num_queries=7",
                 "out_dir=runs/x"]
    cfg = load_config(p, overrides)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # "1e-3" is a string to YAML 1.1
    assert cfg.batch_size == 3 and cfg.data.scales == [64, 96] and cfg.bf16 is True
    assert cfg.model.overrides == {"num_queries": 7} and cfg.out_dir == "runs/x"
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.lr_backbone == 1e-5  # defaults kept
    assert load_config(None).schedule == "joint"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("optim: {lrr: 1.0}\n", [], "optim.lrr: unknown key"),
        ("batch_size: two\n", [], "batch_size: expected an integer"),
        ("batch_size: 2.5\n", [], "batch_size: expected an integer"),
        ("bf16: 1\n", [], "bf16: expected true/false"),
        ("data: [1, 2]\n", [], "data: expected a mapping"),
        ("", ["data.synth.n_train=many"], "data.synth.n_train: expected an integer"),
        ("", ["nonsense=1"], "nonsense: unknown key"),
        ("", ["schedule=three_stage"], "schedule: must be one of"),
        ("schedule: finetune\n", [], "init: the finetune schedule needs"),
        ("", ["batch_size"], "expected key=value"),
        ("- a\n- b\n", [], "mapping of keys at the top level"),
        ("a: [\n", [], "not valid YAML"),
        ("model: {overrides: {backbone_norm: batchnorm}}\n", [], "model.overrides: "),
        ("", ["model.overrides.num_querys=5"], "model.overrides: unknown field num_querys"),
        ("model: {preset: detr_r18_tiny}\n", [], "model.preset: unknown"),
    ],
)
def test_bad_configs_name_file_and_key(tmp_path, text, overrides, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config("nope.yaml")


def test_cli_train_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from panoptic_detr.cli import main

    p = tmp_path / "bad.yaml"
    p.write_text("optim: {lr: fast}\n")
    assert main(["train", "--config", str(p)]) == 2  # a config error is a usage error: nothing ran
    err = capsys.readouterr().err.strip()
    assert err == f"error: {p}: optim.lr: expected a number, got 'fast'"
    assert main(["train", "--config", str(p), "--resume", "optim.lr=1e-4", f"out_dir={tmp_path}/run"]) == 1
    assert "checkpoint_last.pt: checkpoint not found" in capsys.readouterr().err
