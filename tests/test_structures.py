import torch

from panoptic_detr.ops.panoptic import segment_stats
from panoptic_detr.structures import Categories, PaddedBatch


def test_padded_batch_sizes_and_mask():
    a, b = torch.randn(3, 5, 7), torch.randn(3, 8, 4)
    batch = PaddedBatch.from_images([a, b])
    assert batch.images.shape == (2, 3, 8, 7)
    assert batch.sizes == [(5, 7), (8, 4)]
    assert torch.equal(batch.images[0, :, :5, :7], a)
    assert batch.images[0, :, 5:].abs().sum() == 0 and batch.mask[0, 5:].all()
    assert batch.mask[1, :, 4:].all() and not batch.mask[1, :, :4].any()


def test_segment_stats_matches_loop():
    g = torch.Generator().manual_seed(1)
    id_map = torch.randint(0, 6, (23, 31), generator=g)
    ids = torch.tensor([5, 1, 3, 9])
    area, bbox = segment_stats(id_map, ids)
    for k, i in enumerate(ids.tolist()):
        m = id_map == i
        assert area[k] == m.sum()
        if m.any():
            ys, xs = torch.nonzero(m, as_tuple=True)
            exp = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert bbox[k].tolist() == [int(v) for v in exp]
        else:
            assert bbox[k].tolist() == [0, 0, 0, 0]


def test_coco_categories():
    cats = Categories.coco_panoptic()
    assert len(cats.items) == 133 and cats.num_classes == 250
    assert cats.isthing(1) and not cats.isthing(184) and cats.name(1) == "person"
    things = [c["id"] for c in cats.items if c["isthing"]]
    assert min(things) == 1 and max(things) == 90 and len(things) == 80
    # the original's is_thing_map, {i: i <= 90 for i in range(201)}, unused ids included
    mask = cats.thing_mask()
    assert mask[:201].tolist() == [i <= 90 for i in range(201)] and not mask[201:].any()
    assert [cats.isthing(i) for i in range(250)] == mask.tolist()
