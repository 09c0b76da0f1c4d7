"""The trainer end to end on the real (tiny) model: synthetic scenes from the config, validation
PQ, checkpoints in the project format; fine-tuning keeps all but the class head."""

from __future__ import annotations

import json

import pytest
import torch

from panoptic_detr import checkpoint as ckpt_io
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.model.weights import to_original
from panoptic_detr.train.config import config_from_dict
from panoptic_detr.train.finetune import init_from, transfer_weights
from panoptic_detr.train.loop import train


def test_train_on_synthetic_scenes_from_config(tmp_path):
    data = tmp_path / "data"
    cfg = config_from_dict({
        "model": {"preset": "tiny"},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "synth": {"n_train": 4, "n_val": 2,
                                                                                     "size": 64},
                 "scales": [56, 64], "max_size": 80, "crop_scales": [64], "crop_min": 48, "crop_max": 64,
                 "val_size": 64},
        "steps": 2, "batch_size": 2, "out_dir": str(tmp_path / "run"), "device": "cpu", "eval_threshold": 0.0,
    })
    metrics = train(cfg, progress=False)
    assert metrics["step"] == 2 and {"pq", "pq_th", "pq_st", "loss_dice", "loss_ce_0"} <= set(metrics)
    ck = ckpt_io.load_checkpoint(tmp_path / "run" / ckpt_io.LAST)
    assert ck["config"]["num_classes"] == 12  # synthetic categories: ids 1..11
    assert [c["name"] for c in ck["categories"]][:2] == ["circle", "square"]
    model = build_model(PRESETS["tiny"].with_overrides(num_classes=12))
    model.load_state_dict(ck["model"])  # the checkpoint fits the architecture it names
    assert (tmp_path / "run" / ckpt_io.BEST).exists() and (tmp_path / "run" / "curves.png").exists()


def test_a_stale_synthetic_folder_stops_the_run_and_is_kept(tmp_path):
    """Synthetic data already in place but made for another config (here 3 scenes where the
    config asks for 4) is neither trained on nor overwritten: one line says what and where."""
    from panoptic_detr.data.synth import make_dataset
    from panoptic_detr.train.loop import TrainError

    data = tmp_path / "data"
    make_dataset(data / "train", 3, seed=0, size=(64, 64), progress=False)
    before = (data / "train" / "panoptic.json").read_bytes()
    cfg = config_from_dict({
        "model": {"preset": "tiny"},
        "data": {"train": str(data / "train"), "val": str(data / "val"), "synth": {"n_train": 4, "n_val": 2,
                                                                                     "size": 64}},
        "steps": 1, "batch_size": 2, "out_dir": str(tmp_path / "run"), "device": "cpu",
    })
    with pytest.raises(TrainError, match=r"train: holds 3 synthetic scenes of seed 0 at 64 px, "
                                         r"the config asks for 4 of seed 0 at 64 px; delete the folder"):
        train(cfg, progress=False)
    assert (data / "train" / "panoptic.json").read_bytes() == before


def test_finetune_keeps_everything_but_the_class_head(tmp_path):
    torch.manual_seed(0)
    source = build_model(PRESETS["tiny"].with_overrides(num_classes=5))
    torch.manual_seed(1)
    target = build_model(PRESETS["tiny"].with_overrides(num_classes=12))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = tmp_path / "orig.pth"
    torch.save({"model": to_original(source.state_dict())}, path)  # the original release's layout
    report = init_from(target, str(path), reinit_class_head=True)
    assert sorted(report["reinitialised"]) == ["class_embed.bias", "class_embed.weight"]
    src, now = source.state_dict(), target.state_dict()
    for k in report["kept"]:
        assert torch.equal(now[k], src[k])
    for k in report["reinitialised"]:
        assert torch.equal(now[k], before[k])
    # same classes, no re-initialisation asked: everything kept
    same = build_model(PRESETS["tiny"].with_overrides(num_classes=5))
    assert transfer_weights(same, src, reinit_class_head=False)["reinitialised"] == []


def test_dataset_that_fails_the_check_stops_the_run(tmp_path):
    from panoptic_detr.data.synth import make_dataset
    from panoptic_detr.train.loop import TrainError

    root = tmp_path / "data"
    make_dataset(root, 2, seed=0, size=(32, 32), progress=False)
    data = json.loads((root / "panoptic.json").read_text())
    data["annotations"][1]["segments_info"].append({"id": 999999, "category_id": 1, "iscrowd": 0})
    (root / "panoptic.json").write_text(json.dumps(data))
    cfg = config_from_dict({"model": {"preset": "tiny"}, "data": {"train": str(root)}, "steps": 1,
                            "out_dir": str(tmp_path / "run"), "device": "cpu"})
    with pytest.raises(TrainError, match=r"data: dataset check failed with 1 problem\(s\).*999999"):
        train(cfg, progress=False)
