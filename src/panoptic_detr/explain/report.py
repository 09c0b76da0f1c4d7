"""Write an `Explanation` to files: PNG sheets and one self-contained HTML report.

The report embeds every image as a base64 data URI and carries its own CSS, with no
script and no external resource, so it opens offline from a mail attachment as well as
from disk. Files are written atomically (`data.files`) and never replace existing ones
unless asked.

Layout of `out_dir`:
  report.html           the whole explanation (figures embedded as JPEG data URIs)
  sheet.png             overview + path figure + the first segments (for a README)
  overview.png          input | C5 heat map | panoptic overlay | legend
  path.png              image -> attention maps -> mask logits -> segment, sizes annotated
  segments/segment_<id>.png   one sheet per explained segment
  dropped/query_<i>.png       one per dropped query whose mask logits were computed
  queries.json          every query: status, reason, segment, best class and score, box
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data.files import atomic_write, write_json
from . import figures as fig
from .core import DROP_REASONS, Explanation, QueryInfo


@dataclass
class ReportFiles:
    """Paths written by `write_report`."""

    html: Path
    sheet: Path
    overview: Path
    path: Path | None
    segments: dict[int, Path]
    dropped: dict[int, Path]
    """Query index -> sheet of a dropped query whose mask logits were computed."""
    queries: Path


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> None:
    """Raise FileExistsError when `out_dir` already holds a report and `overwrite` is False
    (callers check before the network runs; `write_report` checks every file again)."""
    html = Path(out_dir) / "report.html"
    if not overwrite and html.exists():
        raise FileExistsError(f"{html}: exists (pass --overwrite to replace it)")


def choose_segments(expl: Explanation, segments: str | Sequence[int] | None = "all") -> list[int]:
    """Segment ids to explain: "all"/None for every kept segment, else the given ids (checked)."""
    kept = [int(s["id"]) for s in expl.result.segments_info]
    if segments is None or segments == "all":
        return kept
    chosen = [int(s) for s in segments]
    missing = [s for s in chosen if s not in kept]
    if missing:
        have = ", ".join(map(str, kept)) or "none"
        raise ValueError(f"segment(s) {', '.join(map(str, missing))} not in the result (segments: {have})")
    return chosen


def default_path_segment(expl: Explanation, segments: Sequence[int]) -> int | None:
    """The highest-scoring of `segments`, or None when there is none."""
    if not segments:
        return None
    return max(segments, key=lambda s: (expl.segment_score(s), -s))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpeg_uri(im: Image.Image) -> str:
    """A data URI of `im` as JPEG: the report embeds photos and heat maps, which JPEG keeps
    5-10x smaller than PNG (a 100-segment report stays a few MB) and encodes faster."""
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _query_dict(expl: Explanation, q: QueryInfo) -> dict:
    cats = expl.categories
    no_object = q.label == expl.pred_logits.shape[-1] - 1
    return {
        "query": q.index,
        "status": q.status,
        "segment_id": q.segment_id,
        "label": None if no_object else q.label,
        "label_name": "no-object" if no_object else cats.name(q.label),
        "score": round(q.score, 6),
        "best_class": q.best_class,
        "best_class_name": cats.name(q.best_class),
        "best_score": round(q.best_score, 6),
        "box_xyxy": [round(v, 2) for v in q.box],
    }


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222;
       max-width: 1400px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin-bottom: 4px; }
img { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; }
.meta td:first-child { color: #666; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #333;
          vertical-align: middle; margin-right: 6px; }
.notice { background: #fff4e5; border: 1px solid #f0b060; padding: 8px 12px; }
.muted { color: #777; }
section.segment { margin-bottom: 24px; }
"""


