"""The CNN backbone: a torchvision ResNet with frozen batch norm (or GroupNorm), returning C2..C5.

As in DETR, batch-norm statistics and affine parameters are frozen (`FrozenBatchNorm2d`), so
the backbone behaves the same in train and eval mode and with any batch size. For training
from scratch, `norm="group_norm"` uses trainable GroupNorm instead, batch-independent too.
DC5 (`dilation`) works for every depth: torchvision dilates bottleneck blocks, this module
dilates basic ones (ResNet-18/34) the same way. Module names
follow torchvision (`body.layer1.0.conv1`), which is also the original checkpoints' layout
under `detr.backbone.0.body`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from .config import BACKBONE_CHANNELS


class Backbone(nn.Module):
    """ResNet trunk: image [B, 3, H, W] -> C2, C3, C4, C5 at strides 4, 8, 16, 32 (C5 at 16
    with DC5), plus the padding mask resized to each."""

    def __init__(self, name: str, dilation: bool = False, pretrained: bool = False, norm: str = "frozen_bn"):
        super().__init__()
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
        self.channels = BACKBONE_CHANNELS[name]

    def forward(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images: [B, 3, H, W]; mask: [B, H, W] True on padding.

        Returns ([C2, C3, C4, C5], [mask at each of their sizes]).
        """
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
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
