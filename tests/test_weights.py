"""Weight import: original and Hugging Face layouts, preset inference, strict loading."""

from __future__ import annotations

import pytest
import torch

from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.model.weights import (
    WEIGHTS,
    WeightsError,
    from_hf,
    from_original,
    infer_config,
    load_state_dict_strict,
    to_hf,
    to_model_layout,
    to_original,
)
from panoptic_detr.structures import PaddedBatch

# Names as Hugging Face's DetrForSegmentation (timm backbone) holds them.
HF_NAMES = [
    "detr.model.backbone.conv_encoder.model.conv1.weight",
    "detr.model.backbone.conv_encoder.model.layer2.0.downsample.1.running_var",
    "detr.model.input_projection.weight",
    "detr.model.query_position_embeddings.weight",
    "detr.model.encoder.layers.0.self_attn.q_proj.weight",
    "detr.model.encoder.layers.0.self_attn.v_proj.bias",
    "detr.model.encoder.layers.0.self_attn.out_proj.weight",
    "detr.model.encoder.layers.0.self_attn_layer_norm.weight",
    "detr.model.encoder.layers.0.fc1.weight",
    "detr.model.encoder.layers.0.fc2.bias",
    "detr.model.encoder.layers.0.final_layer_norm.bias",
    "detr.model.decoder.layers.1.self_attn.k_proj.weight",
    "detr.model.decoder.layers.1.encoder_attn.q_proj.bias",
    "detr.model.decoder.layers.1.encoder_attn.out_proj.weight",
    "detr.model.decoder.layers.1.encoder_attn_layer_norm.weight",
    "detr.model.decoder.layers.1.final_layer_norm.weight",
    "detr.model.decoder.layernorm.weight",
    "detr.class_labels_classifier.weight",
    "detr.bbox_predictor.layers.2.bias",
    "bbox_attention.q_linear.weight",
    "bbox_attention.k_linear.bias",
    "mask_head.lay1.weight",
    "mask_head.gn5.bias",
    "mask_head.adapter3.weight",
    "mask_head.out_lay.bias",
]


def random_state_dict(preset: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """A model's initial weights, every tensor perturbed so that none is left at 0 or 1."""
    torch.manual_seed(seed)
    sd = build_model(PRESETS[preset]).state_dict()
    noise = {k: 0.01 * torch.randn_like(v) for k, v in sd.items()}
    return {k: v + (noise[k].abs() if k.endswith("running_var") else noise[k]) for k, v in sd.items()}


def test_original_layout_round_trip():
    sd = random_state_dict()
    orig = to_original(sd)
    assert "detr.backbone.0.body.layer1.0.conv1.weight" in orig
    assert "detr.transformer.decoder.norm.weight" in orig and "mask_head.lay1.weight" in orig
    back = from_original(orig)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)


def test_hf_layout_round_trip_and_strict_load():
    sd = random_state_dict()
    hf = to_hf(sd)
    assert set(HF_NAMES) <= set(hf)
    assert not any("in_proj" in k or "linear1" in k or ".norm" in k for k in hf)
    d = PRESETS["tiny"].hidden_dim
    qkv = sd["transformer.decoder.layers.1.multihead_attn.in_proj_weight"]
    torch.testing.assert_close(hf["detr.model.decoder.layers.1.encoder_attn.k_proj.weight"], qkv[d : 2 * d])
    back, layout = to_model_layout(hf)
    assert layout == "huggingface"
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    model = build_model(PRESETS["tiny"]).eval()
    load_state_dict_strict(model, from_hf(hf))
    assert torch.equal(model.state_dict()["mask_head.lay1.weight"], sd["mask_head.lay1.weight"])


def test_hf_incomplete_attention_is_an_error():
    hf = to_hf(random_state_dict())
    del hf["detr.model.encoder.layers.0.self_attn.v_proj.weight"]
    with pytest.raises(WeightsError, match="q/k/v"):
        from_hf(hf)


def test_layout_detection():
    sd = random_state_dict()
    assert to_model_layout(to_original(sd))[1] == "original"
    assert to_model_layout(sd)[1] == "project"


@pytest.mark.parametrize("name", list(PRESETS))
def test_infer_config_recovers_every_preset(name):
    config = PRESETS[name]
    with torch.device("meta"):
        sd = build_model(config).state_dict()
    # tensors cannot tell whether the mask attention reads positional keys, nor how lay1 was
    # initialised: a bare state dict is read as the original architecture (project
    # checkpoints carry their config and never need this)
    expected = config.with_overrides(mask_attention_pos=False, mask_attention_init_gain=1.0)
    assert infer_config(sd, dilation=config.dilation) == expected
    assert infer_config(from_original(to_original(sd)), dilation=config.dilation) == expected


def test_infer_config_of_a_custom_architecture():
    config = PRESETS["tiny"].with_overrides(num_queries=9, num_classes=12, num_encoder_layers=2)
    got = infer_config(build_model(config).state_dict())
    assert (got.num_queries, got.num_classes, got.num_encoder_layers) == (9, 12, 2)
    assert got.mask_heads == got.nheads == 2 and got.hidden_dim == 32
    assert got.backbone_norm == "frozen_bn"
    gn = infer_config(build_model(config.with_overrides(backbone_norm="group_norm")).state_dict())
    assert gn.backbone_norm == "group_norm"


def test_infer_config_of_something_else():
    with pytest.raises(WeightsError, match="not a DETR panoptic state dict: no input_proj.weight"):
        infer_config({k: v for k, v in random_state_dict().items() if k.startswith("backbone.")})


