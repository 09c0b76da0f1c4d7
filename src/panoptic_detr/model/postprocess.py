"""From DETR outputs to a panoptic segmentation: confident queries, per-pixel argmax, filters.

Pure tensor code (no PIL, no loop over pixels). `panoptic_postprocess` reproduces the original
DETR `PostProcessPanoptic` (facebookresearch/detr, models/segmentation.py) segment for segment:

1. keep the queries whose best class is not no-object and whose probability is > threshold;
2. upsample their mask logits bilinearly to the network input size, take the per-pixel argmax;
3. duplicated stuff (several kept queries of one stuff class): the original relabels the pixels
   of the later duplicates to the first query of the class, which leaves the duplicates with
   area 0, so the small-segment filter drops them and the argmax is recomputed among the rest
   *without* merging again: the duplicates' pixels go to whichever remaining query scores best
   there (often not the first query of their class). `stuff_merge="union"` instead keeps one
   segment per stuff class covering the union of its queries' pixels, which is what the merge
   was meant to do;
4. nearest resize of the id map to the original image size (exactly PIL's NEAREST), areas counted
   at that size, segments of <= `min_area` pixels dropped and the argmax recomputed without them,
   until no segment is that small.

Two departures, both deliberate: ids start at 1 (the original numbers segments from 0, which
COCO panoptic tools read as void), and batch padding is cropped away (the mask logits are
cut to the image's own region of the stride-4 grid, then upsampled to the image) instead of
being stretched into the image, so an image's result does not depend on its batch neighbours:
it equals the result of the image alone given the same mask logits on its own region. Without
padding the two agree.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.boxes import cxcywh_to_xyxy
from ..settings import PIXEL_ASSIGNMENTS, PixelAssignment, StuffMerge
from ..structures import PanopticResult

MASK_STRIDE = 4  # mask logits are at the stride of the backbone's C2 features
UPSAMPLE_BYTES = 16 * 2**20
"""When shrinking to the target: the queries upsampled at once, as many as keep their full-size
masks under this (at least one), from which only the sampled pixels are kept. Bounds memory,
and a chunk that stays in a CPU's cache is gathered from faster (800x1066: 4 queries a chunk,
not 16; benchmarks/RESULTS.md, session 7)."""


def _probabilities(pred_logits: Tensor) -> Tensor:
    """Softmax over classes in at least float32: bfloat16 logits (a bfloat16 network, autocast)
    would otherwise be thresholded at bfloat16 precision, so that a query could be kept or not
    depending on which caller rounded first."""
    return pred_logits.softmax(-1, dtype=torch.promote_types(pred_logits.dtype, torch.float32))


def select_queries(pred_logits: Tensor, threshold: float = 0.85) -> list[Tensor]:
    """Indices of the confident queries of every image.

    pred_logits: [B, N, K+1], the last class is no-object.
    Returns B int64 tensors of query indices (ascending) whose best class is a real class with
    probability > `threshold`.
    """
    scores, labels = _probabilities(pred_logits).max(-1)  # B x N
    keep = labels.ne(pred_logits.shape[-1] - 1) & (scores > threshold)
    return [torch.nonzero(k, as_tuple=False).flatten() for k in keep]


def pil_nearest_indices(n_in: int, n_out: int) -> Tensor:
    """[n_out] source index of every output pixel of a PIL NEAREST resize along one axis.

    PIL walks the source with a running double-precision sum (start at scale/2, add
    scale = n_in/n_out per pixel, truncate), which differs from floor((i + 0.5) * scale) for
    about one size pair in five; this reproduces its sum exactly.
    """
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = n_in / n_out
    coords = itertools.accumulate(itertools.repeat(scale, n_out - 1), initial=scale * 0.5)
    return torch.tensor([min(int(c), n_in - 1) for c in coords], dtype=torch.int64)


def _upsample(masks: Tensor, h: int, w: int) -> Tensor:
    """[Q, hm, wm] -> [Q, h, w], bilinear as the original (each query's values do not depend
    on the others', so chunks of queries give the same numbers)."""
    return F.interpolate(masks[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def _sampling_grid(h: int, w: int, H: int, W: int, device: torch.device):
    """Where the nearest resize (h, w) -> (H, W) reads, to compute the argmax only there.

    Returns (src [P] flat indices into h*w of the grid pixels, (gy, gx) grid shape,
    inv_y [H] and inv_x [W] grid row/column read by each target row/column). The grid is the
    target grid when shrinking and the input grid when enlarging (every input pixel is read).
    """
    ys, inv_y = torch.unique(pil_nearest_indices(h, H).to(device), return_inverse=True)
    xs, inv_x = torch.unique(pil_nearest_indices(w, W).to(device), return_inverse=True)
    src = (ys[:, None] * w + xs[None, :]).flatten()
    return src, (int(ys.numel()), int(xs.numel())), inv_y, inv_x


def _first_argmax_of_softmax(vals: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel argmax over queries as the original computes it, on softmax probabilities.

    vals: [Q, P] mask logits, rows of removed queries set to -inf; alive: [Q] bool.
    Returns (idx [P] int64 winning query, tied [P] bool: another query came near the maximum).

    torch's argmax over dim 0 is a slow strided loop, amax a vectorised one: one amax, one
    comparison with the maximum less a tolerance, and byte-sized reductions give the winner
    where it is clear. Where another query comes within the tolerance (exact ties included),
    the original's softmax may round both to one probability and then picks the first: those
    rare pixels are resolved with the softmax itself, over the alive queries as it does.
    """
    q = vals.shape[0]
    top = vals.amax(0)  # P
    near = (vals >= (top - 128 * torch.finfo(vals.dtype).eps)).view(torch.uint8)  # Q x P
    # weight q - k: the largest marks the first query near the maximum; byte-sized integer
    # types keep these passes cheap
    small = torch.uint8 if q < 256 else torch.int32
    down = torch.arange(q, 0, -1, device=vals.device).to(small)[:, None]
    idx = q - (near * down).amax(0).long()
    tied = near.sum(0, dtype=small) > 1
    if bool(tied.any()):
        pix = torch.nonzero(tied).flatten()
        rows = torch.nonzero(alive).flatten()
        sub = vals.index_select(1, pix).index_select(0, rows).t().contiguous()  # n x Q_alive
        idx[pix] = rows[sub.softmax(-1).argmax(-1)]
    return idx, tied


def _boxes(grid_ids: Tensor, s: int, inv_y: Tensor | None, inv_x: Tensor | None) -> Tensor:
    """[s, 4] int64 COCO boxes [x, y, w, h] of ids 1..s of `grid_ids` ([gy, gx]) in the target
    frame (grid row/column of every target row/column: inv_y [H], inv_x [W]; None = same).

    Two scatters over the pixels mark which rows and which columns hold each id; the extents
    follow from those small tables. Nearest enlarging is monotone, so a grid row maps to a
    contiguous band of target rows: first and last target row of the extreme grid rows.
    """
    gy, gx = grid_ids.shape
    rows = torch.zeros((gy, s + 1), dtype=torch.bool, device=grid_ids.device)
    rows.scatter_(1, grid_ids, True)  # rows[y, id]: id occurs in row y
    cols = torch.zeros((s + 1, gx), dtype=torch.bool, device=grid_ids.device)
    cols.scatter_(0, grid_ids, True)  # cols[id, x]: id occurs in column x
    rows, cols = rows[:, 1:].t(), cols[1:]  # s x gy, s x gx

    def extent(present: Tensor, inv: Tensor | None) -> tuple[Tensor, Tensor]:
        n = present.shape[1]
        ar = torch.arange(n, device=present.device)
        lo = torch.where(present, ar, n).amin(1)
        hi = torch.where(present, ar, -1).amax(1)
        if inv is None:
            return lo, hi - lo + 1
        lo_t = torch.searchsorted(inv, lo.contiguous())
        hi_t = torch.searchsorted(inv, hi.contiguous(), right=True)
        return lo_t, hi_t - lo_t

    y0, h = extent(rows, inv_y)
    x0, w = extent(cols, inv_x)
    return torch.stack([x0, y0, w, h], dim=1)


def _stuff_representatives(labels: Tensor, alive: Tensor, is_thing: Tensor) -> Tensor:
    """[Q] index of the first alive query of the same stuff class (itself for things/dead)."""
    q = labels.shape[0]
    ar = torch.arange(q, device=labels.device)
    stuff = alive & ~is_thing[labels]
    first = torch.full((int(is_thing.shape[0]),), q, dtype=torch.int64, device=labels.device)
    first.scatter_reduce_(0, labels[stuff], ar[stuff], "amin")
    return torch.where(stuff, first[labels], ar)


def panoptic_postprocess(
    pred_logits: Tensor,
    mask_logits: Tensor,
    input_size: tuple[int, int],
    padded_size: tuple[int, int],
    target_size: tuple[int, int],
    is_thing: Tensor,
    threshold: float = 0.85,
    min_area: int = 4,
    stuff_merge: StuffMerge = "original",
    query_idx: Tensor | None = None,
    pred_boxes: Tensor | None = None,
    overlap_threshold: float = 0.0,
    pixel_assignment: PixelAssignment = "mask",
) -> PanopticResult:
    """Panoptic segmentation of one image from its DETR outputs.

    pred_logits: [N, K+1] class logits (last = no-object).
    mask_logits: [Q, hm, wm] mask logits at stride 4 of the padded batch, for the queries
        `query_idx` ([Q] int64 into N), or for all N queries when `query_idx` is None. Queries
        kept by the threshold must be among them.
    input_size: (h, w) of the image as the network saw it, without padding.
    padded_size: (Hp, Wp) of the padded batch tensor; where (h, w) is smaller, the mask grid
        is cropped to the image's region (its first ceil(h/4) x ceil(w/4) cells).
    target_size: (H, W) of the result (the original image).
    is_thing: [K] bool by class index (`Categories.thing_mask()`).
    stuff_merge: "original" reproduces the original's handling of duplicated stuff (see the
        module docstring); "union" gives one segment per stuff class, the union of its queries'
        pixels, scored by its most confident query.
    pred_boxes: optional [N, 4] normalised (cx, cy, w, h); when given, each segment also gets
        "pred_bbox" [x, y, w, h], its query's box in target pixels.
    overlap_threshold: > 0 also drops, with the small segments, every thing query that wins
        less than this share of its own mask (its pixels with a mask logit > 0), counted at the
        target size (`settings.InferenceSettings.overlap_threshold`); 0 is the original.
    pixel_assignment: "mask" (the original) gives each pixel to the kept query with the highest
        mask logit; "score" to the highest class score x sigmoid(mask logit), as Mask2Former's
        panoptic inference (`settings.InferenceSettings.pixel_assignment`).
    Returns a PanopticResult at target_size: ids 1..S in query order, 0 = void; segments_info
    with id, category_id, isthing, area, score and the mask's bbox [x, y, w, h].
    """
    if stuff_merge not in ("original", "union"):
        raise ValueError(f"stuff_merge must be 'original' or 'union', got {stuff_merge!r}")
    if pixel_assignment not in PIXEL_ASSIGNMENTS:
        raise ValueError(f"pixel_assignment must be one of {PIXEL_ASSIGNMENTS}, got {pixel_assignment!r}")
    H, W = int(target_size[0]), int(target_size[1])
    h, w = int(input_size[0]), int(input_size[1])
    device = pred_logits.device
    void = PanopticResult(torch.zeros((H, W), dtype=torch.int64, device=device), [])
    scores, labels = _probabilities(pred_logits).max(-1)  # N
    keep = select_queries(pred_logits[None], threshold)[0]
    if keep.numel() == 0:
        return void
    if query_idx is None:
        rows = keep
    else:
        match = query_idx.to(device)[None, :] == keep[:, None]  # kept x Q
        if not bool(match.any(1).all()):
            raise ValueError("some confident queries have no mask logits in query_idx")
        rows = match.int().argmax(1)
    scores, labels = scores[keep], labels[keep]
    q = int(keep.numel())

    masks = mask_logits[rows]  # Q x hm x wm
    # Crop the padding away first: the image's own region of the stride-4 grid is its first
    # ceil(h/4) x ceil(w/4) cells (ResNet's C2), so the result depends only on those logits
    # and equals what the image alone would give. Unpadded, this is the original's resize.
    if h < int(padded_size[0]):
        masks = masks[:, : min(masks.shape[1], -(-h // MASK_STRIDE))]
    if w < int(padded_size[1]):
        masks = masks[:, :, : min(masks.shape[2], -(-w // MASK_STRIDE))]
    # the argmax commutes with the nearest resize: take it only at the pixels the resize reads
    src, (gy, gx), inv_y, inv_x = _sampling_grid(h, w, H, W, device)
    if gy * gx == h * w:
        vals = _upsample(masks, h, w).view(q, h * w)  # Q x P, P = h * w
    else:  # a few queries at a time: only the sampled pixels of all of them are kept
        vals = masks.new_empty((q, gy * gx))  # Q x P, P = gy * gx
        chunk = max(1, UPSAMPLE_BYTES // (h * w * masks.element_size()))
        for c in range(0, q, chunk):
            up = _upsample(masks[c : c + chunk], h, w)
            vals[c : c + chunk] = up.view(-1, h * w).index_select(1, src)
    identity_out = (gy, gx) == (H, W)
    weight = None  # target pixels per grid pixel, where the resize enlarges
    if not identity_out:
        weight = torch.bincount(inv_y, minlength=gy)[:, None] * torch.bincount(inv_x, minlength=gx)
        weight = weight.flatten().to(torch.float64)

    alive = torch.ones(q, dtype=torch.bool, device=device)
    ar = torch.arange(q, device=device)
    own = None  # target pixels of each query's own mask (logit > 0), for `overlap_threshold`
    if overlap_threshold > 0:
        inside = (vals > 0).to(torch.float64)
        own = inside.sum(1) if weight is None else inside @ weight
    if pixel_assignment == "score":  # log(score x sigmoid(logit)): the same argmax, no underflow
        vals = F.logsigmoid(vals) + scores.log()[:, None]
    idx, tied = _first_argmax_of_softmax(vals, alive)  # P
    while True:
        # Merge duplicated stuff into its first query. The original merges on its first pass
        # only, but there the duplicates end with area 0 and are dropped, so merging on every
        # pass is the same; "union" instead filters whole groups and so keeps them merged.
        rep = _stuff_representatives(labels, alive, is_thing)
        per_query = torch.bincount(idx, weights=weight, minlength=q)  # target pixels
        area = torch.zeros_like(per_query).index_add_(0, rep, per_query)  # on representatives
        area = area.round().to(torch.int64) if weight is not None else area
        small = alive & ((area[rep] if stuff_merge == "union" else area) <= min_area)
        if own is not None:  # a thing left with a small part of its own mask: a fragment
            small |= alive & is_thing[labels] & (per_query < overlap_threshold * own)
        if not bool(small.any()):
            break
        alive &= ~small
        if not bool(alive.any()):
            return void
        # vals is ours (a fresh upsample or gather): dropped queries never win again
        vals.index_fill_(0, torch.nonzero(small).flatten(), float("-inf"))
        # only pixels won by a dropped query, or tied, can change: elsewhere the maximum stays
        # and the set of queries near it only shrinks
        pix = torch.nonzero(small[idx] | tied).flatten()
        idx[pix], tied[pix] = _first_argmax_of_softmax(vals.index_select(1, pix), alive)

    # segments: the alive representatives, numbered 1..S in query order
    heads = torch.nonzero(alive & (rep == ar)).flatten()
    s = int(heads.numel())
    lut = torch.zeros(q, dtype=torch.int64, device=device)
    lut[heads] = torch.arange(1, s + 1, device=device)
    grid_ids = lut[rep][idx].view(gy, gx)
    id_map = grid_ids if identity_out else grid_ids[inv_y[:, None], inv_x[None, :]]  # H x W
    box = _boxes(grid_ids, s, inv_y if not identity_out else None, inv_x if not identity_out else None)
    seg_scores = torch.zeros(q, dtype=scores.dtype, device=device)
    seg_scores.scatter_reduce_(0, rep[alive], scores[alive], "amax", include_self=False)

    pred_xywh = None
    if pred_boxes is not None:
        xyxy = cxcywh_to_xyxy(pred_boxes[keep].float()) * torch.tensor([W, H, W, H], device=device)
        pred_xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()

    segments = []
    for j, (k, a, b) in enumerate(zip(heads.tolist(), area[heads].tolist(), box.tolist(), strict=True)):
        cat = int(labels[k])
        info = {
            "id": j + 1,
            "category_id": cat,
            "isthing": bool(is_thing[cat]),
            "area": int(a),
            "score": float(seg_scores[k]),
            "bbox": [int(v) for v in b],
        }
        if pred_xywh is not None:
            info["pred_bbox"] = [round(v, 2) for v in pred_xywh[k]]
        segments.append(info)
    return PanopticResult(id_map, segments)
