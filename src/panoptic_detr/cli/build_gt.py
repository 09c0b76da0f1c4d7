"""`panoptic-detr build-gt`: panoptic ground truth from instance annotations + a source."""

from __future__ import annotations

import argparse
import sys

from . import add_quiet_flag, whole_number
from .settings_flags import add_runtime_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-gt", help="build a COCO-panoptic dataset from instance annotations and a source",
        description="Annotated things (COCO instances: polygons, RLE, crowd; boxes with --box-masks) "
                    "win, then the things of --things-from; every other pixel comes from --stuff-from, "
                    "mapped through --taxonomy. Writes OUT/panoptic.json, "
                    "OUT/panoptic/*.png, OUT/images/ (hard links), OUT/previews/, OUT/report.json. Under "
                    "torchrun each process builds its share of the images (docs/distributed_inference.md).")
    p.add_argument("--instances", metavar="ANN.json",
                   help="COCO instances JSON (default: none, every file of --images from the sources)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of the images")
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset folder")
    p.add_argument("--stuff-from", metavar="SOURCE",
                   help="semantic:DIR[:LABELMAP], panoptic:JSON_OR_DIR or "
                        "model:PRESET_OR_WEIGHTS[@THRESHOLD][,KEY=VALUE...] (KEY: threshold, size, "
                        "max_size, device, stuff_merge, dtype, runtime; e.g. model:detr_r50_panoptic,"
                        "size=640,device=cuda)")
    p.add_argument("--things-from", metavar="MODEL",
                   help="an instance-segmentation model for the things (below the annotations): "
                        "model:maskrcnn[@THRESHOLD] (torchvision's COCO Mask R-CNN), "
                        "model:demo-maskrcnn (the bundled stand-in) or model:CHECKPOINT[@THRESHOLD], "
                        "with its own options after the name: ,size=N,max_size=N,device=DEV")
    p.add_argument("--box-masks", metavar="box|MODEL",
                   help="annotations with a bbox and no segmentation get a mask: 'box' fills the "
                        "rectangle, model:... predicts one inside the box (as --things-from; the same "
                        "network as --things-from shares its backbone run)")
    p.add_argument("--instance-size", type=whole_number(1), nargs=2, metavar=("SHORT", "MAX"),
                   help="the instance model resizes images to this shortest side and longest-side cap "
                        "(default: its own, 800 1333 for model:maskrcnn)")
    p.add_argument("--instance-device", metavar="DEV",
                   help="device of the instance model (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=whole_number(1), default=1, metavar="N",
                   help="images per batch through the model sources (1); on a GPU one padded batch, "
                        "on a CPU run one by one")
    p.add_argument("--loader-workers", type=whole_number(0), default=0, metavar="N",
                   help="with a model source: processes decoding images ahead of the models (default 0)")
    p.add_argument("--taxonomy", metavar="MAP.yaml",
                   help="source -> target category mapping (a file, or a bundled name: coco_coarse)")
    p.add_argument("--order", choices=["area", "annotation"], default="area",
                   help="overlapping instances: smaller on top (area) or later on top (annotation)")
    p.add_argument("--min-area", type=whole_number(0), default=None, metavar="N",
                   help="drop fragments left with fewer pixels after overlaps are resolved (default 16)")
    p.add_argument("--skip-unannotated", action="store_true",
                   help="skip images without annotations (default: keep them with source labels)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--workers", type=whole_number(1), default=1, metavar="N",
                   help="processes composing the images when no model source runs (with one: "
                        "--batch-size, --loader-workers)")
    p.add_argument("--model-size", type=whole_number(1), nargs=2, metavar=("SHORT", "MAX"),
                   help="a model source resizes images to this shortest side and longest-side cap "
                        "(default: the checkpoint's, else 800 1333)")
    add_runtime_flag(p)
    p.add_argument("--no-previews", dest="previews", action="store_false", help="skip preview overlays")
    add_quiet_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..gt import DEFAULT_MIN_AREA, BuildError, build_gt, format_summary
    from ..parallel import dist_info

    if args.min_area is None:
        args.min_area = DEFAULT_MIN_AREA
    try:
        report = build_gt(args.instances, args.images, args.out, stuff_from=args.stuff_from,
                          taxonomy=args.taxonomy, order=args.order, min_area=args.min_area,
                          skip_unannotated=args.skip_unannotated, overwrite=args.overwrite,
                          workers=args.workers, previews=args.previews, progress=not args.quiet,
                          model_size=tuple(args.model_size) if args.model_size else None,
                          things_from=args.things_from, box_masks=args.box_masks,
                          instance_options=_instance_options(args), runtime=args.runtime,
                          batch_size=args.batch_size, loader_workers=args.loader_workers)
    except BuildError as e:  # printed as it is worded (it may span lines)
        rank = dist_info().rank
        print(e if rank == 0 else f"rank {rank}: {e}", file=sys.stderr)
        return 1
    if not dist_info().is_main:  # under torchrun rank 0 reports for every process
        return 1 if report["images"]["failed"] else 0
    print(format_summary(report))
    print(f"written: {args.out} (report: {args.out}/report.json)")
    return 1 if report["images"]["failed"] else 0


def _instance_options(args: argparse.Namespace) -> dict:
    size = {"size": args.instance_size[0], "max_size": args.instance_size[1]} if args.instance_size else {}
    return size | ({"device": args.instance_device} if args.instance_device else {})