def test_strict_load_reports_every_problem_at_once():
    model = build_model(PRESETS["tiny"])
    sd = random_state_dict()
    del sd["class_embed.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["query_embed.weight"] = torch.zeros(7, 32)
    with pytest.raises(WeightsError) as err:
        load_state_dict_strict(model, sd, what="the weights in x.pth")
    msg = str(err.value)
    assert "x.pth" in msg and "for tiny" in msg
    assert "1 missing: class_embed.bias" in msg
    assert "1 unexpected: extra.weight" in msg
    assert "query_embed.weight (7, 32) (model: (6, 32))" in msg


def test_loaded_model_computes_with_the_loaded_weights():
    sd = random_state_dict(seed=1)
    a, b = build_model(PRESETS["tiny"]).eval(), build_model(PRESETS["tiny"]).eval()
    load_state_dict_strict(a, from_original(to_original(sd)))
    load_state_dict_strict(b, from_hf(to_hf(sd)))
    batch = PaddedBatch.from_images([torch.randn(3, 64, 64)])
    with torch.no_grad():
        torch.testing.assert_close(a(batch).pred_masks, b(batch).pred_masks, rtol=0, atol=0)


def test_registry_records():
    assert set(WEIGHTS) == {"detr_r50_panoptic", "detr_r50_dc5_panoptic", "detr_r101_panoptic"}
    for name, w in WEIGHTS.items():
        assert w.preset == name and w.preset in PRESETS
        assert w.url.startswith("https://dl.fbaipublicfiles.com/detr/detr-")
        assert w.filename.endswith(f"-{w.hash_prefix}.pth")


# Parameter names of transformers 5.17's DetrForSegmentation in memory (read from
# `model.state_dict()` there, layer numbers as N), apart from the backbone's.
HF5_PATTERNS = (
    """
bbox_attention.k_proj.bias bbox_attention.k_proj.weight
bbox_attention.q_proj.bias bbox_attention.q_proj.weight
detr.bbox_predictor.layers.N.bias detr.bbox_predictor.layers.N.weight detr.class_labels_classifier.bias
detr.class_labels_classifier.weight detr.model.decoder.layernorm.bias detr.model.decoder.layernorm.weight
detr.model.input_projection.bias detr.model.input_projection.weight
detr.model.query_position_embeddings.weight
mask_head.conv1.conv.bias mask_head.conv1.conv.weight mask_head.conv1.norm.bias mask_head.conv1.norm.weight
mask_head.conv2.conv.bias mask_head.conv2.conv.weight mask_head.conv2.norm.bias mask_head.conv2.norm.weight
mask_head.fpn_stages.N.fpn_adapter.bias mask_head.fpn_stages.N.fpn_adapter.weight
mask_head.fpn_stages.N.refine.conv.bias mask_head.fpn_stages.N.refine.conv.weight
mask_head.fpn_stages.N.refine.norm.bias mask_head.fpn_stages.N.refine.norm.weight
mask_head.output_conv.bias mask_head.output_conv.weight
""".split()
    + [
        f"detr.model.{part}.layers.N.{name}.{wb}"
        for part, names in {
            "encoder": ["self_attn_layer_norm", "final_layer_norm", "mlp.fc1", "mlp.fc2"],
            "decoder": [
                "self_attn_layer_norm",
                "encoder_attn_layer_norm",
                "final_layer_norm",
                "mlp.fc1",
                "mlp.fc2",
            ],
        }.items()
        for name in names
        + [
            f"{a}.{p}"
            for a in (["self_attn"] if part == "encoder" else ["self_attn", "encoder_attn"])
            for p in ("q_proj", "k_proj", "v_proj", "o_proj")
        ]
        for wb in ("weight", "bias")
    ]
)


def hf4_to_hf5(key: str) -> str:
    """The renames transformers 5 applies when it loads Hub weights (for this test only)."""
    import re

    key = key.replace("backbone.conv_encoder.model.", "backbone.model.").replace(".out_proj.", ".o_proj.")
    key = re.sub(r"\.(fc[12])\.", r".mlp.\1.", key)
    key = re.sub(r"^bbox_attention\.([qk])_linear\.", r"bbox_attention.\1_proj.", key)
    key = re.sub(r"^mask_head\.lay([12])\.", r"mask_head.conv\1.conv.", key)
    key = re.sub(r"^mask_head\.gn([12])\.", r"mask_head.conv\1.norm.", key)
    key = re.sub(
        r"^mask_head\.adapter(\d)\.", lambda m: f"mask_head.fpn_stages.{int(m[1]) - 1}.fpn_adapter.", key
    )
    key = re.sub(
        r"^mask_head\.lay(\d)\.", lambda m: f"mask_head.fpn_stages.{int(m[1]) - 3}.refine.conv.", key
    )
    key = re.sub(r"^mask_head\.gn(\d)\.", lambda m: f"mask_head.fpn_stages.{int(m[1]) - 3}.refine.norm.", key)
    return key.replace("mask_head.out_lay.", "mask_head.output_conv.")


def test_transformers5_names():
    import re

    sd = random_state_dict()
    hf5 = {hf4_to_hf5(k): v for k, v in to_hf(sd).items()}
    patterns = {re.sub(r"\.\d+\.", ".N.", k) for k in hf5 if ".backbone." not in k}
    assert patterns == set(HF5_PATTERNS)
    assert "detr.model.backbone.model.layer1.0.conv1.weight" in hf5
    back, layout = to_model_layout(hf5)
    assert layout == "huggingface"
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
