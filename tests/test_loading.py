"""load_pretrained: every kind of weights, and one clear WeightsError for each way to fail."""

from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import pytest
import torch

from panoptic_detr import loading
from panoptic_detr.loading import CHECKPOINT_FORMAT, WeightsError, load_pretrained
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.model.weights import WEIGHTS, PretrainedWeights, to_hf, to_original

CATEGORIES = [
    {"id": 1, "name": "blob", "isthing": 1, "color": [200, 30, 30]},
    {"id": 3, "name": "ground", "isthing": 0, "color": [30, 200, 30]},
]


@pytest.fixture(scope="module")
def tiny_sd():
    torch.manual_seed(5)
    return build_model(PRESETS["tiny"]).state_dict()


@pytest.fixture
def project_ckpt(tmp_path, tiny_sd):
    path = tmp_path / "tiny.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": PRESETS["tiny"].to_dict(),
            "categories": CATEGORIES,
            "model": tiny_sd,
            "train_state": {"step": 3},
        },
        path,
    )
    return path


def assert_weights_equal(model, sd):
    got = model.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_project_checkpoint(project_ckpt, tiny_sd):
    p = load_pretrained(project_ckpt)
    assert p.config == PRESETS["tiny"]
    assert [c["name"] for c in p.categories.items] == ["blob", "ground"]
    assert p.categories.num_classes == 5
    assert not p.model.training and str(project_ckpt) in p.source
    assert_weights_equal(p.model, tiny_sd)


@pytest.mark.parametrize("convert", [to_original, to_hf, dict])
def test_state_dicts_infer_their_preset(tmp_path, tiny_sd, convert):
    path = tmp_path / "detr.pth"
    torch.save({"model": convert(tiny_sd)}, path)
    p = load_pretrained(path)
    assert p.config == PRESETS["tiny"]
    assert p.categories.num_classes == 5
    assert_weights_equal(p.model, tiny_sd)


def test_training_checkpoint_of_the_original_code(tmp_path, tiny_sd):
    """DETR's main.py also saves its argparse options and optimizer state."""
    import argparse

    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(lr=1e-4, backbone="resnet18", masks=True, output_dir="out")
    torch.save({"model": to_original(tiny_sd), "optimizer": {"state": {}}, "epoch": 3, "args": args}, path)
    assert_weights_equal(load_pretrained(path).model, tiny_sd)


def test_pickled_objects_stay_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Path("/etc")}, path)  # a class weights_only does not allow
    with pytest.raises(WeightsError, match=r"evil\.pth: not a readable checkpoint"):
        load_pretrained(path)


def test_original_checkpoint_gets_coco_categories(tmp_path):
    config = PRESETS["tiny"].with_overrides(num_classes=250)
    path = tmp_path / "detr.pth"
    torch.save({"model": to_original(build_model(config).state_dict())}, path)
    p = load_pretrained(path)
    assert p.config.with_overrides(dropout=0.0) == config and len(p.categories.items) == 133


def test_wrong_preset_for_the_file(tmp_path, tiny_sd):
    path = tmp_path / "detr.pth"
    torch.save({"model": to_original(tiny_sd)}, path)
    with pytest.raises(
        WeightsError, match=r"detr\.pth holds a tiny model, not detr_r18_small; drop --preset"
    ):
        load_pretrained(path, preset="detr_r18_small")


def test_a_bare_state_dict_takes_the_named_presets_untold_settings(tmp_path):
    """DC5 and the mask options leave no trace in the tensors: --preset supplies them."""
    config = PRESETS["detr_r18_small"]
    path = tmp_path / "small.pth"
    torch.save(build_model(config).state_dict(), path)
    named = load_pretrained(path, preset="detr_r18_small").config
    assert named.with_overrides(dropout=config.dropout) == config
    assert not load_pretrained(path).config.dilation  # without it: the original architecture


def test_keys_that_do_not_fit(tmp_path, tiny_sd):
    path = tmp_path / "detr.pth"
    sd = dict(tiny_sd)
    del sd["mask_head.lay1.bias"]
    torch.save({"model": sd}, path)
    with pytest.raises(
        WeightsError, match=r"weights in .*detr\.pth do not fit .* 1 missing: mask_head.lay1.bias"
    ):
        load_pretrained(path, preset="tiny")


def test_wrong_preset_for_a_project_checkpoint(project_ckpt):
    with pytest.raises(WeightsError, match="holds a tiny model, not detr_r18_small"):
        load_pretrained(project_ckpt, preset="detr_r18_small")


def test_unknown_preset(project_ckpt):
    with pytest.raises(WeightsError, match="unknown preset 'r50'"):
        load_pretrained(project_ckpt, preset="r50")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        load_pretrained(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="detr_r50_panoptic"):  # a mistyped name lists the names
        load_pretrained("detr_r50")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(WeightsError, match=r"notes\.pth: not a readable checkpoint.*torch\.save"):
        load_pretrained(path)


