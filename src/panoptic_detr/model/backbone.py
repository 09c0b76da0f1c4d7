"""The CNN backbone: a torchvision ResNet with frozen batch norm (or GroupNorm), returning C2..C5.

As in DETR, batch-norm statistics and affine parameters are frozen (`FrozenBatchNorm2d`), so
the backbone behaves the same in train and eval mode and with any batch size. For training
from scratch, `norm="group_norm"` uses trainable GroupNorm instead, batch-independent too.
DC5 (`dilation`) works for every depth: torchvision dilates bottleneck blocks, this module
dilates basic ones (ResNet-18/34) the same way. Module names
follow torchvision (`body.layer1.0.conv1`), which is also the original checkpoints' layout
under `detr.backbone.0.body`.

`"vgg_small"` is the one trunk that is not a ResNet: a narrow VGG-style stack for training
from scratch on a CPU (no ImageNet weights exist for it). On the synthetic scenes it learns the
things' outlines several times faster than ResNet-18 (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import BACKBONE_CHANNELS


class Backbone(nn.Module):
    """ResNet trunk: image [B, 3, H, W] -> C2, C3, C4, C5 at strides 4, 8, 16, 32 (C5 at 16
    with DC5), plus the padding mask resized to each."""

    def __init__(self, name: str, dilation: bool = False, pretrained: bool = False, norm: str = "frozen_bn"):
        super().__init__()
        self.channels = BACKBONE_CHANNELS[name]
        if name == "vgg_small":
            self.body = PlainTrunk(self.channels, dilation)
            return
        # imported here, not with the module: a process running an exported model imports
        # the model package (settings, post-processing) but builds no backbone
        import torchvision
        from torchvision.ops import FrozenBatchNorm2d

        # V1: the ImageNet weights the original DETR started from
        weights = "IMAGENET1K_V1" if pretrained else None
        basic = name in ("resnet18", "resnet34")  # torchvision dilates bottleneck blocks only
        body = getattr(torchvision.models, name)(
            weights=weights,
            replace_stride_with_dilation=[False, False, dilation and not basic],
            norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else _group_norm,
            # from scratch: every residual block starts as the identity (its last norm's scale 0)
            zero_init_residual=norm != "frozen_bn",
        )
        if dilation and basic:
            _dilate_basic_layer4(body.layer4)
        del body.avgpool, body.fc  # classification head: unused, and absent from DETR checkpoints
        # DETR trains only layer2..layer4; the stem and layer1 keep their ImageNet weights.
        for pname, p in body.named_parameters():
            if not pname.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.body = body

    def forward(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images: [B, 3, H, W]; mask: [B, H, W] True on padding.

        Returns ([C2, C3, C4, C5], [mask at each of their sizes]).
        """
        b = self.body
        x = images if isinstance(b, PlainTrunk) else b.maxpool(b.relu(b.bn1(b.conv1(images))))
        feats = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            feats.append(x)
        masks = [downsample_mask(mask, f.shape[-2:]) for f in feats]
        return feats, masks

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold every frozen batch norm into the convolution before it (inference only).

        A frozen BN is an affine map per channel, so conv then BN equals one conv with scaled
        weights and a bias: the same function up to rounding, one pass over each feature map
        fewer. The state dict changes (the BN tensors are gone), so do this after loading and
        never on a model that is trained or saved.
        """
        b = self.body
        if isinstance(b, PlainTrunk):
            return  # GroupNorm only: nothing frozen to fold
        from torchvision.ops import FrozenBatchNorm2d  # imported already: it built this backbone
        pairs = [(b, "conv1", "bn1")]
        for block in (*b.layer1, *b.layer2, *b.layer3, *b.layer4):
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if not isinstance(bn, FrozenBatchNorm2d):
                continue  # already fused
            scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                bias=True,
                device=conv.weight.device,
                dtype=conv.weight.dtype,
            )
            fused.weight.copy_(conv.weight * scale[:, None, None, None])
            fused.bias.copy_(bn.bias - bn.running_mean * scale)
            fused.weight.requires_grad_(False)
            fused.bias.requires_grad_(False)
            setattr(parent, conv_name, fused)
            setattr(parent, bn_name, nn.Identity())


class PlainTrunk(nn.Module):
    """VGG-style trunk: stages of two 3x3 conv + GroupNorm(8) + ReLU, each followed by a 2x2 max
    pool. layer1 is two such stages (full resolution, then half), so C2..C5 come out at strides
    4, 8, 16, 32 with a ResNet's grid sizes (ceil(H/4) x ceil(W/4) for C2, which post-processing
    relies on to crop padding); `dilation` drops layer4's pool, leaving C5 at stride 16 (its
    convolutions run at stride 16 either way). Every parameter trains.

    Why it exists: ResNet's 7x7 stride-2 stem and max pool leave a 15-pixel shape 4 pixels wide
    before the first residual block; these narrow stages see the outline at full resolution,
    at about a third of ResNet-18's arithmetic at 128 px.
    """

    def __init__(self, channels: tuple[int, int, int, int], dilation: bool = False):
        super().__init__()
        c2, c3, c4, c5 = channels
        self.layer1 = nn.Sequential(_vgg_stage(3, c2 // 2), _vgg_stage(c2 // 2, c2))
        self.layer2 = _vgg_stage(c2, c3)
        self.layer3 = _vgg_stage(c3, c4)
        self.layer4 = _vgg_stage(c4, c5, pool=not dilation)


def _vgg_stage(cin: int, cout: int, pool: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: a ResNet's grid sizes at any size
    return nn.Sequential(*layers)


def _dilate_basic_layer4(layer: nn.Sequential) -> None:
    """DC5 for a basic-block ResNet, as torchvision does it for bottlenecks: the first block
    no longer strides, and every 3x3 convolution after it is dilated by 2 (same weights)."""
    first = layer[0]
    first.conv1.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    convs = [first.conv2] + [c for block in layer[1:] for c in (block.conv1, block.conv2)]
    for conv in convs:
        conv.dilation, conv.padding = (2, 2), (2, 2)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def downsample_mask(mask: Tensor, size: tuple[int, int] | list[int]) -> Tensor:
    """Nearest resize of a padding mask [B, H, W] to `size`, as the original does."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(mask.dtype)[0]
