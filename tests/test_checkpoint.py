"""checkpoint.py: one set of reading rules for every way a checkpoint enters (predict --weights,
train --resume, train init=): the original DETR trainer's files are read, a pickle that would
run code is refused unread."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from panoptic_detr import checkpoint as ckpt_io
from panoptic_detr.loading import WeightsError, load_pretrained
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.model.weights import to_hf, to_original
from panoptic_detr.train.config import config_from_dict
from panoptic_detr.train.finetune import init_from
from panoptic_detr.train.loop import train


class RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(3)
    return build_model(PRESETS["tiny"]).state_dict()


@pytest.fixture
def detr_trainer_file(tmp_path, tiny_sd):
    """What DETR's main.py saves: weights in the original names next to its argparse options."""
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(lr=1e-4, lr_backbone=1e-5, backbone="resnet18", masks=True, output_dir="out")
    torch.save({"model": to_original(tiny_sd), "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {}, "epoch": 3, "args": args}, path)
    return path


@pytest.fixture
def hostile_file(tmp_path, tiny_sd):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"format": ckpt_io.FORMAT, "config": {}, "categories": [], "model": dict(tiny_sd),
                "train_state": RunsCode(marker)}, path)
    return path, marker


def test_formats_are_told_apart(tmp_path, tiny_sd, detr_trainer_file):
    path = tmp_path / "p.pt"
    ckpt_io.save_checkpoint(path, PRESETS["tiny"].to_dict(), [], tiny_sd, inference={"size": 64})
    project = ckpt_io.read_weights(path)
    assert (project.kind, project.layout, project.inference) == ("project", "project", {"size": 64})
    assert project.config == PRESETS["tiny"].to_dict()
    detr = ckpt_io.read_weights(detr_trainer_file)
    assert (detr.kind, detr.layout, detr.config) == ("detr", "original", None)
    torch.save(to_hf(tiny_sd), path)
    bare = ckpt_io.read_weights(path)
    assert (bare.kind, bare.layout) == ("state_dict", "huggingface")
    for contents in (project, detr, bare):
        assert contents.state_dict.keys() == tiny_sd.keys()
        assert all(torch.equal(contents.state_dict[k], v) for k, v in tiny_sd.items())


def test_hostile_pickle_is_refused_by_every_reader(tmp_path, hostile_file):
    path, marker = hostile_file
    line = r"hostile\.pth: not a readable checkpoint \(it holds posix\.system, .* no code in the file runs\)"
    with pytest.raises(WeightsError, match=line) as err:
        load_pretrained(path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    with pytest.raises(ckpt_io.CheckpointError, match=line):
        init_from(build_model(PRESETS["tiny"]), str(path), reinit_class_head=False)
    with pytest.raises(ckpt_io.CheckpointError, match=line):
        ckpt_io.load_checkpoint(path)
    with pytest.raises(ckpt_io.CheckpointError, match=line):  # train --resume-from FILE
        train(config_from_dict({"model": {"preset": "tiny"}, "out_dir": str(tmp_path / "run"),
                                "device": "cpu"}), resume=str(path), progress=False)
    assert not marker.exists()


def test_resume_reads_a_project_checkpoint_holding_argparse_options(tmp_path, tiny_sd):
    path = tmp_path / "p.pt"
    ckpt_io.save_checkpoint(path, PRESETS["tiny"].to_dict(), [], tiny_sd,
                            train_state={"step": 1, "args": argparse.Namespace(lr=1e-4)})
    assert ckpt_io.load_checkpoint(path)["train_state"]["args"].lr == 1e-4


def _synth_run(tmp_path, **kw):
    return config_from_dict({
        "model": {"preset": "tiny"}, "steps": 1, "batch_size": 2, "out_dir": str(tmp_path / "run"),
        "device": "cpu",
        "data": {"train": str(tmp_path / "data"), "synth": {"n_train": 2, "size": 32}, "scales": [32],
                 "max_size": 32, "crop_scales": [32], "crop_min": 24, "crop_max": 32},
        **kw,
    })


def test_train_init_from_the_original_trainers_file(tmp_path, tiny_sd, detr_trainer_file):
    """train init=FILE reads what predict --weights FILE reads: DETR's main.py output included."""
    assert load_pretrained(detr_trainer_file).config == PRESETS["tiny"]
    train(_synth_run(tmp_path, schedule="finetune", init=str(detr_trainer_file)), progress=False)
    report = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert sorted(report["reinitialised"]) == ["class_embed.bias", "class_embed.weight"]
    assert len(report["kept"]) == len(tiny_sd) - 2 and report["unused"] == []


def test_train_init_refuses_a_hostile_file(tmp_path, hostile_file):
    path, marker = hostile_file
    with pytest.raises(ckpt_io.CheckpointError, match=r"hostile\.pth: not a readable checkpoint"):
        train(_synth_run(tmp_path, schedule="finetune", init=str(path)), progress=False)
    assert not marker.exists() and not (tmp_path / "run" / ckpt_io.LAST).exists()


def test_foreign_objects_say_what_was_expected(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ckpt_io.CheckpointError, match=r"x\.pt: not a checkpoint of this model \(found a dict "
                                                      r"with keys \['epoch'\]\); expected a panoptic-detr"):
        init_from(build_model(PRESETS["tiny"]), str(path), reinit_class_head=False)
    torch.save({"format": ckpt_io.FORMAT, "model": {}}, path)
    with pytest.raises(ckpt_io.CheckpointError, match=r"damaged panoptic-detr/1 checkpoint \(it lacks conf"):
        ckpt_io.read_weights(path)
