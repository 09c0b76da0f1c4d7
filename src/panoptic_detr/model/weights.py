"""Pretrained weights: the registry of the original COCO checkpoints, and the key mappings
from the original DETR layout and from Hugging Face's `DetrForSegmentation` to this model.

Pure: state dicts in, state dicts out. Downloading and reading files is `loading.py`'s job.

Layouts (an R50 tensor as example):
- this model:   backbone.body.layer1.0.conv1.weight, transformer.encoder.layers.0.self_attn...
- original:     detr.backbone.0.body.layer1.0.conv1.weight, detr.transformer..., bbox_attention.*,
                mask_head.* (the same names behind a prefix, so the mapping is a rename)
- Hugging Face: detr.model.backbone.conv_encoder.model.layer1.0.conv1.weight (timm backbone),
                detr.model.encoder.layers.0.self_attn.q_proj/k_proj/v_proj (split in_proj), ...
                as stored on the Hub (facebook/detr-resnet-50-panoptic) and by transformers 4;
                transformers 5 renames modules in memory (mlp.fc1, o_proj, mask_head.conv1.conv,
                fpn_stages, backbone.model), and `from_hf` reads those names too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import BACKBONE_CHANNELS, PRESETS, DETRConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsError(ValueError):
    """Weights that cannot be used: the message says what was expected and what to do."""


@dataclass(frozen=True)
class PretrainedWeights:
    """A published checkpoint: where it is, how to check it, what it predicts."""

    preset: str
    """Architecture, a key of `PRESETS`."""
    url: str
    hash_prefix: str
    """Leading hex digits of the file's SHA-256 (the suffix of the original file names)."""
    categories: str = "coco_panoptic"
    """The category table the class logits index (`Categories.coco_panoptic()`)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Input normalisation, RGB in 0..1."""
    std: tuple[float, float, float] = IMAGENET_STD
    pq: float = 0.0
    """Panoptic quality on COCO val2017 as published."""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_BASE = "https://dl.fbaipublicfiles.com/detr/"

WEIGHTS: dict[str, PretrainedWeights] = {
    w.preset: w
    for w in (
        PretrainedWeights("detr_r50_panoptic", _BASE + "detr-r50-panoptic-00ce5173.pth", "00ce5173", pq=43.4),
        PretrainedWeights(
            "detr_r50_dc5_panoptic", _BASE + "detr-r50-dc5-panoptic-da08f1b1.pth", "da08f1b1", pq=44.6
        ),
        PretrainedWeights(
            "detr_r101_panoptic", _BASE + "detr-r101-panoptic-40021d53.pth", "40021d53", pq=45.1
        ),
    )
}


# -- original DETR layout -------------------------------------------------------------------
def from_original(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """`torch.load(detr-*-panoptic-*.pth)["model"]` -> this model's names."""
    out = {}
    for k, v in sd.items():
        if k.startswith("detr."):
            k = k[len("detr.") :]
        if k.startswith("backbone.0.body."):
            k = "backbone.body." + k[len("backbone.0.body.") :]
        out[k] = v
    return out


def to_original(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """This model's names -> the original layout (inverse of `from_original`)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone.body."):
            k = "backbone.0.body." + k[len("backbone.body.") :]
        if not k.startswith(("bbox_attention.", "mask_head.")):
            k = "detr." + k
        out[k] = v
    return out


# -- Hugging Face DetrForSegmentation (timm backbone) -----------------------------------------
_HF_PREFIXES = [  # (ours, HF)
    ("backbone.body.", "detr.model.backbone.conv_encoder.model."),
    ("input_proj.", "detr.model.input_projection."),
    ("query_embed.", "detr.model.query_position_embeddings."),
    ("transformer.encoder.layers.", "detr.model.encoder.layers."),
    ("transformer.decoder.layers.", "detr.model.decoder.layers."),
    ("transformer.decoder.norm.", "detr.model.decoder.layernorm."),
    ("class_embed.", "detr.class_labels_classifier."),
    ("bbox_embed.", "detr.bbox_predictor."),
]
_HF_LAYER_PARTS = {  # module names inside one transformer layer, (ours, HF)
    "encoder": [
        ("linear1", "fc1"),
        ("linear2", "fc2"),
        ("norm1", "self_attn_layer_norm"),
        ("norm2", "final_layer_norm"),
    ],
    "decoder": [
        ("multihead_attn", "encoder_attn"),
        ("linear1", "fc1"),
        ("linear2", "fc2"),
        ("norm1", "self_attn_layer_norm"),
        ("norm2", "encoder_attn_layer_norm"),
        ("norm3", "final_layer_norm"),
    ],
}
_LAYER = re.compile(r"^(?P<head>.*\b(?P<kind>encoder|decoder)\.layers\.\d+\.)(?P<part>\w+)(?P<rest>\..*)$")


def _rename(key: str, to_hf: bool) -> str:
    src, dst = (0, 1) if to_hf else (1, 0)
    for pair in _HF_PREFIXES:
        if key.startswith(pair[src]):
            key = pair[dst] + key[len(pair[src]) :]
            break
    m = _LAYER.match(key)
    if m:
        parts = dict((p[src], p[dst]) for p in _HF_LAYER_PARTS[m["kind"]])
        key = m["head"] + parts.get(m["part"], m["part"]) + m["rest"]
    return key


def to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """This model's names -> `DetrForSegmentation`'s (attention in_proj split into q/k/v)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*)\.in_proj_(weight|bias)$", k)
        if m:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3), strict=True):
                out[_rename(f"{m[1]}.{name}.{m[2]}", to_hf=True)] = part
        else:
            out[_rename(k, to_hf=True)] = v
    return out


