"""The whole of `Predictor` as one graph: a decoded image in, its panoptic segmentation out.

`EndToEndGraph` maps an [H, W, 3] uint8 RGB image (any size) to an [H, W] int64 id map and a
segment table, with nothing but tensor operations, so that one ONNX file (`end_to_end.onnx`)
runs it from any ONNX runtime without Python. It chains, for one image:

1. DETR's resize (`data.images.resize_shape`'s rounding, computed from the input's shape) with
   an antialiased bilinear resize of the uint8 image (ONNX `Resize`, antialias=1), which is
   Pillow's (the Python path's) up to 1 grey level on about 1 % of the values in ONNX
   Runtime (torch's own on fewer), then ImageNet normalisation;
2. the detect graph and the mask head for the confident queries only (`graphs.DetectGraph`,
   `graphs.MaskGraph`);
3. `model.postprocess.panoptic_postprocess` for a batch of one, written without Python
   control flow on values: its per-pixel argmax, duplicated-stuff handling and <= `min_area`
   filter are one pass of `_pass`, repeated by `torch.while_loop` (an ONNX Loop) until no
   segment is small; the argmax is taken on the softmax over the alive queries, as the
   original takes it (the Python path's fast argmax equals this, see its docstring).

Two things the Python path does differently, with equal results: it takes the argmax only at
the pixels the final nearest resize reads (here: at every pixel of the network's grid, then
resized), and it counts areas with `bincount` (here: `scatter_add`).

The ONNX file chains three graphs, `PreprocessGraph`, the export's detect.onnx and
`PostprocessGraph` (see `write_end_to_end` for why three); `EndToEndGraph` is the same chain in
torch.

When no query passes the threshold the mask head runs for query 0 alone (so no tensor in the
graph is ever empty) and the result is all void: a zero id map and a table of 0 segments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.export import Dim

from ..data.images import IMAGENET_MEAN, IMAGENET_STD, preprocess
from ..data.synth import make_scene
from ..model import DETRPanoptic
from ..model.inference import segment
from ..ops.boxes import cxcywh_to_xyxy
from ..settings import InferenceSettings
from ..structures import PaddedBatch
from .graphs import DETECT_OUTPUTS, DetectGraph, MaskGraph

FILE = "end_to_end.onnx"
MIN_AREA = 4  # segments of <= 4 pixels are dropped, as in `panoptic_postprocess`
SAMPLE_SIZE = (120, 170)  # the synthetic scene the graphs are traced and verified on

INPUTS = ("image",)
PRE_OUTPUTS = ("images", "mask", "frame", "grid")
POST_INPUTS = ("frame", "grid", *DETECT_OUTPUTS)
OUTPUTS = ("id_map", "segment_ids", "categories", "isthing", "scores", "areas", "boxes", "query_boxes")
SHAPES = {
    "image": "[H, W, 3] uint8 RGB, any size (the decoded image, not resized)",
    "id_map": "[H, W] int64 segment id of every pixel, 0 = void",
    "segment_ids": "[S] int64 1..S, the row of each segment in the table",
    "categories": "[S] int64 category id (the model's class index, see `categories`)",
    "isthing": "[S] bool",
    "scores": "[S] float32 class probability of the segment's most confident query",
    "areas": "[S] int64 pixels of the segment in id_map",
    "boxes": "[S, 4] int64 the segment's pixels' box [x, y, w, h] in id_map",
    "query_boxes": "[S, 4] float32 the predicted box of the segment's query [x, y, w, h] in pixels",
}
"""What model.json says of the end-to-end graph's input and outputs."""
USAGE = ("One image at a time: feed `image` (the decoded RGB image as [H, W, 3] uint8, not resized), "
         "read the 8 outputs; segment k of the table has id segment_ids[k] in id_map. The model's "
         "threshold, resize and stuff merging are built in (`settings`); categories index "
         "model.json's `categories` by id.")


