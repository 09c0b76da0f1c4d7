"""Joint augmentations: masks stay aligned with the image, boxes follow masks, determinism."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from panoptic_detr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PanopticTransform,
    RandomSizeCrop,
    eval_transforms,
    train_transforms,
)
from panoptic_detr.ops.boxes import cxcywh_to_xyxy, masks_to_boxes_xyxy
from panoptic_detr.structures import Target


def scene(h: int = 60, w: int = 80) -> tuple[torch.Tensor, Target]:
    """Three rectangles; channel 0 of the image is 1 exactly on segment 0."""
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[0, 5:30, 10:40] = True
    masks[1, 35:55, 50:75] = True
    masks[2, 40:58, 2:20] = True
    image = torch.zeros(3, h, w)
    image[0] = masks[0].float()
    image[1] = torch.linspace(0, 1, w)
    t = Target(masks=masks, labels=torch.tensor([1, 2, 3]), boxes=torch.zeros(3, 4),
               iscrowd=torch.tensor([False, False, True]), area=masks.sum((1, 2)).float(), image_id=7,
               orig_size=(h, w), size=(h, w), segment_ids=torch.tensor([11, 12, 13]))
    return image, t


def test_flip_twice_is_identity_and_flips_boxes():
    image, t = scene()
    flip = PanopticTransform(v2.RandomHorizontalFlip(p=1.0), normalize=False)
    im1, t1 = flip(image, t)
    assert torch.equal(im1, image.flip(-1)) and torch.equal(t1.masks, t.masks.flip(-1))
    ident = PanopticTransform(None, normalize=False)(image, t)[1]
    torch.testing.assert_close(t1.boxes[:, 0], 1 - ident.boxes[:, 0])  # cx mirrored
    im2, t2 = flip(im1, t1)
    assert torch.equal(im2, image) and torch.equal(t2.masks, t.masks)
    torch.testing.assert_close(t2.boxes, ident.boxes)


def test_train_transforms_keep_masks_aligned_and_boxes_consistent():
    image, t = scene()
    tf = train_transforms(scales=(40, 48, 56), max_size=90, crop_scales=(50, 60), crop_min=30, crop_max=50)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out, tt = tf(image, t, generator=g)
        h, w = out.shape[-2:]
        assert tt.size == (h, w) and tt.masks.shape[-2:] == (h, w)
        assert tt.masks.flatten(1).any(1).all()  # emptied segments dropped
        expected = masks_to_boxes_xyxy(tt.masks) / torch.tensor([w, h, w, h])
        torch.testing.assert_close(cxcywh_to_xyxy(tt.boxes), expected)
        torch.testing.assert_close(tt.area, tt.masks.flatten(1).sum(1).float())
        # segment 0 is where channel 0 was 1: the image and masks moved together
        raw0 = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        if 11 in tt.segment_ids.tolist():
            m0 = tt.masks[tt.segment_ids.tolist().index(11)]
            seen = raw0 > 0.5
            assert (seen & m0).sum() / (seen | m0).sum() > 0.75  # IoU; a misaligned pair gives ~0
        else:
            assert (raw0 > 0.5).float().mean() < 0.02
        assert len(tt.labels) == len(tt.iscrowd) == len(tt.segment_ids) == len(tt.masks)


def test_crop_drops_emptied_segments():
    image, t = scene()
    # crop exactly the top-left 30 x 40 region: only segment 0 survives
    crop = PanopticTransform(v2.Lambda(lambda x: v2.functional.crop(x, 0, 0, 30, 40)), normalize=False)
    _, tt = crop(image, t)
    assert tt.segment_ids.tolist() == [11] and tt.labels.tolist() == [1] and tt.size == (30, 40)


def test_deterministic_with_seeded_generator():
    image, t = scene()
    tf = train_transforms(scales=(40, 48, 56), max_size=90, crop_scales=(50, 60), crop_min=30, crop_max=50)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        runs.append([tf(image, t, generator=g) for _ in range(6)])
    outs = set()
    for (a, ta), (b, tb) in zip(*runs, strict=True):
        assert torch.equal(a, b) and torch.equal(ta.masks, tb.masks)
        outs.add((tuple(a.shape), ta.masks.sum().item()))
    assert len(outs) > 1  # and it does vary from call to call
    before = torch.random.get_rng_state()
    tf(image, t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(before, torch.random.get_rng_state())  # global RNG untouched


def test_random_size_crop_bounds_and_eval_resize():
    image, t = scene()
    crop = PanopticTransform(RandomSizeCrop(20, 35), normalize=False)
    for _ in range(10):
        out, _ = crop(image, t)
        assert 20 <= out.shape[-2] <= 35 and 20 <= out.shape[-1] <= 35
    out, tt = eval_transforms(size=30, max_size=100)(image, t)
    assert out.shape[-2:] == (30, 40) and tt.size == (30, 40)
