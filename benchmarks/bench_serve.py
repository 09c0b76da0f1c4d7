"""Load test of `panoptic-detr serve` on loopback: throughput, latency percentiles, 5xx count
and the server's RSS, at several client concurrencies, with a share of bad requests; then
the queue-full path and the re-threshold latency.

The server is the real command (`python -m panoptic_detr serve`) in a process of its own; the
client is asyncio + httpx, `--concurrency` requests in flight. Good requests are the bundled
scenes (multipart), bad ones (`--bad` of them) are a text body (415), a truncated JPEG (422)
and an out-of-range threshold (422).

    PYTHONPATH=src python benchmarks/bench_serve.py [--weights demo] [--concurrency 1 4 16]
        [--requests 300 300 2000] [--bad 0.1] [--cache-mb 64] [--size S --max-size M] [--images DIR]
    PYTHONPATH=src python benchmarks/bench_serve.py --r50-reference ../shared/reference --keep 20
        --concurrency 1 4 --requests 24 --rethreshold 10 --burst 8 --cache-mb 1024

--r50-reference: DETR-R50 with the reference fixtures' weights (random, with real BN
statistics; saved as an original-layout checkpoint as benchmarks/bench_predict.py does) on
the reference photo at 640x480 (the network sees 800x1066); the weights are random, so the
threshold is set to keep the `--keep` most confident queries of that photo (their masks run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCENES = sorted((ROOT / "src/panoptic_detr/assets/demo/scenes").glob("*.jpg"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, queue_size: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "panoptic_detr", "serve", "--weights", args.weights, "--port", str(port),
           "--queue-size", str(queue_size), "--timeout", "120", "--cache-mb", str(args.cache_mb)]
    for flag in ("size", "max_size", "threshold", "max_batch", "batch_wait_ms"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def requests_plan(n: int, bad: float, images: list[Path], seed: int) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    truncated = images[0].read_bytes()[:2000]
    plan = []
    for i in range(n):
        if rng.random() < bad:
            kind = ("415 text", "422 truncated", "422 threshold")[i % 3]
            send = {"415 text": dict(content=b"this is not an image"),
                    "422 truncated": dict(content=truncated, headers={"Content-Type": "image/jpeg"}),
                    "422 threshold": dict(content=images[0].read_bytes(), params={"threshold": "2"})}[kind]
            plan.append((kind, send))
        else:
            f = rng.choice(images)
            plan.append(("200", dict(files={"image": (f.name, f.read_bytes(), "image/jpeg")})))
    return plan


async def load(url: str, plan, concurrency: int, pid: int):
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results, rss = [], []

    async def client(c: httpx.AsyncClient):
        while not queue.empty():
            kind, send = queue.get_nowait()
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/segment", **send)
            results.append((kind, r.status_code, time.perf_counter() - t0))

    async def sample():
        while True:
            rss.append(rss_mb(pid))
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as c:
        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        sampler.cancel()
    return results, wall, rss


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


async def queue_full(url: str, image: Path, burst: int):
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=burst)) as c:
        async def one():
            t0 = time.perf_counter()
            r = await c.post(url + "/v1/segment", content=image.read_bytes())
            return r.status_code, r.headers.get("Retry-After"), time.perf_counter() - t0
        return await asyncio.gather(*(one() for _ in range(burst)))


def rethreshold(url: str, image: Path, n: int, thresholds) -> tuple[list[float], list[float]]:
    with httpx.Client(timeout=300) as c:
        fresh = []
        for _ in range(max(3, n // 10)):
            t0 = time.perf_counter()
            rid = c.post(url + "/v1/segment", content=image.read_bytes()).json()["request_id"]
            fresh.append(time.perf_counter() - t0)
        times = []
        for i in range(n):
            t = thresholds[i % len(thresholds)]
            t0 = time.perf_counter()
            r = c.post(f"{url}/v1/segment/{rid}/threshold", json={"threshold": t})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return fresh, times


def r50_reference(reference: Path, work: Path, keep: int) -> tuple[Path, list[Path], float]:
    """(checkpoint, [photo], the threshold that keeps `keep` queries of the photo)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_predict import prepare

    from panoptic_detr.predictor import Predictor

    ckpt, photo = prepare(reference, work)
    p = Predictor(ckpt)
    with torch.inference_mode():
        from panoptic_detr.data.images import load_image, preprocess
        from panoptic_detr.structures import PaddedBatch

        x = preprocess(load_image(photo), p.size, p.max_size)
        logits = p.model.detect(PaddedBatch.from_images([x]).to(p.device, p.dtype)).pred_logits[0].float()
    probs = logits.softmax(-1)
    score, label = probs.max(-1)
    real = score[label != logits.shape[-1] - 1].sort(descending=True).values
    return ckpt, [photo], float((real[keep - 1] + real[keep]) / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="demo")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--max-size", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--images", type=Path, default=None, help="folder of JPEGs (default: the demo scenes)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, nargs="+", default=[300, 300, 2000])
    ap.add_argument("--bad", type=float, default=0.1)
    ap.add_argument("--cache-mb", type=float, default=64,
                    help="the server's re-threshold cache: small, so that it is full early and RSS "
                         "growth after that would be a leak")
    ap.add_argument("--burst", type=int, default=24, help="requests sent at once at a queue of 2")
    ap.add_argument("--rethreshold", type=int, default=50)
    ap.add_argument("--r50-reference", type=Path, default=None, metavar="DIR")
    ap.add_argument("--keep", type=int, default=20)
    ap.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch")
    ap.add_argument("--batch-wait-ms", type=float, default=None, help="the server's --batch-wait-ms")
    args = ap.parse_args()
    images = sorted(args.images.glob("*.jpg")) if args.images else SCENES
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as work:
        if args.r50_reference is not None:
            ckpt, images, args.threshold = r50_reference(args.r50_reference, Path(work), args.keep)
            args.weights = str(ckpt)
            print(f"R50 reference weights, threshold {args.threshold:.6f} keeps {args.keep} queries")
        run(args, images)


