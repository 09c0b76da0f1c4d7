"""The command line's own cost: peak memory of `evaluate` on files, time to the first image.

    PYTHONPATH=src python benchmarks/bench_cli.py --data /tmp/bench_pq --n 1000 --repeat 3

1. `panoptic-detr evaluate --gt ... --pred ...` on --n synthetic 640x480 pairs (the data of
   bench_pq.py, written once), in a fresh process, with the peak resident memory of that
   process and all its workers sampled every 5 ms; beside it, in the same run, the library
   call `evaluate_files` (bench_pq.py's "ours") as the peer: the CLI should cost no more
   than its parser.
2. `panoptic-detr predict IMAGE --weights demo`: the seconds from starting the process to the
   image's record appearing in OUT/records (the first image processed), beside
   `panoptic-detr --version` (the interpreter and parser alone) and `python -c "import torch"`
   (the floor any command that runs a model pays).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_pq import watch_peak_rss, write_dataset  # noqa: E402


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd`; (peak RSS MB of its process tree, wall seconds). It must exit 0."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    peak_mb = watch_peak_rss(proc.pid)
    _, err = proc.communicate()
    peak = peak_mb()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return peak, time.perf_counter() - t


def time_to_file(cmd: list[str], pattern: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run `cmd`; (seconds until a file matching `pattern` exists, seconds until exit)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    first = None
    while proc.poll() is None:
        if first is None and any(pattern.parent.glob(pattern.name)):
            first = time.perf_counter() - t
        time.sleep(0.005)
    total = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read()[-500:]!r}")
    return (first if first is not None else total), total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/bench_pq"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    python = sys.executable
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))

    write_dataset(args.data, args.n, 0, 640, 480, workers=os.cpu_count() or 1)
    gt, pred = args.data / "gt" / "panoptic.json", args.data / "pred" / "predictions.json"
    cli = [python, "-m", "panoptic_detr", "evaluate", "--gt", str(gt), "--pred", str(pred),
           "--workers", str(args.workers), "--quiet"]
    lib = [python, str(Path(__file__).parent / "bench_pq.py"), "--mode", "ours", "--data", str(args.data),
           "--workers", str(args.workers)]
    print(f"1. evaluate on {args.n} file pairs, {args.workers} workers, {args.repeat} runs each "
          "(peak RSS of the process tree: max over runs; wall: min)\n")
    print("| run | peak RSS MB | wall s |\n|---|---|---|")
    for name, cmd in (("`panoptic-detr evaluate` (CLI)", cli), ("`evaluate_files` (library, peer)", lib)):
        runs = [peak_rss(cmd, env) for _ in range(args.repeat)]
        print(f"| {name} | {max(r[0] for r in runs):.0f} | {min(r[1] for r in runs):.1f} |", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    try:
        image = tmp / "scene.jpg"
        cmd = [python, "-m", "panoptic_detr"]
        subprocess.run([*cmd, "synth", "--out", str(tmp / "synth"), "--n", "1", "--quiet"],
                       env=env, check=True, capture_output=True)
        shutil.copy(next((tmp / "synth" / "images").glob("*")), image)
        rows = {"`python -c 'import torch'` (floor)": [], "`panoptic-detr --version` (parser)": [],
                "`panoptic-detr predict` to the first record": [], "`panoptic-detr predict` to exit": []}
        for i in range(args.repeat):
            t = time.perf_counter()
            subprocess.run([python, "-c", "import torch"], env=env, check=True)
            rows["`python -c 'import torch'` (floor)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([*cmd, "--version"], env=env, check=True, capture_output=True)
            rows["`panoptic-detr --version` (parser)"].append(time.perf_counter() - t)
            out = tmp / f"out{i}"
            first, total = time_to_file([*cmd, "predict", str(image), "--weights", "demo", "--out", str(out),
                                         "--quiet"], out / "records" / "*.json", env)
            rows["`panoptic-detr predict` to the first record"].append(first)
            rows["`panoptic-detr predict` to exit"].append(total)
        print(f"\n2. start-up, one {image.name} of the bundled synthetic size, demo model, "
              f"{args.repeat} runs (median, min)\n")
        print("| step | median s | min s |\n|---|---|---|")
        for name, values in rows.items():
            print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
