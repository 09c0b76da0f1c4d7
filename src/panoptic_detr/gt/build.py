"""`build_gt`: a COCO-panoptic dataset from instance annotations plus a source for the rest.

Output folder layout:

    OUT/panoptic.json        COCO panoptic: images, annotations (segments_info), categories
    OUT/panoptic/*.png       id maps (id = R + 256 G + 256^2 B), named like the images
    OUT/images/...           the images, hard-linked (copied where linking fails: another
                             file system), so the folder is a self-contained dataset
    OUT/previews/*.jpg       audit overlays (gt.preview)
    OUT/report.json          what happened: images kept/skipped, pixel shares, overlaps, ...

With a model among the sources (`--stuff-from model:`, `--things-from`, `--box-masks model:`)
the images go through the many-images runner that predict and evaluate use
(`runner.run_images`: decoding, batches, a bad image costing only itself), the models' outputs
for a batch coming from `gt.models.BuildModels`; without one, through `--workers` processes.
Under torchrun each process builds its share of the images (a model source on its own
device) and rank 0 writes the dataset and the report from every process's records.

Nothing partial appears in OUT: the build runs in a hidden folder beside it
(`.OUT.partial`), finished images are kept there (`parts/`), so an interrupted run resumes
where it stopped, and the folder is renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.files import atomic_write, write_json
from ..data.panoptic_png import write_panoptic_png
from ..parallel import DistInfo, all_gather_object, barrier, pool_context, process_group, rank_device, shard
from ..structures import Categories
from .box_masks import MODEL, MODEL_BOX, fill_box_masks, is_box_only
from .compose import compose, merge_things
from .instance_model import InstanceModelSource, parse_instance_spec
from .instances import ORDERS, decode_annotations, instances_to_panoptic
from .models import BuildModels, ModelOutputs
from .preview import draw_preview
from .report import make_report
from .sources import ModelSource, Source, SourceError, check_size, open_source
from .taxonomy import THING, Rule, Taxonomy, TaxonomyError

DEFAULT_MIN_AREA = 16
REUSE_VERSION = 1  # bump when per-image outputs change meaning


class BuildError(Exception):
    """The build cannot start or finish; the message is one line per problem."""


@dataclass
class _Job:
    """What every worker needs to build one image (picklable)."""

    instances_json: str
    images_dir: Path
    work: Path
    source: Any
    rules: dict[int, Rule]
    ann_targets: dict[int, int]
    target_isthing: dict[int, bool]
    categories: Categories
    order: str
    min_area: int
    previews: bool
    things: Any = None
    """The instance-model source of `--things-from`, or None."""
    things_targets: dict[int, int] | None = None
    """Its class -> target thing id (classes not listed are left out)."""
    box_masks: Any = None
    """"box", the instance-model source of `--box-masks`, or None."""
    wanted: dict[int, set[int]] | None = None
    """Annotated category id -> the box-mask model's classes that map to its target."""


