"""Instance-segmentation networks for ground truth: torchvision's Mask R-CNN, built and loaded.

Three ways to name one (`load_instance_model`):

* `maskrcnn`: torchvision's `maskrcnn_resnet50_fpn_v2` with its COCO weights, downloaded once
  to torch hub's cache and SHA-256 checked (as the DETR checkpoints, `loading.cached_path`);
  offline, the message names the URL and the file to put in the cache.
* `demo-maskrcnn`: the bundled stand-in, a small Mask R-CNN (a few conv stages + FPN, small
  heads) trained on the synthetic scenes by `gt.train_instance_model` (assets/demo/).
* a path: a project checkpoint whose config records a `MaskRCNNConfig` (what
  `train_instance_model` writes), or a torchvision state dict of `maskrcnn_resnet50_fpn_v2`
  (bare, or under "model"), its classes told by the box predictor's size (91: COCO's ids).

Category index = category id, as torchvision's COCO models (0 = background).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import checkpoint as ckpt_io
from ..loading import cached_path
from ..model.weights import PretrainedWeights, WeightsError
from ..structures import Categories

ARCHITECTURE = "maskrcnn_small"
"""`MaskRCNNConfig.architecture` of the small stand-in (the value recorded in checkpoints)."""

COCO_MASKRCNN = PretrainedWeights(
    "maskrcnn_resnet50_fpn_v2",
    "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
    "73cbd019",
    categories="coco_things",
)
"""torchvision's `MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1` (mask AP 41.8 on COCO val2017)."""

NAMES = ("maskrcnn", "demo-maskrcnn")


@dataclass(frozen=True)
class MaskRCNNConfig:
    """The small stand-in's architecture, recorded in its checkpoint."""

    architecture: str = ARCHITECTURE
    num_classes: int = 7
    """Including the background (index 0)."""
    widths: tuple[int, ...] = (16, 32, 64, 96)
    """Channels of the stem (stride 2) and of the stages at strides 4, 8, 16."""
    fpn_channels: int = 64
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128)
    """One anchor size per FPN level (strides 4, 8, 16, and the max-pooled 32)."""
    box_head: int = 256
    """Width of the two-layer box head."""
    mask_head: tuple[int, ...] = (64, 64)
    """Channels of the mask head's 3x3 convolutions (torchvision uses 4 x 256)."""
    min_size: int = 256
    max_size: int = 256

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MaskRCNNConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _Trunk(nn.Module):
    """conv-BN-ReLU stages; returns the features at strides 4, 8 and 16 as "0", "1", "2"."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

        chans = (3, *widths)
        self.stages = nn.ModuleList(stage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = OrderedDict()
        for k, s in enumerate(self.stages):
            x = s(x)
            if k >= 1:
                out[str(k - 1)] = x
        return out


class _TrunkWithFPN(nn.Module):
    def __init__(self, config: MaskRCNNConfig):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = _Trunk(config.widths)
        self.fpn = FeaturePyramidNetwork(list(config.widths[1:]), config.fpn_channels, LastLevelMaxPool())
        self.out_channels = config.fpn_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def build_small(config: MaskRCNNConfig) -> nn.Module:
    """torchvision `MaskRCNN` with the stand-in's trunk, FPN and heads (random weights)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if config.architecture != ARCHITECTURE:
        raise ValueError(f"architecture {config.architecture!r} is not {ARCHITECTURE!r}")
    backbone = _TrunkWithFPN(config)
    levels = ["0", "1", "2"]
    c = config.fpn_channels
    return MaskRCNN(
        backbone, num_classes=None,
        min_size=config.min_size, max_size=config.max_size,
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in config.anchor_sizes),
                                             ((0.5, 1.0, 2.0),) * len(config.anchor_sizes)),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, config.box_head),
        box_predictor=_box_predictor(config.box_head, config.num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        mask_head=MaskRCNNHeads(c, list(config.mask_head), 1),
        mask_predictor=MaskRCNNPredictor(config.mask_head[-1], config.mask_head[-1], config.num_classes),
        # fewer proposals and sampled RoIs than torchvision's defaults (scenes hold <= 10 things)
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100, box_batch_size_per_image=128, box_detections_per_img=50,
    )


def _box_predictor(width: int, num_classes: int) -> nn.Module:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    return FastRCNNPredictor(width, num_classes)


@dataclass
class InstanceModel:
    """A loaded Mask R-CNN (eval mode, on its device) and what its class indices mean."""

    model: nn.Module
    categories: list[dict[str, Any]]
    """COCO dicts (id = class index, isthing 1) of the classes it predicts."""
    source: str
    """Where the weights came from, for messages."""


def demo_path() -> Path:
    """Where the bundled stand-in lives."""
    return Path(str(resources.files("panoptic_detr.assets").joinpath("demo", "demo_maskrcnn.pt")))


def coco_thing_categories() -> list[dict[str, Any]]:
    """The 80 COCO thing categories (ids 1-90, as torchvision's COCO class indices)."""
    return [dict(c) for c in Categories.coco_panoptic().items if c.get("isthing")]


def load_instance_model(name: str | os.PathLike[str], device: str | torch.device = "cpu") -> InstanceModel:
    """`maskrcnn`, `demo-maskrcnn` or a checkpoint path (module doc); WeightsError otherwise,
    one line naming the file."""
    name = os.fspath(name)
    if name == "maskrcnn":
        path = cached_path(COCO_MASKRCNN, option="model:PATH")
    elif name == "demo-maskrcnn":
        path = demo_path()
        if not path.is_file():
            raise WeightsError(f"the stand-in Mask R-CNN is not bundled in this installation "
                               f"(expected {path})")
    else:
        path = Path(name)
        if not path.is_file():
            raise WeightsError(f"{path}: no such file (expected a Mask R-CNN checkpoint, or a name: "
                               f"{', '.join(NAMES)})")
    try:
        obj = ckpt_io.read(path)
    except ckpt_io.CheckpointError as e:
        raise WeightsError(str(e)) from None
    model, categories = _from_checkpoint(obj, path)
    model.to(device).eval()
    return InstanceModel(model, categories, f"{name} ({path})" if name != os.fspath(path) else str(path))


def _from_checkpoint(obj: Any, path: Path) -> tuple[nn.Module, list[dict[str, Any]]]:
    if ckpt_io.is_project(obj):
        try:
            config = MaskRCNNConfig.from_dict(dict(obj["config"]))
            categories = [dict(c) for c in obj["categories"]]
            model = build_small(config)
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: not a Mask R-CNN checkpoint of this project ({e})") from None
        state = obj["model"]
    else:
        state = obj.get("model", obj) if isinstance(obj, dict) else obj
        if not isinstance(state, dict) or "roi_heads.box_predictor.cls_score.weight" not in state:
            raise WeightsError(f"{path}: not a Mask R-CNN checkpoint (expected a project checkpoint of "
                               f"{ARCHITECTURE} or a state dict of {COCO_MASKRCNN.preset})")
        from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

        n = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])
        model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=n)
        categories = (coco_thing_categories() if n == 91 else
                      [{"id": i, "name": f"class {i}", "isthing": 1} for i in range(1, n)])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines()
        detail = (lines[1:] or lines)[0].strip()
        raise WeightsError(f"{path}: weights do not fit the model ({detail})") from None
    return model, categories