# transformers 5's in-memory names -> the Hub's (transformers 4) names, as (pattern, replacement)
_HF5_TO_HF4: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (r"^detr\.model\.backbone\.model\.", "detr.model.backbone.conv_encoder.model."),
    (r"\.(self_attn|encoder_attn)\.o_proj\.", r".\1.out_proj."),
    (r"\.mlp\.(fc[12])\.", r".\1."),
    (r"^bbox_attention\.([qk])_proj\.", r"bbox_attention.\1_linear."),
    (r"^mask_head\.conv([12])\.conv\.", r"mask_head.lay\1."),
    (r"^mask_head\.conv([12])\.norm\.", r"mask_head.gn\1."),
    (r"^mask_head\.fpn_stages\.(\d)\.fpn_adapter\.", lambda m: f"mask_head.adapter{int(m[1]) + 1}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.conv\.", lambda m: f"mask_head.lay{int(m[1]) + 3}."),
    (r"^mask_head\.fpn_stages\.(\d)\.refine\.norm\.", lambda m: f"mask_head.gn{int(m[1]) + 3}."),
    (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
]


def _hf4_name(key: str) -> str:
    for pattern, replacement in _HF5_TO_HF4:
        key = re.sub(pattern, replacement, key)
    return key


def from_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """`DetrForSegmentation` weights (Hub / transformers 4 names, or transformers 5's) -> this
    model's names (q/k/v joined into in_proj)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for k, v in sd.items():
        k = _rename(_hf4_name(k), to_hf=False)
        m = re.match(r"^(.*)\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = v
        else:
            out[k] = v
    for k, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"{k}: found only {sorted(parts)} of the q/k/v projections")
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_model_layout(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Any supported layout -> (this model's names, "original" | "huggingface" | "project")."""
    if any(k.startswith("detr.model.") for k in sd):
        return from_hf(sd), "huggingface"
    if any(k.startswith("detr.") for k in sd):
        return from_original(sd), "original"
    return dict(sd), "project"