def build_gt(
    instances_json: str | Path | None,
    images_dir: str | Path,
    out_dir: str | Path,
    stuff_from: str | Source | None = None,
    taxonomy: str | Path | None = None,
    order: str = "area",
    min_area: int = DEFAULT_MIN_AREA,
    skip_unannotated: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    previews: bool = True,
    model_size: tuple[int, int] | None = None,
    runtime: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    things_from: str | InstanceModelSource | None = None,
    box_masks: str | InstanceModelSource | None = None,
    instance_options: dict[str, Any] | None = None,
    batch_size: int = 1,
    loader_workers: int = 0,
) -> dict[str, Any]:
    """Build the dataset into `out_dir` and return the report (also written to report.json).

    Instances are resolved with `order` / `min_area` (see gt.instances); pixels without an
    annotation come from `stuff_from` (a spec that `gt.sources.open_source` reads, or a source
    object, e.g. a `ModelSource` with its own predictor options), mapped through `taxonomy`
    (a YAML file or bundled name; default: the source's own categories). Bad inputs are
    logged one line each and the rest is built; BuildError means nothing could be built (bad
    options, unreadable inputs, unloadable source). `model_size` = (shortest side, longest
    side cap) a model source resizes images to (default: the checkpoint's, else DETR's 800,
    1333, as `predict` does). `runtime`: what runs a model source's network (see
    `settings.InferenceSettings.runtime`; default torch).

    Instances: `instances_json` None builds every file of `images_dir` from the sources alone.
    `things_from`: an instance model (`model:maskrcnn[@T]`, `model:demo-maskrcnn`,
    `model:PATH`, or an `InstanceModelSource`) whose things lie below the annotations and above
    `stuff_from` (`compose.merge_things`). `box_masks`: "box" or an instance model (a spec, or
    the same object) giving box-only annotations a mask (`gt.box_masks`); a spec naming the
    things' network (weights, device, size) shares its backbone run.
    `instance_options`: device=, size=, max_size= of the instance-model sources named by spec
    (a spec's own options win: `model:maskrcnn@0.7,size=1024,device=cuda:1`, see
    `sources.parse_model_spec`).

    With a model source, `batch_size` images go through the models at a time and
    `loader_workers` processes decode them ahead (`runner.run_images`).
    """
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    if order not in ORDERS:
        raise BuildError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise BuildError(f"{out_dir}: exists (pass --overwrite to replace it)")
    if not images_dir.is_dir():
        raise BuildError(f"{images_dir}: image folder not found")
    if instances_json is None and stuff_from is None and things_from is None:
        raise BuildError("nothing to build from: give instances, a stuff source or a things source")
    if instances_json is None:
        data = _list_images(images_dir, out_dir)
        instances_json = images_dir
    else:
        instances_json = Path(instances_json)
        data = _read_instances(instances_json)
    with process_group() as group:  # under torchrun: each process builds its share of the images
        return _build(data, instances_json, images_dir, out_dir, stuff_from, taxonomy, order, min_area,
                      skip_unannotated, overwrite, workers, previews, model_size, progress, log, group,
                      things_from, box_masks, instance_options, runtime, batch_size, loader_workers)


