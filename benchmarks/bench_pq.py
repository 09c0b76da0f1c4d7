"""PQ evaluation speed and memory: ours vs the COCO panoptic API vs hotcoco, same files.

    PYTHONPATH=src python benchmarks/bench_pq.py --data /tmp/bench_pq --n 1000 --workers 2 \
        [--other-python /tmp/hc/bin/python]

Writes (once, deterministic for --seed) a COCO-panoptic ground truth and a perturbed
prediction of --n scenes of --size pixels, then times each evaluator (ours with the
fast-png decoder and with PIL's, then the others) in a fresh process
and samples the resident memory of that process and all its children every 5 ms (the sum
is the figure: it is what the machine must hold). `--other-python` is an interpreter
with `hotcoco` and/or `panopticapi` (`pip install hotcoco panopticapi-lite`); each found
is run with 2 workers/threads and its numbers are checked against ours.

The scenes: 3-6 stuff bands with wavy borders, 8-20 things (rectangles, ellipses,
polygons) of 20 thing classes, void borders and blobs, a crowd region now and then. The
prediction redraws the scene with boundary noise, dropped, split, merged and relabelled
segments, spurious ones and void patches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

THINGS = list(range(1, 21))
STUFF = list(range(21, 31))
CATEGORIES = [{"id": c, "name": f"thing{c}", "isthing": 1, "supercategory": "thing"} for c in THINGS] + \
             [{"id": c, "name": f"stuff{c}", "isthing": 0, "supercategory": "stuff"} for c in STUFF]


# ---------------------------------------------------------------- synthetic pairs

def random_scene(rng: np.random.Generator, w: int, h: int) -> dict:
    """A scene description: stuff bands and thing shapes, each with a category."""
    nb = int(rng.integers(3, 7))
    bands = [{"cat": int(rng.choice(STUFF)), "y": float(y), "amp": float(rng.uniform(0, 25)),
              "freq": float(rng.uniform(0.005, 0.03)), "phase": float(rng.uniform(0, 6.3))}
             for y in np.sort(rng.uniform(0, h, nb - 1))]
    things = []
    for _ in range(int(rng.integers(8, 21))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = float(rng.uniform(8, min(w, h) / 5))
        kind = str(rng.choice(["rect", "ellipse", "poly"]))
        k = int(rng.integers(3, 9)) if kind == "poly" else 4
        ang = np.sort(rng.uniform(0, 2 * np.pi, k)) if kind == "poly" else np.array([0, 0.5, 1, 1.5]) * np.pi
        rad = r * rng.uniform(0.5, 1.0, k) if kind == "poly" else np.full(4, r)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang) * rng.uniform(0.5, 1.5)], 1)
        things.append({"cat": int(rng.choice(THINGS)), "kind": kind, "pts": pts,
                       "void_border": rng.random() < 0.3})
    return {"bands": bands, "bottom": int(rng.choice(STUFF)), "things": things}


def draw(scene: dict, w: int, h: int, rng: np.random.Generator, noise: float = 0.0
         ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Render to an [H, W] int64 map of segment indices 1.. (0 void) and their categories."""
    from PIL import Image, ImageDraw

    xs = np.arange(w)
    ids = np.zeros((h, w), np.int64)
    cats: list[tuple[int, int]] = []
    ids[:] = 1
    cats.append((1, scene["bottom"]))
    ys = np.arange(h)[:, None]
    for b in scene["bands"]:  # each band covers everything below its wavy top border
        top = b["y"] + b["amp"] * np.sin(b["freq"] * xs + b["phase"]) + noise * rng.normal(0, 1)
        ids[ys < top[None, :]] = len(cats) + 1
        cats.append((len(cats) + 1, b["cat"]))
    canvas = Image.fromarray(ids.astype(np.int32), mode="I")
    d = ImageDraw.Draw(canvas)
    for t in scene["things"]:
        pts = t["pts"] + (rng.normal(0, noise, t["pts"].shape) if noise else 0)
        k = len(cats) + 1
        cats.append((k, t["cat"]))
        if t["kind"] == "ellipse":
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            d.ellipse([x0, y0, x1, y1], fill=k, outline=0 if t["void_border"] else k, width=2)
        else:
            d.polygon([tuple(p) for p in pts.tolist()], fill=k, outline=0 if t["void_border"] else k, width=2)
    return np.asarray(canvas).astype(np.int64), cats


def perturb(scene: dict, rng: np.random.Generator, w: int, h: int) -> dict:
    """Drop, relabel and add things; stuff relabelled now and then."""
    things = []
    for t in scene["things"]:
        u = rng.random()
        if u < 0.1:
            continue  # dropped
        t = dict(t)
        if u < 0.2:
            t["cat"] = int(rng.choice(THINGS))
        things.append(t)
    for _ in range(int(rng.integers(0, 4))):  # spurious
        things.append(random_scene(rng, w, h)["things"][0])
    bands = [dict(b, cat=int(rng.choice(STUFF))) if rng.random() < 0.1 else b for b in scene["bands"]]
    return {"bands": bands, "bottom": scene["bottom"], "things": things}