def nearest_indices(n_in: Tensor | int, n_out: Tensor | int) -> Tensor:
    """[n_out] source index of every output pixel of a PIL NEAREST resize along one axis, as
    `model.postprocess.pil_nearest_indices` (Pillow's running double-precision sum: a
    float64 cumulative sum, which torch and ONNX Runtime add up in order)."""
    scale = torch.as_tensor(n_in, dtype=torch.float64) / n_out
    steps = torch.ones(n_out, dtype=torch.float64) * scale
    coords = torch.cumsum(torch.cat([scale[None] * 0.5, steps[1:]]), 0)
    return coords.to(torch.int64).clamp(max=torch.as_tensor(n_in) - 1)


def resize_shape(h: Tensor, w: Tensor, short: int, max_size: int) -> tuple[Tensor, Tensor]:
    """`data.images.resize_shape` on 0-d int64 tensors (the image's shape inside the graph):
    the same float64 arithmetic and roundings, branches as `torch.where`."""
    hf, wf = h.to(torch.float64), w.to(torch.float64)
    lo, hi = torch.minimum(hf, wf), torch.maximum(hf, wf)
    capped = torch.round(max_size * lo / hi).clamp(min=1)  # round half to even, as Python's round
    size = torch.where(hi / lo * short > max_size, capped, torch.full_like(hf, float(short)))
    keep = ((wf <= hf) & (wf == size)) | ((hf <= wf) & (hf == size))
    long_h = torch.floor(size * hf / wf).clamp(min=1)  # (size * h) / w, as Python evaluates it
    long_w = torch.floor(size * wf / hf).clamp(min=1)
    oh = torch.where(keep, hf, torch.where(wf < hf, long_h, size))
    ow = torch.where(keep, wf, torch.where(wf < hf, size, long_w))
    return oh.to(torch.int64), ow.to(torch.int64)


