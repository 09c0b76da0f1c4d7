"""Are two training runs the same? Every tensor, number and string of two checkpoints.

    PYTHONPATH=src python benchmarks/compare_checkpoints.py A.pt B.pt [--ignore out_dir export]

Prints each difference by its path in the checkpoint (tensors compared bit for bit with
`torch.equal`, dtype and shape included) and exits 1 if there is any beyond the --ignore'd
keys (by default the run's own paths, which differ between two output folders). Used for
the refactor's reproduction check in RESULTS.md: the same recipe with the old and the new
code on one machine.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from panoptic_detr.checkpoint import read


def differences(a: Any, b: Any, ignore: set[str], path: str = "") -> list[str]:
    """Paths at which `a` and `b` differ ("/train_state/step", "/model/x.weight", ...)."""
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b), key=str)]
        for k in a:
            if k in b and str(k) not in ignore:
                out += differences(a[k], b[k], ignore, f"{path}/{k}")
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (u, v) in pairs for d in differences(u, v, ignore, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:60]!r} vs {str(b)[:60]!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore", nargs="*", default=["out_dir", "export"], help="keys left out anywhere")
    args = ap.parse_args()
    found = differences(read(args.a), read(args.b), set(args.ignore))
    print(f"{len(found)} difference(s) (ignoring {', '.join(args.ignore) or 'nothing'})")
    print("\n".join(found[:40]))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
