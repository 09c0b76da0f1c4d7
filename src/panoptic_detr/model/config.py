"""The architecture of a DETR panoptic model as one dataclass, and the named presets.

A config describes the network only (no training settings, no files). Change one field of a
preset with `PRESETS["detr_r18_small"].with_overrides(num_queries=20)` (a thin wrapper over
`dataclasses.replace`, which also validates the result).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg_small")
BACKBONE_NORMS = ("frozen_bn", "group_norm")

# Channels of C2, C3, C4, C5 (outputs of layer1..layer4) of each torchvision ResNet.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "vgg_small": (32, 64, 128, 256),
}


@dataclass(frozen=True)
class DETRConfig:
    """Architecture of `DETRPanoptic` (the original COCO model with the defaults)."""

    backbone: str = "resnet50"
    """torchvision ResNet: "resnet18", "resnet34", "resnet50" or "resnet101"; or "vgg_small", a
    narrow VGG-style trunk for training from scratch on a CPU (`backbone.PlainTrunk`; GroupNorm,
    no pretrained weights)."""
    dilation: bool = False
    """DC5: dilate the last stage instead of striding, so C5 is at stride 16 (the mask head
    still works at stride 4: its upsampling follows the C4/C3/C2 sizes). Any of the backbones
    (for ResNet-18/34 the 3x3 convolutions of layer4 after its first are dilated)."""
    backbone_norm: str = "frozen_bn"
    """Normalisation layers of the backbone. "frozen_bn": DETR's frozen batch norm (fixed
    ImageNet statistics; with random weights it is the identity, i.e. no normalisation at all).
    "group_norm": trainable GroupNorm (32 groups), batch-independent like frozen BN, the usual
    choice for training a detector's backbone from scratch (He et al., "Rethinking ImageNet
    Pre-training", 2019); the small presets use it."""
    pretrained_backbone: bool = False
    """Start the backbone from torchvision's ImageNet weights (downloads them once; only for
    training from scratch, never needed when a DETR checkpoint is loaded)."""
    hidden_dim: int = 256
    """d, the transformer width."""
    nheads: int = 8
    """Attention heads in every encoder and decoder attention."""
    num_encoder_layers: int = 6
    """Encoder layers over the C5 grid."""
    num_decoder_layers: int = 6
    """Decoder layers; every one's output feeds an auxiliary class/box prediction."""
    dim_feedforward: int = 2048
    """Hidden width of the transformer feed-forward blocks."""
    dropout: float = 0.1
    """Dropout in the transformer (active only in training mode)."""
    num_queries: int = 100
    """N, learned object queries = predictions per image."""
    num_classes: int = 250
    """Class logits before the extra no-object logit (the class index is the category id,
    so this is max category id + 1; COCO panoptic: 250)."""
    mask_heads: int = 8
    """M, heads of the attention map that feeds the mask head (the original uses nheads)."""
    mask_head_groups: int = 8
    """GroupNorm groups in the mask head; must divide hidden_dim + mask_heads and every
    FPN width (hidden_dim // 2, // 4, // 8, // 16)."""
    mask_attention_pos: bool = False
    """Add the sine positional encoding to the encoder memory where the mask head's attention
    map reads it as keys. The original (False) gives that attention content alone, so two
    instances of one class look alike to it until training has spread position into the memory;
    True lets it localise a query's own instance from the start (small presets trained from
    scratch). Part of the architecture: a checkpoint keeps its own."""
    mask_attention_init_gain: float = 1.0
    """Initialisation only: scale of lay1's weights on the attention-map channels. The maps
    are ~1/(M*H*W) each (joint softmax), so at 1 a fresh head barely sees them and masks do not
    learn from scratch (the original trains them on a converged detector); ~1000 makes them
    count from the first step. No effect on loaded weights."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"backbone_norm must be one of {BACKBONE_NORMS}, got {self.backbone_norm!r}")
        if self.pretrained_backbone and self.backbone_norm != "frozen_bn":
            raise ValueError(
                "pretrained_backbone needs backbone_norm='frozen_bn' (ImageNet weights come with BN "
                "statistics); set both, e.g. model.overrides: "
                "{pretrained_backbone: true, backbone_norm: frozen_bn}"
            )
        if self.backbone == "vgg_small" and (self.backbone_norm != "group_norm" or self.pretrained_backbone):
            raise ValueError("backbone 'vgg_small' has GroupNorm and no pretrained weights: set "
                             "backbone_norm: group_norm and pretrained_backbone: false")
        if self.hidden_dim % 2 or self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be even and divisible by nheads")
        if self.hidden_dim % self.mask_heads:
            raise ValueError(f"hidden_dim={self.hidden_dim} must be divisible by mask_heads")
        widths = [self.hidden_dim + self.mask_heads] + [self.hidden_dim // f for f in (2, 4, 8, 16)]
        bad = [w for w in widths if w % self.mask_head_groups]
        if bad:
            raise ValueError(
                f"mask_head_groups={self.mask_head_groups} must divide the mask head widths {widths}"
            )

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        """Channels of C2, C3, C4, C5."""
        return BACKBONE_CHANNELS[self.backbone]

    @property
    def mask_head_widths(self) -> tuple[int, int, int, int, int]:
        """Output channels of the mask head's lay1..lay5 (lay1 keeps d + M)."""
        d = self.hidden_dim
        return (d + self.mask_heads, d // 2, d // 4, d // 8, d // 16)

    def with_overrides(self, **overrides: Any) -> DETRConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DETRConfig:
        """Inverse of `to_dict`; unknown keys are an error (a checkpoint from another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown DETRConfig fields {unknown}")
        return cls(**data)


_COCO = DETRConfig()  # the original: 250 classes, 100 queries, d=256, 8 heads, 6+6 layers, ffn 2048

# The small presets: models for training on a CPU or a small GPU.
_SMALL = DETRConfig(
    backbone="resnet18",
    hidden_dim=128,
    nheads=4,
    num_encoder_layers=3,
    num_decoder_layers=3,
    dim_feedforward=512,
    num_queries=30,
    mask_heads=4,
    mask_head_groups=4,
    # masks learn from scratch jointly with the detector (see the two fields' docs)
    mask_attention_pos=True,
    mask_attention_init_gain=1000.0,
    # from scratch: a normalised backbone, and C5 at stride 16 (an 8x8 grid at 128 px, where
    # stride 32 leaves the transformer 4x4 tokens); benchmarks/RESULTS.md has the comparison
    backbone_norm="group_norm",
    dilation=True,
)

PRESETS: dict[str, DETRConfig] = {
    # The three original COCO panoptic models (PQ 43.4 / 44.6 / 45.1 on COCO val).
    "detr_r50_panoptic": _COCO,
    "detr_r50_dc5_panoptic": _COCO.with_overrides(dilation=True),
    "detr_r101_panoptic": _COCO.with_overrides(backbone="resnet101"),
    # Small models for training on a CPU or a small GPU.
    "detr_r18_small": _SMALL,
    "detr_r34_small": _SMALL.with_overrides(backbone="resnet34"),
    # The learning benchmark's and the demo's model: learns shapes fastest from scratch on 2 cores.
    "detr_vgg_small": _SMALL.with_overrides(backbone="vgg_small"),
    # For tests: every block present, a few thousand parameters outside the backbone.
    "tiny": DETRConfig(
        backbone="resnet18",
        hidden_dim=32,
        nheads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        num_queries=6,
        num_classes=5,
        mask_heads=2,
        mask_head_groups=2,
    ),
}