def run(args, images: list[Path]) -> None:
    if len(args.requests) == 1:
        args.requests *= len(args.concurrency)

    print(f"weights {args.weights}, {len(images)} images, bad share {args.bad}; server: its own process")
    proc, url = start_server(args, queue_size=max(args.concurrency) + 4)
    try:
        for f in images:  # warm-up
            httpx.post(url + "/v1/segment", content=f.read_bytes(), timeout=300)
        print("| concurrency | requests | bad | req/s | p50 ms | p95 ms | p99 ms | 5xx | other codes "
              "| RSS start -> end (max) MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for conc, n in zip(args.concurrency, args.requests, strict=True):
            start = rss_mb(proc.pid)
            plan = requests_plan(n, args.bad, images, seed=conc)
            results, wall, rss = asyncio.run(load(url, plan, conc, proc.pid))
            end = rss_mb(proc.pid)
            good = [t * 1000 for k, code, t in results if code == 200]
            wrong = [(k, code) for k, code, _ in results if str(code) != k.split()[0]]
            fivexx = sum(code >= 500 for _, code, _ in results)
            bad = sum(k != "200" for k, _, _ in results)
            print(f"| {conc} | {n} | {bad} | {n / wall:.1f} | {pct(good, 50):.0f} | {pct(good, 95):.0f} | "
                  f"{pct(good, 99):.0f} | {fivexx} | {len(wrong)} unexpected | {start:.0f} -> {end:.0f} "
                  f"({max(rss + [end]):.0f}) |")
        lines = httpx.get(url + "/metrics").text.splitlines()
        metrics = {line.split()[0]: float(line.split()[1]) for line in lines
                   if line.startswith(("panoptic_detr_cache_bytes", "panoptic_detr_batch_size_"))}
        cache_mb = metrics["panoptic_detr_cache_bytes"] / 2**20
        print(f"\ncache at the end: {cache_mb:.1f} MB of {args.cache_mb:g} MB")
        runs, images_run = metrics["panoptic_detr_batch_size_count"], metrics["panoptic_detr_batch_size_sum"]
        print(f"network runs of /v1/segment: {runs:.0f}, {images_run / runs:.2f} images each on average "
              f"(--max-batch {args.max_batch or 'default'})")
        steps = (0.05, 0.3, 0.5, 0.7, 0.9)
        if args.r50_reference is not None:  # around the threshold that keeps --keep queries
            steps = tuple(args.threshold * f for f in (0.5, 0.8, 1.0, 1.25, 2.0))
        fresh, times = rethreshold(url, images[0], args.rethreshold, steps)
        print(f"\nre-threshold ({args.rethreshold} calls, thresholds {steps[0]:.3g}..{steps[-1]:.3g} "
              "in turn): p50 "
              f"{pct(times, 50) * 1000:.1f} ms, p95 {pct(times, 95) * 1000:.1f} ms; a fresh /v1/segment "
              f"of the same image: p50 {statistics.median(fresh) * 1000:.1f} ms")
    finally:
        proc.terminate()
        proc.wait(60)

    proc, url = start_server(args, queue_size=2)
    try:
        httpx.post(url + "/v1/segment", content=images[0].read_bytes(), timeout=300)
        out = asyncio.run(queue_full(url, images[0], args.burst))
        refused = [t * 1000 for code, after, t in out if code == 503 and after == "1"]
        served = [t * 1000 for code, _, t in out if code == 200]
        others = [code for code, _, _ in out if code not in (200, 503)]
        print(f"\nqueue-full path (--queue-size 2, {args.burst} requests at once): {len(served)} served "
              f"(p50 {pct(served, 50):.0f} ms), {len(refused)} refused with 503 + Retry-After "
              f"(p50 {pct(refused, 50):.1f} ms, max {max(refused, default=float('nan')):.1f} ms), "
              f"other codes: {others}")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
