"""What this CPU can do at most: GEMM GFLOP/s in float32 and bfloat16, and torchvision's
ResNet-50 body at 800x1066 in float32 (channels-last, inference), against which the float32
`predict` time of issue 3 is judged.

    PYTHONPATH=src python benchmarks/bench_cpu_peak.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

RESNET50_MACS_224 = 4.09e9  # multiply-adds of the ResNet-50 body + head at 224x224


def gemm_gflops(dtype: torch.dtype, n: int = 2048, iters: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for dtype in (torch.float32, torch.bfloat16):
        print(f"GEMM {dtype}: {gemm_gflops(dtype):.0f} GFLOP/s")
    body = torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-2]).eval()
    body = body.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 800, 1066).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        body(x)
        t = time.perf_counter()
        body(x)
        s = time.perf_counter() - t
    macs = RESNET50_MACS_224 * 800 * 1066 / 224**2
    print(f"ResNet-50 body 800x1066 float32: {s:.3f} s, {2 * macs / s / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
