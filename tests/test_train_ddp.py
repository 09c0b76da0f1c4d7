"""Data-parallel training: 2 CPU processes (gloo) with batch b per process == 1 process with
batch 2b, on same-size images (DistributedSampler shares, loss normalisers, DDP averaging)."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from panoptic_detr import checkpoint as ckpt_io
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.structures import Categories
from panoptic_detr.train.config import config_from_dict
from panoptic_detr.train.loop import RunParts, train
from tiny_detr import ToyScenes

CATS = Categories([{"id": i, "name": f"c{i}", "isthing": int(i < 2)} for i in range(4)])


def parts() -> RunParts:
    torch.manual_seed(0)
    # float64: in float32 the gradient sums of 2 processes and of one differ by rounding, and
    # AdamW turns that into a sign flip of the update wherever a gradient is ~0
    model = build_model(PRESETS["tiny"].with_overrides(num_classes=4)).double()
    return RunParts(model, {"preset": "tiny"}, CATS, ToyScenes(8, h=64, w=64, num_classes=4, seed=3))


def config(out, batch_size: int):
    return config_from_dict({
        "out_dir": str(out), "batch_size": batch_size, "steps": 3, "device": "cpu", "log_every": 1,
        "data": {"augment": False, "val_size": 64, "max_size": 64},
        "optim": {"lr": 1e-3, "lr_backbone": 1e-4},
    })


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(config(out, batch_size=2), parts=parts(), progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    train(config(tmp_path / "one", batch_size=4), parts=parts(), progress=False)
    a = torch.load(tmp_path / "ddp" / ckpt_io.LAST, weights_only=True)
    b = torch.load(tmp_path / "one" / ckpt_io.LAST, weights_only=True)
    assert a["train_state"]["world_size"] == 2 and len(a["train_state"]["rng"]) == 2
    start = parts().model.state_dict()
    moved = 0
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-5, atol=1e-5, msg=k)
        moved += not torch.equal(v, start[k])
    assert moved > 50  # the weights did train