def _build(data: dict[str, Any], instances_json: Path, images_dir: Path, out_dir: Path,
           stuff_from: str | Source | None, taxonomy: str | Path | None, order: str, min_area: int,
           skip_unannotated: bool, overwrite: bool, workers: int, previews: bool,
           model_size: tuple[int, int] | None, progress: bool, log: Callable[[str], None], group: DistInfo,
           things_from: str | InstanceModelSource | None, box_masks: str | InstanceModelSource | None,
           instance_options: dict[str, Any] | None, runtime: str | None, batch_size: int,
           loader_workers: int) -> dict[str, Any]:
    if group.enabled:
        rank_device("auto", group)  # a model source's device is then this process's own
    if not group.is_main:  # rank 0 reports every process's problems, once
        log = _quiet
    try:
        options = {"size": model_size[0], "max_size": model_size[1]} if model_size else {}
        options.update({"runtime": runtime} if runtime else {})
        source = open_source(stuff_from, **options) if isinstance(stuff_from, str) else stuff_from
        things = (parse_instance_spec(things_from, **(instance_options or {}))
                  if isinstance(things_from, str) else things_from)
        if isinstance(box_masks, str) and box_masks != "box":
            box_masks = parse_instance_spec(box_masks, like=things, **(instance_options or {}))
    except SourceError as e:
        raise BuildError(str(e)) from None
    if isinstance(source, ModelSource):
        log(f"{source.spec}: weights {source.weights_source}")
    for model in (source, things, box_masks):
        if isinstance(model, ModelSource | InstanceModelSource) and workers > 1:
            log(f"{model.spec}: one model in memory on its device: --workers ignored")
            workers = 1
    problems: list[str] = []

    def warn(line: str) -> None:
        problems.append(line)
        log(line)

    tax, rules, things_targets = _targets(taxonomy, source, things, warn)
    ann_targets = _annotation_targets(tax, data["categories"], instances_json, taxonomy is not None, warn)
    wanted = (_wanted(tax, box_masks.categories, ann_targets)
              if box_masks is not None and box_masks != "box" else {})
    by_image = _group_annotations(data, instances_json, warn)

    work = out_dir.parent / f".{out_dir.name}.partial"
    config = {"version": REUSE_VERSION, "instances": str(instances_json.resolve()),
              "images": str(images_dir.resolve()), "stuff_from": source and source.spec,
              "things_from": things and things.spec,
              "box_masks": box_masks if box_masks in (None, "box") else box_masks.spec,
              "instance_options": instance_options,
              "model_size": model_size and list(model_size), "order": order, "min_area": min_area,
              "previews": previews, "categories": tax.targets, "taxonomy": _digest(taxonomy)}
    if group.is_main:
        _prepare_work(work, config, log)
    barrier(group)
    job = _Job(str(instances_json), images_dir, work, source, rules, ann_targets,
               {int(t["id"]): bool(t["isthing"]) for t in tax.targets},
               Categories(tax.targets), order, min_area, previews, things, things_targets, box_masks, wanted)

    records, todo = _plan(data["images"], by_image, work, source or things, skip_unannotated, instances_json,
                          warn)
    planned = len(problems)
    models = (BuildModels(source if isinstance(source, ModelSource) else None, things, box_masks, wanted,
                          batch_size) if BuildModels.needed(source, things, box_masks) else None)
    built = _run(job, shard(todo, group), workers, progress and group.is_main, warn, models, loader_workers)
    shares = all_gather_object((built, problems[planned:]), group)
    order = {img["file_name"]: i for i, (img, _) in enumerate(todo)}  # canonical, whoever built it
    records += sorted((r for share, _ in shares for r in share), key=lambda r: order[r["file_name"]])
    problems[planned:] = [line for _, lines in shares for line in lines]
    for rank, (_, lines) in enumerate(shares):
        for line in lines if rank != group.rank else []:
            log(line)
    report = make_report(records, tax.targets, problems, instances_json, source and source.spec,
                         things and things.spec)
    if group.is_main:
        _finish(work, out_dir, data, records, tax, report, overwrite)
    barrier(group)  # the dataset is in place when any process returns
    return report


def _quiet(line: str) -> None:
    pass


# ---------------------------------------------------------------- inputs


