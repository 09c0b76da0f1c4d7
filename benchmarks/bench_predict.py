"""`predict` end to end: DETR-R50 panoptic at 800x1066 on the CPU, K queries kept.

    PYTHONPATH=src python benchmarks/bench_predict.py [--threads 2] [--ks 0 10 20 100]
        [--batches 1 4] [--iters 2] [--reference ../shared/reference]

The R50 preset with the reference weights (`reference_weights.py` + `official_keys.json` +
`bn_stats.pt`, saved as an original-layout checkpoint and loaded by `Predictor` like a real
one, which prepares the model for inference: BN folded, channels-last; `--no-prepare` not).
The input is a COCO photo of the reference set resized to 640x480, so the
network sees 800x1066 and the result is 640x480. The reference weights are random, so the
K most confident queries are forced to be kept (their best real class made certain, the others
made no-object); their masks are the network's. Every (batch size, K) runs in a fresh process
(peak RSS = that process's ru_maxrss: model, activations, outputs); one warm-up batch, then
`iters` timed batches. Stages per image: decode (JPEG), preprocess (resize + normalise +
padding), network (`detect`: backbone, transformer, heads), masks (mask head for the kept
queries, `--mask-chunk` at a time), postprocess, write (panoptic PNG, overlay PNG, JSON
record). A batch goes through the network as the predictor sends it: on a CPU every image
alone at its own size, with `--together` as one padded tensor (the predictor's GPU default).
"faults" are the minor page faults per image over the timed batches, in MB of fresh pages
(glibc maps every allocation over 32 MB anew, and the kernel zeroes each page on first touch).
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
STAGES = ("decode", "preprocess", "network", "masks", "postprocess", "write")


def prepare(reference: Path, work: Path) -> tuple[Path, Path]:
    """The reference R50 checkpoint (original layout) and the 640x480 test photo."""
    import torch
    from PIL import Image

    sys.path.insert(0, str(reference))
    from reference_weights import reference_state_dict

    keys = json.loads((reference / "official_keys.json").read_text())
    sd = reference_state_dict(keys)
    sd.update(torch.load(reference / "bn_stats.pt", weights_only=True))
    ckpt = work / "detr-r50-reference.pth"
    torch.save({"model": sd}, ckpt)
    photo = work / "photo.jpg"
    with Image.open(reference / "images" / "000000142238.jpg") as im:
        im.convert("RGB").resize((640, 480), Image.Resampling.BILINEAR).save(photo, quality=95)
    return ckpt, photo


def forced_keep(logits, k: int):
    """Keep the k queries most confident about a real class: returns (edited logits, indices)."""
    import torch

    probs = logits.softmax(-1)[..., :-1].amax(-1)  # B x N
    keep = [probs[i].topk(k).indices.sort().values for i in range(len(logits))]
    forced = logits.clone()
    forced[..., -1] = logits.amax(-1) + 50  # everything no-object ...
    for i, idx in enumerate(keep):
        best = logits[i, idx, :-1].argmax(-1)
        forced[i, idx, -1] = logits[i, idx].amin(-1)  # ... except the kept: their best class
        forced[i, idx, best] = logits[i, idx].amax(-1) + 50
    return forced, [torch.as_tensor(k_).long() for k_ in keep]


class Clock:
    """Wall and process CPU seconds per stage (CPU time counts every thread: on a machine
    shared with other work it is the steadier figure; wall >= CPU / threads)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._w, self._c = time.perf_counter(), time.process_time()

    def lap(self, name: str | None) -> None:
        w, c = time.perf_counter(), time.process_time()
        if name is not None:  # a stage lapped again (one image after another) adds up
            self.wall[name] = self.wall.get(name, 0.0) + w - self._w
            self.cpu[name] = self.cpu.get(name, 0.0) + c - self._c
        self._w, self._c = w, c


def _chunk(value: str) -> int | str | None:
    return value if value == "auto" else int(value) or None


