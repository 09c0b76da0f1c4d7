"""The training loop on a stand-in model: exact resume, two stages, checkpoints, bad input."""

from __future__ import annotations

import dataclasses
import errno
import json
import os

import pytest
import torch

from panoptic_detr import checkpoint as ckpt_io
from panoptic_detr.structures import Categories
from panoptic_detr.train.config import ConfigError, config_from_dict
from panoptic_detr.train.loop import RunParts, TrainError, train
from tiny_detr import TinyDETR, ToyScenes

CATS = Categories([{"id": i, "name": f"c{i}", "isthing": int(i < 2)} for i in range(4)])


def make_cfg(out, **kw):
    base = {"out_dir": str(out), "batch_size": 2, "log_every": 1, "device": "cpu",
            "data": {"scales": [24, 28, 32], "max_size": 40, "crop_scales": [28], "crop_min": 20,
                     "crop_max": 28},
            "optim": {"lr": 1e-2, "lr_backbone": 1e-3, "warmup_steps": 2, "lr_drop": 3}}
    for k, v in kw.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return config_from_dict(base)


def make_parts(dropout: float = 0.1, n: int = 5, **kw) -> RunParts:
    torch.manual_seed(0)
    model = TinyDETR(num_classes=4, dropout=dropout, **kw)
    return RunParts(model, {"arch": "tiny", "dropout": dropout}, CATS, ToyScenes(n, num_classes=4))


def params(path):
    return torch.load(path, weights_only=True)["model"]


def test_exact_resume(tmp_path):
    """2 steps, stop, resume 2 steps == 4 uninterrupted (dropout, augmentation, epoch boundary)."""
    train(make_cfg(tmp_path / "a", steps=4), parts=make_parts(), progress=False)
    train(make_cfg(tmp_path / "b", steps=2), parts=make_parts(), progress=False)
    first = params(tmp_path / "b" / ckpt_io.LAST)
    metrics = train(make_cfg(tmp_path / "b", steps=4), resume=True, parts=make_parts(), progress=False)
    assert metrics["step"] == 4 and metrics["epoch"] == 1  # 5 images, batch 2: 2 steps an epoch
    a, b = params(tmp_path / "a" / ckpt_io.LAST), params(tmp_path / "b" / ckpt_io.LAST)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(first[k], b[k]) for k in a)  # and training did move the weights
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    ref = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref]
    assert (tmp_path / "b" / "curves.png").stat().st_size > 1000


def test_channels_last_trains_the_same_weights_and_resumes_exactly(tmp_path):
    """channels_last changes the memory layout only: the weights match contiguous training to
    float rounding, the checkpoint holds contiguous tensors, and resume is exact."""
    common = {"data": {"augment": False, "val_size": 32, "max_size": 32}}
    train(make_cfg(tmp_path / "plain", steps=4, **common), parts=make_parts(0.0), progress=False)
    parts = make_parts(0.0)
    train(make_cfg(tmp_path / "cl", steps=4, channels_last=True, **common), parts=parts, progress=False)
    assert parts.model.backbone.weight.is_contiguous(memory_format=torch.channels_last)
    train(make_cfg(tmp_path / "cl2", steps=2, channels_last=True, **common), parts=make_parts(0.0),
          progress=False)
    train(make_cfg(tmp_path / "cl2", steps=4, channels_last=True, **common), resume=True,
          parts=make_parts(0.0), progress=False)
    plain, cl = params(tmp_path / "plain" / ckpt_io.LAST), params(tmp_path / "cl" / ckpt_io.LAST)
    resumed = params(tmp_path / "cl2" / ckpt_io.LAST)
    assert cl["backbone.weight"].dim() == 4
    for k in plain:
        assert cl[k].is_contiguous(), k
        torch.testing.assert_close(cl[k], plain[k], rtol=1e-4, atol=1e-5)
        assert torch.equal(resumed[k], cl[k]), k