# -- architecture from tensors ----------------------------------------------------------------
def _count(sd: dict[str, Tensor], prefix: str) -> int:
    idx = {int(m[1]) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_config(sd: dict[str, Tensor], dilation: bool = False) -> DETRConfig:
    """The architecture a state dict (this model's names) was made for.

    Tensor shapes tell everything but `dilation` (DC5 has the same tensors as R50; pass it)
    and `nheads` (taken equal to the mask heads, as in every DETR checkpoint). Returns the
    matching preset when there is one, so non-tensor settings (dropout) follow it too.
    """
    required = ["input_proj.weight", "query_embed.weight", "class_embed.weight", "mask_head.lay1.weight"]
    absent = [k for k in required if k not in sd]
    if absent:
        raise WeightsError(
            f"not a DETR panoptic state dict: no {', '.join(absent)} "
            f"(found {len(sd)} tensors, e.g. {', '.join(list(sd)[:3])})"
        )
    try:
        bottleneck = "backbone.body.layer1.0.conv3.weight" in sd
        blocks = _count(sd, "backbone.body.layer3.")
        names = {
            (True, 6): "resnet50",
            (True, 23): "resnet101",
            (False, 2): "resnet18",
            (False, 6): "resnet34",
        }
        plain = "backbone.body.layer1.0.0.weight" in sd  # PlainTrunk: stages of bare convs
        if plain:
            widths_seen = tuple(int(sd[f"backbone.body.layer{i}.{j}.weight"].shape[0])
                                for i, j in ((1, "1.3"), (2, "3"), (3, "3"), (4, "3")))
            if widths_seen != BACKBONE_CHANNELS["vgg_small"]:
                raise WeightsError(f"a VGG-style backbone with widths {widths_seen}; only 'vgg_small' "
                                   f"{BACKBONE_CHANNELS['vgg_small']} exists")
        elif (bottleneck, blocks) not in names:
            raise WeightsError(
                f"cannot tell the backbone: {blocks} blocks in layer3 "
                f"({'bottleneck' if bottleneck else 'basic'}); expected a ResNet-18/34/50/101"
            )
        d = int(sd["input_proj.weight"].shape[0])
        enc = _count(sd, "transformer.encoder.layers.")
        dec = _count(sd, "transformer.decoder.layers.")
        ffn_key = f"transformer.{'encoder' if enc else 'decoder'}.layers.0.linear1.weight"
        mask_heads = int(sd["mask_head.lay1.weight"].shape[1]) - d
        widths = [d + mask_heads] + [d // f for f in (2, 4, 8, 16)]
        groups = next(g for g in (8, 4, 2, 1) if all(w % g == 0 for w in widths))
        config = DETRConfig(
            backbone="vgg_small" if plain else names[(bottleneck, blocks)],
            dilation=dilation,
            # frozen BN keeps statistics buffers; GroupNorm has an affine pair only
            backbone_norm="frozen_bn" if "backbone.body.bn1.running_mean" in sd else "group_norm",
            hidden_dim=d,
            nheads=mask_heads,
            num_encoder_layers=enc,
            num_decoder_layers=dec,
            dim_feedforward=int(sd[ffn_key].shape[0]),
            num_queries=int(sd["query_embed.weight"].shape[0]),
            num_classes=int(sd["class_embed.weight"].shape[0]) - 1,
            mask_heads=mask_heads,
            mask_head_groups=groups,
        )
    except KeyError as e:
        raise WeightsError(f"not a DETR panoptic state dict: no tensor {e.args[0]!r}") from None
    except ValueError as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(f"state dict describes no valid DETR architecture: {e}") from None
    for preset in PRESETS.values():
        if config == preset.with_overrides(dropout=config.dropout, pretrained_backbone=False):
            return preset.with_overrides(dilation=dilation, pretrained_backbone=False)
    return config


def preset_name(config: DETRConfig) -> str | None:
    """The name of the preset `config` equals (ignoring `pretrained_backbone`), if any."""
    for name, preset in PRESETS.items():
        if config.with_overrides(pretrained_backbone=False) == preset:
            return name
    return None


# -- strict loading -----------------------------------------------------------------------------
def load_state_dict_strict(model: nn.Module, sd: dict[str, Tensor], what: str = "the weights") -> None:
    """Load `sd` (this model's names) into `model`, or raise one `WeightsError` that lists the
    missing, unexpected and wrongly shaped tensors together."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {tuple(sd[k].shape)} (model: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:

        def listing(label: str, items: list[str]) -> str:
            head = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
            return f"{len(items)} {label}: {head}" if items else ""

        parts = [
            listing("missing", missing),
            listing("unexpected", unexpected),
            listing("with another shape", shapes),
        ]
        config = getattr(model, "config", None)
        arch = f" for {preset_name(config) or config}" if isinstance(config, DETRConfig) else ""
        raise WeightsError(
            f"{what} do not fit the model{arch}: "
            + "; ".join(p for p in parts if p)
            + ". Pick the matching preset (--preset) or a checkpoint of this architecture."
        )
    model.load_state_dict(sd, strict=True)