def render_html(expl: Explanation, images: dict[str, str], segments: Sequence[int],
                path_segment: int | None) -> str:
    """The report as one HTML string; `images` maps "overview", "path", "segment_<id>" and
    "dropped_<query>" to data URIs."""
    e = html.escape
    cats = expl.categories
    H, W = expl.image.shape[:2]
    ih, iw = expl.input_size
    n, m = int(expl.attention_maps.shape[0]), expl.num_heads
    title = e(str(expl.meta.get("image", "image")))
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>explain: {title}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>Explanation of {title}</h1>"]

    meta = [("image", f"{title} ({W} x {H} px)"), ("network input", f"{iw} x {ih} px"),
            ("weights", e(str(expl.meta.get("weights", "?")))),
            ("queries / heads", f"{n} queries, {m} attention heads"),
            (f"attention grid (W/{expl.c5_stride} x H/{expl.c5_stride})",
             "{} x {}".format(*reversed(tuple(expl.attention_maps.shape[-2:])))),
            ("mask logits (W/4 x H/4)", "{} x {}".format(*reversed(tuple(expl.mask_logits.shape[-2:])))),
            ("confidence threshold", f"{expl.threshold:g}"),
            ("segments", str(len(expl.result.segments_info)))]
    out.append("<table class='meta'>" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta)
               + "</table>")

    out.append("<h2>Overview</h2>")
    out.append(_img(images["overview"], "input, C5 activation, panoptic result"))
    if not expl.result.segments_info:
        out.append(f"<p class='notice'>No segment was kept: all {n} queries were dropped. "
                   "The table below says why.</p>")
    else:
        colors = fig.segment_colors(expl)
        rows = []
        for s in expl.result.segments_info:
            sid = int(s["id"])
            q = expl.query_of_segment(sid)
            merged = [d.index for d in expl.queries if d.status == "duplicated stuff" and d.segment_id == sid]
            c = "#{:02x}{:02x}{:02x}".format(*colors[sid])
            rows.append(f"<tr><td><span class='swatch' style='background:{c}'></span>{sid}</td>"
                        f"<td>{e(cats.name(int(s['category_id'])))}</td>"
                        f"<td>{'thing' if s.get('isthing', True) else 'stuff'}</td>"
                        f"<td>{expl.segment_score(sid):.3f}</td><td>{q.index}"
                        + (f" <span class='muted'>(+ {', '.join(map(str, merged))})</span>" if merged else "")
                        + f"</td><td>{int(s['area'])}</td></tr>")
        out.append("<h3>Legend</h3><table><tr><th>segment</th><th>class</th><th>kind</th><th>score</th>"
                   "<th>query</th><th>area (px)</th></tr>" + "".join(rows) + "</table>")

    if path_segment is not None:
        out.append(f"<h2>Path of segment {path_segment}</h2>")
        out.append("<p class='muted'>The query's attention over the encoder output (one map per head, "
                   f"H/{expl.c5_stride}), the FPN head's mask logits (H/4), and the segment after the "
                   "per-pixel argmax over all kept queries, resized to the image.</p>")
        out.append(_img(images["path"], f"path of segment {path_segment}"))

    if segments:
        out.append("<h2>Segments</h2>")
        for sid in segments:
            out.append(f"<section class='segment' id='segment-{sid}'>"
                       + _img(images[f"segment_{sid}"], f"segment {sid}") + "</section>")

    dropped = fig.dropped_rows(expl)
    looked = [q for q in dropped if f"dropped_{q.index}" in images]
    if looked:
        out.append("<h2>Dropped queries with their masks</h2><p class='muted'>Queries that passed "
                   "the threshold but lost their pixels (duplicated stuff, &lt;= 4 pixels), and the "
                   "near misses below the threshold, whose masks are computed only for this look "
                   "and take no part in the argmax.</p>")
        for q in looked:
            out.append(f"<section class='segment' id='query-{q.index}'>"
                       + _img(images[f"dropped_{q.index}"], f"dropped query {q.index}") + "</section>")
    counts = Counter(q.status for q in dropped)
    summary = ", ".join(f"{counts[r]} {e(r)}" for r in DROP_REASONS if counts[r])
    out.append(f"<h2>Dropped queries ({len(dropped)})</h2><p class='muted'>{summary or 'none'}. "
               "Best class is the arg-max over the real classes (no-object left out).</p>")
    rows = []
    no_obj = expl.pred_logits.shape[-1] - 1
    probs = expl.pred_logits.float().softmax(-1)[:, no_obj]
    for q in dropped:
        extra = f" into segment {q.segment_id}" if q.segment_id is not None else ""
        rows.append(f"<tr><td>{q.index}</td><td>{e(q.status)}{extra}</td>"
                    f"<td>{e(cats.name(q.best_class))} ({q.best_class})</td><td>{q.best_score:.3f}</td>"
                    f"<td>{float(probs[q.index]):.3f}</td>"
                    f"<td>{', '.join(f'{v:.0f}' for v in q.box)}</td></tr>")
    out.append("<table><tr><th>query</th><th>reason</th><th>best class</th><th>best score</th>"
               "<th>no-object prob.</th><th>box x0, y0, x1, y1</th></tr>" + "".join(rows) + "</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(expl: Explanation, out_dir: str | Path, segments: str | Sequence[int] | None = "all",
                 path_segment: int | None = None, overwrite: bool = False) -> ReportFiles:
    """Draw the figures of `expl` and write them, the HTML report and queries.json to `out_dir`.

    Raises ValueError for unknown segment ids and FileExistsError (before writing anything)
    when a report is already there and `overwrite` is False.
    """
    out = Path(out_dir)
    chosen = choose_segments(expl, segments)
    if path_segment is None:
        path_segment = default_path_segment(expl, chosen)
    else:
        choose_segments(expl, [path_segment])
    files = ReportFiles(html=out / "report.html", sheet=out / "sheet.png", overview=out / "overview.png",
                        path=out / "path.png" if path_segment is not None else None,
                        segments={s: out / "segments" / f"segment_{s}.png" for s in chosen},
                        dropped={q.index: out / "dropped" / f"query_{q.index}.png" for q in expl.dropped()
                                 if expl.mask_logits_of(q.index) is not None},
                        queries=out / "queries.json")
    targets = [files.html, files.sheet, files.overview, files.queries, *files.segments.values(),
               *files.dropped.values()]
    targets += [files.path] if files.path else []
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(f"{t}: exists (pass --overwrite to replace it)")

    draw = fig.Figures(expl)
    figures: dict[str, Image.Image] = {"overview": draw.overview()}
    if path_segment is not None:
        figures["path"] = draw.path(path_segment)
    for s in chosen:
        figures[f"segment_{s}"] = draw.segment(s)
    for q in fig.dropped_rows(expl):
        if expl.mask_logits_of(q.index) is not None:
            figures[f"dropped_{q.index}"] = draw.dropped(q)
    sheet = draw.sheet(chosen, path_segment, drawn=figures)
    png_files = {files.overview: figures["overview"], files.sheet: sheet}
    if files.path is not None:
        png_files[files.path] = figures["path"]
    png_files.update({p: figures[f"segment_{s}"] for s, p in files.segments.items()})
    png_files.update({p: figures[f"dropped_{q}"] for q, p in files.dropped.items()})

    def put_png(path: Path, im: Image.Image) -> None:
        data = _png(im)
        atomic_write(path, lambda f: f.write(data), overwrite=True)

    # PNG encoding is most of a large report's time; Pillow releases the GIL while encoding
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        uris = dict(zip(figures, pool.map(_jpeg_uri, figures.values()), strict=True))
        list(pool.map(put_png, png_files.keys(), png_files.values()))
    write_json(files.queries, {"threshold": expl.threshold, "meta": {k: str(v) for k, v in expl.meta.items()},
                               "queries": [_query_dict(expl, q) for q in expl.queries]}, indent=1)
    html_text = render_html(expl, uris, chosen, path_segment).encode("utf-8")
    atomic_write(files.html, lambda f: f.write(html_text), overwrite=True)
    return files