def test_cached_samples_train_the_same_weights(tmp_path):
    """data.cache (no augmentation): 3 epochs from memory give the same bytes as loading."""
    common = {"data": {"augment": False, "val_size": 32, "max_size": 32}, "steps": 6}
    train(make_cfg(tmp_path / "a", **common), parts=make_parts(), progress=False)
    base = make_parts()
    loads = []

    class Counting(torch.utils.data.Dataset):
        def __len__(self):
            return len(scenes)

        def __getitem__(self, i):
            loads.append(i)
            return scenes[i]

    scenes, base.train_set = base.train_set, Counting()
    cached = {"data": {**common["data"], "cache": True}, "steps": 6}
    train(make_cfg(tmp_path / "b", **cached), parts=base, progress=False)
    a, b = params(tmp_path / "a" / ckpt_io.LAST), params(tmp_path / "b" / ckpt_io.LAST)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(loads) == len(set(loads)) <= 5  # 12 samples in 6 steps, each scene loaded once
    with pytest.raises(ConfigError, match="cache"):
        make_cfg(tmp_path / "c", data={"cache": True})


class MinuteClock:
    """A stand-in for the trainer's `time`: each reading is a minute after the last."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 60.0
        return self.now


def lrs(out):
    return [json.loads(x)["lr"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_drop_fraction_of_the_steps_or_of_the_time(tmp_path, monkeypatch):
    """optim.lr_drop_fraction: half of 6 steps is lr_drop 3; with a time limit the drop comes
    the step after that share of the time passed, and the checkpoint keeps where it came."""
    common = {"data": {"augment": False, "val_size": 32, "max_size": 32}, "steps": 6}
    no_drop = {"lr": 1e-2, "lr_backbone": 1e-3, "warmup_steps": 2, "lr_drop": 0}
    train(make_cfg(tmp_path / "step", optim={**no_drop, "lr_drop": 3}, **common), parts=make_parts(),
          progress=False)
    train(make_cfg(tmp_path / "share", optim={**no_drop, "lr_drop_fraction": 0.5}, **common),
          parts=make_parts(), progress=False)
    assert lrs(tmp_path / "share") == lrs(tmp_path / "step")
    assert lrs(tmp_path / "step")[1:3] == [1e-2, 1e-3]  # the lr set after steps 2 and 3
    a, b = params(tmp_path / "step" / ckpt_io.LAST), params(tmp_path / "share" / ckpt_io.LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # minutes 1, 2, 3 after steps 1, 2, 3: 3 of 10 minutes (0.3) are done after step 3, so the
    # lr drops from step 4 on; that is lr_drop 4
    timed = {"optim": {**no_drop, "lr_drop_fraction": 0.3}, "time_limit": 10, **common}
    monkeypatch.setattr("panoptic_detr.train.trainer.time", MinuteClock())
    train(make_cfg(tmp_path / "time", **timed), parts=make_parts(), progress=False)
    # stopped after step 5 and resumed: the resumed run's clock starts again, the drop stays at 4
    monkeypatch.setattr("panoptic_detr.train.trainer.time", MinuteClock())
    train(make_cfg(tmp_path / "resumed", **{**timed, "steps": 5}), parts=make_parts(), progress=False)
    monkeypatch.setattr("panoptic_detr.train.trainer.time", MinuteClock())
    train(make_cfg(tmp_path / "resumed", **timed), resume=True, parts=make_parts(), progress=False)
    monkeypatch.undo()
    assert lrs(tmp_path / "resumed") == lrs(tmp_path / "time")
    a, b = params(tmp_path / "time" / ckpt_io.LAST), params(tmp_path / "resumed" / ckpt_io.LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(make_cfg(tmp_path / "step4", optim={**no_drop, "lr_drop": 4}, **common), parts=make_parts(),
          progress=False)
    assert lrs(tmp_path / "time") == lrs(tmp_path / "step4") != lrs(tmp_path / "step")
    ckpt = torch.load(tmp_path / "time" / ckpt_io.LAST, weights_only=True)
    assert ckpt["train_state"]["lr_drop_step"] == 4 and ckpt["train_state"]["step"] == 6
    a, b = params(tmp_path / "time" / ckpt_io.LAST), params(tmp_path / "step4" / ckpt_io.LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="not both"):
        make_cfg(tmp_path / "c", optim={"lr_drop": 3, "lr_drop_fraction": 0.5})
    with pytest.raises(ConfigError, match="lr_drop_fraction"):
        make_cfg(tmp_path / "c", optim={"lr_drop": 0, "lr_drop_fraction": 1.0})


def test_grad_accumulation_equals_bigger_batch(tmp_path):
    """Same-size images, no augmentation: 2 x batch 2 accumulated == batch 4 (to float noise)."""
    common = {"data": {"augment": False, "val_size": 32, "max_size": 32}, "optim": {"clip_max_norm": 0.0}}
    train(make_cfg(tmp_path / "a", steps=2, batch_size=4, **common), parts=make_parts(0.0, n=8),
          progress=False)
    train(make_cfg(tmp_path / "b", steps=2, batch_size=2, grad_accum=2, **common),
          parts=make_parts(0.0, n=8), progress=False)
    a, b = params(tmp_path / "a" / ckpt_io.LAST), params(tmp_path / "b" / ckpt_io.LAST)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_two_stage_trains_detector_then_mask_head(tmp_path):
    parts = make_parts(0.0)
    start = {k: v.clone() for k, v in parts.model.state_dict().items()}
    cfg = make_cfg(tmp_path / "s1", steps=2, schedule="two_stage", stage1_steps=2)
    train(cfg, parts=parts, progress=False)
    mid = {k: v.clone() for k, v in parts.model.state_dict().items()}
    train(make_cfg(tmp_path / "s1", steps=4, schedule="two_stage", stage1_steps=2), resume=True, parts=parts,
          progress=False)
    end = parts.model.state_dict()
    mask = [k for k in start if k.startswith(("mask_head.", "bbox_attention."))]
    det = [k for k in start if k not in mask]
    assert all(torch.equal(start[k], mid[k]) for k in mask)
    assert all(not torch.equal(start[k], mid[k]) for k in det if k.startswith("class_embed"))
    assert all(torch.equal(mid[k], end[k]) for k in det)
    assert all(not torch.equal(mid[k], end[k]) for k in mask)


def test_best_checkpoint_follows_pq(tmp_path):
    scores = iter([10.0, 30.0, 20.0])

    def evaluate(model, val_set, device, info):
        assert not model.training
        return {"pq": next(scores), "pq_th": 0.0, "pq_st": 0.0}

    parts = dataclasses.replace(make_parts(), val_set=ToyScenes(2, seed=9))
    out = tmp_path / "run"
    metrics = train(make_cfg(out, steps=3, eval_every=1), parts=parts, evaluate_fn=evaluate, progress=False)
    assert metrics["pq"] == 20.0
    best = torch.load(out / ckpt_io.BEST, weights_only=True)
    assert best["train_state"]["step"] == 2 and best["train_state"]["best_pq"] == 30.0
    assert best["format"] == "panoptic-detr/1" and best["categories"] == CATS.to_json()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["pq"] for r in records if "pq" in r] == [10.0, 30.0, 20.0]


def test_bf16_trains_under_autocast_and_validates_in_float32(tmp_path):
    seen = []

    def evaluate(model, val_set, device, info):
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"pq": 1.0, "pq_th": 0.0, "pq_st": 0.0}

    parts = dataclasses.replace(make_parts(), val_set=ToyScenes(2, seed=9))
    out = tmp_path / "run"
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    metrics = train(make_cfg(out, steps=2, eval_every=1, bf16=True), parts=parts, evaluate_fn=evaluate,
                    progress=False)
    assert seen == [False, False]  # validation measures the weights as predict runs them
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("loss"))
    after = parts.model.state_dict()
    assert all(after[k].dtype == v.dtype for k, v in before.items())  # float32 weights, bf16 maths
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_refuses_to_overwrite_a_run(tmp_path):
    train(make_cfg(tmp_path, steps=1), parts=make_parts(), progress=False)
    with pytest.raises(TrainError, match="already there; pass --resume"):
        train(make_cfg(tmp_path, steps=1), parts=make_parts(), progress=False)
    train(make_cfg(tmp_path, steps=1), parts=make_parts(), progress=False, overwrite=True)


def test_resume_from_missing_or_truncated_checkpoint(tmp_path):
    with pytest.raises(ckpt_io.CheckpointError, match="checkpoint_last.pt: checkpoint not found"):
        train(make_cfg(tmp_path, steps=2), resume=True, parts=make_parts(), progress=False)
    train(make_cfg(tmp_path, steps=1), parts=make_parts(), progress=False)
    path = tmp_path / ckpt_io.LAST
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt_io.CheckpointError, match="not a readable checkpoint"):
        train(make_cfg(tmp_path, steps=2), resume=True, parts=make_parts(), progress=False)


def test_resume_with_another_architecture(tmp_path):
    train(make_cfg(tmp_path, steps=1), parts=make_parts(), progress=False)
    other = make_parts(dropout=0.2)
    with pytest.raises(ckpt_io.CheckpointError, match="another architecture \\(dropout is 0.1"):
        train(make_cfg(tmp_path, steps=2), resume=True, parts=other, progress=False)
    bigger = dataclasses.replace(make_parts(dim=12))
    with pytest.raises(ckpt_io.CheckpointError, match="weights do not fit the model"):
        train(make_cfg(tmp_path, steps=2), resume=True, parts=bigger, progress=False)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt_io.save_checkpoint(path, {"a": 1}, CATS.to_json(), {"w": torch.ones(3)})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("panoptic_detr.data.files.os.fsync", full)
    with pytest.raises(ckpt_io.CheckpointError, match="c.pt: cannot write checkpoint \\(disk full\\)"):
        ckpt_io.save_checkpoint(path, {"a": 1}, CATS.to_json(), {"w": torch.zeros(3)})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert torch.equal(ckpt_io.load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_checkpoint_format(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": {"w": torch.ones(1)}}, path)
    with pytest.raises(ckpt_io.CheckpointError, match="not a panoptic-detr/1 checkpoint"):
        ckpt_io.load_checkpoint(path)


def test_export_is_half_precision_without_train_state(tmp_path):
    cfg = make_cfg(tmp_path / "r", steps=1, export=str(tmp_path / "small.pt"))
    train(cfg, parts=make_parts(), progress=False)
    full = ckpt_io.load_checkpoint(tmp_path / "r" / ckpt_io.LAST)
    small = ckpt_io.load_checkpoint(tmp_path / "small.pt")
    assert "train_state" not in small and small["config"] == full["config"]
    # the validation settings travel with the weights, so predict uses them by default
    expected = {"size": cfg.data.val_size, "max_size": cfg.data.max_size, "threshold": cfg.eval_threshold,
                "overlap_threshold": cfg.eval_overlap_threshold,
                "pixel_assignment": cfg.eval_pixel_assignment}
    assert full["inference"] == small["inference"] == expected
    for k, v in full["model"].items():
        assert small["model"][k].dtype == torch.float16
        torch.testing.assert_close(small["model"][k].float(), v, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("train_stem", [False, True])
def test_backbone_stem_frozen_unless_asked(tmp_path, train_stem):
    from panoptic_detr.model import PRESETS, build_model

    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"].with_overrides(num_classes=4))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    parts = RunParts(model, {"preset": "tiny"}, CATS, ToyScenes(4, h=64, w=64))
    cfg = make_cfg(tmp_path, steps=1, data={"augment": False, "val_size": 64, "max_size": 64},
                   optim={"train_stem": train_stem})
    train(cfg, parts=parts, progress=False)
    end = model.state_dict()
    stem, layer2 = "backbone.body.conv1.weight", "backbone.body.layer2.0.conv1.weight"
    assert torch.equal(start[stem], end[stem]) != train_stem
    assert not torch.equal(start[layer2], end[layer2])


def test_training_gives_the_model_its_trainable_flags_back(tmp_path):
    """Stages and a frozen backbone change requires_grad while training; the run keeps what the
    model left trainable itself and restores it at the end, storing nothing on the model."""
    parts = make_parts(0.0)
    model = parts.model
    model.bbox_embed.weight.requires_grad_(False)  # frozen by its owner: must stay frozen
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    attributes = set(vars(model))
    start = model.bbox_embed.weight.detach().clone()
    cfg = make_cfg(tmp_path, steps=2, schedule="two_stage", stage1_steps=1, optim={"lr_backbone": 0.0})
    train(cfg, parts=parts, progress=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert set(vars(model)) == attributes
    assert torch.equal(model.bbox_embed.weight, start)
