"""`predict` through each runtime: torch, ONNX Runtime, OpenVINO (float32, bfloat16), R50 at
800x1066 with K kept queries, on the CPU.

    PYTHONPATH=src python benchmarks/bench_runtimes.py [--threads 2] [--k 20] [--iters 2]
        [--copies 3] [--reference ../shared/reference] [--detr-repo PATH]

The R50 preset with the reference weights (`reference_weights.py` + `official_keys.json` +
`bn_stats.pt`, saved as an original-layout checkpoint and loaded by `Predictor` as a real one).
The inputs are the reference set's two COCO photos resized to 800x600, so the network sees
800x1066. The weights are random, so the K most confident queries are forced to be kept (as in
bench_predict.py; the same queries for every runtime) and their masks are the network's.
Each row runs as `predict` runs: `runner.predict_files` over a folder holding each photo
`--copies` times (decoding, preprocessing, network, masks of the K queries, post-processing in
this thread; the panoptic PNG, overlay and record written in predict's writer thread, which
overlaps the next image's network). The export is built first (in its own
process, into a temporary torch hub folder or `--torch-home`: what `--runtime` does on first use,
timed apart), then every runtime runs in a fresh process: one warm-up pass over the photos, then
`iters` timed passes; wall and process CPU seconds per image (CPU time counts both threads: on a
shared machine it is the steadier figure), peak RSS = that process's ru_maxrss after the timed
passes (the demo model, for the agreement below, loads after it is read).

Pixel agreement: the fraction of pixels whose category equals torch float32's, on the R50
photos and on the demo checkpoint's bundled validation scenes (30 at 256 px; the same runtime
and dtype). The reference
weights are random: their 20 forced masks differ by less than bfloat16's resolution, so in
bfloat16 their argmax is mostly rounding (torch's own bfloat16 row shows it); the demo scenes,
segmented by a trained model, are the measure of bfloat16's agreement.

The original (`--detr-repo`: a checkout of facebookresearch/detr, kept outside this repository
and never committed; $DETR_REPO also works) runs in the same run on the same photos: its
`hubconf.detr_resnet50_panoptic` model (its `models/` code) with the same reference weights,
which are in its key layout, loaded strictly; per image as its own inference runs: PIL decode,
its validation transform (`datasets.transforms.RandomResize([800], max_size=1333)`, ToTensor,
Normalize), the model (masks for all 100 queries, as it computes them), the same K-forcing of
`pred_logits` as our rows, its `PostProcessPanoptic` at threshold 0.85 (which encodes the PNG),
and the PNG written to a file. Two shims, none touching its maths: `is_main_process` answers
False while building (its backbone would otherwise download ImageNet weights, which the
reference weights replace), `panopticapi.utils` (id2rgb, rgb2id: the colour encoding of
segment ids) is given when panopticapi is not installed, and nothing else. Every row's ratio
to it is its wall (and CPU) time per image over the original's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import forced_keep  # noqa: E402

RUNS = (("torch", "float32"), ("onnxruntime", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"),
        ("torch", "bfloat16"))
PHOTOS = ("000000142238.jpg", "000000439180.jpg")


def prepare(reference: Path, work: Path) -> tuple[Path, list[Path]]:
    import torch
    from PIL import Image

    sys.path.insert(0, str(reference))
    from reference_weights import reference_state_dict

    sd = reference_state_dict(json.loads((reference / "official_keys.json").read_text()))
    sd.update(torch.load(reference / "bn_stats.pt", weights_only=True))
    ckpt = work / "detr-r50-reference.pth"
    torch.save({"model": sd}, ckpt)
    photos = []
    for name in PHOTOS:
        with Image.open(reference / "images" / name) as im:
            photos.append(work / name)
            im.convert("RGB").resize((800, 600), Image.Resampling.BILINEAR).save(photos[-1], quality=95)
    return ckpt, photos


class ForcedK:
    """A model (torch or exported) whose `detect` keeps exactly k queries above any threshold."""

    def __init__(self, model, k: int):
        self.model, self.k = model, k

    def detect(self, batch, return_attention=False):
        det = self.model.detect(batch)
        det.pred_logits = forced_keep(det.pred_logits.float(), self.k)[0]
        return det

    def predict_masks(self, det, queries, chunk=None):
        return self.model.predict_masks(det, queries, chunk=chunk)


def run_one(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from panoptic_detr.demo import DEMO_VAL
    from panoptic_detr.gt.instances import panoptic_to_semantic
    from panoptic_detr.predictor import Predictor
    from panoptic_detr.runner import predict_files

    t = time.perf_counter()
    predictor = Predictor(args.ckpt, preset="detr_r50_panoptic", runtime=args.runtime, dtype=args.dtype)
    build_s = time.perf_counter() - t
    if args.export_only:
        Predictor("demo", runtime=args.runtime, dtype=args.dtype)  # its export too
        return {"export_s": build_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    predictor.model = ForcedK(predictor.model, args.k)
    out = Path(args.work) / f"out_{args.runtime}_{args.dtype}"
    photos = [Path(p) for p in args.photos]
    inputs = out / "inputs"  # the photos, `copies` times each, as predict reads a folder
    inputs.mkdir(parents=True)
    for c in range(args.copies):
        for path in photos:
            os.link(path, inputs / f"{c}_{path.name}")
    n = args.copies * len(photos)
    times, cpu = [], []
    for it in range(args.iters + 1):  # the first pass warms up
        t, c = time.perf_counter(), time.process_time()
        summary = predict_files([inputs], out / "predict", predictor=predictor, overwrite=True,
                                progress=False)
        if len(summary.done) != n:
            sys.exit(f"predict did {len(summary.done)} of {n} images: {summary.failed}")
        if it:
            times.append((time.perf_counter() - t) / n)
            cpu.append((time.process_time() - c) / n)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the demo model loads
    results = [predictor.predict(path) for path in photos]
    cats = [panoptic_to_semantic(r.id_map.numpy(), r.segments_info) for r in results]
    np.save(out / "categories.npy", np.stack(cats))
    demo = Predictor("demo", runtime=args.runtime, dtype=args.dtype)
    scenes = [demo.predict(p) for p in sorted((DEMO_VAL / "images").glob("*.jpg"))]
    np.save(out / "demo_categories.npy",
            np.stack([panoptic_to_semantic(r.id_map.numpy(), r.segments_info) for r in scenes]))
    return {"runtime": args.runtime, "dtype": args.dtype, "s_per_image": min(times), "all_s": times,
            "cpu_s_per_image": min(cpu),
            "load_s": build_s, "segments": [len(r.segments_info) for r in results],
            "peak_rss_mb": peak_mb}


def panopticapi_module():
    """A stand-in `panopticapi.utils` with panopticapi's id2rgb / rgb2id (id = R + 256 G +
    256^2 B), the two functions the original's post-processing calls."""
    import types

    import numpy as np

    def id2rgb(id_map):
        id_map = np.array(id_map, dtype=np.int64)
        return np.stack([id_map % 256, id_map // 256 % 256, id_map // 256**2 % 256], -1).astype(np.uint8)

    def rgb2id(color):
        color = np.asarray(color).astype(np.int32)
        return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]

    utils = types.ModuleType("panopticapi.utils")
    utils.id2rgb, utils.rgb2id = id2rgb, rgb2id
    package = types.ModuleType("panopticapi")
    package.utils = utils
    return package, utils


def run_original(args: argparse.Namespace) -> dict:
    """The original implementation on the photos (see the module docstring)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.detr_repo)
    try:
        import panopticapi.utils  # noqa: F401
    except ImportError:
        sys.modules["panopticapi"], sys.modules["panopticapi.utils"] = panopticapi_module()
    import datasets.transforms as T
    import models.backbone
    from hubconf import detr_resnet50_panoptic

    models.backbone.is_main_process = lambda: False  # no ImageNet download: loaded over next
    t = time.perf_counter()
    model, post = detr_resnet50_panoptic(return_postprocessor=True)
    model.load_state_dict(torch.load(args.ckpt, weights_only=True)["model"])
    model.eval()
    load_s = time.perf_counter() - t
    transform = T.Compose([T.RandomResize([800], max_size=1333), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = Path(args.work) / "out_original"
    out.mkdir(exist_ok=True)
    photos = [Path(p) for p in args.photos]
    times, cpu, cats, segments = [], [], [], []
    for it in range(args.iters + 1):
        t, c = time.perf_counter(), time.process_time()
        results = []
        for i, path in enumerate(photos):
            with torch.no_grad():
                image = Image.open(path).convert("RGB")
                x, _ = transform(image, None)
                outputs = model(x[None])
                outputs["pred_logits"] = forced_keep(outputs["pred_logits"], args.k)[0]
                size = torch.as_tensor(x.shape[-2:])[None]
                target = torch.as_tensor(image.size[::-1])[None]
                result = post(outputs, size, target)[0]
            (out / f"img{i}.png").write_bytes(result["png_string"])
            results.append(result)
        if it:
            times.append((time.perf_counter() - t) / len(photos))
            cpu.append((time.process_time() - c) / len(photos))
    for r in results:  # its ids start at 0: categories per pixel, void 255 as ours
        rgb = np.array(Image.open(io.BytesIO(r["png_string"]))).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        lut = np.full(ids.max() + 1, 255, np.int64)
        for seg in r["segments_info"]:
            lut[seg["id"]] = seg["category_id"]
        cats.append(lut[ids])
        segments.append(len(r["segments_info"]))
    np.save(out / "categories.npy", np.stack(cats))
    return {"runtime": "original DETR", "dtype": "float32", "s_per_image": min(times), "all_s": times,
            "cpu_s_per_image": min(cpu), "load_s": load_s, "segments": segments,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return " ".join(sorted(f for f in set(flags) if f.startswith(("avx512", "amx")))) or "none"


def cpu_name() -> str:
    """The CPU's model name, family and model (/proc/cpuinfo): the runtimes' speeds, and which
    of them is fastest, differ between CPU kinds (AMX or not)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0]
                    .splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    get = {k.strip(): v.strip() for k, v in info.items()}.get
    return f"{get('model name', '?')} (family {get('cpu family', '?')}, model {get('model', '?')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--iters", type=int, default=2, help="timed passes over the photos")
    parser.add_argument("--copies", type=int, default=3,
                        help="each photo is given to predict this many times per pass (our rows)")
    parser.add_argument("--reference", type=Path, default=Path(
        os.environ.get("PANOPTIC_DETR_REFERENCE", ROOT.parent / "shared" / "reference")))
    parser.add_argument("--torch-home", type=Path, default=None,
                        help="where the exports are cached (default: a temporary folder, so the first "
                             "use is timed)")
    parser.add_argument("--detr-repo", default=os.environ.get("DETR_REPO"),
                        help="a checkout of facebookresearch/detr (outside this repository) to time the "
                             "original beside (default: $DETR_REPO; without it, no original row)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--original", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--photos", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_original(args) if args.original else run_one(args)))
        return

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, photos = prepare(args.reference, work)
        env = {**os.environ, "TORCH_HOME": str(args.torch_home or work / "torch_home"),
               "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT / "src")}
        base = [sys.executable, __file__, "--one", "--threads", str(args.threads), "--k", str(args.k),
                "--iters", str(args.iters), "--copies", str(args.copies), "--ckpt", str(ckpt),
                "--work", str(work), "--photos", *map(str, photos)]

        def one(*extra: str) -> dict:
            done = subprocess.run(base + list(extra), env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(extra)} failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])

        export = one("--export-only", "--runtime", "onnxruntime")
        print(f"export on first use (dynamo exporter + ONNX Runtime check): {export['export_s']:.0f} s, "
              f"peak RSS {export['peak_rss_mb']:.0f} MB", flush=True)
        rows = [one("--runtime", runtime, "--dtype", dtype) for runtime, dtype in RUNS]
        original = None
        if args.detr_repo:
            try:
                original = one("--original", "--detr-repo", args.detr_repo)
            except SystemExit as e:  # the table of our runtimes still stands
                print(f"the original failed, no ratios: {e}", file=sys.stderr)
        ref = np.load(work / "out_torch_float32" / "categories.npy")
        demo_ref = np.load(work / "out_torch_float32" / "demo_categories.npy")
        for row in rows:
            folder = work / f"out_{row['runtime']}_{row['dtype']}"
            row["agreement"] = float((np.load(folder / "categories.npy") == ref).mean())
            row["demo_agreement"] = float((np.load(folder / "demo_categories.npy") == demo_ref).mean())
        if original:
            original["agreement"] = float((np.load(work / "out_original" / "categories.npy") == ref).mean())
            original["demo_agreement"] = float("nan")  # the demo model is not an original-layout one
            rows.append(original)
    cpu = cpu_name()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}; CPU flags: {cpu_flags()}")
    print("| runtime | dtype | s/image (wall) | CPU s/image | CPU vs torch float32 | wall vs original | "
          "CPU vs original | agreement R50 photos | agreement demo scenes | peak RSS MB | segments |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = rows[0]["cpu_s_per_image"]
    orig = original["cpu_s_per_image"] if original else float("nan")
    orig_wall = original["s_per_image"] if original else float("nan")
    for r in rows:
        print(f"| {r['runtime']} | {r['dtype']} | {r['s_per_image']:.2f} | {r['cpu_s_per_image']:.2f} | "
              f"{r['cpu_s_per_image'] / base:.2f} | {r['s_per_image'] / orig_wall:.3f} | "
              f"{r['cpu_s_per_image'] / orig:.3f} | "
              f"{100 * r['agreement']:.2f} % | {100 * r['demo_agreement']:.2f} % | {r['peak_rss_mb']:.0f} | "
              f"{r['segments']} |")


if __name__ == "__main__":
    main()
