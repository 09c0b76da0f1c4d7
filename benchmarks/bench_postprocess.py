"""Post-processing alone: 20 kept segments to a 480x640 image, 2 threads.

    PYTHONPATH=src python benchmarks/bench_postprocess.py [--threads 2] [--repeat 30]

Designed DETR outputs: 100 queries, 250 classes + no-object, 20 confident (3 of them duplicates
of one stuff class, so the filter loop runs twice as in real images), smooth mask logits at
stride 4. Two input geometries: the network input at 480x640 (masks 120x160) and a COCO photo
fed at 800x1066 (masks 200x267) with its result at 480x640. Median wall time of `repeat` runs;
`--original` also times a step-by-step transcription of the original algorithm (loops, softmax,
PIL resize, per-segment areas) for comparison.
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timing import median_time

from panoptic_detr.model.postprocess import panoptic_postprocess


def designed_outputs(mask_hw: tuple[int, int], kept: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n, k = 100, 250
    logits = torch.randn(n, k + 1, generator=g)
    logits[:, k] += 6  # most queries: no-object
    queries = torch.randperm(n, generator=g)[:kept]
    classes = torch.randint(1, 200, (kept,), generator=g)
    classes[-3:] = 184  # duplicated stuff
    logits[queries, classes] += 14
    coarse = torch.randn(n, mask_hw[0] // 16, mask_hw[1] // 16, generator=g) * 6
    masks = F.interpolate(coarse[None], size=mask_hw, mode="bilinear", align_corners=False)[0]
    return logits, masks.contiguous()


def original_style(logits, masks, processed, target, is_thing, threshold=0.85):
    """The original's steps with its costs: loops over segments, softmax, PIL round trip."""
    scores, labels = logits.softmax(-1).max(-1)
    keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)
    classes = labels[keep]
    m = F.interpolate(masks[keep][None], size=processed, mode="bilinear").squeeze(0).flatten(1)
    h, w = processed
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(classes.tolist()):
        if not is_thing[c]:
            groups.setdefault(c, []).append(i)

    def ids_area(m, n, dedup):
        ids = m.transpose(0, 1).softmax(-1).argmax(-1).view(h, w)
        if dedup:
            for eq in groups.values():
                for e in eq:
                    ids.masked_fill_(ids.eq(e), eq[0])
        rgb = np.stack([ids % 256, ids // 256, ids // 65536], -1).astype(np.uint8)
        img = Image.fromarray(rgb).resize((target[1], target[0]), Image.NEAREST)
        a = np.asarray(img).astype(np.int64)
        ids = torch.from_numpy(a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2])
        return [ids.eq(i).sum().item() for i in range(n)]

    area = ids_area(m, len(classes), True)
    while True:
        small = torch.tensor([a <= 4 for a in area])
        if not small.any():
            break
        classes, m = classes[~small], m[~small]
        area = ids_area(m, len(classes), False)
    return area


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--original", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    is_thing = torch.zeros(250, dtype=torch.bool)
    is_thing[1:91] = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat}")
    for processed, mask_hw in [((480, 640), (120, 160)), ((800, 1066), (200, 267))]:
        target = (480, 640)
        logits, masks = designed_outputs(mask_hw)
        with torch.inference_mode():
            res = panoptic_postprocess(logits, masks, processed, processed, target, is_thing)
            ours = partial(panoptic_postprocess, logits, masks, processed, processed, target, is_thing)
            t = median_time(ours, args.repeat)
            line = (f"input {processed[0]}x{processed[1]} (masks {mask_hw[0]}x{mask_hw[1]}) -> "
                    f"{target[0]}x{target[1]}, 20 kept, {len(res.segments_info)} segments: {t * 1e3:.1f} ms")
            if args.original:
                theirs = partial(original_style, logits, masks, processed, target, is_thing)
                t0 = median_time(theirs, max(3, args.repeat // 5))
                line += f"; original-style: {t0 * 1e3:.1f} ms"
        print(line)


if __name__ == "__main__":
    main()