def _list_images(images_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Every file of the folder as an image without annotations (ids in name order)."""
    from ..runner import expand_inputs

    files, _ = expand_inputs([images_dir], exclude=out_dir)
    if not files:
        raise BuildError(f"{images_dir}: no files in the image folder")
    return {"images": [{"id": k, "file_name": f.name} for k, f in enumerate(files)],
            "annotations": [], "categories": []}


def _read_instances(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
        for img in images:
            img["id"], img["file_name"]  # noqa: B018 - required keys
    except (OSError, ValueError) as e:
        raise BuildError(f"{path}: cannot read the instances JSON ({' '.join(str(e).split())})") from None
    except (KeyError, TypeError) as e:
        raise BuildError(f"{path}: not COCO instances (missing {e})") from None
    return {"images": images, "annotations": anns, "categories": cats}


def _targets(taxonomy: str | Path | None, source: Any, things: Any, warn: Callable[[str], None]
             ) -> tuple[Taxonomy, dict[int, Rule], dict[int, int]]:
    """The target categories, a rule per stuff-source category id and the target thing of each
    class of the things source (classes that map to no thing are left out)."""
    if taxonomy is None:
        tax = Taxonomy.identity(source.categories if source else [])
        for c in things.categories if things else []:  # the model's classes are kept as themselves
            if str(c["name"]) not in tax.rules:
                t = tax.add_target({**c, "isthing": 1})
                tax.rules[t["name"]] = Rule(THING, int(t["id"]))
    else:
        try:
            tax = Taxonomy.load(taxonomy)
            if source is not None:  # entries naming no category of either source are errors
                used = {str(c["name"]): c for s in (things, source) if s is not None for c in s.categories}
                specs = " and ".join(s.spec for s in (source, things) if s is not None)
                for line in tax.check_source(used.values(), specs):
                    warn(line)
            elif things is not None:  # a taxonomy of many sources: only the things' ones matter
                for c in things.categories:
                    if str(c["name"]) not in tax.rules:
                        warn(f"{tax.path}: source category {c['name']!r} (id {c['id']}) of {things.spec} "
                             "is not in the taxonomy: its instances are left out")
        except TaxonomyError as e:
            raise BuildError(str(e)) from None
    rules = tax.rule_by_id(source.categories) if source else {}
    things_rules = tax.rule_by_id(things.categories) if things else {}
    return tax, rules, {c: int(r.target) for c, r in things_rules.items() if r.mode == THING}


def _wanted(tax: Taxonomy, model_categories: list[dict[str, Any]], ann_targets: dict[int, int]
            ) -> dict[int, set[int]]:
    """Annotated category id -> the model's classes that the taxonomy maps to its target (a
    class the taxonomy does not name: the target of the same name)."""
    by_target: dict[int, set[int]] = defaultdict(set)
    for c in model_categories:
        rule = tax.rules.get(str(c["name"]))
        if rule is None:
            target = tax.by_name.get(str(c["name"]))
            rule = Rule(THING, int(target["id"])) if target and target["isthing"] else None
        if rule is not None and rule.mode == THING:
            by_target[int(rule.target)].add(int(c["id"]))
    return {a: set(by_target.get(t, ())) for a, t in ann_targets.items()}


def _annotation_targets(tax: Taxonomy, categories: list[dict[str, Any]], path: Path, named: bool,
                        warn: Callable[[str], None]) -> dict[int, int]:
    """Annotated category id -> target id, matched by name; new names become thing targets."""
    out, errors = {}, []
    for c in categories:
        name = str(c.get("name", c["id"]))
        t = tax.by_name.get(name)
        if t is None:
            t = tax.add_target({**c, "isthing": 1})
            if named:
                warn(f"{path}: category {name!r} (id {c['id']}) is not in the taxonomy: added as a "
                     f"thing class (id {t['id']})")
            elif t["id"] != int(c["id"]):
                warn(f"{path}: category {name!r}: id {c['id']} is taken by a source category, "
                     f"renumbered {t['id']}")
        elif not t["isthing"]:
            errors.append(f"{path}: category {name!r} (id {c['id']}): annotated instances, but the "
                          f"target {name!r} is stuff: target used as both thing and stuff")
            continue
        out[int(c["id"])] = int(t["id"])
    if errors:
        raise BuildError("\n".join(errors))
    return out


def _group_annotations(data: dict[str, Any], path: Path, warn: Callable[[str], None]
                       ) -> dict[Any, list[dict[str, Any]]]:
    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {int(c["id"]) for c in data["categories"]}
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    orphans: Counter = Counter()
    for k, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in image_ids:
            orphans[ann.get("image_id")] += 1
        elif int(ann.get("category_id", -1)) not in cat_ids:
            warn(f"{path}: annotation {ann.get('id', f'#{k}')}: category {ann.get('category_id')} is "
                 "not in the categories list, skipped")
        else:
            by_image[ann["image_id"]].append(ann)
    for image_id, n in orphans.items():
        warn(f"{path}: {n} annotation(s) for image id {image_id}, which is not in the images list: skipped")
    return by_image


def _digest(path: str | Path | None) -> str | None:
    if path is None or not Path(path).exists():
        return None if path is None else str(path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _prepare_work(work: Path, config: dict[str, Any], log: Callable[[str], None]) -> None:
    """Reuse an unfinished build made with the same inputs and options; else start afresh."""
    cfg = work / "config.json"
    if work.exists():
        same = cfg.exists() and json.loads(cfg.read_text()) == json.loads(json.dumps(config))
        if same:
            n = len(list((work / "parts").glob("*.json")))
            log(f"{work}: resuming an unfinished build ({n} image(s) done)")
            return
        log(f"{work}: discarding an unfinished build made with other inputs or options")
        shutil.rmtree(work)
    (work / "parts").mkdir(parents=True)
    write_json(cfg, config)


def _plan(images: list[dict[str, Any]], by_image: dict[Any, list[dict[str, Any]]], work: Path, source: Any,
          skip_unannotated: bool, instances_json: Path, warn: Callable[[str], None]
          ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """(records of images skipped or finished by an earlier run, (image, annotations) to build)."""
    records, todo, names = [], [], {}
    for img in images:
        anns = by_image.get(img["id"], [])
        first = names.setdefault(img["file_name"], img["id"])
        if first != img["id"]:  # its output PNG would overwrite the first one's
            why = (f"{instances_json}: image id {img['id']}: file name {img['file_name']} already used by "
                   f"image id {first}, skipped")
            warn(why)
            records.append({"status": "skipped", "file_name": img["file_name"], "reason": why})
        elif not anns and (skip_unannotated or source is None):
            why = "no annotations (--skip-unannotated)" if source else "no annotations and no source"
            records.append({"status": "skipped", "file_name": img["file_name"], "reason": why})
        elif (work / "parts" / f"{img['id']}.json").exists():
            rec = json.loads((work / "parts" / f"{img['id']}.json").read_text())
            for line in rec["problems"]:  # they belong in this run's report too
                warn(line)
            records.append(rec | {"reused": True})
        else:
            todo.append((img, anns))
    return records, todo


def _run(job: _Job, todo: list, workers: int, progress: bool, warn: Callable[[str], None],
         models: BuildModels | None = None, loader_workers: int = 0) -> list[dict[str, Any]]:
    """Build every image of `todo`: with `models`, through the many-images runner (in order);
    else in `workers` processes (in completion order)."""
    if models is not None:
        return _run_models(job, todo, models, progress, warn, loader_workers)
    records = []
    bar = tqdm(total=len(todo), desc="build-gt", unit="img", disable=not progress, file=sys.stderr)
    if workers > 1 and len(todo) > 1:
        with pool_context().Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
            for rec in pool.imap_unordered(_worker, todo, chunksize=4):
                records.append(_collect(rec, warn, bar))
    else:
        _init_worker(job)
        for item in todo:
            records.append(_collect(_worker(item), warn, bar))
    bar.close()
    return records


def _run_models(job: _Job, todo: list, models: BuildModels, progress: bool, warn: Callable[[str], None],
                loader_workers: int) -> list[dict[str, Any]]:
    """`runner.run_images` over the images: decoded and batched there, `models` on each batch,
    each image composed from their outputs in the writer thread. An image that cannot be read
    or run is one line and a failed record; the others are built."""
    from ..runner import run_images

    _init_worker(job)
    records: dict[Any, dict[str, Any]] = {}
    items = []
    for img, anns in todo:  # a missing file is said as the other sources say it
        missing = _missing(job, img, anns)
        if missing is not None:
            records[img["id"]] = missing
        else:
            items.append((job.images_dir / img["file_name"], (img, anns)))

    def write(item: tuple[dict[str, Any], list[dict[str, Any]]], image: np.ndarray,
              outputs: ModelOutputs) -> None:
        records[item[0]["id"]] = _worker(item, image, outputs)

    failed: list[str] = []
    run_images(models, items, write, failed=failed, progress=progress, desc="build-gt",
               loader_workers=loader_workers)
    for path, (img, _) in items:  # what the runner could not read or run: its line
        if img["id"] not in records:
            reason = next((line for line in failed if line.startswith(f"{path}:")), f"{path}: not built")
            records[img["id"]] = {"status": "failed", "file_name": img["file_name"], "reason": reason}
    bar = tqdm(disable=True)
    return [_collect(records[img["id"]], warn, bar) for img, _ in todo]


# ---------------------------------------------------------------- one image (worker)

_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job


def _worker(item: tuple[dict[str, Any], list[dict[str, Any]]], image: np.ndarray | None = None,
            outputs: ModelOutputs | None = None) -> dict[str, Any]:
    img, anns = item
    try:
        if outputs is None:
            return _build_one(_JOB, img, anns)
        return _build_one(_JOB, img, anns, image, outputs)
    except SourceError as e:
        return {"status": "failed", "file_name": img["file_name"], "reason": str(e)}
    except (OSError, ValueError) as e:
        return {"status": "failed", "file_name": img["file_name"],
                "reason": f"{_JOB.images_dir / img['file_name']}: {' '.join(str(e).split())}"}


def _missing(job: _Job, img: dict[str, Any], anns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The failed record of an image whose file is missing, else None."""
    path = job.images_dir / img["file_name"]
    if path.exists():
        return None
    reason = f"{path}: image not found" + (f" ({len(anns)} annotation(s) skipped)" if anns else "")
    return {"status": "failed", "file_name": img["file_name"], "reason": reason}