def run_one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from panoptic_detr.data.images import load_image, preprocess
    from panoptic_detr.model.postprocess import panoptic_postprocess, select_queries
    from panoptic_detr.predictor import Predictor
    from panoptic_detr.runner import file_digest, save_result
    from panoptic_detr.structures import PaddedBatch

    predictor = Predictor(args.ckpt, preset="detr_r50_panoptic", mask_chunk=_chunk(args.mask_chunk),
                          prepare=not args.no_prepare, dtype=args.dtype,
                          batched_network=True if args.together else None)
    model, cats = predictor.model, predictor.categories
    is_thing = cats.thing_mask()
    out = Path(args.work) / f"out_b{args.batch}_k{args.k}"
    paths = [Path(args.photo)] * args.batch
    totals = dict.fromkeys(STAGES, 0.0)
    cpu = dict.fromkeys(STAGES, 0.0)
    segments = 0
    faults = 0
    for it in range(args.iters + 1):  # the first batch warms up
        if it == 1:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        clock = Clock()
        with torch.inference_mode():
            arrays = [load_image(p) for p in paths]
            clock.lap("decode")
            inputs = [preprocess(a) for a in arrays]
            batch = PaddedBatch.from_images(inputs).to("cpu", predictor.dtype)
            clock.lap("preprocess")
            # as the predictor runs the network: the padded batch together, or (its CPU default)
            # every image alone at its own size; the stages of the images add up
            groups = [batch] if predictor.batched_network else [batch.alone(i) for i in range(len(batch))]
            results = []
            for group in groups:
                det = model.detect(group)
                clock.lap("network")
                logits, keep = forced_keep(det.pred_logits, args.k)
                assert all(torch.equal(a, b) for a, b in zip(select_queries(logits), keep, strict=True))
                clock.lap(None)
                masks = predictor.model.predict_masks(det, keep, chunk=predictor.mask_chunk)
                clock.lap("masks")
                padded = tuple(group.images.shape[-2:])
                first = len(results)
                results += [
                    panoptic_postprocess(logits[i].float(), masks[i].float(), group.sizes[i], padded,
                                         arrays[first + i].shape[:2], is_thing, query_idx=keep[i],
                                         pred_boxes=det.pred_boxes[i].float())
                    for i in range(len(group))
                ]
                clock.lap("postprocess")
        for i, (r, a) in enumerate(zip(results, arrays, strict=True)):
            save_result(r, a, paths[i], f"img{i}", out, cats, digest=file_digest(paths[i]))
        clock.lap("write")
        if it > 0:
            for name in STAGES:
                totals[name] += clock.wall[name]
                cpu[name] += clock.cpu[name]
            segments += sum(len(r.segments_info) for r in results)
    n = args.iters * args.batch
    per_image = {name: totals[name] / n for name in STAGES}
    cpu_per_image = {name: cpu[name] / n for name in STAGES}
    return {
        "batch": args.batch, "k": args.k, "input": list(inputs[0].shape[-2:]),
        "per_image_s": per_image, "total_s": sum(per_image.values()),
        "cpu_per_image_s": cpu_per_image, "cpu_total_s": sum(cpu_per_image.values()),
        "segments": segments / n,
        "faults_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        * resource.getpagesize() / 2**20 / n,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 10, 20, 100])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iters", type=int, default=2, help="timed batches per configuration")
    parser.add_argument("--reference", type=Path, default=Path(
        os.environ.get("PANOPTIC_DETR_REFERENCE", ROOT.parent / "shared" / "reference")))
    parser.add_argument("--mask-chunk", default="auto",
                        help="queries per mask-head call (0: all; auto: the predictor's default)")
    parser.add_argument("--no-prepare", action="store_true",
                        help="the model as loaded (no BN folding, no channels-last)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="network precision (Predictor's dtype)")
    parser.add_argument("--together", action="store_true",
                        help="run each batch through the network as one padded tensor (the predictor's "
                             "GPU default; on a CPU it runs the images of a batch one by one)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as work:
        ckpt, photo = prepare(args.reference, Path(work))
        # threads via torch.set_num_threads in the child; setting OMP_NUM_THREADS as well made
        # the network 4x slower on the shared, oversubscribed 2-core machine (OpenMP waiting)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, {args.threads} threads, {args.iters} timed batches per row")
        print("wall s/image per stage (CPU s/image of all threads in brackets)")
        print("| batch | K | segments | " + " | ".join(STAGES)
              + " | total s/img | faults MB/img | peak RSS MB |")
        print("|" + "---|" * (len(STAGES) + 6))
        for batch in args.batches:
            for k in args.ks:
                cmd = [sys.executable, __file__, "--one", "--batch", str(batch), "--k", str(k),
                       "--ckpt", str(ckpt), "--photo", str(photo), "--work", work,
                       "--threads", str(args.threads), "--iters", str(args.iters),
                       "--mask-chunk", str(args.mask_chunk)]
                cmd += ["--no-prepare"] if args.no_prepare else []
                cmd += ["--dtype", args.dtype] + (["--together"] if args.together else [])
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"batch {batch} K {k} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                stages = " | ".join(f"{row['per_image_s'][s]:.3f} ({row['cpu_per_image_s'][s]:.3f})"
                                    for s in STAGES)
                print(f"| {batch} | {k} | {row['segments']:.0f} | {stages} | {row['total_s']:.2f} "
                      f"({row['cpu_total_s']:.2f}) | {row['faults_mb']:.0f} | "
                      f"{row['peak_rss_mb']:.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
