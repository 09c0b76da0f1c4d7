"""PQ of ground truth rebuilt from boxes, and images/s of `build-gt` with the instance-model sources.

Makes N synthetic scenes (`data.synth`, a seed of its own, not the stand-in's training seed),
exports their things as COCO instances and strips every `segmentation`, leaving the boxes,
and their stuff as semantic PNGs (things void: a stuff source that knows no thing). Then builds
the ground truth with `build_gt` and scores it against the true panoptic labels (`eval`):

* `drawn`: the true masks as annotations (the ceiling: PQ 100 unless something is lost);
* `--box-masks box`: each box filled;
* `--box-masks model:demo-maskrcnn`: the bundled stand-in's mask head inside each box;
* `--things-from model:demo-maskrcnn@T`, no annotations: the stand-in's own detections, at
  each `--thresholds` T.

images/s: `build_gt` end to end (decode, model, composition, PNGs, report; no previews), the
model loaded beforehand (the source object is passed in).

    PYTHONPATH=src python benchmarks/bench_box_masks.py [--n 30] [--weights demo-maskrcnn]
        [--thresholds 0.5 0.15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from panoptic_detr.data.synth import make_dataset
from panoptic_detr.eval.evaluate import evaluate_files
from panoptic_detr.gt import build_gt
from panoptic_detr.gt.convert import panoptic_to_instances_file, panoptic_to_semantic_files
from panoptic_detr.gt.instance_model import InstanceModelSource


def inputs(root: Path, n: int, seed: int, size: int) -> tuple[Path, Path, Path, Path]:
    """(panoptic JSON of the truth, instances JSON with masks, the same with boxes only, semantic dir)."""
    pan = make_dataset(root / "truth", n, seed=seed, size=(size, size), progress=False)
    drawn = root / "drawn.json"
    panoptic_to_instances_file(pan, drawn, progress=False)
    panoptic_to_semantic_files(pan, root / "stuff", things=False, progress=False)
    data = json.loads(drawn.read_text())
    for ann in data["annotations"]:
        ann.pop("segmentation")
    (root / "boxes.json").write_text(json.dumps(data))
    return pan, drawn, root / "boxes.json", root / "stuff"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--weights", default="demo-maskrcnn", help="the instance model (model:WEIGHTS)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.15])
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = f"model:{a.weights}"
    box_model = InstanceModelSource(a.weights, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pan, drawn, boxes, stuff = inputs(root, a.n, a.seed, a.size)
        runs = {
            "drawn masks": dict(instances_json=drawn),
            "--box-masks box": dict(instances_json=boxes, box_masks="box"),
            f"--box-masks {model}": dict(instances_json=boxes, box_masks=box_model),
        }
        for t in a.thresholds:
            runs[f"--things-from {model}@{t} (no annotations)"] = dict(
                instances_json=None, things_from=InstanceModelSource(a.weights, t, device="cpu"))
        print(f"{a.n} synthetic scenes {a.size}x{a.size} (seed {a.seed}), stuff from semantic PNGs, "
              f"{torch.get_num_threads()} threads")
        print(f"{'ground truth built from':<54} {'PQ':>6} {'things':>7} {'stuff':>6} {'images/s':>9}")
        for k, (name, kwargs) in enumerate(runs.items()):
            out = root / f"out{k}"
            start = time.perf_counter()
            report = build_gt(images_dir=pan.parent / "images", out_dir=out, stuff_from=f"semantic:{stuff}",
                              previews=False, progress=False, log=lambda line: None, **kwargs)
            seconds = time.perf_counter() - start
            assert report["images"]["processed"] == a.n, report["images"]
            r = evaluate_files(pan, pan.parent / "panoptic", out / "panoptic.json", out / "panoptic",
                               workers=0)
            print(f"{name:<54} {100 * r['All']['pq']:6.1f} {100 * r['Things']['pq']:7.1f} "
                  f"{100 * r['Stuff']['pq']:6.1f} {a.n / seconds:9.2f}   masks {report['masks']}")


if __name__ == "__main__":
    main()
