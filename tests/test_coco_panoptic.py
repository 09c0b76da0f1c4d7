"""CocoPanoptic: targets agree with the JSON and PNGs, layouts are found, errors name files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from panoptic_detr.data.coco_panoptic import CocoPanoptic, find_layout
from panoptic_detr.data.collate import collate_padded
from panoptic_detr.data.files import write_png
from panoptic_detr.data.images import ImageError
from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.data.synth import make_dataset, make_scene


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    make_dataset(root, 3, seed=11, size=(40, 56), crowd_prob=1.0, progress=False)
    return root


def _check_against_json(ds: CocoPanoptic, index: int) -> None:
    image, target = ds[index]
    info, ann = ds.image_infos[index], ds.annotations[index]
    h, w = info["height"], info["width"]
    assert image.shape == (3, h, w) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert target.orig_size == target.size == (h, w) and target.image_id == info["id"]
    segs = {s["id"]: s for s in ann["segments_info"]}
    assert set(target.segment_ids.tolist()) == set(segs)
    id_map = read_panoptic_png(ds.png_path(index))
    # the masks partition exactly the non-void pixels
    assert torch.equal(target.masks.sum(0), torch.from_numpy(id_map != 0).long())
    for k, sid in enumerate(target.segment_ids.tolist()):
        s = segs[sid]
        assert torch.equal(target.masks[k], torch.from_numpy(id_map == sid))
        assert target.labels[k] == s["category_id"] and bool(target.iscrowd[k]) == bool(s["iscrowd"])
        assert target.area[k] == s["area"]
        x, y, bw, bh = s["bbox"]
        expected = torch.tensor([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
        torch.testing.assert_close(target.boxes[k], expected)


def test_reference_ground_truth(reference):
    gt = reference / "pq" / "gt"
    ds = CocoPanoptic(json_path=gt / "panoptic_examples.json", image_dir=reference / "images")
    assert len(ds) == 2 and len(ds.categories.items) == 133
    assert ds.categories.name(1) == "person" and ds.categories.isthing(1)
    assert not ds.categories.isthing(184)
    for i in range(len(ds)):
        _check_against_json(ds, i)
    assert any(ds[i][1].iscrowd.any() for i in range(2))  # the sample has crowd regions
    # the same dataset found from its folder (a lone JSON beside its PNG folder)
    ds2 = CocoPanoptic(gt, image_dir=reference / "images")
    assert ds2.json_path == ds.json_path and ds2.png_dir == gt / "panoptic_examples"
    id_map, segs = ds2.load_panoptic(1)
    assert id_map.shape == (360, 640) and segs == ds.annotations[1]["segments_info"]


def test_synthetic_dataset(synth_root):
    ds = CocoPanoptic(synth_root)
    assert (ds.json_path, ds.png_dir, ds.image_dir) == (
        synth_root / "panoptic.json", synth_root / "panoptic", synth_root / "images")
    assert len(ds) == 3 and ds.categories.name(1) == "circle"
    for i in range(len(ds)):
        _check_against_json(ds, i)
        _, id_map, segs = make_scene(11, ds.image_infos[i]["id"], (40, 56), crowd_prob=1.0)
        assert np.array_equal(ds.load_panoptic(i)[0], id_map)


def test_coco_layout_and_transforms(synth_root, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(synth_root / "panoptic.json", root / "annotations" / "panoptic_val2017.json")
    shutil.copytree(synth_root / "panoptic", root / "annotations" / "panoptic_val2017")
    shutil.copytree(synth_root / "images", root / "val2017")
    assert find_layout(root) == (root / "annotations" / "panoptic_val2017.json",
                                 root / "annotations" / "panoptic_val2017", root / "val2017")

    def flip(image, target):
        target.masks = target.masks.flip(-1)
        return image.flip(-1), target

    plain = CocoPanoptic(root)
    flipped = CocoPanoptic(root, transforms=flip)
    a, ta = plain[1]
    b, tb = flipped[1]
    assert torch.equal(a.flip(-1), b) and torch.equal(ta.masks.flip(-1), tb.masks)


def test_errors_name_the_file(synth_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(synth_root, root)
    ds = CocoPanoptic(root)  # lazy: nothing decoded yet
    (root / "images" / "000000.jpg").unlink()
    with pytest.raises(ImageError, match="000000.jpg: no such file"):
        ds[0]
    write_png(root / "images" / "000001.jpg", np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="000001.jpg: image is 10x10 but its panoptic PNG"):
        ds[1]
    with pytest.raises(IndexError):
        ds[3]
    (root / "panoptic" / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="000002.png: unreadable panoptic PNG"):
        ds.load_target(2)
    (root / "panoptic" / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="000002.png: missing panoptic PNG"):
        ds[2]
    with pytest.raises(FileNotFoundError, match="no panoptic.json"):
        CocoPanoptic(tmp_path / "broken" / "images")
    with pytest.raises(FileNotFoundError, match="no such dataset"):
        CocoPanoptic(tmp_path / "nowhere")


def test_absent_segments_are_left_out(synth_root, tmp_path):
    root = tmp_path / "extra"
    shutil.copytree(synth_root, root)
    data = json.loads((root / "panoptic.json").read_text())
    data["annotations"][0]["segments_info"].append(
        {"id": 999, "category_id": 1, "iscrowd": 0, "area": 5, "bbox": [0, 0, 1, 1]})
    (root / "panoptic.json").write_text(json.dumps(data))
    _, target = CocoPanoptic(root)[0]
    assert 999 not in target.segment_ids.tolist()
    assert len(target) == len(data["annotations"][0]["segments_info"]) - 1


def test_collate_padded(reference):
    gt = reference / "pq" / "gt"
    ds = CocoPanoptic(gt, image_dir=reference / "images")
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_padded)
    batch, targets = next(iter(loader))
    assert batch.images.shape == (2, 3, 427, 640) and batch.sizes == [(427, 640), (360, 640)]
    assert torch.equal(batch.images[1, :, :360], ds[1][0]) and batch.images[1, :, 360:].abs().sum() == 0
    assert [t.image_id for t in targets] == [142238, 439180]