def _build_one(job: _Job, img: dict[str, Any], anns: list[dict[str, Any]], image: np.ndarray | None = None,
               outputs: ModelOutputs | None = None) -> dict[str, Any]:
    """One image's record (its PNG, preview and part written). image / outputs: the decoded
    image and the models' outputs for it, when the run has models (`_run_models`)."""
    name = img["file_name"]
    path = job.images_dir / name
    missing = _missing(job, img, anns)
    if missing is not None:
        return missing
    with Image.open(path) as im:
        width, height = im.size
    if (img.get("height"), img.get("width")) not in ((None, None), (height, width)):
        return {"status": "failed", "file_name": name, "reason":
                f"{path}: size {width}x{height} differs from the JSON's {img['width']}x{img['height']}"}
    outputs = outputs or ModelOutputs()
    models = [m for m in (job.source, job.things, job.box_masks) if m is not None and m != "box"]
    if image is not None and models:  # what the models saw is what is composed
        check_size(image, height, width, f"{path}: {' and '.join(m.spec for m in models)}")
    problems = []
    if job.box_masks is None:
        problems += [f"{job.instances_json}: {name}: annotation {a.get('id', f'#{k}')}: a box without a "
                     "segmentation, skipped (pass --box-masks box or model:...)"
                     for k, a in enumerate(anns) if is_box_only(a)]
        anns = [a for a in anns if not is_box_only(a)]
    mode = None if job.box_masks is None else "box" if job.box_masks == "box" else "model"
    anns, origins = fill_box_masks(anns, height, width, mode, outputs.box_masks)
    origin_of = {a.get("id", k): o for k, (a, o) in enumerate(zip(anns, origins, strict=True))}
    masks, cats, crowd, ann_ids, issues = decode_annotations(anns, height, width, cropped=True)
    problems += [f"{job.instances_json}: {name}: {p}" for p in issues]
    ann_map, ann_segs, ann_report = instances_to_panoptic(
        masks, [job.ann_targets[c] for c in cats], crowd, order=job.order, min_area=job.min_area,
        size=(height, width))
    seg_origin = {int(s["id"]): origin_of[ann_ids[int(s["id"]) - 1]] for s in ann_segs}
    things_map, things_segs, model_dropped, same_object = ann_map, ann_segs, [], 0
    if job.things is not None:
        found = outputs.things
        kept = [k for k, c in enumerate(found.labels) if c in job.things_targets]
        th = merge_things(ann_map, ann_segs, [found.masks[k] for k in kept],
                          [job.things_targets[found.labels[k]] for k in kept], job.order, job.min_area)
        things_map, things_segs = th.id_map, th.segments
        model_dropped, same_object = th.dropped, th.same_object
        seg_origin.update(dict.fromkeys(th.model_ids, MODEL))
    if outputs.stuff is not None:
        src_map, src_segs = outputs.stuff
    elif job.source is not None:
        src_map, src_segs = job.source.labels(path, height, width)
    else:
        src_map, src_segs = None, []
    comp = compose(things_map, things_segs, src_map, src_segs, job.rules, job.target_isthing, job.min_area)
    model_made = np.isin(things_map, [i for i, o in seg_origin.items() if o in (MODEL, MODEL_BOX)])
    by_model = np.isin(things_map, [i for i, o in seg_origin.items() if o == MODEL])

    png_name = str(Path(name).with_suffix(".png"))
    write_panoptic_png(job.work / "panoptic" / png_name, comp.id_map, fsync=False)
    _link(path, job.work / "images" / name)
    if job.previews:
        if image is None:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        over = Image.fromarray(draw_preview(image, comp.id_map, comp.segments_info, comp.annotated,
                                            job.categories, model_made))
        atomic_write(job.work / "previews" / Path(name).with_suffix(".jpg"),
                     lambda f: over.save(f, format="JPEG", quality=85), fsync=False)
    pixels: Counter = Counter()
    for s in comp.segments_info:
        pixels[str(s["category_id"])] += s["area"]
    keys = ("category_id", "area", "full_area")
    dropped = [{"file_name": name, "from": "annotation", **{k: d[k] for k in keys}}
               for d in ann_report["dropped"]]
    dropped += [{"file_name": name, "from": "model", **d} for d in model_dropped]
    dropped += [{"file_name": name, "from": "source", **d} for d in comp.dropped]
    record = {
        "status": "ok", "file_name": name, "problems": problems,
        "image": {"id": img["id"], "file_name": name, "height": height, "width": width},
        "annotation": {"image_id": img["id"], "file_name": png_name, "segments_info": comp.segments_info},
        "stats": {"pixels": height * width, "void": int((comp.id_map == 0).sum()),
                  "annotated": int((comp.annotated & ~by_model).sum()), "ignored": comp.ignored_pixels,
                  "model_things": int(by_model.sum()), "same_object": same_object,
                  "masks": dict(Counter(seg_origin.values())),
                  "class_pixels": dict(pixels), "overlap_pixels": ann_report["overlap_pixels"],
                  "occluded": ann_report["occluded"], "annotations": len(anns), "dropped": dropped},
    }
    write_json(job.work / "parts" / f"{img['id']}.json", record, fsync=False)
    return record


