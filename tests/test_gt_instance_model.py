"""Instance models in build-gt: precedence (annotation > model > stuff), box-only annotations,
the Mask R-CNN loaders, a bad image under the model source (gt.instance_model, gt.box_masks,
compose.merge_things, gt.maskrcnn)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.data.synth import make_dataset, make_scene
from panoptic_detr.gt import build_gt
from panoptic_detr.gt.box_masks import fill_box_masks, rectangle
from panoptic_detr.gt.compose import compose, merge_things
from panoptic_detr.gt.instance_model import Detections, InstanceModelSource, InstanceOutput, SourceError
from panoptic_detr.gt.instances import crop_mask, decode_segmentation
from panoptic_detr.gt.maskrcnn import COCO_MASKRCNN, MaskRCNNConfig, build_small, load_instance_model
from panoptic_detr.gt.taxonomy import STUFF, THING, Rule
from panoptic_detr.model.weights import WeightsError
from panoptic_detr.settings import SettingsError


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ---------------------------------------------------------------- precedence (pure arrays)


def test_annotation_over_model_over_stuff():
    h, w = 20, 30
    user = np.zeros((h, w), np.int64)
    user[2:10, 2:12] = 7  # one annotated instance (id 7), category 1
    same = _square(h, w, 3, 10, 3, 12)  # 63 px, 63 under the annotation: the same object
    beside = _square(h, w, 6, 16, 8, 20)  # 120 px, 16 under the annotation: another object
    sliver = _square(h, w, 2, 6, 11, 13)  # 8 px, 4 under it (not more than half): 4 px are left
    th = merge_things(user, [{"id": 7, "category_id": 1}], [crop_mask(m) for m in (same, beside, sliver)],
                      [2, 3, 4], min_area=5)
    assert th.same_object == 1
    assert [d["category_id"] for d in th.dropped] == [4] and th.dropped[0]["area"] == 4
    (model_id,) = th.model_ids
    assert np.array_equal(th.id_map == 7, user == 7)  # the annotation keeps every pixel
    assert np.array_equal(th.id_map == model_id, beside & (user == 0))  # the model's below it
    assert {s["category_id"] for s in th.segments} == {1, 3}

    stuff = np.ones((h, w), np.int64)  # a stuff source labelling everything class 9
    comp = compose(th.id_map, th.segments, stuff, [{"id": 1, "category_id": 9}],
                   {9: Rule(STUFF, 9)}, {1: True, 3: True, 9: False}, min_area=5)
    cats = {s["id"]: s["category_id"] for s in comp.segments_info}
    label = np.vectorize(lambda i: cats.get(int(i), 0))(comp.id_map)
    assert np.array_equal(label == 1, user == 7)
    assert np.array_equal(label == 3, beside & (user == 0))
    assert np.array_equal(label == 9, (user == 0) & ~beside)  # the sliver's pixels show the stuff


def test_model_instances_keep_apart_from_each_other():
    h, w = 16, 16
    big, small = _square(h, w, 0, 12, 0, 12), _square(h, w, 4, 8, 4, 8)
    th = merge_things(np.zeros((h, w), np.int64), [], [crop_mask(big), crop_mask(small)], [1, 2])
    ids = {s["category_id"]: s["id"] for s in th.segments}
    assert np.array_equal(th.id_map == ids[2], small)  # area order: the smaller on top
    assert np.array_equal(th.id_map == ids[1], big & ~small)


# ---------------------------------------------------------------- build_gt with a constructed model


class _FakeModel:
    """An instance model with fixed answers (no network): one detection per image, and a
    disc inside each given box."""

    spec = "model:fake"
    categories = [{"id": 1, "name": "circle", "isthing": 1}, {"id": 2, "name": "square", "isthing": 1}]

    def __init__(self, mask: np.ndarray | None):
        self.mask = mask
        self.seen: list = []

    def predict_arrays(self, images, boxes=None, wanted=None, *, detect=True):
        self.seen.append((len(images), boxes, wanted, detect))
        return [InstanceOutput(Detections([crop_mask(self.mask)], [2], [0.9]) if detect else None,
                               *self._discs(image.shape[:2], boxes[k] if boxes else [],
                                            wanted[k] if wanted else []))
                for k, image in enumerate(images)]

    @staticmethod
    def _discs(size, boxes, wanted):
        yy, xx = np.mgrid[:size[0], :size[1]]
        out = []
        for x0, y0, x1, y1 in boxes:
            r = min(x1 - x0, y1 - y0) / 2
            out.append((yy + 0.5 - (y0 + y1) / 2) ** 2 + (xx + 0.5 - (x0 + x1) / 2) ** 2 <= r * r)
        return out, [min(wanted[k]) if wanted[k] else 1 for k in range(len(boxes))]


def _dataset(tmp_path: Path, anns: list[dict], size=(40, 60)) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", size[::-1], (90, 120, 40)).save(images / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": size[0], "width": size[1]}],
            "annotations": [{"image_id": 1, **a} for a in anns],
            "categories": [{"id": 1, "name": "circle"}, {"id": 5, "name": "lid"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json", images


def _labels(out: Path) -> tuple[np.ndarray, dict[int, str]]:
    data = json.loads((out / "panoptic.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    ann = data["annotations"][0]
    id_map = read_panoptic_png(out / "panoptic" / ann["file_name"])
    cat = {s["id"]: names[s["category_id"]] for s in ann["segments_info"]}
    return id_map, {i: cat[i] for i in cat}


def test_build_things_from_model_below_annotations(tmp_path):
    polygon = [[2, 2, 30, 2, 30, 20, 2, 20]]  # x 2-30, y 2-20
    ann_json, images = _dataset(tmp_path, [{"id": 1, "category_id": 1, "segmentation": polygon,
                                           "bbox": [2, 2, 28, 18]}])
    model_mask = _square(40, 60, 10, 35, 20, 50)  # overlaps the polygon by about 100 of 750 px
    report = build_gt(ann_json, images, tmp_path / "out", things_from=_FakeModel(model_mask), progress=False)
    id_map, cat = _labels(tmp_path / "out")
    names = np.vectorize(lambda i: cat.get(int(i), ""))(id_map)
    drawn, _ = decode_segmentation(polygon, 40, 60)
    assert np.array_equal(names == "circle", drawn)
    assert np.array_equal(names == "square", model_mask & ~drawn)
    assert report["masks"] == {"drawn": 1, "box": 0, "model_box": 0, "model": 1}
    assert report["things_from"] == "model:fake"
    assert (tmp_path / "out" / "previews" / "a.jpg").is_file()


def test_previews_outline_model_made_masks_apart():
    from panoptic_detr.gt.preview import MODEL_OUTLINE, draw_preview
    from panoptic_detr.structures import Categories

    id_map = np.zeros((20, 30), np.int64)
    id_map[2:10, 2:12], id_map[8:18, 14:28] = 1, 2  # 1 drawn, 2 made by a model
    segs = [{"id": i, "category_id": 1, "isthing": 1} for i in (1, 2)]
    photo = np.full((20, 30, 3), 100, np.uint8)
    args = (photo, id_map, segs, id_map > 0, Categories([{"id": 1, "name": "a", "isthing": 1}]))
    plain = draw_preview(*args, legend=False)
    marked = draw_preview(*args, model_made=id_map == 2, legend=False)
    differs = (plain != marked).any(-1)
    assert differs.any() and not differs[id_map != 2].any()  # only the model's outline changes
    assert (marked[differs] == MODEL_OUTLINE).all() and (plain[differs] == 255).all()


def test_model_instance_on_an_annotation_is_the_same_object(tmp_path):
    polygon = [[2, 2, 30, 2, 30, 20, 2, 20]]
    ann_json, images = _dataset(tmp_path, [{"id": 1, "category_id": 1, "segmentation": polygon}])
    model_mask = _square(40, 60, 4, 24, 4, 32)  # 560 px, 416 of them under the annotation
    report = build_gt(ann_json, images, tmp_path / "out", things_from=_FakeModel(model_mask), progress=False)
    _, cat = _labels(tmp_path / "out")
    assert sorted(cat.values()) == ["circle"]  # no sliver of the model's square around it
    assert report["same_object_dropped"] == 1 and report["masks"]["model"] == 0


@pytest.mark.parametrize("mode", ["box", "fake"])
def test_box_only_annotations_get_masks_inside_their_boxes(tmp_path, mode):
    anns = [{"id": 1, "category_id": 1, "bbox": [4, 6, 20, 16]},  # no segmentation at all
            {"id": 2, "category_id": 5, "bbox": [30, 10, 24, 26], "segmentation": []},
            {"id": 3, "category_id": 1, "segmentation": [[40, 1, 50, 1, 50, 6, 40, 6]]}]  # drawn
    ann_json, images = _dataset(tmp_path, anns)
    box_masks = "box" if mode == "box" else _FakeModel(np.zeros((40, 60), bool))
    report = build_gt(ann_json, images, tmp_path / "out", box_masks=box_masks, progress=False)
    id_map, cat = _labels(tmp_path / "out")
    for name, (x, y, w, h) in (("circle", (4, 6, 20, 16)), ("lid", (30, 10, 24, 26))):
        (sid,) = [i for i, n in cat.items() if n == name and (id_map[y:y + h, x:x + w] == i).any()]
        mask = id_map == sid
        assert mask.sum() > 0.5 * w * h * (1 if mode == "box" else 0.6)
        inside = np.zeros_like(mask)
        inside[y:y + h, x:x + w] = True
        assert not (mask & ~inside).any()
        if mode == "box":
            assert mask.sum() == w * h
    want = {"drawn": 1, "box": 2 if mode == "box" else 0, "model_box": 0 if mode == "box" else 2, "model": 0}
    assert report["masks"] == want


def test_box_only_annotations_without_box_masks_are_reported(tmp_path):
    ann_json, images = _dataset(tmp_path, [{"id": 9, "category_id": 1, "bbox": [4, 6, 20, 16]}])
    report = build_gt(ann_json, images, tmp_path / "out", box_masks=None, progress=False)
    assert any("annotation 9: a box without a segmentation" in p and "--box-masks" in p
               for p in report["problems"])


def test_fill_box_masks_rectangle_and_wanted_classes():
    from panoptic_detr.gt.models import BuildModels

    anns = [{"id": 1, "category_id": 5, "bbox": [1.5, 2, 3, 4]},
            {"id": 2, "category_id": 1, "bbox": [6, 6, 2, 2]}]
    filled, origins = fill_box_masks(anns, 10, 10, "box")
    assert origins == ["box", "box"] and "segmentation" not in anns[0]  # the input is left alone
    assert rectangle([1.5, 2, 4.5, 6], 10, 10).sum() == 3 * 4
    spy = _FakeModel(None)
    models = BuildModels(None, None, spy, {5: {2}})
    (out,) = models.predict_items([({"id": 1}, anns)], [np.zeros((10, 10, 3))])
    ((n, boxes, wanted, detect),) = spy.seen
    assert (n, wanted, detect) == (1, [[{2}, set()]], False)  # the classes that map to each box's class
    np.testing.assert_array_equal(boxes[0], [[1.5, 2, 4.5, 6], [6, 6, 8, 8]])
    empty = np.zeros((10, 10), bool)  # where the model sees nothing, the box is filled
    filled, origins = fill_box_masks(anns, 10, 10, "model", [out.box_masks[0], empty])
    assert origins == ["model_box", "box"]
    assert decode_segmentation(filled[1]["segmentation"], 10, 10)[0].sum() == 4


# ---------------------------------------------------------------- the real networks


def test_box_masks_by_the_standin_lie_in_their_boxes_and_use_the_wanted_channel(tmp_path):
    image, id_map, segs = make_scene(3, 0, (128, 160))
    things = [s for s in segs if s["category_id"] <= 6]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in things)], np.float32)
    source = InstanceModelSource("demo-maskrcnn", device="cpu")
    wanted = [{s["category_id"]} if k % 2 else set() for k, s in enumerate(things)]
    (out,) = source.predict_arrays([image], [boxes], [wanted])
    masks, channels = out.box_masks, out.channels
    assert len(masks) == len(things) > 0
    for k, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes.astype(int), strict=True)):
        outside = mask.copy()
        outside[y0:y1, x0:x1] = False
        assert not outside.any()
        if wanted[k]:
            assert channels[k] == things[k]["category_id"]
        else:
            assert 1 <= channels[k] <= 6
    # the instances of the same backbone run are a plain forward pass's
    found = out.detections
    net = source._load().model
    with torch.inference_mode():
        ref = net([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    keep = ref["scores"] > source.threshold
    ref_masks = (ref["masks"][keep, 0] > 0.5).numpy()
    nonempty = [k for k, m in enumerate(ref_masks) if m.any()]
    assert found.labels == [int(ref["labels"][keep][k]) for k in nonempty]
    for k, (box, crop) in zip(nonempty, found.masks, strict=True):
        assert np.array_equal(ref_masks[k][box], crop) and ref_masks[k][box].sum() == ref_masks[k].sum()


def test_standin_batched_equals_one_by_one():
    """Same-size images in one padded batch give each image's own detections and box masks
    (the padding is the same as alone): the maths says equal, float32 rounding allows a few
    mask pixels on the 0.5 boundary."""
    scenes = [make_scene(5, i, (96, 128)) for i in range(3)]
    images = [im for im, _, _ in scenes]
    boxes = [np.array([[x, y, x + w, y + h] for x, y, w, h in
                       (s["bbox"] for s in segs if s["category_id"] <= 6)],
                      np.float32).reshape(-1, 4) for _, _, segs in scenes]
    wanted = [[set()] * len(b) for b in boxes]
    alone = InstanceModelSource("demo-maskrcnn", 0.05, device="cpu", batched=False)
    together = InstanceModelSource("demo-maskrcnn", 0.05, device="cpu", batched=True)
    one, many = alone.predict_arrays(images, boxes, wanted), together.predict_arrays(images, boxes, wanted)
    assert sum(len(o.detections.labels) for o in one) > 0 and sum(len(b) for b in boxes) > 0
    for a, b in zip(one, many, strict=True):
        assert a.detections.labels == b.detections.labels and a.channels == b.channels
        torch.testing.assert_close(a.detections.scores, b.detections.scores, atol=1e-4, rtol=0)
        for (box_a, crop_a), (box_b, crop_b) in zip(a.detections.masks, b.detections.masks, strict=True):
            full_a, full_b = np.zeros((96, 128), bool), np.zeros((96, 128), bool)
            full_a[box_a], full_b[box_b] = crop_a, crop_b
            assert (full_a != full_b).sum() <= 2
        for ma, mb in zip(a.box_masks, b.box_masks, strict=True):
            assert (ma != mb).sum() <= 2 and ma.any()


def test_standin_checkpoint_records_its_architecture(tmp_path):
    from panoptic_detr.checkpoint import load_checkpoint, save_checkpoint

    config = MaskRCNNConfig(widths=(8, 8, 16, 16), fpn_channels=16, box_head=32, mask_head=(16,))
    net = build_small(config).eval()
    path = save_checkpoint(tmp_path / "m.pt", config.to_dict(), [{"id": 1, "name": "a", "isthing": 1}],
                           net.state_dict())
    assert MaskRCNNConfig.from_dict(load_checkpoint(path)["config"]) == config
    loaded = load_instance_model(path)
    for k, v in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="other.pt: not a Mask R-CNN checkpoint"):
        load_instance_model(tmp_path / "other.pt")


def test_maskrcnn_offline_message_names_the_file_and_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    dest = tmp_path / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    with pytest.raises(SourceError) as err:
        InstanceModelSource("maskrcnn")
    line = str(err.value)
    assert "\n" not in line and COCO_MASKRCNN.url in line and str(dest) in line
    dest.write_bytes(b"not the weights")  # a wrong manual copy is caught by its hash
    with pytest.raises(SourceError, match="wrong file .* delete it"):
        InstanceModelSource("maskrcnn")


def test_the_model_source_under_the_runner_isolates_a_bad_image(tmp_path, monkeypatch):
    """build-gt with an instance model runs through runner.run_images in batches: a corrupt file
    and an image the network fails on cost one line each (naming the file), the others are
    built, their batch-mates included."""
    from panoptic_detr.data.images import load_image

    pan = make_dataset(tmp_path / "d", 4, seed=4, size=(64, 80), progress=False)
    images = pan.parent / "images"
    data = (images / "000001.jpg").read_bytes()
    (images / "000001.jpg").write_bytes(data[: len(data) // 2])  # a header, half the pixels
    poison = load_image(images / "000002.jpg")
    run, calls = InstanceModelSource.predict_arrays, []

    def fails_on_poison(self, batch, *args, **kwargs):
        calls.append(len(batch))
        if any(np.array_equal(im, poison) for im in batch):
            raise RuntimeError("out of memory\nsecond line")
        return run(self, batch, *args, **kwargs)

    monkeypatch.setattr(InstanceModelSource, "predict_arrays", fails_on_poison)
    lines: list[str] = []
    report = build_gt(None, images, tmp_path / "out", things_from="model:demo-maskrcnn,device=cpu",
                      progress=False, log=lines.append, batch_size=2, previews=False)
    assert calls == [1, 2, 1, 1]  # 000000 (its batch-mate unreadable); 000002 + 000003, then one by one
    assert [f["file_name"] for f in report["images"]["failed"]] == ["000001.jpg", "000002.jpg"]
    assert report["images"]["processed"] == 2 and (tmp_path / "out" / "panoptic" / "000003.png").is_file()
    assert [line for line in lines if "000001.jpg" in line] == [
        f"{images / '000001.jpg'}: truncated or corrupt JPEG (image file is truncated "
        "(13 bytes not processed))"]
    assert [line for line in lines if "000002.jpg" in line] == [
        f"{images / '000002.jpg'}: prediction failed (RuntimeError: model:demo-maskrcnn,device=cpu: "
        "out of memory second line)"]


def test_each_model_source_takes_its_own_options(tmp_path):
    """A DETR stuff source and a Mask R-CNN things source, each with its own threshold, size and
    device in its spec; the spec's options win over the flags' defaults; bad values are one
    line naming the spec."""
    from panoptic_detr.gt.instance_model import parse_instance_spec
    from panoptic_detr.gt.sources import open_source, parse_model_spec
    from predict_fixtures import save_checkpoint, tiny_pretrained

    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_pretrained())
    stuff = open_source(f"model:{ckpt}@0.4,size=64,max_size=96,device=cpu", size=32, max_size=32)
    things = parse_instance_spec("model:demo-maskrcnn,threshold=0.3,size=96,max-size=112,device=cpu",
                                 size=200, device="cuda")
    assert (stuff._load().threshold, stuff._load().size, stuff._load().max_size) == (0.4, 64, 96)
    transform = things._load().model.transform
    assert (things.threshold, transform.min_size, transform.max_size) == (0.3, (96,), 112)
    assert str(stuff._load().device) == "cpu" and things.device == "cpu"
    boxes = parse_instance_spec("model:demo-maskrcnn@0.9,size=96,max_size=112,device=cpu", like=things)
    assert boxes._model is things._model and (boxes.threshold, things.threshold) == (0.9, 0.3)
    assert parse_model_spec("model:runs/a,b.pt@0.5,size=10").weights == "runs/a,b.pt"
    for spec, words in (("model:demo,size=0", "size '0' is not a whole number of pixels >= 1"),
                        ("model:demo,size=abc", "size 'abc' is not a whole number"),
                        ("model:demo@x", "threshold 'x' is not a number"),
                        ("model:demo@0.5,threshold=0.6", "threshold given twice"),
                        ("model:demo,size=100,max_size=50", "max_size 50 is below size 100"),
                        ("model:demo,device=gpu", "device 'gpu' is not a device torch knows"),
                        ("model:demo,dtype=bfloat16",
                         "unknown option 'dtype' (this source takes threshold, size, max_size, device)"),
                        ("model:@0.5", "no weights named")):
        with pytest.raises(SourceError) as err:
            parse_instance_spec(spec)
        line = str(err.value)
        assert line.startswith(f"{spec!r}: ") and words in line and "\n" not in line
    with pytest.raises(SourceError, match="unknown option 'batch'"):
        open_source("model:demo,batch=2")
    with pytest.raises(SourceError, match=r"^model:demo-maskrcnn,threshold=1.5: threshold 1.5 is not "):
        parse_instance_spec("model:demo-maskrcnn,threshold=1.5")
    with pytest.raises(SettingsError, match="threshold must be"):  # DETR's range, said as predict says it
        open_source("model:demo,threshold=1")


def test_things_rules_follow_the_taxonomy():
    from panoptic_detr.gt.build import _targets

    class Things:
        spec = "model:x"
        categories = [{"id": 1, "name": "person", "isthing": 1}, {"id": 62, "name": "chair", "isthing": 1}]

    tax, rules, targets = _targets("coco_coarse", None, Things(), lambda line: None)
    assert rules == {} and set(targets) == {1, 62}
    assert tax.by_name["person"]["id"] == targets[1]
    tax, _, targets = _targets(None, None, Things(), lambda line: None)  # identity
    assert {tax.targets[k]["name"] for k in range(2)} == {"person", "chair"}
    assert all(r.mode == THING for r in tax.rules.values())


def test_cli_things_from_without_instances(tmp_path, capsys):
    from panoptic_detr.cli import main

    pan = make_dataset(tmp_path / "d", 2, seed=6, size=(64, 64), progress=False)
    out = tmp_path / "out"
    code = main(["build-gt", "--images", str(pan.parent / "images"), "--out", str(out), "--things-from",
                 "model:demo-maskrcnn@0.3", "--instance-size", "96", "96", "--instance-device", "cpu",
                 "--no-previews", "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["things_from"] == "model:demo-maskrcnn@0.3" and report["images"]["processed"] == 2
    assert main(["build-gt", "--images", str(pan.parent / "images"), "--out", str(tmp_path / "o2")]) == 1
    assert "nothing to build from" in capsys.readouterr().err


def test_standin_training_is_reproducible_from_its_seed(tmp_path):
    from panoptic_detr.checkpoint import load_checkpoint
    from panoptic_detr.gt.train_instance_model import train_instance_model

    config = MaskRCNNConfig(widths=(8, 8, 16, 16), fpn_channels=16, box_head=32, mask_head=(16,),
                            min_size=64, max_size=64)
    runs = [load_checkpoint(train_instance_model(tmp_path / f"{name}.pt", steps=2, seed=seed, batch_size=1,
                                                 size=(64, 64), config=config, log=lambda line: None))
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (r["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert runs[0]["inference"]["trained"]["seed"] == 3
    assert load_instance_model(tmp_path / "a.pt").categories[0]["name"] == "circle"


def _workflow(text: str, after: str) -> list[str]:
    """The commands of the first ```bash block after `after`, continuation lines joined,
    comments dropped."""
    block = text.split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].rstrip() for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line.strip() and not line.startswith("#")]


def test_the_seed_workflow_with_the_standins_runs_as_written(tmp_path, monkeypatch):
    """docs/ground_truth.md's offline workflow (boxes -> build-gt with the stand-ins for every
    model -> check -> evaluate -> train fine-tuning from a checkpoint), command by command, with
    fewer images and steps; the README shows the same commands."""
    import shlex
    import subprocess
    import sys

    from panoptic_detr.cli import main

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "ground_truth.md").read_text()
    commands = _workflow(docs, "The same workflow without a download")
    readme = _workflow((root / "README.md").read_text(), "The workflow offline, as written")
    assert readme and set(readme) <= set(commands) and len(commands) == 7
    monkeypatch.chdir(tmp_path)
    for command in commands:
        command = command.replace("--n 20", "--n 3").replace("configs/", f"{root}/configs/")
        command = command.replace("steps=20 eval_every=20 checkpoint_every=20",
                                  "steps=1 eval_every=1 checkpoint_every=1")
        argv = shlex.split(command)
        if argv[0] == "python":
            subprocess.run([sys.executable, *argv[1:]], check=True)
        else:
            quiet = ["--quiet"] if argv[1] in ("synth", "build-gt") else []
            assert argv[0] == "panoptic-detr" and main(argv[1:] + quiet) == 0, command
    report = json.loads(Path("data/site_gt/report.json").read_text())
    assert report["images"]["processed"] == 3 and report["masks"]["model_box"] > 0
    assert report["stuff_from"] == "model:demo@0.5,size=128,max_size=160"
    assert Path("runs/site/checkpoint_last.pt").is_file()