class PreprocessGraph(nn.Module):
    """image [H, W, 3] uint8 -> images [1, 3, h, w] float32 (resized, normalised), mask [1, h, w]
    (no padding), and frame [H, W] / grid [h, w], zeros whose shapes carry the two sizes to
    the post-processing graph."""

    def __init__(self, settings: InferenceSettings):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.size, self.max_size = settings.size, settings.max_size

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H, W = image.shape[0], image.shape[1]
        oh_t, ow_t = resize_shape(torch.tensor(H), torch.tensor(W), self.size, self.max_size)
        oh, ow = oh_t.item(), ow_t.item()
        torch._check(oh >= 1)
        torch._check(ow >= 1)
        x = image.permute(2, 0, 1)[None]  # 1 x 3 x H x W uint8
        x = F.interpolate(x, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
        x = (x.float() / 255.0 - self.mean) / self.std  # 1 x 3 x h x w
        grid = torch.zeros((oh, ow), dtype=torch.bool)
        return x, grid[None], torch.zeros((H, W), dtype=torch.uint8), grid


class PostprocessGraph(nn.Module):
    """frame [H, W], grid [h, w] and the detect graph's outputs (`graphs.DETECT_OUTPUTS`, batch
    1) -> the tensors named by `OUTPUTS`: the mask head for the kept queries and
    `panoptic_postprocess` (see the module docstring)."""

    def __init__(self, model: DETRPanoptic, is_thing: Tensor, settings: InferenceSettings,
                 min_area: int = MIN_AREA):
        super().__init__()
        self.masks = MaskGraph(model)
        self.register_buffer("is_thing", is_thing.bool().clone(), persistent=False)
        self.threshold = settings.threshold
        self.union, self.min_area = settings.stuff_merge == "union", min_area
        self.overlap = float(settings.overlap_threshold)
        self.by_score = settings.pixel_assignment == "score"

    def forward(self, frame: Tensor, grid: Tensor, pred_logits: Tensor, pred_boxes: Tensor, queries: Tensor,
                keys: Tensor, padding: Tensor, lay1: Tensor, adapter1: Tensor, adapter2: Tensor,
                adapter3: Tensor) -> tuple[Tensor, ...]:
        H, W = frame.shape
        oh, ow = grid.shape
        logits, boxes = pred_logits[0], pred_boxes[0]  # N x K+1, N x 4

        scores, labels = logits.softmax(-1).max(-1)  # N
        keep = labels.ne(logits.shape[-1] - 1) & (scores > self.threshold)
        # no query kept: run query 0 alone, dead from the start (the result is void)
        first = torch.arange(keep.shape[0]) == 0
        rows = torch.nonzero(keep | (first & ~keep.any())).flatten()  # Q >= 1
        torch._check(rows.shape[0] >= 1)
        alive = keep[rows]
        scores = scores[rows]
        labels = torch.where(alive, labels[rows], 0)  # a dead query 0 may be no-object: no category
        # Q x h/4 x w/4
        masks = self.masks(queries[0, rows], keys, padding, lay1, adapter1, adapter2, adapter3)
        vals = F.interpolate(masks[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
        vals = vals.flatten(1)  # Q x P, P = h * w

        # the id map's nearest resize to the image: which grid row / column each pixel reads,
        # and how many image pixels each grid pixel becomes (areas count at the image's size)
        iy, ix = nearest_indices(oh, H), nearest_indices(ow, W)
        count_y = torch.zeros(oh, dtype=torch.int64).scatter_add(0, iy, torch.ones_like(iy))
        count_x = torch.zeros(ow, dtype=torch.int64).scatter_add(0, ix, torch.ones_like(ix))
        weight = (count_y[:, None] * count_x[None, :]).flatten()  # P

        same = self._same_stuff(labels)
        # fragments (overlap_threshold): the least share of its own mask (logit > 0, counted
        # in image pixels) a thing query must win; 0 for stuff, so it never applies to them
        own = ((vals > 0).to(torch.int64) * weight[None, :]).sum(1).to(torch.float64)
        least = torch.where(self.is_thing[labels], own * self.overlap, 0.0)
        if self.by_score:  # pixel_assignment "score": log(score x sigmoid(logit)), as Python's
            vals = F.logsigmoid(vals) + scores.log()[:, None]
        state = self._pass(alive, vals, weight, same, least)
        alive, idx, rep, area, small = torch.while_loop(
            lambda alive, idx, rep, area, small: (small & alive).any() & (alive & ~small).any(),
            lambda alive, idx, rep, area, small: self._next(alive & ~small, vals, weight, same, least),
            (alive, *state))
        alive = alive & ~small  # empty when every segment was small

        q = alive.shape[0]
        ar = torch.arange(q)
        heads = alive & (rep == ar)
        lut = torch.cumsum(heads.to(torch.int64), 0) * heads  # query -> segment id, 0 = none
        grid_ids = lut[rep][idx].view(oh, ow)
        id_map = grid_ids.index_select(0, iy).index_select(1, ix)  # H x W

        segs = torch.nonzero(heads).flatten()  # S
        seg_ids = lut[segs]
        member = (rep[None, :] == segs[:, None]) & alive[None, :]  # S x Q
        seg_scores = torch.where(member, scores[None, :], float("-inf")).amax(1)
        cats = labels[segs]
        # which rows and which columns of the id map hold each id (tables of counts, scattered
        # from the id map itself: reading them off the grid through the resize's indices gave
        # ONNX Runtime boxes that disagreed with its own id map)
        s = seg_ids.shape[0]
        in_cols, in_rows = _lines_holding(id_map.t().contiguous(), s), _lines_holding(id_map, s)
        box = torch.stack([*_extent(in_cols), *_extent(in_rows)], 1)
        box = box[:, [0, 2, 1, 3]]  # x, y, w, h
        xyxy = cxcywh_to_xyxy(boxes[rows[segs]]) * torch.tensor([W, H, W, H], dtype=torch.float32)
        qbox = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)
        return id_map, seg_ids, cats, self.is_thing[cats], seg_scores, area[segs], box, qbox

    def _same_stuff(self, labels: Tensor) -> Tensor:
        """[Q, Q] bool: both queries of one stuff class."""
        stuff = ~self.is_thing[labels]
        return (labels[:, None] == labels[None, :]) & stuff[:, None] & stuff[None, :]

    def _next(self, alive: Tensor, vals: Tensor, weight: Tensor, same: Tensor,
              least: Tensor) -> tuple[Tensor, ...]:
        return (alive, *self._pass(alive, vals, weight, same, least))

    def _pass(self, alive: Tensor, vals: Tensor, weight: Tensor, same: Tensor,
              least: Tensor) -> tuple[Tensor, ...]:
        """One pass of the filter over the alive queries: (idx [P] winning query of every grid
        pixel, rep [Q] the first alive query of each one's stuff class (itself for things),
        area [Q] image pixels of each representative's segment, small [Q] alive queries to drop:
        at most `min_area` pixels, or a thing winning less than `least` of its own mask).
        """
        probs = torch.where(alive[:, None], vals, float("-inf")).softmax(0)
        idx = probs.argmax(0)  # P; the first of equal maxima, as the original
        q = alive.shape[0]
        ar = torch.arange(q)
        group = same & alive[None, :]
        rep = torch.where(alive & group.any(1), group.to(torch.int8).argmax(1), ar)
        per_query = torch.zeros(q, dtype=torch.int64).scatter_add(0, idx, weight)
        area = torch.zeros(q, dtype=torch.int64).scatter_add(0, rep, per_query)
        small = alive & ((area[rep] if self.union else area) <= self.min_area)
        small = small | (alive & (per_query.to(torch.float64) < least))
        return idx, rep, area, small


def _lines_holding(lines: Tensor, s: int) -> Tensor:
    """lines [n, L] int64 ids 0..s (one row or column of the id map each) -> [s, n] bool: does
    line j hold id i + 1 (a table of counts scattered from the ids; 0 = void left out)."""
    counts = torch.zeros((lines.shape[0], s + 1), dtype=torch.int64)
    counts = counts.scatter_add(1, lines, torch.ones_like(lines))
    return counts[:, 1:].t() > 0


def _extent(present: Tensor) -> tuple[Tensor, Tensor]:
    """present [S, n] bool, each row with a True -> (first [S], count [S] from first to last)."""
    n = present.shape[1]
    ar = torch.arange(n)
    # the least and the greatest present position (plain reductions over int64)
    first = torch.where(present, ar, n).amin(1)
    last = torch.where(present, ar, -1).amax(1)
    return first, last - first + 1


class EndToEndGraph(nn.Module):
    """The three graphs chained in torch, as the ONNX file chains them: image -> `OUTPUTS`."""

    def __init__(self, model: DETRPanoptic, is_thing: Tensor, settings: InferenceSettings):
        super().__init__()
        self.pre, self.detect = PreprocessGraph(settings), DetectGraph(model)
        self.post = PostprocessGraph(model, is_thing, settings)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        images, mask, frame, grid = self.pre(image)
        return self.post(frame, grid, *self.detect(images, mask))


def write_end_to_end(net: DETRPanoptic, folder: Path, is_thing: Tensor, settings: InferenceSettings,
                     opset: int) -> dict[str, Any]:
    """Write `folder`/end_to_end.onnx from `folder`/detect.onnx (already written) and the
    pre- and post-processing graphs, exported here by the dynamo exporter. Returns its
    model.json entry.

    Three graphs, chained by `onnx.compose`: one torch.export of the whole would carry the
    resized size (computed from the image's shape, so data-dependent to torch.export) through
    the network, whose shape checks it cannot decide; apart, each graph sees plain dynamic sizes.
    """
    import onnx
    import onnx.compose

    from .exporter import _export

    image = torch.from_numpy(make_scene(0, 0, SAMPLE_SIZE)[0])
    pre, post = PreprocessGraph(settings), PostprocessGraph(net, is_thing, settings)
    with torch.no_grad():
        images, mask, frame, grid = pre(image)
        detected = DetectGraph(net)(images, mask)
    H, W, h, w = Dim("H", min=2), Dim("W", min=2), Dim("h", min=2), Dim("w", min=2)
    c5 = {2: Dim("h32"), 3: Dim("w32")}
    axes = {"frame": {0: H, 1: W}, "grid": {0: h, 1: w}, "pred_logits": {}, "pred_boxes": {}, "queries": {},
            "keys": c5, "padding": {1: c5[2], 2: c5[3]}, "lay1": c5,
            "adapter1": {2: Dim("h16"), 3: Dim("w16")}, "adapter2": {2: Dim("h8"), 3: Dim("w8")},
            "adapter3": {2: Dim("h4"), 3: Dim("w4")}}
    _export(pre, (image,), folder / "pre.onnx", INPUTS, PRE_OUTPUTS, {"image": {0: H, 1: W}}, opset,
            "dynamo-only")
    _export(post, (frame, grid, *detected), folder / "post.onnx", POST_INPUTS, OUTPUTS, axes, opset,
            "dynamo-only")
    a, b, c = (onnx.load(folder / f) for f in ("pre.onnx", "detect.onnx", "post.onnx"))
    b.ir_version = max(a.ir_version, b.ir_version)  # the TorchScript exporter writes IR 8
    # prefixes keep the graphs' inner names apart; the post-processing graph keeps its own (its
    # loop body reads outer values by name, which onnx.compose.add_prefix does not rename)
    a = onnx.compose.add_prefix(a, "pre/", rename_inputs=False, rename_outputs=False)
    b = onnx.compose.add_prefix(b, "detect/", rename_inputs=False, rename_outputs=False)
    merged = onnx.compose.merge_models(a, b, io_map=[("images", "images"), ("mask", "mask")])
    merged = onnx.compose.merge_models(merged, c, io_map=[(n, n) for n in POST_INPUTS])
    onnx.checker.check_model(merged)
    onnx.save(merged, folder / FILE)
    for f in ("pre.onnx", "post.onnx"):
        (folder / f).unlink()
    baked = {"threshold": settings.threshold, "size": settings.size, "max_size": settings.max_size,
             "stuff_merge": settings.stuff_merge, "overlap_threshold": settings.overlap_threshold,
             "pixel_assignment": settings.pixel_assignment, "min_area": MIN_AREA}
    return {"file": FILE, "inputs": list(INPUTS), "outputs": list(OUTPUTS), "shapes": SHAPES,
            "settings": baked, "exporter": "dynamo", "usage": USAGE}


def verify_end_to_end(net: DETRPanoptic, path: Path, is_thing: Tensor, settings: InferenceSettings
                      ) -> dict[str, Any]:
    """ONNX Runtime's end-to-end result on a synthetic scene against the Python path's
    (`model.inference.segment` on `data.images.preprocess`, as `Predictor` runs them)."""
    from .sessions import OnnxRuntimeSession

    image = make_scene(0, 1, SAMPLE_SIZE)[0]
    got = OnnxRuntimeSession(path).run({"image": image})
    batch = PaddedBatch.from_images([preprocess(image, settings.size, settings.max_size)])
    with torch.no_grad():
        ref = segment(net, batch, [image.shape[:2]], is_thing, threshold=settings.threshold,
                      stuff_merge=settings.stuff_merge,
                      overlap_threshold=settings.overlap_threshold,
                      pixel_assignment=settings.pixel_assignment)[0].result
    cats = [s["category_id"] for s in ref.segments_info]
    return {"image": f"{image.shape[0]}x{image.shape[1]} synthetic", "segments": int(got[1].shape[0]),
            "python_segments": len(cats), "categories_equal": got[2].tolist() == cats,
            "pixel_agreement": float((torch.from_numpy(got[0]) == ref.id_map).double().mean())}
