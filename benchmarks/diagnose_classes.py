"""Where a trained checkpoint stands on held-out scenes, per kind of segment: Hungarian-match
its queries to the ground truth (as in training) and report, for stuff and for things, the
matched queries' box IoU, class accuracy, probability of the right class, and the confusion
matrix (rows: true category id, columns: predicted); and the class accuracy of every segment's
mask-pooled encoder memory through the class head (what `loss.segment` trains), which says
whether the memory knows a class that the decoder does not yet read.

    PYTHONPATH=src python benchmarks/diagnose_classes.py runs/learning/checkpoint_last.pt \
        runs/learning/data/val [--size 128]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from panoptic_detr.data.coco_panoptic import CocoPanoptic
from panoptic_detr.data.collate import collate_padded
from panoptic_detr.data.transforms import eval_transforms
from panoptic_detr.loading import load_pretrained
from panoptic_detr.ops.boxes import cxcywh_to_xyxy
from panoptic_detr.train.criterion import segment_memory
from panoptic_detr.train.loop import Augmented
from panoptic_detr.train.matcher import hungarian_match


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("data", help="dataset root (COCO panoptic layout)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-size", type=int, default=160)
    args = p.parse_args()
    pre = load_pretrained(args.checkpoint)
    model = pre.model.eval()
    data = Augmented(CocoPanoptic(args.data), eval_transforms(args.size, args.max_size), 0)
    k = pre.config.num_classes
    stats: dict[str, list[float]] = defaultdict(list)
    confusion = np.zeros((k, k), np.int64)
    with torch.no_grad():
        for batch, targets in DataLoader(data, batch_size=10, collate_fn=collate_padded):
            det = model.detect(batch)
            memory, truth = segment_memory(det.memory, targets)
            pooled = model.class_embed(memory)
            for label, guess in zip(truth.tolist(), pooled[:, :-1].argmax(1).tolist(), strict=True):
                kind = "thing" if pre.categories.isthing(label) else "stuff"
                stats[f"{kind} pooled-memory accuracy"].append(float(guess == label))
            prob = det.pred_logits.softmax(-1)
            matches = hungarian_match(det.pred_logits, det.pred_boxes, [t.labels for t in targets],
                                      [t.boxes for t in targets])
            for i, (queries, segs) in enumerate(matches):
                for q, s in zip(queries.tolist(), segs.tolist(), strict=True):
                    label = int(targets[i].labels[s])
                    kind = "thing" if pre.categories.isthing(label) else "stuff"
                    pq = prob[i, q]
                    guess = int(pq[:-1].argmax())
                    iou = box_iou(cxcywh_to_xyxy(det.pred_boxes[i, q][None]),
                                  cxcywh_to_xyxy(targets[i].boxes[s][None]))
                    stats[f"{kind} box IoU"].append(float(iou))
                    stats[f"{kind} class accuracy"].append(float(guess == label))
                    stats[f"{kind} p(right class)"].append(float(pq[label]))
                    confusion[label, guess] += 1
    for key, values in sorted(stats.items()):
        print(f"{key:28s} {np.mean(values):.3f}  ({len(values)} segments)")
    used = sorted({c["id"] for c in pre.categories.items})
    print("confusion (rows true, columns predicted), ids", used)
    print(confusion[np.ix_(used, used)])


if __name__ == "__main__":
    main()