def to_segments(idx: np.ndarray, cats: list[tuple[int, int]], rng: np.random.Generator,
                crowd: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Give the segments random COCO-like ids (< 2^24); segments_info of those present."""
    present, area = np.unique(idx, return_counts=True)
    lut = np.zeros(len(cats) + 2, np.int64)
    while True:  # distinct random ids (choice without replacement over 2^24 is slow)
        lut[1:] = rng.integers(1, 2**24, size=len(cats) + 1)
        if np.unique(lut[1:]).size == len(cats) + 1:
            break
    cat_of = dict(cats)
    info = []
    crowded = set()
    for k, a in zip(present.tolist(), area.tolist(), strict=True):
        if k == 0:
            continue
        c = cat_of[k]
        is_crowd = crowd and c in THINGS and c not in crowded and rng.random() < 0.1
        crowded |= {c} if is_crowd else set()
        info.append({"id": int(lut[k]), "category_id": c, "iscrowd": int(is_crowd), "area": int(a)})
    return lut[idx], info


def make_pair(i: int, seed: int, w: int, h: int) -> tuple[np.ndarray, list[dict], np.ndarray, list[dict]]:
    rng = np.random.default_rng([seed, i])
    scene = random_scene(rng, w, h)
    gidx, gcats = draw(scene, w, h, rng)
    blobs = rng.random((h // 16, w // 16)) < 0.01  # void blobs (unlabelled areas)
    gidx[np.kron(blobs, np.ones((16, 16), bool))[:h, :w]] = 0
    pidx, pcats = draw(perturb(scene, rng, w, h), w, h, rng, noise=2.0)
    n = len(pcats)
    for k, c in list(pcats):  # split some things in two
        if c in THINGS and rng.random() < 0.08:
            yy, xx = np.nonzero(pidx == k)
            if xx.size:
                n += 1
                pidx[yy[xx > xx.mean()], xx[xx > xx.mean()]] = n
                pcats.append((n, c))
    things = [k for k, c in pcats if c in THINGS]
    for a, b in zip(things[::2], things[1::2], strict=False):  # merge some pairs
        if rng.random() < 0.08:
            pidx[pidx == b] = a
    for _ in range(int(rng.integers(0, 3))):  # void patches
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        pidx[y: y + int(rng.integers(5, 60)), x: x + int(rng.integers(5, 60))] = 0
    gt, gt_info = to_segments(gidx, gcats, rng, crowd=True)
    pred, pred_info = to_segments(pidx, pcats, rng)
    for s in pred_info:
        del s["iscrowd"]
    return gt, gt_info, pred, pred_info


def _write_chunk(args: tuple[Path, list[int], int, int, int]) -> list[tuple[dict, dict]]:
    from PIL import Image

    from panoptic_detr.data.panoptic_png import id_to_rgb

    out, indices, seed, w, h = args
    anns = []
    for i in indices:
        gt, gt_info, pred, pred_info = make_pair(i, seed, w, h)
        name = f"{i:06d}.png"
        for path, ids in ((out / "gt" / "panoptic" / name, gt), (out / "pred" / "predictions" / name, pred)):
            # PIL's default compression, as DETR and panopticapi write
            Image.fromarray(id_to_rgb(ids)).save(path)
        anns.append(({"image_id": i, "file_name": name, "segments_info": gt_info},
                     {"image_id": i, "file_name": name, "segments_info": pred_info}))
    return anns


def write_dataset(out: Path, n: int, seed: int, w: int, h: int, workers: int = 1) -> None:
    """GT at out/gt/panoptic{.json,/}, prediction at out/pred/predictions{.json,/}."""
    import multiprocessing

    marker = out / f"done-{n}-{seed}-{w}x{h}"
    if marker.exists():
        return
    (out / "gt" / "panoptic").mkdir(parents=True, exist_ok=True)
    (out / "pred" / "predictions").mkdir(parents=True, exist_ok=True)
    jobs = [(out, list(range(i, min(n, i + 25))), seed, w, h) for i in range(0, n, 25)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        anns = [a for chunk in pool.map(_write_chunk, jobs) for a in chunk]
    images = [{"id": i, "file_name": f"{i:06d}.jpg", "width": w, "height": h} for i in range(n)]
    gt_json = {"images": images, "annotations": [g for g, _ in anns], "categories": CATEGORIES}
    (out / "gt" / "panoptic.json").write_text(json.dumps(gt_json))
    (out / "pred" / "predictions.json").write_text(json.dumps({"annotations": [p for _, p in anns]}))
    marker.touch()


# ---------------------------------------------------------------- measuring

def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants."""
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def watch_peak_rss(pid: int) -> Callable[[], float]:
    """Sample the resident memory of `pid` and its descendants every 5 ms from now on; the
    function returned stops the sampling and gives the peak in MB."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(pid))
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def stop() -> float:
        done.set()
        thread.join()
        return peak / 2**20

    return stop


def measure(cmd: list[str], env: dict[str, str]) -> tuple[dict, float, float]:
    """Run `cmd`; return (its last stdout line as JSON, peak tree RSS MB, CPU s of the tree).

    The CPU time (user + system of the process and its waited-for children, interpreter
    start and imports included) is steadier than wall time on a shared machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    peak_mb = watch_peak_rss(proc.pid)
    out, _ = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peak = peak_mb()
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak, cpu


def run_one(mode: str, data: Path, workers: int) -> None:
    """In a fresh process: evaluate with one tool, print {"seconds", "results"} as JSON."""
    gt_json, gt_dir = data / "gt" / "panoptic.json", data / "gt" / "panoptic"
    pred_json, pred_dir = data / "pred" / "predictions.json", data / "pred" / "predictions"
    if mode in ("ours", "ours-pil"):
        from panoptic_detr.data import panoptic_png
        from panoptic_detr.eval.evaluate import evaluate_files

        if mode == "ours-pil":  # as without the fast-png extra (forked workers inherit this)
            panoptic_png.pyspng = None

        t = time.perf_counter()
        res = evaluate_files(gt_json, gt_dir, pred_json, pred_dir, workers=workers)
    else:
        import contextlib
        import multiprocessing

        multiprocessing.cpu_count = lambda: workers  # the API uses one process per CPU
        if mode == "hotcoco":
            from hotcoco.panoptic import pq_compute
        else:
            from panopticapi.evaluation import pq_compute
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            res = pq_compute(str(gt_json), str(pred_json), str(gt_dir), str(pred_dir))
    seconds = time.perf_counter() - t
    keep = {k: res[k] for k in ("All", "Things", "Stuff")}
    keep["per_class"] = {str(k): v for k, v in res["per_class"].items()}
    print(json.dumps({"seconds": seconds, "results": keep}, default=float))


def max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for name in ("All", "Things", "Stuff"):
        worst = max([worst] + [abs(a[name][m] - b[name][m]) for m in ("pq", "sq", "rq", "n")])
    for cat, v in a["per_class"].items():
        worst = max([worst] + [abs(v[m] - b["per_class"][cat][m]) for m in ("pq", "sq", "rq")])
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/bench_pq"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool; the fastest is reported")
    ap.add_argument("--other-python", default=None, help="interpreter with hotcoco / panopticapi")
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return run_one(args.mode, args.data, args.workers)

    w, h = map(int, args.size.split("x"))
    t = time.perf_counter()
    write_dataset(args.data, args.n, args.seed, w, h, workers=os.cpu_count() or 1)
    print(f"data: {args.n} pairs of {w}x{h} at {args.data} ({time.perf_counter() - t:.0f} s)")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.workers), OMP_NUM_THREADS="1")
    tools = [("ours", sys.executable), ("ours-pil", sys.executable)]
    for tool, module in (("hotcoco", "hotcoco"), ("panopticapi", "panopticapi.evaluation")):
        python = args.other_python or sys.executable
        probe = subprocess.run([python, "-c", f"import {module}"], env=env, capture_output=True)
        if probe.returncode == 0:
            tools.append((tool, python))
        else:
            print(f"{tool}: not installed for {python}, skipped")
    ours = None
    print(f"\n| evaluator ({args.workers} workers) | wall ms/image | CPU ms/image "
          "| peak RSS, all processes (MB) | max abs diff vs ours |")
    print("|---|---|---|---|---|")
    for tool, python in tools:
        runs = [measure([python, __file__, "--mode", tool, "--data", str(args.data),
                         "--workers", str(args.workers)], env) for _ in range(args.repeat)]
        out, _, _ = min(runs, key=lambda r: r[0]["seconds"])
        peak = max(r[1] for r in runs)
        cpu = min(r[2] for r in runs)
        ours = ours or out["results"]  # the first tool's
        diff = max_difference(out["results"], ours)
        print(f"| {tool} | {out['seconds'] / args.n * 1e3:.3f} | {cpu / args.n * 1e3:.3f} | {peak:.0f} "
              f"| {diff:.1e} |", flush=True)
    print(f"\nours: PQ {100 * ours['All']['pq']:.2f}  things {100 * ours['Things']['pq']:.2f}  "
          f"stuff {100 * ours['Stuff']['pq']:.2f}")


if __name__ == "__main__":
    main()
