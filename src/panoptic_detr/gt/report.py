"""The build report: what was built, skipped or failed, and what the labels are made of."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .box_masks import ORIGINS


def make_report(records: list[dict[str, Any]], targets: list[dict[str, Any]], problems: list[str],
                instances_json: Path, stuff_from: str | None, things_from: str | None = None
                ) -> dict[str, Any]:
    """The report of a build from its per-image records (see build._build_one) and the target
    categories; JSON-ready."""
    ok = [r for r in records if r["status"] == "ok"]
    stats = [r["stats"] for r in ok]
    total = sum(s["pixels"] for s in stats)
    class_px: Counter = Counter()
    for s in stats:
        class_px.update({int(k): v for k, v in s["class_pixels"].items()})

    def share(n: int) -> float:
        return round(n / total, 6) if total else 0.0

    masks: Counter = Counter()
    for s in stats:
        masks.update(s.get("masks", {}))
    return {
        "instances": str(instances_json), "stuff_from": stuff_from, "things_from": things_from,
        "images": {"total": len(records), "processed": len(ok),
                   "reused": sum(1 for r in ok if r.get("reused")),
                   "skipped": [{"file_name": r["file_name"], "reason": r["reason"]}
                               for r in records if r["status"] == "skipped"],
                   "failed": [{"file_name": r["file_name"], "reason": r["reason"]}
                              for r in records if r["status"] == "failed"]},
        "pixels": {"total": total, "void": sum(s["void"] for s in stats),
                   "void_share": share(sum(s["void"] for s in stats)),
                   "annotated_share": share(sum(s["annotated"] for s in stats)),
                   "ignored_share": share(sum(s["ignored"] for s in stats)),
                   "model_things_share": share(sum(s.get("model_things", 0) for s in stats))},
        # thing masks by origin (gt.box_masks.ORIGINS); model instances dropped as the same
        # object as an annotation
        "masks": {o: masks.get(o, 0) for o in ORIGINS},
        "same_object_dropped": sum(s.get("same_object", 0) for s in stats),
        "classes": [{"id": t["id"], "name": t["name"], "isthing": t["isthing"],
                     "pixels": class_px.get(int(t["id"]), 0), "share": share(class_px.get(int(t["id"]), 0))}
                    for t in targets],
        "overlaps": {"pixels": sum(s["overlap_pixels"] for s in stats),
                     "occluded_instances": sum(s["occluded"] for s in stats),
                     "images": sum(1 for s in stats if s["overlap_pixels"])},
        "fragments_dropped": [d for s in stats for d in s["dropped"]],
        "problems": problems,
    }


def format_summary(report: dict[str, Any], top: int = 12) -> str:
    """A readable summary of a build report."""
    im, px = report["images"], report["pixels"]
    lines = [f"images: {im['processed']} built ({im['reused']} reused from an interrupted run), "
             f"{len(im['skipped'])} skipped, {len(im['failed'])} failed, of {im['total']}"]
    for r in im["skipped"][:5] + im["failed"][:5]:
        lines.append(f"  {r['file_name']}: {r['reason']}")
    lines.append(f"pixels: {100 * px['annotated_share']:.1f}% annotated, {100 * px['void_share']:.1f}% "
                 f"void ({100 * px['ignored_share']:.1f}% ignored by the taxonomy)")
    if any(n for o, n in report["masks"].items() if o != "drawn"):
        m = report["masks"]
        lines.append(f"thing masks: {m['drawn']} drawn, {m['box']} box-filled, {m['model_box']} predicted in "
                     f"a box, {m['model']} found by the instance model ({report['same_object_dropped']} "
                     "more dropped as annotated objects)")
    ov = report["overlaps"]
    lines.append(f"overlaps: {ov['pixels']} pixels in {ov['images']} image(s) resolved, "
                 f"{ov['occluded_instances']} instance(s) occluded, "
                 f"{len(report['fragments_dropped'])} fragment(s) dropped")
    classes = sorted((c for c in report["classes"] if c["pixels"]), key=lambda c: -c["pixels"])
    lines.append("pixel share per class:" + ("" if classes else " (none)"))
    for c in classes[:top]:
        lines.append(f"  {c['name']:<24} {'thing' if c['isthing'] else 'stuff'}  {100 * c['share']:6.2f}%")
    if len(classes) > top:
        lines.append(f"  ... {len(classes) - top} more in report.json")
    if report["problems"]:
        lines.append(f"{len(report['problems'])} problem(s), listed in report.json")
    return "\n".join(lines)