def _link(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` (copy across file systems)."""
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _collect(rec: dict[str, Any], warn: Callable[[str], None], bar: tqdm) -> dict[str, Any]:
    for line in rec.get("problems", []):
        warn(line)
    if rec["status"] == "failed":
        warn(rec["reason"])
    bar.update(1)
    return rec


# ---------------------------------------------------------------- report and output


def _finish(work: Path, out_dir: Path, data: dict[str, Any], records: list[dict[str, Any]],
            tax: Taxonomy, report: dict[str, Any], overwrite: bool) -> None:
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: str(r["image"]["id"]))
    dataset = {
        "info": {"description": "built by panoptic-detr build-gt", "instances": report["instances"],
                 "stuff_from": report["stuff_from"], "things_from": report["things_from"]},
        "images": [r["image"] for r in ok],
        "annotations": [r["annotation"] for r in ok],
        "categories": tax.targets,
    }
    write_json(work / "panoptic.json", dataset, fsync=False)
    write_json(work / "report.json", report, indent=1, fsync=False)
    os.sync()  # one flush for every file of the build (they were written without fsync)
    if (work / "parts").exists():
        shutil.rmtree(work / "parts")
    (work / "config.json").unlink(missing_ok=True)
    for sub in ("panoptic", "images"):
        (work / sub).mkdir(exist_ok=True)
    old = None
    if out_dir.exists():
        if not overwrite:
            raise BuildError(f"{out_dir}: appeared during the build; result left in {work}")
        old = out_dir.parent / f".{out_dir.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
    os.replace(work, out_dir)
    if old is not None:
        shutil.rmtree(old)