def test_truncated_checkpoint(tmp_path, project_ckpt):
    path = tmp_path / "cut.pt"
    path.write_bytes(project_ckpt.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"cut\.pt: not a readable checkpoint"):
        load_pretrained(path)


def test_other_objects(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(WeightsError, match=r"other\.pt: not a checkpoint of this model.*'epoch'"):
        load_pretrained(path)
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)  # a state dict, but not of DETR
    with pytest.raises(WeightsError, match=r"other\.pt: not a DETR panoptic state dict.*conv\.weight"):
        load_pretrained(path)


def test_demo(monkeypatch, tmp_path, project_ckpt):
    monkeypatch.setattr(loading, "demo_path", lambda: tmp_path / "missing" / "demo.pt")
    with pytest.raises(WeightsError, match="demo weights are not bundled.*demo.pt"):
        load_pretrained("demo")
    monkeypatch.setattr(loading, "demo_path", lambda: project_ckpt)
    assert load_pretrained("demo").config == PRESETS["tiny"]


# -- named checkpoints: download, hash check, cache -------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def register(monkeypatch, url: str, hash_prefix: str) -> str:
    monkeypatch.setitem(WEIGHTS, "tiny_remote", PretrainedWeights("tiny", url, hash_prefix))
    return "tiny_remote"


def test_download_checks_hash_and_caches(monkeypatch, hub, tmp_path, tiny_sd):
    src = tmp_path / "served" / "detr-tiny-0000.pth"
    src.parent.mkdir()
    torch.save({"model": to_original(tiny_sd)}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    name = register(monkeypatch, src.as_uri(), digest[:8])
    p = load_pretrained(name)
    assert (hub / src.name).is_file() and str(hub / src.name) in p.source
    assert_weights_equal(p.model, tiny_sd)
    src.unlink()  # the second time it comes from the cache
    assert load_pretrained(name).config == PRESETS["tiny"]


def test_download_with_a_wrong_hash(monkeypatch, hub, tmp_path, tiny_sd):
    src = tmp_path / "detr-tiny-0000.pth"
    torch.save({"model": tiny_sd}, src)
    name = register(monkeypatch, src.as_uri(), "deadbeef")
    with pytest.raises(WeightsError, match=f"could not download {src.as_uri()}.*put it at {hub}"):
        load_pretrained(name)
    assert not (hub / src.name).exists()


def test_offline(monkeypatch, hub):
    url = "http://127.0.0.1:9/detr-tiny-0000.pth"  # nothing listens on the discard port
    name = register(monkeypatch, url, "00000000")
    with pytest.raises(WeightsError) as err:
        load_pretrained(name)
    assert f"could not download {url}" in str(err.value)
    assert f"put it at {hub / 'detr-tiny-0000.pth'}" in str(err.value)


def test_wrong_file_in_the_cache(monkeypatch, hub):
    record = WEIGHTS["detr_r50_panoptic"]
    hub.mkdir(parents=True)
    (hub / record.filename).write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsError, match=r"wrong file for detr_r50_panoptic.*delete it"):
        load_pretrained("detr_r50_panoptic")


def test_named_checkpoint_with_another_preset(monkeypatch, hub):
    with pytest.raises(WeightsError, match="is a detr_r50_panoptic checkpoint, not tiny"):
        load_pretrained("detr_r50_panoptic", preset="tiny")


def test_a_released_model_is_freed_and_read_again_from_its_file(project_ckpt, tiny_sd):
    """What an exported runtime's Predictor does with the torch weights it no longer needs."""
    p = load_pretrained(project_ckpt)
    assert (p.config, p.source, p.categories.items[0]["name"]) == (PRESETS["tiny"], str(project_ckpt), "blob")
    first = weakref.ref(p.model)
    assert p.release() and p.released
    assert first() is None  # nothing else held it
    assert_weights_equal(p.model, tiny_sd)  # read again when asked for
    assert not p.released and not p.model.training
    kept = loading.Pretrained(p.model, p.config, p.categories, "in memory")
    assert not kept.release() and not kept.released  # nothing to read it again from


def test_a_released_model_is_not_read_from_a_changed_file(project_ckpt):
    p = load_pretrained(project_ckpt)
    p.release()
    st = project_ckpt.stat()
    os.utime(project_ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # e.g. training wrote it again
    with pytest.raises(WeightsError, match=r"tiny\.pt changed or went away since its weights were read"):
        p.model.eval()
    project_ckpt.unlink()
    with pytest.raises(WeightsError, match="changed or went away"):
        p.model.eval()


def test_dc5_is_read_from_the_file_name(tmp_path):
    """DC5 weights have R50's shapes; the original file names say dc5."""
    config = PRESETS["tiny"].with_overrides(backbone="resnet50")
    sd = to_original(build_model(config).state_dict())
    for name, dilation in (("detr-r50-dc5-panoptic-da08f1b1.pth", True), ("detr-r50.pth", False)):
        torch.save({"model": sd}, tmp_path / name)
        assert load_pretrained(tmp_path / name).config.dilation is dilation
